"""How many validation tokens an evaluation needs: the in-run estimate against the whole split.

    python tools/eval_budget.py                        # out/model.pt, the main job's weights
    python tools/eval_budget.py --weights run/best.pt --budgets 65536 196608

Scores every window of the validation split once with a trained model, then prints,
for each budget, the loss on the windows that `--eval_tokens` of that size reads
(course.batches.validation_windows, the same windows as in the run), its distance
from the whole split, what one evaluation costs on this machine, and the typical
error of a random sample of as many windows (the root mean square over 200 draws):
an estimate that is close by luck shows as one whose random error is large.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course.batches import block_dataset, validation_windows  # noqa: E402
from course.config import EVAL_TOKENS  # noqa: E402
from course.corpus import prepared_dir  # noqa: E402
from data_solution import BlockDataset  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

# 10,240, 40,960 and 163,840: the windows of the course's earlier estimate, 20 batches of the
# batch size, at batch 8, 32 (the cpu preset's) and 128.
BUDGETS = [10_240, 40_960, 65_536, 131_072, 163_840, EVAL_TOKENS, 262_144, 327_680]


def window_losses(model: GPT, dataset, batch_size: int = 256) -> np.ndarray:
    """The mean loss of every window of the split (all windows hold the same number of targets)."""
    losses = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            x, y = torch.stack([x for x, _ in batch]), torch.stack([y for _, y in batch])
            per_target = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten(), reduction="none")
            losses.append(per_target.view(len(batch), -1).mean(dim=1))
    return torch.cat(losses).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "out" / "model.pt")
    parser.add_argument("--budgets", type=int, nargs="+", default=BUDGETS)
    args = parser.parse_args()
    saved = torch.load(args.weights, map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**saved["model_config"]))
    model.load_state_dict(saved["model"])
    model.eval()
    T = model.config.block_size  # the default corpus, prepared by the run with the weights' tokenizer
    val = block_dataset(BlockDataset, prepared_dir(None, saved["tokenizer"]["tokenizer"]), "val", T)
    start = time.perf_counter()
    losses = window_losses(model, val)
    seconds_per_token = (time.perf_counter() - start) / (len(val) * T)
    whole = losses.mean()
    print(f"{args.weights}: {len(val):,} windows of {T} tokens, whole split {whole:.4f} nats")
    print("| --eval_tokens | windows | share of the split | estimate | minus the whole split | "
          "random sample's rms error | seconds per evaluation |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    for budget in args.budgets:
        picks = validation_windows(len(val), T, budget)
        estimate = losses[picks].mean()
        draws = [losses[rng.choice(len(val), len(picks), replace=False)].mean() - whole for _ in range(200)]
        rms = float(np.sqrt(np.mean(np.square(draws))))
        seconds = seconds_per_token * len(picks) * T
        print(f"| {budget:,} | {len(picks):,} | {len(picks) / len(val):.0%} | {estimate:.4f} | "
              f"{estimate - whole:+.4f} | {rms:.4f} | {seconds:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
