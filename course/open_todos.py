"""Running an exercise file before every TODO is done.

An open TODO raises NotImplementedError("TODO <id>: ..."). Where a sensible stand-in
exists, the training loop calls the learner's function through one of the helpers
below, which uses the stand-in and says so once: a constant learning rate while
TODO 2 is open, float32 while TODO 5 is open, no validation loss while TODO 6 is
open, no resume checkpoint while TODO 8 is open. Any other open TODO (1, 3, 4) stops
the run with its own message (see `course.cli.main`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from tqdm import tqdm

_notes_shown: set[str] = set()


def note_once(message: str) -> None:
    if message not in _notes_shown:
        _notes_shown.add(message)
        tqdm.write(f"note: {message}")


def open_todo(error: NotImplementedError) -> str:
    """'TODO 2a' from the NotImplementedError("TODO 2a: ...") of an open TODO."""
    return str(error).split(":", 1)[0]


def lr_or_constant(
    get_lr: Callable[..., float], step: int, warmup_steps: int, total_steps: int, max_lr: float, min_lr: float
) -> float:
    """get_lr(...), or a constant max_lr while TODO 2a or 2b is open."""
    try:
        return get_lr(step, warmup_steps, total_steps, max_lr, min_lr)
    except NotImplementedError as todo:
        steps = "warmup steps" if open_todo(todo) == "TODO 2a" else "steps after warmup"
        note_once(
            f"{open_todo(todo)} is not done yet, so the learning rate stays at {max_lr} for the {steps}."
        )
        return max_lr


def precision_or_float32(
    autocast_context: Callable, make_grad_scaler: Callable, device: torch.device, dtype: torch.dtype
):
    """(autocast context, GradScaler) for the dtype, or float32 without a scaler while TODO 5 is open."""
    try:
        return autocast_context(device, dtype), make_grad_scaler(device, dtype)
    except NotImplementedError as todo:
        note_once(f"{open_todo(todo)} is not done yet, so training runs in float32.")
        return nullcontext(), torch.amp.GradScaler(device.type, enabled=False)


def evaluate_or_none(evaluate: Callable, *args):
    """evaluate(*args), or None (no validation loss) while TODO 6 is open."""
    try:
        return evaluate(*args)
    except NotImplementedError as todo:
        note_once(
            f"{open_todo(todo)} is not done yet, so there is no validation loss (samples are still written)."
        )
        return None


def state_or_none(checkpoint_state: Callable, *args) -> dict | None:
    """checkpoint_state(*args), or None (no resume checkpoint) while TODO 8 is open."""
    try:
        return checkpoint_state(*args)
    except NotImplementedError as todo:
        note_once(f"{open_todo(todo)} is not done yet, so no resume checkpoint is saved (model.pt still is).")
        return None
