"""Generate the exercise files from the solution files, the one source of truth.

    python tools/make_exercises.py           # write data_exercise.py and train_exercise.py
    python tools/make_exercises.py --check   # exit 1 if they are out of date (CI runs this)

A TODO region in a solution file looks like this:

    # TODO 2a: warmup: grow the LR linearly, reaching max_lr at step warmup_steps - 1
    #   hint lines: comments right under the header, kept in the exercise
    return max_lr * (step + 1) / warmup_steps
    # END TODO 2a

In the exercise file the code between the hint lines and the END line becomes
`raise NotImplementedError("TODO 2a: warmup: ...")`, and imports of `*_solution`
modules become `*_exercise`. Everything else is copied unchanged, so the two files
differ only inside the regions. Never edit an exercise file by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = {"data_solution.py": "data_exercise.py", "train_solution.py": "train_exercise.py"}
HEADER = re.compile(r"^(?P<indent>[ ]*)# TODO (?P<id>\w+): (?P<what>.+)$")
MAX_LINE = 110  # ruff's line length in pyproject.toml
BANNER = (
    "# Generated from {solution} by tools/make_exercises.py: fill in the TODOs here.\n"
    "# (To change the course itself, edit {solution} and run the script again.)\n"
)


def todo_ids(source: str) -> list[str]:
    """The TODO ids of a solution file, in order of appearance (an id may repeat)."""
    return [m["id"] for line in source.splitlines() if (m := HEADER.match(line))]


def make_exercise(source: str, solution_name: str, solved: frozenset[str] = frozenset()) -> str:
    """The exercise version of a solution file. TODOs listed in `solved` keep their
    code (the tests use this to check that each region grades on its own)."""
    lines = source.splitlines(keepends=True)
    out = [BANNER.format(solution=solution_name)]
    i = 0
    while i < len(lines):
        match = HEADER.match(lines[i].rstrip("\n"))
        if not match:
            out.append(rename_imports(lines[i]))
            i += 1
            continue
        indent, todo, what = match["indent"], match["id"], match["what"]
        end = find_end(lines, i, indent, todo)
        i += 1
        out.append(lines[i - 1])
        while lines[i].startswith(indent + "#"):  # hint lines
            out.append(lines[i])
            i += 1
        out.extend(lines[i:end] if todo in solved else [raise_line(indent, todo, what)])
        out.append(lines[end])
        i = end + 1
    return "".join(out)


def find_end(lines: list[str], start: int, indent: str, todo: str) -> int:
    end_marker = f"{indent}# END TODO {todo}\n"
    for j in range(start + 1, len(lines)):
        if lines[j] == end_marker:
            return j
        if HEADER.match(lines[j].rstrip("\n")):
            break
    raise SystemExit(f"error: TODO {todo} (line {start + 1}) has no '# END TODO {todo}' at its indentation")


def raise_line(indent: str, todo: str, what: str) -> str:
    if '"' in what or "\\" in what:
        raise SystemExit(f"error: TODO {todo}: keep quotes and backslashes out of the header line")
    line = f'{indent}raise NotImplementedError("TODO {todo}: {what}")\n'
    if len(line.rstrip("\n")) <= MAX_LINE:
        return line
    # The layout ruff format gives a call whose only argument does not fit on one line.
    return f'{indent}raise NotImplementedError(\n{indent}    "TODO {todo}: {what}"\n{indent})\n'


def rename_imports(line: str) -> str:
    return re.sub(r"\b(data|train)_solution\b", r"\1_exercise", line) if "import" in line else line


def expected_files() -> dict[Path, str]:
    return {
        ROOT / exercise: make_exercise((ROOT / solution).read_text(), solution)
        for solution, exercise in PAIRS.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if an exercise file is out of date")
    args = parser.parse_args()
    stale = [
        path for path, text in expected_files().items() if not path.is_file() or path.read_text() != text
    ]
    if args.check:
        for path in stale:
            print(f"error: {path.name} is out of date; run: python tools/make_exercises.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in expected_files().items():
        path.write_text(text)
        print(f"wrote {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
