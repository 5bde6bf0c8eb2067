"""Run the tutorial notebook (quick mode) with exactly one TODO open, for every TODO.

    python tools/check_notebook_todos.py            # every TODO, one after the other
    python tools/check_notebook_todos.py 2a 8       # only these

A learner meets the TODOs in the notebook's order, but may leave any one of them open.
For each TODO this writes data/train modules where only that TODO is open (as if the
learner had done all the others), executes the notebook against them, and checks it
with tools/check_notebook.py: every cell ran, none raised. CI runs the two ends (every
TODO open, every TODO done); this script covers the cases in between (about 2.5 minutes
per TODO on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import check_notebook  # noqa: E402
import make_exercises  # noqa: E402

from course.todos import TODOS  # noqa: E402


def write_variant(open_todo: str, directory: Path) -> str:
    """data_/train_ modules with every TODO solved but `open_todo`; returns their suffix."""
    suffix = f"open_{open_todo}"
    for solution in make_exercises.PAIRS:
        text = make_exercises.make_exercise(
            (ROOT / solution).read_text(), solution, frozenset(TODOS) - {open_todo}
        )
        text = text.replace("from data_exercise import", f"from data_{suffix} import")
        (directory / f"{solution.split('_')[0]}_{suffix}.py").write_text(text)
    return suffix


def run_notebook(open_todo: str, directory: Path) -> tuple[list[str], float]:
    suffix = write_variant(open_todo, directory)
    env = {**os.environ, "TUTORIAL_QUICK": "1", "TUTORIAL_IMPL": suffix, "PYTHONPATH": str(directory)}
    start = time.perf_counter()
    result = subprocess.run(
        ["jupyter", "nbconvert", "--to", "notebook", "--execute", "tutorial.ipynb",
         "--output-dir", str(directory), "--output", suffix],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        return [result.stderr.strip().splitlines()[-1]], seconds
    return check_notebook.problems(directory / f"{suffix}.ipynb"), seconds


def main() -> int:
    todos = sys.argv[1:] or list(TODOS)
    unknown = [t for t in todos if t not in TODOS]
    if unknown:
        print(
            f"error: unknown TODO(s) {', '.join(unknown)}; the TODOs are {', '.join(TODOS)}", file=sys.stderr
        )
        return 2
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        # The data module finds the bundled GPT-2 vocabulary beside itself, in data/.
        (Path(tmp) / "data").mkdir()
        (Path(tmp) / "data" / "gpt2.tiktoken").symlink_to(ROOT / "data" / "gpt2.tiktoken")
        for todo in todos:
            problems, seconds = run_notebook(todo, Path(tmp))
            status = "ok" if not problems else f"{len(problems)} problem(s): {problems[0]}"
            print(f"TODO {todo:<3} open alone: {status} ({seconds:.0f} s)", flush=True)
            failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
