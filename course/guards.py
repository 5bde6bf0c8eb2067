"""Stopping well: Ctrl+C and SIGTERM save a checkpoint first, and the NaN guard.

A long run must survive its user, its machine and its own numbers. The first Ctrl+C
(SIGINT), or a SIGTERM (what `kill`, `docker stop`, `timeout` and a Slurm preemption
send), lets the current step finish, saves a checkpoint and exits (code 130 for
Ctrl+C, 143 for SIGTERM), so nothing is lost; a second one quits at once. Under
torchrun every process stops after the same step (the loop agrees on it, see
`ProcessGroup.any`), so one checkpoint holds them all. A loss or gradient that
becomes NaN or infinite stops the run (code 1) before the bad value is logged,
evaluated or saved over the last good checkpoint.
"""

from __future__ import annotations

import math
import os
import signal
import threading

import torch
from tqdm import tqdm

from course.errors import StopNow, TrainingDiverged

STOP_SIGNALS = {signal.SIGINT: "Ctrl+C", signal.SIGTERM: "SIGTERM"}


def stop_at_once(signum: int, frame) -> None:
    """Outside the training loop (preparing data, building the model) a signal stops the
    run at once; the exception unwinds, so temporary files and folders are removed."""
    raise StopNow(signum)


def stop_at_once_on_sigterm() -> None:
    """Python's default for SIGTERM ends the process without unwinding: no cleanup."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop_at_once)


class StopRequests:
    """The first Ctrl+C or SIGTERM asks the loop to save a checkpoint and stop after the
    current step (`requested` holds the signal's number); a second one stops at once."""

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
        if self.requested is not None:
            raise StopNow(signum)
        self.requested = signum
        if self.announce:
            again = "press Ctrl+C again" if signum == signal.SIGINT else "send it again"
            tqdm.write(
                f"{STOP_SIGNALS[signum]}: saving a checkpoint after this step ({again} to quit at once)"
            )

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
