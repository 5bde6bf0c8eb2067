"""Running an exercise file before every TODO is done.

An open TODO raises NotImplementedError("TODO <id>: ..."). Where a sensible stand-in
exists, the training script calls the learner's function through one of the helpers
below, which uses the stand-in and says so once: a constant learning rate while
TODO 2 is open and float32 while TODO 5 is open (both decided once, before the
training loop), no validation loss while TODO 6 is open (and a stop where the
processes disagree on it), no resume checkpoint while TODO 8 is open. Any other open
TODO (1, 3, 4) stops the run with its own message (see `course.cli.main`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from tqdm import tqdm

from course.errors import TrainingDiverged

_notes_shown: set[str] = set()


def note_once(message: str) -> None:
    if message not in _notes_shown:
        _notes_shown.add(message)
        tqdm.write(f"note: {message}")


def open_todo(error: NotImplementedError) -> str:
    """'TODO 2a' from the NotImplementedError("TODO 2a: ...") of an open TODO."""
    return str(error).split(":", 1)[0]


def schedule_or_constant(
    get_lr: Callable[..., float], warmup_steps: int, total_steps: int, max_lr: float, min_lr: float
) -> Callable[[int], float]:
    """The learning rate at each step: get_lr(step, ...), with a constant max_lr for the
    part of the schedule whose TODO is open (2a: the warmup steps, 2b: the steps after
    them). Decided once, before the training loop, by trying get_lr at the first step
    of each part."""

    def is_open(step: int) -> bool:
        try:
            get_lr(step, warmup_steps, total_steps, max_lr, min_lr)
            return False
        except NotImplementedError as todo:
            steps = "warmup steps" if step < warmup_steps else "steps after warmup"
            note_once(
                f"{open_todo(todo)} is not done yet, so the learning rate stays at {max_lr} for the {steps}."
            )
            return True

    warmup_is_open = warmup_steps > 0 and is_open(0)
    decay_is_open = is_open(warmup_steps)

    def lr_at(step: int) -> float:
        if warmup_is_open if step < warmup_steps else decay_is_open:
            return max_lr
        return get_lr(step, warmup_steps, total_steps, max_lr, min_lr)

    return lr_at


def precision_or_float32(
    autocast_context: Callable, make_grad_scaler: Callable, device: torch.device, dtype: torch.dtype
):
    """(autocast context, GradScaler) for the dtype, or float32 without a scaler while TODO 5 is open."""
    try:
        return autocast_context(device, dtype), make_grad_scaler(device, dtype)
    except NotImplementedError as todo:
        note_once(f"{open_todo(todo)} is not done yet, so training runs in float32.")
        return nullcontext(), torch.amp.GradScaler(device.type, enabled=False)


def evaluate_or_none(evaluate: Callable, group, *args):
    """evaluate(*args), or None (no validation loss) while TODO 6 is open. Under torchrun
    the processes must agree on the loss (each scored its share of the windows and they
    added up their sums): if they do not, TODO 6 is not done, and the run stops there
    rather than let each process keep other best weights (under FSDP a process saving
    best.pt alone would wait for the others for ever). A perplexity that overflows math.exp
    is a diverged model, and stops the run as the NaN guard does."""
    try:
        result = evaluate(*args)
    except NotImplementedError as todo:
        note_once(
            f"{open_todo(todo)} is not done yet, so there is no validation loss (samples are still written)."
        )
        return None
    except OverflowError:  # math.exp of a loss above 709 nats per token: no model learns that
        raise TrainingDiverged(
            "the validation loss became too large for math.exp to give its perplexity: the model "
            "diverged (lower --learning_rate or raise --warmup_steps); the tensor's exp() gives inf instead"
        ) from None
    if not group.agree(result.loss):
        raise NotImplementedError(
            f"TODO 6: the processes measured different validation losses (this one {result.loss:.4f}): "
            "each scored only its own share of the windows; add up every process's sums with "
            "sum_over_processes"
        )
    return result


def state_or_none(checkpoint_state: Callable, *args) -> dict | None:
    """checkpoint_state(*args), or None (no resume checkpoint) while TODO 8 is open."""
    try:
        return checkpoint_state(*args)
    except NotImplementedError as todo:
        note_once(f"{open_todo(todo)} is not done yet, so no resume checkpoint is saved (model.pt still is).")
        return None
