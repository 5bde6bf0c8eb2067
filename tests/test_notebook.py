"""tutorial.ipynb as committed: executed, clean, and covering the course. (CI also
executes it from scratch in quick mode; see .ci/run.)"""

from __future__ import annotations

import re
import sys

import nbformat
import pytest
from conftest import ROOT, skip_if_notebook_was_run
from todos import CATALOG

sys.path.insert(0, str(ROOT / "tools"))
import check_notebook  # noqa: E402

NOTEBOOK = ROOT / "tutorial.ipynb"


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def markdown(notebook) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]


@pytest.mark.pristine
def test_committed_notebook_is_executed_clean_and_free_of_machine_paths():
    skip_if_notebook_was_run(NOTEBOOK)
    assert check_notebook.problems(NOTEBOOK) == []


@pytest.mark.pristine
def test_every_code_cell_ran_in_order(notebook):
    skip_if_notebook_was_run(NOTEBOOK)
    counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), "re-run the notebook top to bottom before committing it"


def test_the_default_is_the_learners_exercise_files(notebook):
    first_code = next(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "USE_SOLUTIONS = False" in first_code


@pytest.mark.parametrize("todo", CATALOG, ids=lambda t: t.id)
def test_every_todo_is_introduced_with_its_file(notebook, todo):
    file = f"{todo.module}_exercise.py"
    # "TODO 1", "TODOs 2a and 2b", "TODOs 3a, 3b, 3c"
    pattern = re.compile(rf"TODOs? (?:\w+(?:, | and ))*{re.escape(todo.id)}\b")
    assert any(pattern.search(text) and file in text for text in markdown(notebook)), (
        f"no markdown cell introduces TODO {todo.id} and sends the learner to {file}"
    )


def test_the_seed_checklist_closes_the_notebook(notebook):
    last = markdown(notebook)[-1]
    assert "验证清单" in last
    assert last.count("- [ ]") == 10, "5 basic and 3 advanced items, TODO 8, and the bonus TODO 7"


def test_plots_are_labelled(notebook):
    sources = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    n_plots = sources.count("plt.subplots(")
    assert n_plots >= 6
    assert sources.count("xlabel=") >= n_plots and sources.count("title=") >= n_plots
