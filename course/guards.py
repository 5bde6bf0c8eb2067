"""Stopping well: the first Ctrl+C or SIGTERM (`kill`, `docker stop`, Slurm) lets the step finish,
saves a checkpoint and exits; a second one quits at once. Under torchrun every process stops after
the same step (`ProcessGroup.any`). A NaN or infinite loss or gradient stops the run first."""

import ctypes
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from course.errors import StopNow, TrainingDiverged

STOP_SIGNALS = {signal.SIGINT: "Ctrl+C", signal.SIGTERM: "SIGTERM"}
# Seconds in which the same signal counts once: Slurm and systemd signal every process of a job and
# torchrun forwards its own, so each gets two, ~1 ms apart, handled once back from a C call.
REPEAT_WINDOW = 2.0

_first_came: dict[int, float] = {}  # when this process first got each stop signal
_saves_in_progress = 0
_quit_after_the_save: int | None = None  # a signal that quits at once, waiting for the save
_launcher_pid: int | None = None  # the torchrun agent that started this worker (Linux)


def is_a_repeat(signum: int) -> bool:
    now, first = time.monotonic(), _first_came.get(signum)
    _first_came.setdefault(signum, now)
    return first is not None and now - first < REPEAT_WINDOW


def quit_at_once(signum: int) -> None:
    """Raise StopNow; while a checkpoint is being written, once it is written."""
    global _quit_after_the_save
    if _saves_in_progress:
        _quit_after_the_save = signum
    else:
        raise StopNow(signum)


@contextmanager
def saves_finish_first() -> Iterator[None]:
    """Around the writing of a checkpoint (nested, the outermost counts): cut short, torch.save would
    fail in its zip writer and under DCP the other processes would wait for this one."""
    global _saves_in_progress, _quit_after_the_save
    _saves_in_progress += 1
    try:
        yield
    finally:
        _saves_in_progress -= 1
        if _saves_in_progress == 0 and _quit_after_the_save is not None:
            signum, _quit_after_the_save = _quit_after_the_save, None
            raise StopNow(signum)


def stop_with_the_launcher() -> None:
    """A torchrun worker runs in a session of its own: without a SIGTERM when its launcher dies
    (Linux's prctl PR_SET_PDEATHSIG, elsewhere none) a `kill -9` of torchrun leaves it an orphan."""
    global _launcher_pid
    pr_set_pdeathsig = 1  # from <linux/prctl.h>
    if sys.platform.startswith("linux") and ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM) == 0:
        _launcher_pid = os.getppid()


def launcher_is_gone() -> bool:
    """Also while the launcher's other threads still end (the signal comes as its main thread
    ends): it then stays this worker's parent, its main thread a zombie ("Z" in /proc/PID/stat)."""
    if _launcher_pid is None:
        return False
    if os.getppid() != _launcher_pid:
        return True
    try:
        stat = Path(f"/proc/{_launcher_pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # the field after the (name), which may hold spaces


def orphans_shutdown_time() -> int | None:
    """With no launcher left to SIGKILL a hung stop, SIGALRM (whose default ends the process)
    after torchrun's shutdown time: the seconds given, or None while the launcher lives."""
    if not launcher_is_gone():
        return None
    given = os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "")
    seconds = int(given) if given.isdigit() else 30  # torchrun's default; it reads only a number
    signal.alarm(seconds)
    return seconds


def stop_at_once(signum: int, frame) -> None:
    """Outside the training loop a signal stops the run at once, unwinding so that temporary
    files are removed (a repeat is ignored: it would cut that cleanup short)."""
    if not is_a_repeat(signum):
        orphans_shutdown_time()
        quit_at_once(signum)


def stop_at_once_on_sigterm() -> None:
    """Python's default for SIGTERM ends the process without unwinding: no cleanup."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop_at_once)


class StopRequests:
    """The first Ctrl+C or SIGTERM asks the loop to save and stop after this step; a second stops at once."""

    def __init__(self, announce: bool = True) -> None:
        self.requested: int | None = None
        self.announce = announce  # say so when a signal arrives (under torchrun only rank 0 does)

    def __enter__(self) -> "StopRequests":
        self.previous, self.pid = {}, os.getpid()
        if threading.current_thread() is threading.main_thread():  # the only one signals reach
            self.previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def _handle(self, signum: int, frame) -> None:
        # A forked DataLoader worker gets the terminal's Ctrl+C (and Slurm's SIGTERM) too: it
        # keeps serving until the loader shuts it down (a dead one would fail the final save).
        if os.getpid() != self.pid or is_a_repeat(signum):
            return
        orphan_seconds = orphans_shutdown_time()
        if self.requested is not None:
            quit_at_once(signum)
            return
        self.requested = signum
        again = "press Ctrl+C again" if signum == signal.SIGINT else "send it again"
        cause, then = STOP_SIGNALS[signum], f"{again} to quit at once"
        if orphan_seconds is not None:
            cause = f"the launcher (pid {_launcher_pid}) is gone"
            then = f"ended by SIGALRM in {orphan_seconds} s if it hangs"
        if self.announce:
            tqdm.write(f"{cause}: saving a checkpoint after this step ({then})")

    def signum(self) -> int:
        """The signal that asked to stop (SIGTERM where it reached another process only)."""
        return self.requested if self.requested is not None else signal.SIGTERM

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def check_finite(
    window_loss: torch.Tensor, bad_grad_steps: torch.Tensor, first_step: int, last_step: int, kept: str
) -> None:
    """Stop before a NaN or infinite loss or gradient is logged, evaluated or saved (checked at
    log, eval and save points only: each makes the CPU wait for the GPU). `kept`: what is on disk."""
    loss = window_loss.item()
    if math.isfinite(loss) and bad_grad_steps.item() == 0:
        return
    what = f"the loss became {loss}" if not math.isfinite(loss) else "the gradient norm became inf or nan"
    raise TrainingDiverged(
        f"{what} between steps {first_step} and {last_step}. Likely causes: a learning rate "
        f"too high for this model (lower --learning_rate or raise --warmup_steps), or float16 overflow (use "
        f"--dtype bfloat16); {kept}"
    )
