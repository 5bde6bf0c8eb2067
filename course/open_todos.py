"""Running an exercise file before every TODO is done: train_exercise.py runs through `main`.

An open TODO raises NotImplementedError("TODO <id>: ..."). Where a sensible stand-in exists, it
takes the learner's function's place for the run and says so once: a constant learning rate
while TODO 2 is open and float32 while TODO 5 is (each decided at its first call), no validation
loss while TODO 6 is (and a stop where the processes disagree on it), no resume checkpoint while
TODO 8 is. Any other open TODO (1, 3, 4) stops the run with its own message.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType

import torch
import torch.distributed as dist
from tqdm import tqdm

from course import cli
from course.errors import TrainingDiverged
from course.todos import TODOS

STAND_INS = ("get_lr", "autocast_context", "make_grad_scaler", "evaluate", "checkpoint_state")
NO_VAL_LOSS = "there is no validation loss (samples are still written)."
NO_RESUME = "no resume checkpoint is saved (model.pt still is)."
_notes_shown: set[str] = set()


def main(module: ModuleType, argv: list[str] | None, script: Path) -> int:
    """course.cli.main for the exercise file `module`: its train() runs with the stand-ins,
    and an open TODO it reaches ends the run in two lines, exit code 1."""
    if sys.excepthook is grade_despite_a_broken_chapter:  # the script has started: no longer needed
        sys.excepthook = sys.__excepthook__

    def train(command_line: cli.CommandLine) -> None:
        learner = {name: getattr(module, name) for name in STAND_INS}
        vars(module).update(stand_ins(learner))  # train() looks them up as the module's globals
        try:
            module.train(command_line)
        finally:
            vars(module).update(learner)  # the graded tests call the learner's own

    try:
        return cli.main(train, argv, script)
    except NotImplementedError as todo:
        todo_id = open_todo(todo).removeprefix("TODO ")
        file = script.name if TODOS[todo_id].module in script.name else f"{TODOS[todo_id].module}_exercise.py"
        print(
            f"stopped at {todo}\n  Fill it in in {file}; `python {file} --hint {todo_id}` gives a hint.",
            file=sys.stderr,
        )
        return 1


def stand_ins(learner: dict[str, Callable]) -> dict[str, Callable]:
    precision = precision_or_float32(learner["autocast_context"], learner["make_grad_scaler"])
    return {
        "get_lr": schedule_or_constant(learner["get_lr"]),
        "autocast_context": lambda device, dtype: precision(device, dtype)[0],
        "make_grad_scaler": lambda device, dtype: precision(device, dtype)[1],
        "evaluate": checked(or_else(learner["evaluate"], lambda *_: None, NO_VAL_LOSS)),
        "checkpoint_state": or_else(learner["checkpoint_state"], lambda *_: None, NO_RESUME),
    }


def or_else(learner: Callable, fallback: Callable, so: str) -> Callable:
    """learner(*args), or fallback(*args) while its TODO is open: a note says so, once."""

    def stand_in(*args):
        try:
            return learner(*args)
        except NotImplementedError as todo:
            note_once(f"{open_todo(todo)} is not done yet, so {so}")
            return fallback(*args)

    return stand_in


def note_once(message: str) -> None:
    if message not in _notes_shown:
        _notes_shown.add(message)
        tqdm.write(f"note: {message}")


def open_todo(error: NotImplementedError) -> str:
    """'TODO 2a' from the NotImplementedError("TODO 2a: ...") of an open TODO."""
    return str(error).split(":", 1)[0]


def schedule_or_constant(get_lr: Callable[..., float]) -> Callable[..., float]:
    """get_lr, with a constant max_lr for the part of the schedule whose TODO is open (2a:
    the warmup steps, 2b: the steps after them). Decided once, at the first call, by
    trying get_lr at the first step of each part."""

    @functools.cache
    def open_parts(warmup_steps: int, total_steps: int, max_lr: float, min_lr: float) -> tuple[bool, bool]:
        def is_open(step: int) -> bool:
            try:
                get_lr(step, warmup_steps, total_steps, max_lr, min_lr)
                return False
            except NotImplementedError as todo:
                steps = "warmup steps" if step < warmup_steps else "steps after warmup"
                so = f"the learning rate stays at {max_lr} for the {steps}."
                note_once(f"{open_todo(todo)} is not done yet, so {so}")
                return True

        return warmup_steps > 0 and is_open(0), is_open(warmup_steps)

    def lr_at(step: int, warmup_steps: int, total_steps: int, max_lr: float, min_lr: float) -> float:
        warmup_is_open, decay_is_open = open_parts(warmup_steps, total_steps, max_lr, min_lr)
        if warmup_is_open if step < warmup_steps else decay_is_open:
            return max_lr
        return get_lr(step, warmup_steps, total_steps, max_lr, min_lr)

    return lr_at


def precision_or_float32(autocast_context: Callable, make_grad_scaler: Callable) -> Callable:
    """(autocast context, GradScaler) from both functions, or float32 without a scaler while
    either is open (TODO 5): decided once, at the first call."""
    both = lambda device, dtype: (autocast_context(device, dtype), make_grad_scaler(device, dtype))
    float32 = lambda device, dtype: (nullcontext(), torch.amp.GradScaler(device.type, enabled=False))
    return functools.cache(or_else(both, float32, "training runs in float32."))


def checked(evaluate: Callable) -> Callable:
    """evaluate, whose loss the processes under torchrun must agree on (each scored its share
    of the windows and they added up their sums): if they do not, TODO 6 is not done, and the
    run stops rather than let each process keep other best weights (under FSDP a process
    saving best.pt alone would wait for the others for ever). A perplexity that overflows
    math.exp is a diverged model, and stops the run as the NaN guard does."""

    def stand_in(*args):
        try:
            result = evaluate(*args)
        except OverflowError:  # math.exp of a loss above 709 nats per token: no model learns that
            raise TrainingDiverged(
                "the validation loss became too large for math.exp to give its perplexity: the model "
                "diverged (lower --learning_rate or raise --warmup_steps); the tensor's exp() gives inf "
                "instead"
            ) from None
        if result is None or not dist.is_initialized():
            return result
        losses = [None] * dist.get_world_size()
        dist.all_gather_object(losses, result.loss)  # pickled: exact
        if len(set(losses)) > 1:
            raise NotImplementedError(
                f"TODO 6: the processes measured different validation losses (this one {result.loss:.4f}): "
                "each scored only its own share of the windows; add up every process's sums with "
                "sum_over_processes"
            )
        return result

    return stand_in


def grade_despite_a_broken_chapter(exc_type, exc, tb) -> None:
    """sys.excepthook for `python train_exercise.py --test`: the training chapter imports
    the data chapter before main() can run, so a syntax error in data_exercise.py would
    end the grader with a traceback and no scoreboard. The grader runs the tests in
    processes of its own and copes with a broken chapter, so it starts from here."""
    script = Path(sys.argv[0])
    if not issubclass(exc_type, Exception) or not script.stem.startswith("train_"):
        sys.__excepthook__(exc_type, exc, tb)
        return
    from tests.scoreboard import grade

    print(f"note: {script.name} could not start ({exc_type.__name__}: {exc})", flush=True)
    option = cli.build_parser().parse_known_args(sys.argv[1:])[0].test
    code = grade(script, None if option in (None, "all") else option)
    sys.stdout.flush()
    os._exit(code)  # the exit code the scoreboard gives: this hook's own return would be 1


if "--test" in sys.argv[1:]:  # train_exercise.py imports this before its data chapter
    sys.excepthook = grade_despite_a_broken_chapter
