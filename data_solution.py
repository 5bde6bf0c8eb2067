"""Data for next-token prediction (下一个词预测): from text to (x, y) training pairs.

What you build here, in the order the data flows:

1. A tokenizer turns text into integer ids: `char` (one id per character, built from
   the corpus) or `gpt2` (GPT-2's byte-pair encoding through tiktoken, from the
   vocabulary file bundled in data/, so it works offline).
2. `BlockDataset` [TODO 1] cuts a corpus's token ids into windows: x is what the model
   reads, y what it must predict, the token that comes next at every position of x.
3. `PretrainDataset` [TODO 7, bonus] is MiniMind's alternative: one document per
   sequence, with BOS/EOS tokens, padding, and targets the loss ignores.

Turning a corpus into token files on disk once (`prepare`: the default Shakespeare
corpus, or any .txt / MiniMind .jsonl file, read in chunks) is machinery, in
`course/corpus.py`; the training script calls it for you.

"今天天气真好" (the weather is nice today) is the running example:

    >>> tok = GPT2Tokenizer()
    >>> tok.decode(tok.encode("今天天气真好"))
    '今天天气真好'

Check your TODOs: `python data_solution.py` grades them (`--hint 1` gives a hint).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import tiktoken
import torch
from tiktoken.load import load_tiktoken_bpe
from torch.utils.data import Dataset

from course.data_files import check_data_path
from course.errors import DataError
from model import IGNORE_INDEX

EOT = "<|endoftext|>"  # the end-of-text marker placed after every document

# GPT-2's vocabulary, byte-identical to tiktoken's r50k_base (see data/README.md).
GPT2_VOCAB_FILE = Path(__file__).resolve().parent / "data" / "gpt2.tiktoken"
GPT2_VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# GPT-2's pre-tokenisation regex: text is first split into words, numbers, punctuation
# runs and whitespace, and BPE merges happen only inside those pieces.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot_id: int  # id of the end-of-text token that separates documents

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...
    def meta(self) -> dict: ...


class CharTokenizer:
    """One token per Unicode character, vocabulary = the characters of the corpus.

    Tiny vocabulary (≈ 85 for Shakespeare), so a small model trains fast, but every
    character is a step: a sentence takes ~4× more tokens than with GPT-2's BPE.
    The last id is the end-of-text token.
    """

    name = "char"

    def __init__(self, chars: str) -> None:
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.eot_id = len(chars)
        self.vocab_size = len(chars) + 1

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls("".join(sorted(seen)))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as err:
            raise DataError(
                f"character {err.args[0]!r} is not in this char vocabulary "
                f"({len(self.chars)} characters, built from the training corpus)"
            ) from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(EOT if i == self.eot_id else self.chars[i] for i in ids)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def meta(self) -> dict:
        return {"tokenizer": self.name, "vocab_size": self.vocab_size, "chars": self.chars}


class GPT2Tokenizer:
    """GPT-2's byte-level BPE (50,257 tokens) through tiktoken.

    Byte-level means any Unicode text can be encoded: a Chinese character that is
    not in the vocabulary falls back to its UTF-8 bytes (今 → 2 tokens).
    """

    name = "gpt2"

    def __init__(self) -> None:
        self.encoding = load_gpt2_encoding()
        self.eot_id = self.encoding.eot_token
        self.vocab_size = self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: a literal "<|endoftext|>" in the text is plain text,
        # never the special token, so a document cannot forge a boundary.
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.encoding.decode_bytes(list(ids))

    def meta(self) -> dict:
        return {
            "tokenizer": self.name,
            "vocab_size": self.vocab_size,
            "vocab_file": GPT2_VOCAB_FILE.name,
            "vocab_sha256": GPT2_VOCAB_SHA256,
        }


@lru_cache(maxsize=1)
def load_gpt2_encoding() -> tiktoken.Encoding:
    """Build GPT-2's encoding from the bundled file, so no download is needed."""
    if not GPT2_VOCAB_FILE.is_file():
        raise DataError(f"{GPT2_VOCAB_FILE} is missing; restore it with `git checkout data/`")
    digest = hashlib.sha256(GPT2_VOCAB_FILE.read_bytes()).hexdigest()
    if digest != GPT2_VOCAB_SHA256:
        raise DataError(
            f"{GPT2_VOCAB_FILE} is damaged (sha256 {digest[:12]}…, expected "
            f"{GPT2_VOCAB_SHA256[:12]}…); restore it with `git checkout data/`"
        )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(GPT2_VOCAB_FILE), expected_hash=GPT2_VOCAB_SHA256),
        special_tokens={EOT: 50256},
        explicit_n_vocab=50257,
    )


