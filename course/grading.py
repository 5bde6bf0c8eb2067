"""The graders' small command lines: `python data_exercise.py` and `--hint <TODO>`. It imports
none of the chapters (the graded tests live in tests/), so the data chapter can call it."""

from __future__ import annotations

import sys
from pathlib import Path

from course.errors import OneLineErrorParser
from course.todos import TODOS, next_hint


def show_hint(todo_id: str, script: Path) -> int:
    """`--hint 2b`: the next hint of a TODO of this file (course/hints.md has them all)."""
    module, _, impl = script.stem.partition("_")
    if todo_id not in TODOS:
        print(f"error: there is no TODO {todo_id!r}; the TODOs are {', '.join(TODOS)}", file=sys.stderr)
        return 2
    if TODOS[todo_id].module != module:
        other = f"{TODOS[todo_id].module}_{impl}.py"
        print(f"error: TODO {todo_id} is in {other}: `python {other} --hint {todo_id}`", file=sys.stderr)
        return 2
    print(next_hint(todo_id))
    return 0


def data_main(argv: list[str] | None, script: Path) -> int:
    """`python data_exercise.py`: grade the TODOs of the data chapter; `--hint 1`: a hint."""
    parser = OneLineErrorParser(description="Grade the TODOs of this file and print a scoreboard.")
    parser.add_argument(
        "--hint",
        metavar="TODO",
        help="print the next hint for a TODO: the idea, then the API, then pseudocode",
    )
    args = parser.parse_args(argv)
    if args.hint:
        return show_hint(args.hint, script)
    from tests.scoreboard import grade  # the graded tests live in tests/

    return grade(script)
