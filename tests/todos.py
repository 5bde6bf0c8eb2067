"""The TODO catalog (course/todos.py) as the tests use it: a graded test takes the
learner's code for its own TODO and the reference code for every other one.

A graded test is marked `@pytest.mark.todo("4")` when it checks the TODO's plain
property, and `@pytest.mark.todo("4", case="DDP")` when it checks a special case on
top of it (float16, DDP, MoE, whole training runs). A mistake in the plain property
fails the special cases too, each with a message about its own situation, so the
scoreboard shows a plain test's failure before a special case's (`rank`). In each
test file a TODO's plain tests also come first, so the file reads the same way."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from types import ModuleType

from course.todos import CATALOG, TODOS

__all__ = ["CATALOG", "TODOS", "Learner", "fallback_notes", "isolate", "load", "rank"]

_notes: dict[str, str] = {}  # chapter module -> why the reference stood in for it


@dataclass
class Learner:
    """The modules under test: `data` and `train`, exercise or solution."""

    data: ModuleType
    train: ModuleType


def load(impl: str, todo_id: str | None = None) -> Learner:
    """The two chapters of `impl`. A chapter that does not import (a syntax error in
    it) fails the tests of its own TODOs with that error; for the TODOs of the other
    chapter, the reference chapter stands in for it (and fallback_notes says so), so
    one broken file never hides the grades of the other."""
    modules, stand_ins = {}, []
    for chapter in ("data", "train"):
        name = f"{chapter}_{impl}"
        try:
            modules[chapter] = importlib.import_module(name)
        except Exception as err:
            if impl == "solution" or todo_id is None or TODOS[todo_id].module == chapter:
                raise
            modules[chapter] = importlib.import_module(f"{chapter}_solution")
            sys.modules[name] = modules[chapter]  # what `from data_exercise import ...` finds meanwhile
            stand_ins.append(name)
            _notes[name] = (
                f"{name}.py does not import ({type(err).__name__}: {err}); its TODOs fail until it does, "
                f"and the other file's TODOs were graded with {chapter}_solution.py in its place"
            )
    for name in stand_ins:
        del sys.modules[name]  # the next import of the broken file fails again, as it should
    return Learner(modules["data"], modules["train"])


def fallback_notes() -> list[str]:
    return list(_notes.values())


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


def rank(marker) -> int:
    """How directly a graded test's failure names a mistake, from its todo marker: 0 for
    the plain property, 1 for a special case. Of a TODO's failures the scoreboard shows
    the lowest rank's, the first of them in the order the tests ran."""
    return 1 if marker.kwargs.get("case") else 0
