"""What a data file given with --data_path must be, checked before anything reads it: its own
module, since the data chapter and the corpus preparation (which imports the chapter) check it."""

from __future__ import annotations

from pathlib import Path

from course.errors import DataError


def corpus_format(path: Path) -> str:
    """'txt' or 'jsonl', from the file's extension in any case (notes.TXT is text)."""
    return path.suffix.lower().removeprefix(".")


def check_data_path(path: Path) -> None:
    """A readable, non-empty .txt or .jsonl file, else one line saying what is wrong."""
    if path.is_dir():
        raise DataError(f"--data_path {path} is a folder; give a .txt or .jsonl file")
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if corpus_format(path) not in ("txt", "jsonl"):
        raise DataError(f"data file {path} must be a .txt or .jsonl file")
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty")
