"""Stopping well: Ctrl+C and SIGTERM save a checkpoint first, and the NaN guard.

A long run must survive its user, its machine and its own numbers. The first Ctrl+C
(SIGINT), or a SIGTERM (what `kill`, `docker stop`, `timeout` and a Slurm preemption
send), lets the current step finish, saves a checkpoint and exits (code 130 for
Ctrl+C, 143 for SIGTERM), so nothing is lost; a second one quits at once. Under
torchrun every process stops after the same step (the loop agrees on it, see
`ProcessGroup.any`), so one checkpoint holds them all. A loss or gradient that
becomes NaN or infinite stops the run (code 1) before the bad value is logged,
evaluated or saved over the last good checkpoint.

The rules for signals that come more than once, or at a bad moment:

- The same signal again within REPEAT_WINDOW (2 s) of its first counts once: it is the
  same request delivered twice. Slurm's scancel and systemd signal every process of a
  job, and torchrun (or srun) forwards the one it got as well, so each process gets
  it twice, about a millisecond apart. A second Ctrl+C or SIGTERM that comes later
  (a person who insists) quits at once.
- A checkpoint being written is finished first (`saves_finish_first`): a signal that
  would quit at once waits for the end of the save, then quits. Cut short inside
  torch.save, the interrupt would come out of torch's zip writer as a RuntimeError;
  inside DCP, the other processes would wait for this one. Finishing costs at most
  the one save that the first signal asked for; SIGKILL still stops at once, and the
  previous checkpoint survives it (the files are replaced atomically).
- Under torchrun on Linux a worker also stops when its launcher dies (`stop_with_the_launcher`):
  torchrun starts each worker in a session of its own, so a SIGKILL of torchrun (the
  OOM killer, `kill -9`) would leave them training on as orphans. The kernel sends
  the worker a SIGTERM instead (once more as the launcher's last threads end: a
  repeat), so it saves a checkpoint as for any SIGTERM; and since
  no launcher is left to SIGKILL it should that save hang (its peers may be stopping
  too), it gives itself the time torchrun would have given it
  (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, default 30 s), then SIGALRM ends it.
"""

from __future__ import annotations

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
# Seconds. The two copies come about 1 ms apart, but the second's handler runs only once the
# main thread is back from the C call it is in (a collective that waits for the other processes).
REPEAT_WINDOW = 2.0

_first_came: dict[int, float] = {}  # when this process first got each stop signal
_saves_in_progress = 0
_quit_after_the_save: int | None = None  # a signal that quits at once, waiting for the save
_launcher_pid: int | None = None  # the torchrun agent that started this worker (Linux)


def is_a_repeat(signum: int) -> bool:
    """True for a signal that came already, less than REPEAT_WINDOW ago: the same request
    delivered twice (see the rules above), counted once."""
    now = time.monotonic()
    if signum not in _first_came:
        _first_came[signum] = now
        return False
    return now - _first_came[signum] < REPEAT_WINDOW


def quit_at_once(signum: int) -> None:
    """Raise StopNow; while a checkpoint is being written, once it is written."""
    global _quit_after_the_save
    if _saves_in_progress:
        _quit_after_the_save = signum
    else:
        raise StopNow(signum)


@contextmanager
def saves_finish_first() -> Iterator[None]:
    """Around the writing of a checkpoint (also as a decorator): a signal that would quit
    at once waits until it is written (nested: until the outermost save is done)."""
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
    """A torchrun worker: ask Linux for a SIGTERM when the launcher that started this
    process dies (prctl PR_SET_PDEATHSIG: it fires when the launcher's thread that started
    the worker ends; torchrun starts its workers from its main thread). Other systems
    have no such signal: there an orphaned worker trains on."""
    global _launcher_pid
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1  # from <linux/prctl.h>
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM) == 0:
        _launcher_pid = os.getppid()


def launcher_is_gone() -> bool:
    """PR_SET_PDEATHSIG fires as the launcher's main thread ends, while its other threads
    may still be ending: until they have, the launcher stays this worker's parent, with a
    main thread that is a zombie ("Z" in /proc/PID/stat)."""
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
    """A worker whose launcher died has no one left to SIGKILL it if its stop hangs (a
    peer that no longer answers a collective): SIGALRM, whose default ends the process
    wherever it is, does so after the time torchrun would have given it. The seconds
    given, or None while the launcher lives."""
    if not launcher_is_gone():
        return None
    given = os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "")
    seconds = int(given) if given.isdigit() else 30  # torchrun's default; it reads only a number
    signal.alarm(seconds)
    return seconds


def stop_at_once(signum: int, frame) -> None:
    """Outside the training loop (preparing data, building the model) a signal stops the
    run at once; the exception unwinds, so temporary files and folders are removed (a
    repeat is ignored: it would cut that cleanup short)."""
    if not is_a_repeat(signum):
        orphans_shutdown_time()
        quit_at_once(signum)


def stop_at_once_on_sigterm() -> None:
    """Python's default for SIGTERM ends the process without unwinding: no cleanup."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop_at_once)


class StopRequests:
    """The first Ctrl+C or SIGTERM asks the loop to save a checkpoint and stop after the
    current step (`requested` holds the signal's number); a second one stops at once
    (the same signal within REPEAT_WINDOW counts once)."""

    def __init__(self, announce: bool = True) -> None:
        """announce: say so when a signal arrives (under torchrun only rank 0 does)."""
        self.requested: int | None = None
        self.announce = announce

    def __enter__(self) -> StopRequests:
        self.previous, self.pid = {}, os.getpid()
        # Signals are delivered to the main thread only.
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:
            # A DataLoader worker forked from the training process: Ctrl+C in a terminal
            # (and SIGTERM from Slurm, which signals every process of the job) reaches it
            # too. The training process handles it; the worker keeps serving until the
            # loader shuts it down (a worker that died would fail the final save).
            return
        if is_a_repeat(signum):
            return
        orphan_seconds = orphans_shutdown_time()
        if self.requested is not None:
            quit_at_once(signum)
            return
        self.requested = signum
        if not self.announce:
            return
        if orphan_seconds is not None:
            cause = f"the launcher (pid {_launcher_pid}) is gone"
            then = f"ended by SIGALRM in {orphan_seconds} s if it hangs"
        else:
            cause = STOP_SIGNALS[signum]
            again = "press Ctrl+C again" if signum == signal.SIGINT else "send it again"
            then = f"{again} to quit at once"
        tqdm.write(f"{cause}: saving a checkpoint after this step ({then})")

    def signum(self) -> int:
        """The signal that asked to stop (SIGTERM where it reached another process only)."""
        return self.requested if self.requested is not None else signal.SIGTERM

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def check_finite(
    window_loss: torch.Tensor,
    bad_grad_steps: torch.Tensor,
    first_step: int,
    last_step: int,
    kept: str,
) -> None:
    """Stop before a NaN or infinite loss or gradient is logged, evaluated or saved over a
    good checkpoint. (Checked at log, eval and save points only: each check makes the
    CPU wait for the GPU.) `kept` says what of the run is on disk."""
    loss = window_loss.item()
    if math.isfinite(loss) and bad_grad_steps.item() == 0:
        return
    what = f"the loss became {loss}" if not math.isfinite(loss) else "the gradient norm became inf or nan"
    raise TrainingDiverged(
        f"{what} between steps {first_step} and {last_step}. Likely causes: a learning rate "
        f"too high for this model (lower --learning_rate or raise --warmup_steps), or float16 overflow (use "
        f"--dtype bfloat16); {kept}"
    )
