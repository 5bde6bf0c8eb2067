"""The scoreboard behind `python data_exercise.py` and `python train_exercise.py --test`.

It runs the graded tests of one file with pytest and prints one row per TODO:
passed, failed (with the first failing check, in words) or not started.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from todos import CATALOG, TODOS  # noqa: E402

PASSED, FAILED, NOT_STARTED = "passed", "failed", "not started"
MARKS = {PASSED: "✓", FAILED: "✗", NOT_STARTED: "·"}


class Scoreboard:
    """A pytest plugin that records, per TODO id, how its graded tests went."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.reason: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        todo = report.user_properties and dict(report.user_properties).get("todo")
        if not todo or report.when != "call" and report.passed:
            return
        self.status.setdefault(todo, PASSED)
        if report.failed and todo not in self.reason:
            self.reason[todo] = dict(report.user_properties).get("reason", "")
            self.status[todo] = NOT_STARTED if self.reason[todo].startswith(f"TODO {todo}:") else FAILED

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        marker = item.get_closest_marker("todo")
        if marker:
            report.user_properties.append(("todo", marker.args[0]))
            if call.excinfo is not None:
                report.user_properties.append(("reason", describe(call.excinfo.value)))
        return report


def describe(error: BaseException) -> str:
    """The first line of the failure, in the test's own words."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(error, (AssertionError, NotImplementedError, pytest.fail.Exception)):
        return first or type(error).__name__
    return f"{type(error).__name__}: {first}"  # the learner's code raised something else


def grade(path: Path, todo: str | None = None) -> int:
    """Grade the TODOs of `path` (a data_/train_ exercise or solution file); 0 if all pass."""
    module, _, impl = path.stem.partition("_")
    ids = [t.id for t in CATALOG if t.module == module]
    if todo is not None:
        if todo not in ids:
            print(f"error: {path.name} has no TODO {todo!r}; its TODOs are {', '.join(ids)}", file=sys.stderr)
            return 2
        ids = [todo]
    board = Scoreboard()
    args = [
        str(TESTS / f"test_todo_{module}.py"),  # collect only the graded tests of this file
        f"--rootdir={TESTS.parent}",
        "--impl",
        impl,
        "--todo",
        ",".join(ids),
        "-q",
        "--no-header",
        "-p",
        "no:cacheprovider",
        "--tb=no",
        "-rN",
        "-o",
        "addopts=",
    ]
    print(f"Grading {path.name} with pytest ...")
    pytest.main(args, plugins=[board])
    return print_board(path.name, ids, board)


def print_board(file: str, ids: list[str], board: Scoreboard) -> int:
    print(f"\n{'TODO':<5} {'what you write':<46} result")
    for todo_id in ids:
        status = board.status.get(todo_id, FAILED)
        reason = board.reason.get(todo_id, "no graded test ran" if todo_id not in board.status else "")
        line = f"{todo_id:<5} {TODOS[todo_id].title:<46} {MARKS[status]} {status}"
        if status == FAILED:
            line += f": {reason}"
        print(line)
    done = sum(board.status.get(t) == PASSED for t in ids)
    print(f"\n{done}/{len(ids)} TODOs done in {file}")
    todo_next = next((t for t in ids if board.status.get(t) != PASSED), None)
    if todo_next:
        where = " / ".join(TODOS[todo_next].functions)
        print(f"next: TODO {todo_next} in {file} ({where}): read its docstring and the hint under the TODO")
    return 0 if done == len(ids) else 1
