"""Help comes in layers, on demand: `--hint <id>` gives the idea, then the concepts and
API names, then pseudocode; the TODO comments in the exercise files state the goal and
the contract, never the solution's code."""

from __future__ import annotations

import os
import re

import pytest
from conftest import ROOT, make_exercises
from todos import CATALOG, TODOS

from course import grading, todos
from tests import scoreboard


@pytest.fixture
def hints_file(tmp_path, monkeypatch):
    path = tmp_path / "hints_used.json"
    monkeypatch.setattr(todos, "HINTS_USED_FILE", path)
    return path


@pytest.mark.parametrize("todo", CATALOG, ids=lambda t: t.id)
def test_hint_gives_the_idea_then_the_concepts_then_pseudocode(todo, hints_file, capsys):
    script = ROOT / f"{todo.module}_exercise.py"
    shown = []
    for _ in range(4):
        assert grading.show_hint(todo.id, script) == 0
        shown.append(capsys.readouterr().out)
    for layer, (text, name) in enumerate(zip(shown, todos.LAYERS, strict=False), start=1):
        assert f"TODO {todo.id}, hint {layer}/3 ({name})" in text
        assert " ".join(todos.HINTS[todo.id][layer - 1].split()[:4]) in " ".join(text.split())
    assert "2 more" in shown[0] and "1 more" in shown[1] and "last hint" in shown[2]
    assert shown[3] == shown[2], "after the last hint, the last one again"
    assert todos.hints_used()[todo.id] == 3


def test_hint_for_a_todo_of_the_other_file_says_where_it_is(hints_file, capsys):
    assert grading.show_hint("1", ROOT / "train_exercise.py") == 2
    assert "TODO 1 is in data_exercise.py: `python data_exercise.py --hint 1`" in capsys.readouterr().err
    assert grading.show_hint("9z", ROOT / "train_exercise.py") == 2
    assert "there is no TODO '9z'" in capsys.readouterr().err
    assert not hints_file.exists(), "a refused hint is not counted"


def test_the_scoreboard_shows_how_many_hints_were_used(hints_file, capsys):
    grading.show_hint("2b", ROOT / "train_exercise.py")
    grading.show_hint("2b", ROOT / "train_exercise.py")
    board = scoreboard.Scoreboard()
    board.status = {"2a": scoreboard.PASSED, "2b": scoreboard.FAILED}
    board.reason = {"2b": "the cosine ..."}
    capsys.readouterr()
    scoreboard.print_board("train_exercise.py", ["2a", "2b"], board)
    rows = capsys.readouterr().out.splitlines()
    assert any(row.startswith("2b ") and "[2 hints used]" in row for row in rows)
    assert not any(row.startswith("2a ") and "hint" in row for row in rows)


@pytest.mark.parametrize("damaged", [b'{"2a": 2, "2', b"[1, 2]", b'{"2a": "two"}', b"\xff\xfe"])
def test_a_damaged_hints_file_costs_the_counts_not_the_hint(damaged, hints_file, capsys):
    hints_file.write_bytes(damaged)
    assert grading.show_hint("2a", ROOT / "train_exercise.py") == 0
    out, err = capsys.readouterr()
    assert "TODO 2a, hint 1/3 (the idea)" in out
    note = f"note: {hints_file.name} is unreadable or damaged; the hints used are counted from 0 again"
    assert err == note + "\n", "one line"
    assert todos.hints_used() == {"2a": 1}, "the file is whole again"


def test_a_hint_count_is_written_whole_or_not_at_all(hints_file, monkeypatch):
    grading.show_hint("2a", ROOT / "train_exercise.py")
    before = hints_file.read_text()

    def interrupted(*args):  # Ctrl+C just before the new file takes the old one's place
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(os, "replace", interrupted)
        grading.show_hint("2a", ROOT / "train_exercise.py")
    assert hints_file.read_text() == before, "the previous counts stay"
    assert not list(hints_file.parent.glob("*.tmp")), "no temporary file is left"


