"""The TODO catalog (course/todos.py) as the tests use it: a graded test takes the
learner's code for its own TODO and the reference code for every other one."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from course.todos import CATALOG, TODOS

__all__ = ["CATALOG", "TODOS", "Learner", "isolate", "load"]


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
