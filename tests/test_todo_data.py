"""Graded: TODO 1 of data_exercise.py (BlockDataset.__getitem__).

Run `python data_exercise.py` for the scoreboard, or `pytest --impl exercise --todo 1`.
"""

import numpy as np
import pytest
import torch


def check_window(dataset, i, tokens, stride, block_size):
    x, y = dataset[i]
    s = i * stride
    assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), (
        "x and y must be torch tensors: the numpy slices must become tensors"
    )
    assert x.dtype == torch.int64 and y.dtype == torch.int64, (
        f"x and y must be int64 (got {x.dtype} and {y.dtype}): the token file holds uint16, "
        "and the embedding and the loss take int64"
    )
    assert x.shape == (block_size,) and y.shape == (block_size,), (
        f"x and y must each hold block_size={block_size} tokens, "
        f"got shapes {tuple(x.shape)} and {tuple(y.shape)}"
    )
    assert x.tolist() == tokens[s : s + block_size].tolist(), (
        f"window {i}: x must be the block_size={block_size} tokens that start at position idx × stride = {s}"
    )
    assert y[:-1].tolist() == x[1:].tolist(), "y must be x shifted by one position: y[:-1] should equal x[1:]"
    assert y.tolist() == tokens[s + 1 : s + block_size + 1].tolist(), (
        f"window {i}: y must be the {block_size} tokens that start one position after x; "
        "its last token is the one after x's last"
    )


@pytest.mark.todo("1")
@pytest.mark.parametrize("n, block_size, stride", [(100, 8, 8), (100, 8, 3), (60, 7, 1), (9, 8, 8)])
def test_todo_1_windows_match_slicing(learner, n, block_size, stride):
    # Token values differ from their positions, so an index mix-up cannot pass by luck.
    tokens = np.arange(1000, 1000 + n, dtype=np.uint16)
    dataset = learner.data.BlockDataset(tokens, block_size, stride)
    for i in range(len(dataset)):
        check_window(dataset, i, tokens, stride, block_size)


@pytest.mark.todo("1")
def test_todo_1_reads_a_memory_mapped_token_file(learner, tmp_path):
    path = tmp_path / "train.bin"
    tokens = np.random.default_rng(0).integers(0, 50257, 5000).astype(np.uint16)
    tokens.tofile(path)
    dataset = learner.data.BlockDataset(np.memmap(path, dtype=np.uint16, mode="r"), 64)
    for i in (0, 1, len(dataset) - 1):
        check_window(dataset, i, tokens, 64, 64)


DOCUMENTS = ["今天天气真好", "ab", "", "a document longer than one sequence"]


@pytest.mark.todo("7")
@pytest.mark.parametrize("max_seq_len", [8, 40])
def test_todo_7_documents_are_bos_tokens_eos_padded_with_ignored_labels(learner, tmp_path, max_seq_len):
    import json

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in DOCUMENTS))
    tokenizer = learner.data.CharTokenizer.from_texts(DOCUMENTS)
    dataset = learner.data.PretrainDataset(path, tokenizer, max_seq_len)
    eot = tokenizer.eot_id
    for i, text in enumerate(DOCUMENTS):
        x, y = dataset[i]
        # The reference, written out: BOS + tokens + EOS, cut to T + 1, shifted, padded.
        tokens = ([eot] + tokenizer.encode(text) + [eot])[: max_seq_len + 1]
        n = len(tokens) - 1
        assert x.dtype == torch.int64 and y.dtype == torch.int64, (
            f"x and y must be int64 (torch.long) tensors, got {x.dtype} and {y.dtype}"
        )
        assert x.shape == (max_seq_len,) and y.shape == (max_seq_len,), (
            f"pad every document to max_seq_len={max_seq_len}; got shapes {tuple(x.shape)}, {tuple(y.shape)}"
        )
        assert x[0] == eot, (
            f"document {i}: x must start with BOS (here the end-of-text token, id {eot}), got id {int(x[0])}"
        )
        if x[:n].tolist() != tokens[:-1]:
            cut_to_t = ([eot] + tokenizer.encode(text) + [eot])[:max_seq_len]
            if len(cut_to_t) == max_seq_len and x[: max_seq_len - 1].tolist() == cut_to_t[:-1]:
                pytest.fail(
                    f"document {i} ({len(text)} characters, longer than max_seq_len={max_seq_len}): x holds "
                    f"{max_seq_len - 1} real tokens and then padding; cut the sequence to max_seq_len + 1 "
                    f"tokens, not max_seq_len: T + 1 tokens make the T (x, y) pairs of a full sequence"
                )
            pytest.fail(
                f"document {i} ({text!r}, max_seq_len={max_seq_len}): x should begin with {tokens[:-1]} "
                f"(BOS, the document's tokens, EOS, cut to max_seq_len + 1 tokens, without the last), "
                f"got {x[:n].tolist()}"
            )
        assert y[:n].tolist() == tokens[1:], (
            f"document {i}: y must be x shifted by one; for a document that fits, its last target is EOS"
        )
        assert (x[n:] == eot).all(), (
            f"document {i}: after its {n} real tokens, x must be padded with `pad` (id {eot}), "
            f"got {x[n:].tolist()}"
        )
        assert (y[n:] == -100).all(), (
            "the targets at padded positions must be -100 (IGNORE_INDEX), so the loss skips them"
        )
