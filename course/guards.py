"""Stopping well: Ctrl+C that saves a checkpoint first, and the NaN guard.

A long run must survive its user and its own numbers. The first Ctrl+C lets the
current step finish, saves a checkpoint and exits (code 130), so nothing is lost;
a second one quits at once. A loss or gradient that becomes NaN or infinite stops
the run (code 1) before the bad value is logged, evaluated or saved over the last
good checkpoint.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from pathlib import Path

import torch
from tqdm import tqdm

from course.errors import TrainingDiverged


class CtrlC:
    """The first Ctrl+C asks the loop to save a checkpoint and stop after the current
    step; a second one stops at once (KeyboardInterrupt), as usual. Not under DDP,
    where the processes could disagree on which step was the last."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested = False

    def __enter__(self) -> CtrlC:
        self.previous, self.pid = None, os.getpid()
        # Signals are delivered to the main thread only.
        if self.enabled and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:
            # A DataLoader worker forked from the training process: Ctrl+C in a terminal
            # reaches it too. The training process handles it; the worker keeps serving.
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("Ctrl+C: saving a checkpoint after this step (press Ctrl+C again to quit at once)")

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def check_finite(
    window_loss: torch.Tensor,
    bad_grad_steps: torch.Tensor,
    first_step: int,
    last_step: int,
    resume_path: Path,
) -> None:
    """Stop before a NaN or infinite loss or gradient is logged, evaluated or saved over a
    good checkpoint. (Checked at log, eval and save points only: each check makes the
    CPU wait for the GPU.)"""
    loss = window_loss.item()
    if math.isfinite(loss) and bad_grad_steps.item() == 0:
        return
    what = f"the loss became {loss}" if not math.isfinite(loss) else "the gradient norm became inf or nan"
    kept = (
        f"the last good checkpoint ({resume_path.name}) is kept"
        if resume_path.is_file()
        else "nothing was saved"
    )
    raise TrainingDiverged(
        f"{what} between steps {first_step} and {last_step}. Likely causes: a learning rate "
        f"too high for this model (lower --learning_rate or raise --warmup_steps), or float16 overflow (use "
        f"--dtype bfloat16); {kept}, continue from it with --from_resume 1 and a lower --learning_rate"
    )
