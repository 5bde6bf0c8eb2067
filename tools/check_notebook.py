"""Check an executed notebook: every code cell ran, none raised, and no output shows
a path of the machine it ran on.

    python tools/check_notebook.py tutorial.ipynb
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

MACHINE_PATH = re.compile(r"(/root/|/home/|/tmp/|/work/|/Users/|/var/folders/|[A-Z]:\\\\)")


def output_text(output: dict) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return "\n".join(output.get("traceback", []))
    return "\n".join(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))


def problems(path: Path) -> list[str]:
    notebook = nbformat.read(path, as_version=4)
    found = []
    for number, cell in enumerate(notebook.cells, start=1):
        if cell.cell_type != "code":
            continue
        first_line = cell.source.splitlines()[0] if cell.source else ""
        if cell.execution_count is None:
            found.append(f"cell {number} ({first_line!r}) was not executed")
        for output in cell.outputs:
            if output.output_type == "error":
                found.append(f"cell {number} ({first_line!r}) raised {output.ename}: {output.evalue}")
            match = MACHINE_PATH.search(output_text(output))
            if match:
                found.append(f"cell {number} ({first_line!r}) shows a machine path: {match.group(0)}…")
    return found


def main() -> int:
    found = problems(Path(sys.argv[1]))
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
