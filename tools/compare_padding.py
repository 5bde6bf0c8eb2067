"""Padding (MiniMind's one document per sequence) vs packing (BlockDataset) on the same data.

    python tools/compare_padding.py data.jsonl [--steps 300] [--max_seq_len 128]

Trains the same small model for the same number of steps both ways and prints the
share of each batch wasted on padding, real (non-padding) tokens per second, and the
validation loss of both models on the same held-out windows.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import data_solution as data  # noqa: E402
import train_solution as train  # noqa: E402
from course.batches import document_datasets, fixed_eval_batches  # noqa: E402
from course.corpus import load_tokens, prepared_dir, read_meta  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_path", type=Path, help="a MiniMind .jsonl file")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--max_seq_len", type=int, default=128)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    common = ["--data_path", str(args.data_path), "--data_dir", str(work / "prepared"), "--device", "cpu",
              "--max_seq_len", str(args.max_seq_len), "--batch_size", "16", "--max_steps", str(args.steps),
              "--eval_interval", str(args.steps), "--sample_tokens", "1", "--log_interval", "10"]  # fmt: skip
    results = {}
    for mode in ("blocks", "documents"):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = train.main([*common, "--dataset_mode", mode, "--save_dir", str(work / mode)])
        if code != 0:
            print(f"error: the {mode} run failed (exit {code})", file=sys.stderr)
            return 1
        records = [json.loads(line) for line in (work / mode / "metrics.jsonl").read_text().splitlines()]
        speed = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r]  # real targets per second
        results[mode] = {"real_tokens_per_sec": sorted(speed)[len(speed) // 2]}

    meta = read_meta(prepared_dir(args.data_path, "char", work / "prepared"))  # what both runs used
    tokenizer = data.tokenizer_from_meta(meta)
    train_docs, _ = document_datasets(data.PretrainDataset, args.data_path, tokenizer, args.max_seq_len)
    real = sum(int((train_docs[i][1] != -100).sum()) for i in range(len(train_docs)))
    padding = 1 - real / (len(train_docs) * args.max_seq_len)
    results["blocks"]["padding"], results["documents"]["padding"] = 0.0, padding

    # Both models on the same held-out windows: the blocks validation split.
    prepared = prepared_dir(args.data_path, "char", work / "prepared")
    val = data.BlockDataset(load_tokens(prepared, "val"), args.max_seq_len)
    batches = fixed_eval_batches(val, eval_tokens=16 * 10 * args.max_seq_len, batch_size=16)
    for mode, result in results.items():
        weights = torch.load(work / mode / "model.pt", weights_only=True)
        model = GPT(GPTConfig(**weights["model_config"]))
        model.load_state_dict(weights["model"])
        result["val_loss"] = train.evaluate(model, batches).loss

    print(f"{args.data_path.name}: {len(train_docs)} training documents, max_seq_len {args.max_seq_len}, "
          f"{args.steps} steps of 16 sequences")  # fmt: skip
    print(f"{'mode':10s} {'padding':>8s} {'tokens/s':>9s} {'real tokens/s':>14s} {'val loss':>9s}")
    for mode, r in results.items():
        print(f"{mode:10s} {r['padding']:8.1%} {r['real_tokens_per_sec'] / (1 - r['padding']):9,.0f} "
              f"{r['real_tokens_per_sec']:14,.0f} {r['val_loss']:9.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
