"""The TODO catalog as the tests see it: where each TODO lives and
which functions hold its code, so a graded test can use the learner's code for its
own TODO and the reference code for every other one."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Todo:
    id: str
    module: str  # "data" or "train"
    functions: tuple[str, ...]  # attribute paths in that module
    title: str


CATALOG = [
    Todo("1", "data", ("BlockDataset.__getitem__",), "BlockDataset.__getitem__: x and the shifted y"),
    Todo("2a", "train", ("get_lr",), "get_lr: linear warmup"),
    Todo("2b", "train", ("get_lr",), "get_lr: cosine decay to min_lr"),
    Todo("3a", "train", ("set_lr",), "set_lr: the LR of every param group"),
    Todo("3b", "train", ("compute_loss",), "compute_loss: the forward pass"),
    Todo("3c", "train", ("clip_and_step",), "clip_and_step: unscale, clip, step, zero_grad"),
    Todo("4", "train", ("accumulate_gradients",), "accumulate_gradients: loss / k, no_sync"),
    Todo("5", "train", ("autocast_context", "make_grad_scaler"), "autocast + GradScaler for float16"),
    Todo("6", "train", ("evaluate",), "evaluate: eval mode, no_grad, mean loss"),
    Todo("7", "data", ("PretrainDataset.__getitem__",), "PretrainDataset: BOS/EOS, padding, -100"),
    Todo(
        "8", "train", ("checkpoint_state", "restore_checkpoint"), "checkpoint_state / restore: exact resume"
    ),
]
TODOS = {todo.id: todo for todo in CATALOG}


@dataclass
class Learner:
    """The modules under test: `data` and `train`, exercise or solution."""

    data: ModuleType
    train: ModuleType


def load(impl: str) -> Learner:
    return Learner(importlib.import_module(f"data_{impl}"), importlib.import_module(f"train_{impl}"))


def isolate(learner: Learner, todo_id: str, reference: Learner, monkeypatch) -> Learner:
    """Replace the code of every TODO except `todo_id` with the reference's, so one
    open TODO never hides another's grade. `monkeypatch` undoes it after the test."""
    own = set(TODOS[todo_id].functions)
    for todo in CATALOG:
        for path in todo.functions:
            if path in own:
                continue
            owner_name, _, attr = path.rpartition(".")
            target = getattr(learner, todo.module)
            source = getattr(reference, todo.module)
            if owner_name:  # a method: patch the class
                target, source = getattr(target, owner_name), getattr(source, owner_name)
            monkeypatch.setattr(target, attr, getattr(source, attr))
    return learner
