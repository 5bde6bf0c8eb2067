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
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from course.todos import CATALOG, TODOS

__all__ = ["CATALOG", "TODOS", "Learner", "fallback_notes", "isolate", "load", "rank", "where_it_failed"]

_notes: dict[str, str] = {}  # chapter module -> why the reference stood in for it


@dataclass
class Learner:
    """The modules under test: `data` and `train`, exercise or solution."""

    data: ModuleType
    train: ModuleType


def load(impl: str, todo_id: str | None = None) -> Learner:
    """The two chapters of `impl`. A chapter that does not import (a syntax error in
    it) fails the tests of its own TODOs with that error, in one line; for the TODOs of
    the other chapter, the reference chapter stands in for it (and fallback_notes says
    so), so one broken file never hides the grades of the other."""
    modules, stand_ins = {}, []
    for chapter in ("data", "train"):
        name = f"{chapter}_{impl}"
        try:
            modules[chapter] = importlib.import_module(name)
        except Exception as err:
            if impl == "solution" or todo_id is None:
                raise
            if TODOS[todo_id].module == chapter:
                pytest.fail(f"{name}.py does not import: {where_it_failed(err, name)}", pytrace=False)
            modules[chapter] = importlib.import_module(f"{chapter}_solution")
            sys.modules[name] = modules[chapter]  # what `from data_exercise import ...` finds meanwhile
            stand_ins.append(name)
            _notes[name] = (
                f"{name}.py does not import ({where_it_failed(err, name)}); its TODOs fail until it does, "
                f"and the other file's TODOs were graded with {chapter}_solution.py in its place"
            )
    for name in stand_ins:
        del sys.modules[name]  # the next import of the broken file fails again, as it should
    return Learner(modules["data"], modules["train"])


def where_it_failed(err: Exception, module: str) -> str:
    """'line N: Error: message', N being the line of the learner's file that failed: where
    the syntax error is, or the last line of that file the error passed through."""
    if isinstance(err, SyntaxError) and err.filename and Path(err.filename).stem == module:
        return f"line {err.lineno}: SyntaxError: {err.msg}"
    lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).stem == module]
    first = (str(err).strip().splitlines() or [""])[0]
    return (f"line {lines[-1]}: " if lines else "") + f"{type(err).__name__}: {first}"


def fallback_notes() -> list[str]:
    return list(_notes.values())


def isolate(learner: Learner, todo_id: str, reference: Learner, monkeypatch) -> Learner:
    """Replace the code of every TODO except `todo_id` with the reference's, so one
    open TODO never hides another's grade; where the learner deleted or renamed another
    TODO's function (or class), the reference's stands in for it too. A TODO whose own
    function is missing fails, naming it. `monkeypatch` undoes it all after the test."""
    own = TODOS[todo_id]
    for path in own.functions:
        if not has_path(getattr(learner, own.module), path):
            file = f"{getattr(learner, own.module).__name__}.py"
            pytest.fail(
                f"{file} has no {path} (deleted or renamed?): TODO {todo_id} is graded through that name; "
                "put it back",
                pytrace=False,
            )
    for todo in CATALOG:
        for path in todo.functions:
            if path in own.functions:
                continue
            target, source = getattr(learner, todo.module), getattr(reference, todo.module)
            owner_name, _, attr = path.rpartition(".")
            if owner_name and not hasattr(target, owner_name):
                attr = owner_name  # the whole class is missing: the reference's stands in
            elif owner_name:  # a method: patch the class
                target, source = getattr(target, owner_name), getattr(source, owner_name)
            monkeypatch.setattr(target, attr, getattr(source, attr), raising=False)
    return learner


def has_path(module: ModuleType, path: str) -> bool:
    """Whether `module` has the function (or Class.method) named by `path`."""
    owner_name, _, attr = path.rpartition(".")
    owner = getattr(module, owner_name, None) if owner_name else module
    return hasattr(owner, attr)


def rank(marker) -> int:
    """How directly a graded test's failure names a mistake, from its todo marker: 0 for
    the plain property, 1 for a special case. Of a TODO's failures the scoreboard shows
    the lowest rank's, the first of them in the order the tests ran."""
    return 1 if marker.kwargs.get("case") else 0