def code_lines(region: str) -> list[str]:
    """The non-trivial code lines of a solution region: not comments, not short."""
    lines = (line.strip() for line in region.splitlines())
    return [line for line in lines if line and not line.startswith("#") and len(line) >= 12]


@pytest.mark.parametrize("level", make_exercises.LEVELS)
@pytest.mark.parametrize("solution", make_exercises.PAIRS)
def test_exercise_comments_state_the_contract_not_the_code(solution, level):
    source = (ROOT / solution).read_text()
    exercise = make_exercises.make_exercise(source, solution, level=level)
    for (todo, solved), (_, unsolved) in zip(
        make_exercises.regions(source), make_exercises.regions(exercise), strict=True
    ):
        given_away = [line for line in code_lines(solved) if line in unsolved]
        assert not given_away, f"TODO {todo}: the exercise's comment gives away the code {given_away}"
        assert f"--hint {todo}" in unsolved, f"TODO {todo}: the comment should say how to get a hint"


def test_every_todo_has_three_hint_layers():
    assert set(todos.HINTS) == set(TODOS)
    assert all(len(layers) == 3 and all(layers) for layers in todos.HINTS.values())


SLIPS = {  # each edits the first TODO section it finds (the file's introduction names the headings too)
    "a TODO left out": lambda text: text[: text.index("\n## TODO 8\n")],
    "a TODO twice": lambda text: text + text[text.index("\n## TODO 8\n") :],
    "a layer renamed": lambda text: text.replace(
        "\n### 2. concepts and API names\n", "\n### 2. the API\n", 1
    ),
    "a layer missing": lambda text: text.replace("\n### 1. the idea\n", "\n", 1),
    "two paragraphs in a layer": lambda text: text.replace(
        "\n### 1. the idea\n", "\n### 1. the idea\n\nMore.\n", 1
    ),
    "an open ``` block": lambda text: text.replace("\n```\n\n### challenge\n", "\n\n### challenge\n", 1),
    "pseudocode out of its block": lambda text: text.replace(
        "\n### 3. pseudocode\n\n```", "\n### 3. pseudocode\n\nx\n```", 1
    ),
    "no challenge text": lambda text: re.sub(r"\n### challenge\n[^#]*", "\n### challenge\n\n", text, count=1),
    "a heading misspelled": lambda text: text.replace("\n## TODO 2a\n", "\n## TODO2a\n", 1),
}


@pytest.mark.parametrize("slip", SLIPS.values(), ids=SLIPS.keys())
def test_a_slip_in_hints_md_fails_loudly_instead_of_losing_a_hint(slip):
    text = todos.HINTS_FILE.read_text("utf-8")
    assert todos.read_hints(text) == (todos.HINTS, todos.CHALLENGE)
    assert slip(text) != text, "the slip must change the file"
    with pytest.raises(ValueError, match="hints.md"):
        todos.read_hints(slip(text))


def test_todo_8_names_every_call_and_key_the_run_needs():
    """A resume reads the learner's dict through course code: its exercise text must name
    that interface, since neither the signature nor PyTorch tells it."""
    text = (ROOT / "train_exercise.py").read_text()
    start = text.index("def checkpoint_state(")
    told = text[start : text.index("# END TODO 8", text.index("def restore_checkpoint("))]
    for needed in ("stream.state()", "stream.seek(**position)", "capture_rng_state()", "restore_rng_state()"):
        assert needed in told, f"TODO 8's docstrings and contracts must name {needed}"
    from course.run_folder import RESUME_KEYS

    for key in ("model", "optimizer", "scaler", "step"):
        assert f'"{key}"' in told, f"TODO 8 must say that the run reads the key {key!r}"
    assert {"model", "step"} <= set(RESUME_KEYS), "the keys a resume requires changed: update TODO 8's text"
