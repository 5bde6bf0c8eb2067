"""Generate the exercise files from the solution files, the one source of truth.

    python tools/make_exercises.py                    # write data_exercise.py and train_exercise.py
    python tools/make_exercises.py --level challenge  # the same TODOs at the challenge level
    python tools/make_exercises.py --level guided     # back to the guided level
    python tools/make_exercises.py --check            # exit 1 if they are out of date (CI runs this)

It never overwrites an exercise file whose TODO regions hold edits (a learner's
answers): it refuses with one line and exit 2 unless told --force, and then it keeps
a copy (train_exercise.py.bak). Without --level a file keeps the level it is at.

Two levels, from the same solutions and graded by the same tests:

- guided (the committed files): under each TODO header, its goal and contract as the
  solution file states them (inputs, outputs, what must hold, the helpers to use).
- challenge: under each header, the goal and every graded property in words, what
  must hold and why, with no code, slice, formula or API name: the texts are in
  course/hints.md, one per region. The first banner line of a file
  names its level. `--check` holds the files to the guided level (a clean clone's)
  and checks that the challenge level can be generated; the suite's checks of
  pristine files take a learner's checkout at the level its files are at.

A TODO region in a solution file looks like this:

    # TODO 2a: warmup: a linear ramp that reaches max_lr at step warmup_steps - 1
    #   comment lines right under the header (the goal and the contract, never the
    #   code): kept in the exercise
    return max_lr * (step + 1) / warmup_steps
    # END TODO 2a

In the exercise file the code between the comment lines and the END line becomes
`raise NotImplementedError("TODO 2a: warmup: ...")`, `*_solution` becomes
`*_exercise` in imports and in the module docstring, and train_exercise.py runs through
course.open_todos (OPEN_TODOS_LINES). Everything else is copied unchanged, so the two files
differ only inside the regions. Never edit an exercise file by hand.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from course.todos import CHALLENGE  # noqa: E402

PAIRS = {"data_solution.py": "data_exercise.py", "train_solution.py": "train_exercise.py"}
HEADER = re.compile(r"^(?P<indent>[ ]*)# TODO (?P<id>\w+): (?P<what>.+)$")
MAX_LINE = 110  # ruff's line length in pyproject.toml
COMMENT_WIDTH = 92  # the width of the solution files' contract comments
LEVELS = ("guided", "challenge")
BANNER = {
    "guided": "# Generated from {solution} by tools/make_exercises.py: fill in the TODOs here.\n",
    "challenge": "# Generated from {solution} by tools/make_exercises.py at the challenge level: "
    "fill in the TODOs here.\n",
}
BANNER_END = "# (To change the course itself, edit {solution} and run the script again.)\n"
# train_solution.py's lines that train_exercise.py has in another form: it runs through
# course.open_todos, which stands in for some of its TODOs while they are open.
OPEN_TODOS_LINES = {
    "from course import cli\n": "from course import cli, open_todos\n",
    "    return cli.main(train, argv, script=Path(__file__))\n": (
        "    return open_todos.main(sys.modules[__name__], argv, script=Path(__file__))\n"
    ),
}


def todo_ids(source: str) -> list[str]:
    """The TODO ids of a solution file, in order of appearance (an id may repeat)."""
    return [m["id"] for line in source.splitlines() if (m := HEADER.match(line))]


def make_exercise(
    source: str, solution_name: str, solved: frozenset[str] = frozenset(), level: str = "guided"
) -> str:
    """The exercise version of a solution file at `level`. TODOs listed in `solved` keep
    their code (the tests use this to check that each region grades on its own)."""
    lines = rename(source).splitlines(keepends=True)
    out = [BANNER[level].format(solution=solution_name), BANNER_END.format(solution=solution_name)]
    seen: dict[str, int] = {}  # regions of each TODO so far: which challenge text comes next
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
        contract = []
        while lines[i].startswith(indent + "#"):  # the comment lines: goal and contract
            contract.append(lines[i])
            i += 1
        if level == "challenge":
            contract = challenge_lines(indent, todo, seen.get(todo, 0), solution_name)
        seen[todo] = seen.get(todo, 0) + 1
        out.extend(contract)
        out.extend(lines[i:end] if todo in solved else [raise_line(indent, todo, what)])
        out.append(lines[end])
        i = end + 1
    return "".join(out)


def challenge_lines(indent: str, todo: str, index: int, solution_name: str) -> list[str]:
    """The challenge text of region `index` of a TODO as comment lines as wide as the
    guided ones, ending with the hint command, as the guided contract does."""
    texts = CHALLENGE.get(todo, ())
    if index >= len(texts):
        raise SystemExit(
            f"error: TODO {todo} has no challenge text for its region {index + 1} in course/hints.md"
        )
    prefix = f"{indent}#   "
    lines = textwrap.wrap(texts[index], COMMENT_WIDTH - len(prefix), break_on_hyphens=False)
    hint = f"Stuck? python {solution_name.replace('_solution', '_exercise')} --hint {todo}"
    if len(prefix + lines[-1] + " " + hint) <= COMMENT_WIDTH:
        lines[-1] += " " + hint
    else:
        lines.append(hint)
    return [f"{prefix}{line}\n" for line in lines]


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
    imports and in the module docstring (which tells how to run the file), and the
    training chapter runs through course.open_todos (OPEN_TODOS_LINES)."""
    docstring_end = source.index('"""', 3) + 3 if source.startswith('"""') else 0
    lines = source[docstring_end:].splitlines(keepends=True)
    swap = lambda text: re.sub(r"\b(data|train)_solution\b", r"\1_exercise", text)
    if "def train(" in source:  # the training chapter
        lines = [OPEN_TODOS_LINES.get(line, line) for line in lines]
        missing = set(OPEN_TODOS_LINES) - set(source[docstring_end:].splitlines(keepends=True))
        if missing:
            raise SystemExit(f"error: train_solution.py has no line {min(missing)!r} (OPEN_TODOS_LINES)")
    return swap(source[:docstring_end]) + "".join(swap(line) if "import" in line else line for line in lines)


