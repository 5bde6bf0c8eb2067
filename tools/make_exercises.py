"""Generate the exercise files from the solution files, the one source of truth.

    python tools/make_exercises.py           # write data_exercise.py and train_exercise.py
    python tools/make_exercises.py --check   # exit 1 if they are out of date (CI runs this)

It never overwrites an exercise file whose TODO regions hold edits (a learner's
answers) unless told --force, and then it keeps a copy (train_exercise.py.bak).

A TODO region in a solution file looks like this:

    # TODO 2a: warmup: a linear ramp that reaches max_lr at step warmup_steps - 1
    #   comment lines right under the header (the goal and the contract, never the
    #   code): kept in the exercise
    return max_lr * (step + 1) / warmup_steps
    # END TODO 2a

In the exercise file the code between the comment lines and the END line becomes
`raise NotImplementedError("TODO 2a: warmup: ...")`, and `*_solution` becomes
`*_exercise` in imports and in the module docstring. Everything else is copied unchanged, so the two files
differ only inside the regions. Never edit an exercise file by hand.
"""

from __future__ import annotations

import argparse
import re
import shutil
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
    lines = rename(source).splitlines(keepends=True)
    out = [BANNER.format(solution=solution_name)]
    i = 0
    while i < len(lines):
        match = HEADER.match(lines[i].rstrip("\n"))
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent, todo, what = match["indent"], match["id"], match["what"]
        end = find_end(lines, i, indent, todo)
        i += 1
        out.append(lines[i - 1])
        while lines[i].startswith(indent + "#"):  # the comment lines: goal and contract
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


def rename(source: str) -> str:
    """data_solution / train_solution become data_exercise / train_exercise in the
    imports and in the module docstring (which tells how to run the file)."""
    docstring_end = source.index('"""', 3) + 3 if source.startswith('"""') else 0
    lines = source[docstring_end:].splitlines(keepends=True)
    swap = lambda text: re.sub(r"\b(data|train)_solution\b", r"\1_exercise", text)
    return swap(source[:docstring_end]) + "".join(swap(line) if "import" in line else line for line in lines)


def expected_files() -> dict[Path, str]:
    return {
        ROOT / exercise: make_exercise((ROOT / solution).read_text(), solution)
        for solution, exercise in PAIRS.items()
    }


def regions(text: str) -> list[tuple[str, str]]:
    """(id, lines between the header and the END line) of every TODO region, in order."""
    found, current, indent, body = [], None, "", []
    for line in text.splitlines():
        if current is None:
            if match := HEADER.match(line):
                current, indent, body = match["id"], match["indent"], []
        elif line == f"{indent}# END TODO {current}":
            found.append((current, "\n".join(body)))
            current = None
        else:
            body.append(line)
    return found


def edited_todos(exercise: Path, expected: str) -> list[str]:
    """The TODOs whose regions in `exercise` differ from the generated ones: the
    learner's work. If the TODO markers themselves were changed, every TODO counts."""
    actual, wanted = regions(exercise.read_text()), regions(expected)
    ids = list(dict.fromkeys(todo for todo, _ in wanted))
    if [todo for todo, _ in actual] != [todo for todo, _ in wanted]:
        return ids
    edited = {todo for (todo, got), (_, want) in zip(actual, wanted, strict=True) if got != want}
    return [todo for todo in ids if todo in edited]


def backup_path(path: Path) -> Path:
    candidates = (path.with_name(f"{path.name}.bak{n or ''}") for n in range(1000))
    return next(p for p in candidates if not p.exists())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if an exercise file is out of date")
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite exercise files that hold edits (a copy is kept as .bak)",
    )
    args = parser.parse_args()
    expected = expected_files()
    if args.check:
        stale = [path for path, text in expected.items() if not path.is_file() or path.read_text() != text]
        for path in stale:
            edited = edited_todos(path, expected[path]) if path.is_file() else []
            if edited:
                what = f"{path.name} holds edits in TODO {', '.join(edited)}: not the generated file"
                print(f"error: {what} (if they are your answers, keep them: this check is for a clean clone)",
                      file=sys.stderr)  # fmt: skip
            else:
                print(
                    f"error: {path.name} is out of date; run: python tools/make_exercises.py", file=sys.stderr
                )
        return 1 if stale else 0
    refused = False
    for path, text in expected.items():
        edited = edited_todos(path, text) if path.is_file() else []
        if edited and not args.force:
            print(f"error: {path.name} holds your work in TODO {', '.join(edited)}; not overwritten "
                  "(--force overwrites it after copying it to a .bak file)", file=sys.stderr)  # fmt: skip
            refused = True
            continue
        if edited:
            backup = backup_path(path)
            shutil.copy2(path, backup)
            print(f"kept your {path.name} as {backup.name}")
        path.write_text(text)
        print(f"wrote {path.name}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