def tokenizer_from_meta(meta: dict) -> Tokenizer:
    """Rebuild the tokenizer a dataset (or checkpoint) was made with."""
    if meta["tokenizer"] == "char":
        return CharTokenizer(meta["chars"])
    if meta["tokenizer"] == "gpt2":
        return GPT2Tokenizer()
    raise DataError(f"unknown tokenizer {meta['tokenizer']!r}; choose one of char, gpt2")


# ---------------------------------------------------------------------------
# The dataset: windows of block_size tokens and their shifted targets
# ---------------------------------------------------------------------------


class BlockDataset(Dataset):
    """Every window of `block_size` tokens that starts at a multiple of `stride`.

    Item i is the window that starts at token s = i * stride: x, the block_size tokens
    the model reads, and y, the token that comes next after each of them. Each item
    therefore holds block_size predictions, one per prefix of x. A window needs
    block_size + 1 tokens, so with N tokens there are
    (N - block_size - 1) // stride + 1 windows. stride = block_size walks the corpus
    once per epoch without overlap; stride = 1 gives every possible window.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, stride: int | None = None) -> None:
        stride = stride or block_size
        if block_size < 1 or stride < 1:
            raise DataError(f"block_size and stride must be positive, got {block_size} and {stride}")
        if len(tokens) < block_size + 1:
            raise DataError(
                f"{len(tokens)} tokens are fewer than one block of {block_size} + 1; "
                "use more text or a smaller --max_seq_len"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.stride = stride

    def __len__(self) -> int:
        return (len(self.tokens) - self.block_size - 1) // self.stride + 1

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= idx < len(self):
            raise IndexError(f"window {idx} out of range for {len(self)} windows")
        s = idx * self.stride
        T = self.block_size
        # TODO 1: the (x, y) pair of window idx
        #   Returns (x, y), two int64 tensors of shape (T,): x is the window of T tokens that
        #   starts at token s of the corpus, and at every position y holds the token that
        #   follows x's token there. (The file holds uint16, possibly memory-mapped;
        #   embeddings and the loss want int64.) Stuck? python data_exercise.py --hint 1
        x = torch.from_numpy(self.tokens[s : s + T].astype(np.int64))
        y = torch.from_numpy(self.tokens[s + 1 : s + T + 1].astype(np.int64))
        return x, y
        # END TODO 1


# ---------------------------------------------------------------------------
# MiniMind's alternative: one padded document per item
# ---------------------------------------------------------------------------


class PretrainDataset(Dataset):
    """MiniMind's pretraining dataset: item i is document i of a .jsonl file.

    The document becomes BOS + tokens + EOS, cut to max_seq_len + 1 tokens (a long
    document loses its end, EOS included: it did not end there). x is that sequence
    without its last token, y without its first, both right-padded to max_seq_len.
    The targets at padded positions are IGNORE_INDEX (-100), so the loss skips them:
    padding costs compute but teaches nothing. GPT-2 has a single special token,
    <|endoftext|>, which serves as BOS, EOS and padding here; the -100 labels, not
    the token values, say what is padding. Compare BlockDataset, which packs
    documents back to back and wastes nothing.

    Only the byte offset of each line is kept in memory; a document is read and
    tokenized when it is asked for. `documents` selects which ones (a split).
    """

    def __init__(
        self, path: Path, tokenizer: Tokenizer, max_seq_len: int, documents: range | None = None
    ) -> None:
        check_data_path(path)
        offsets, position = [], 0
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    offsets.append(position)
                position += len(line)
        self.path, self.tokenizer, self.max_seq_len = path, tokenizer, max_seq_len
        self.offsets = [offsets[i] for i in (documents or range(len(offsets)))]

    def __len__(self) -> int:
        return len(self.offsets)

    def text(self, idx: int) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offsets[idx])
            return json.loads(f.readline())["text"]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer.encode(self.text(idx))
        T = self.max_seq_len
        bos = eos = pad = self.tokenizer.eot_id
        # TODO 7: BOS + the document + EOS, cut, shifted by one, right-padded
        #   Returns (x, y), two int64 tensors of shape (T,). The sequence is bos, the ids and
        #   eos, cut to its first T + 1 tokens; x is it without its last token, y without its
        #   first. Past the sequence is padding: `pad` in x and IGNORE_INDEX (-100) in y, so
        #   the loss skips it. Stuck? python data_exercise.py --hint 7
        tokens = ([bos] + ids + [eos])[: T + 1]
        n = len(tokens) - 1  # real (x, y) pairs; the rest is padding
        x = torch.full((T,), pad, dtype=torch.long)
        y = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
        x[:n] = torch.tensor(tokens[:-1])
        y[:n] = torch.tensor(tokens[1:])
        return x, y
        # END TODO 7


if __name__ == "__main__":
    # `python data_exercise.py` grades the TODOs of this file; `--hint 1` gives a hint.
    from course.grading import data_main

    sys.exit(data_main(sys.argv[1:], Path(__file__)))
