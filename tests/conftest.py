"""Shared fixtures: tiny corpora and tiny models, so every test runs in milliseconds
and nothing needs the network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model import GPT, GPTConfig  # noqa: E402

# A few hundred lines of varied text: enough for a tiny model to learn something.
VERSE = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles\n"
    "And by opposing end them.\n\n"
)


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
    import data_solution

    prepared = tmp_path / "prepared"
    monkeypatch.setattr(data_solution, "DATA_DIR", prepared)
    return prepared