def expected_files(level: str = "guided") -> dict[Path, str]:
    return {
        ROOT / exercise: make_exercise((ROOT / solution).read_text(), solution, level=level)
        for solution, exercise in PAIRS.items()
    }


def level_of(exercise: Path) -> str:
    """The level an exercise file was generated at (guided for a missing file)."""
    return level_of_text(exercise.read_text(), exercise.name) if exercise.is_file() else "guided"


def level_of_text(text: str, exercise_name: str) -> str:
    """The level its first banner line names (guided for a text without a banner)."""
    solution = next((s for s, e in PAIRS.items() if e == exercise_name), "")
    first = text.split("\n", 1)[0] + "\n"
    return next((lv for lv in LEVELS if first == BANNER[lv].format(solution=solution)), "guided")


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


def learner_work(exercise: Path) -> list[str]:
    """The TODOs whose regions hold the learner's work: edits against the file as either
    level generates it (a file at the other level is no work to keep)."""
    if not exercise.is_file():
        return []
    by_level = [set(edited_todos(exercise, expected_files(level)[exercise])) for level in LEVELS]
    work = set.intersection(*by_level)
    return [todo for todo in dict.fromkeys(todo_ids(expected_files()[exercise])) if todo in work]


def backup_path(path: Path) -> Path:
    candidates = (path.with_name(f"{path.name}.bak{n or ''}") for n in range(1000))
    return next(p for p in candidates if not p.exists())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if an exercise file is out of date")
    parser.add_argument(
        "--level",
        choices=LEVELS,
        help="guided: goal and contract under each TODO; challenge: the goal and what must hold, "
        "in words (default: the level each file is at)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite exercise files that hold edits (a copy is kept as .bak)",
    )
    args = parser.parse_args(argv)
    if args.check:
        return check()
    refused = False
    for solution, exercise in PAIRS.items():
        path = ROOT / exercise
        level = args.level or level_of(path)
        text = make_exercise((ROOT / solution).read_text(), solution, level=level)
        work = learner_work(path)
        if work and not args.force:
            print(f"error: {exercise} holds your work in TODO {', '.join(work)}; not overwritten "
                  "(--force overwrites it after copying it to a .bak file)", file=sys.stderr)  # fmt: skip
            refused = True
            continue
        if work:
            backup = backup_path(path)
            shutil.copy2(path, backup)
            print(f"kept your {exercise} as {backup.name}")
        path.write_text(text)
        print(f"wrote {exercise} ({level} level)")
    return 2 if refused else 0


def check() -> int:
    """CI's check: the exercise files are the guided level as generated, and the challenge
    level can be generated (every region has its text)."""
    expected_files("challenge")
    expected = expected_files()
    stale = [path for path, text in expected.items() if not path.is_file() or path.read_text() != text]
    for path in stale:
        work = learner_work(path)
        if work:
            what = f"{path.name} holds edits in TODO {', '.join(work)}: not the generated file"
        elif level_of(path) == "challenge" and path.read_text() == expected_files("challenge")[path]:
            what = f"{path.name} is at the challenge level, not the guided level of a clean clone"
        else:
            print(f"error: {path.name} is out of date; run: python tools/make_exercises.py", file=sys.stderr)
            continue
        print(f"error: {what} (if you chose it, keep it: this check is for a clean clone)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
