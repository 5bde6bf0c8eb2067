"""Shared fixtures: tiny corpora and tiny models, so every test runs in milliseconds
and nothing needs the network; and the grading options.

    pytest                          tests the solutions and everything given
    pytest --impl exercise          grades the learner's *_exercise.py files
    pytest --impl exercise --todo 2b   grades one TODO (comma-separate several)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from todos import TODOS, Learner, isolate, load  # noqa: E402

from model import GPT, GPTConfig  # noqa: E402

# A few hundred lines of varied text: enough for a tiny model to learn something.
VERSE = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles\n"
    "And by opposing end them.\n\n"
)


# Command-line options for a model small enough to train for real in well under a second.
TINY_MODEL = ["--device", "cpu", "--hidden_size", "32", "--num_hidden_layers", "2",
              "--num_attention_heads", "2", "--max_seq_len", "16", "--batch_size", "4", "--eval_iters", "2",
              "--log_interval", "1", "--sample_tokens", "5"]  # fmt: skip


@pytest.fixture
def corpus_txt(tmp_path: Path) -> Path:
    path = tmp_path / "verse.txt"
    path.write_text(VERSE * 40, encoding="utf-8")
    return path


@pytest.fixture
def corpus_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl"
    docs = ["今天天气真好", "The weather is nice today.", VERSE]
    path.write_text(
        "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8"
    )
    return path


def tiny_gpt(vocab_size: int = 32, block_size: int = 16, dropout: float = 0.0, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(
        GPTConfig(
            vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32, dropout=dropout
        )
    )


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Prepared corpora go to a temporary folder, never into the repository's data/."""
    from course import corpus

    prepared = tmp_path / "prepared"
    monkeypatch.setattr(corpus, "DATA_DIR", prepared)
    return prepared


# --- grading ---------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--impl",
        default="solution",
        choices=("solution", "exercise"),
        help="which files the graded (todo-marked) tests grade",
    )
    parser.addoption("--todo", default=None, help="run only the graded tests of these TODO ids (e.g. 2a,2b)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.getoption("--todo")
    if wanted is None:
        return
    ids = set(wanted.split(","))
    unknown = ids - set(TODOS)
    if unknown:
        raise pytest.UsageError(f"unknown TODO id(s) {sorted(unknown)}; known: {', '.join(TODOS)}")
    keep = [item for item in items if (m := item.get_closest_marker("todo")) and m.args[0] in ids]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


@pytest.fixture
def learner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Learner:
    """The modules under grade for this test's TODO: the learner's code for that TODO,
    the reference (solution) code for every other TODO."""
    marker = request.node.get_closest_marker("todo")
    assert marker, "the learner fixture is for tests marked @pytest.mark.todo(<id>)"
    impl = request.config.getoption("--impl")
    return isolate(load(impl), marker.args[0], load("solution"), monkeypatch)
