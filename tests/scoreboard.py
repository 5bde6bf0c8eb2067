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

from course.todos import hints_used  # noqa: E402

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
    """Grade the TODOs of `path` (a data_/train_ exercise or solution file). Returns 0
    when every required TODO passes (a bonus TODO is shown but does not count), 1 if
    not, 2 for a TODO id that this file does not have."""
    module, _, impl = path.stem.partition("_")
    ids = [t.id for t in CATALOG if t.module == module]
    if todo is not None:
        if todo in TODOS and todo not in ids:
            other = f"{TODOS[todo].module}_{impl}.py"
            print(f"error: TODO {todo} is in {other}; grade it with `python {other}`", file=sys.stderr)
            return 2
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
    hints = hints_used()
    print(f"\n{'TODO':<5} {'what you write':<46} result")
    for todo_id in ids:
        status = board.status.get(todo_id, FAILED)
        reason = board.reason.get(todo_id, "no graded test ran" if todo_id not in board.status else "")
        title = TODOS[todo_id].title + (" (bonus)" if TODOS[todo_id].bonus else "")
        line = f"{todo_id:<5} {title:<46} {MARKS[status]} {status}"
        if hints.get(todo_id):
            line += f" [{hints[todo_id]} hint{'s' * (hints[todo_id] > 1)} used]"
        if status == FAILED:
            line += f": {reason}"
        print(line)
    passed = [t for t in ids if board.status.get(t) == PASSED]
    if len(ids) == 1:
        print(f"\nTODO {ids[0]} {'passed' if passed else 'is not done yet'}")
    else:
        required = [t for t in ids if not TODOS[t].bonus]
        done = sum(t in passed for t in required)
        bonus = [f"bonus TODO {t} {'done' if t in passed else 'open'}" for t in ids if TODOS[t].bonus]
        print(f"\n{done}/{len(required)} TODOs done in {file}" + "".join(f"; {b}" for b in bonus))
    todo_next = next((t for t in ids if t not in passed), None)
    if todo_next:
        where = " / ".join(TODOS[todo_next].functions)
        print(
            f"next: TODO {todo_next} in {file} ({where}): read its docstring and the comment under the TODO"
        )
        print(f"      stuck? `python {file} --hint {todo_next}` gives one hint at a time")
    # The exit code: every required TODO (or the one TODO asked for, a bonus one included).
    graded = ids if len(ids) == 1 else [t for t in ids if not TODOS[t].bonus]
    return 0 if all(t in passed for t in graded) else 1
