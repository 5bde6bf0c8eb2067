"""Chinchilla's experiment in miniature: for each compute budget, which model size is best?

    python tools/scaling.py                 # the committed results (about 12 minutes on 2 cores)
    python tools/scaling.py --quick         # a miniature: 2 budgets, 3 sizes, well under a minute

For every budget C (FLOPs), models of several widths (3 layers each) are trained for
D = C / 6N tokens, so a small model sees many tokens and a large one few, with the main
job's recipe (Muon, warmup + cosine, batch 32 × 64 characters, the whole training split
of the character corpus), and scored on the whole validation split in bits per byte.
Each budget's curve of loss against log N is fitted with a parabola: its vertex is the
compute-optimal size N_opt(C). A line through log N_opt against log C gives the exponent
a of N_opt ∝ C^a; Hoffmann et al. (2022, "Chinchilla") measured a ≈ 0.5: double the
compute, and the best model is √2 times larger (and trains on √2 times more tokens).

Only sizes whose step count is reasonable for the budget are trained (at least
--min_steps, at most --max_steps): a tiny model at a large budget would take hours
and tells nothing new. Writes the results (and the fit) as JSON and a plot.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ablation import score_model  # noqa: E402

import train_solution as train  # noqa: E402
from course.batches import BatchStream  # noqa: E402
from course.corpus import load_tokens, prepare, read_meta  # noqa: E402
from course.devices import resolve_dtype  # noqa: E402
from course.logbook import bits_per_byte  # noqa: E402
from data_solution import BlockDataset  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from optim import configure_optimizers  # noqa: E402

BLOCK, BATCH, LAYERS = 64, 32, 3
TOKENS_PER_STEP = BLOCK * BATCH
FULL = dict(budgets=[2.5e11, 1e12, 4e12], widths=[8, 12, 16, 24, 32, 48, 64, 96, 128])
QUICK = dict(budgets=[2e10, 8e10], widths=[8, 16, 32])
CHINCHILLA_EXPONENT = 0.5  # Hoffmann et al. 2022: N_opt ∝ C^0.49–0.50 in their three approaches


def make_model(width: int, vocab_size: int) -> GPT:
    """A 3-layer GPT of this width, with 16-wide attention heads (one head below 32)."""
    heads = max(1, width // 16)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=BLOCK, n_layer=LAYERS, n_head=heads, n_embd=width))


def steps_for(budget: float, n_params: int) -> int:
    """Optimizer steps of TOKENS_PER_STEP tokens that spend budget = 6 N D FLOPs."""
    return round(budget / (6 * n_params * TOKENS_PER_STEP))


def train_one(width: int, steps: int, prepared: Path, seed: int = 0) -> GPT:
    """The main job's recipe for `steps` steps: Muon (AdamW for embeddings and gains),
    10% warmup then cosine to a tenth, bfloat16 where the CPU has bfloat16 instructions."""
    meta = read_meta(prepared)
    torch.manual_seed(seed)
    model = make_model(width, meta["vocab_size"])
    device = torch.device("cpu")
    dtype = resolve_dtype("auto", device)
    optimizer = configure_optimizers(
        model, 0.1, 2e-3, (0.9, 0.95), "cpu", muon_lr_scale=10.0, amp_dtype=dtype
    )
    scaler = train.make_grad_scaler(device, dtype)
    amp = train.autocast_context(device, dtype)
    # Every window (stride 1) of the whole training split, so the longest runs (about 2.7
    # passes over its 4.5M characters) rarely see the same window twice.
    stream = BatchStream(BlockDataset(load_tokens(prepared, "train"), BLOCK, stride=1), BATCH, seed)
    warmup = steps // 10
    for step in range(steps):
        lr = train.get_lr(step, warmup, steps, 2e-3, 2e-4)
        train.train_step(model, optimizer, scaler, [next(stream)], lr, 1.0, amp)
    return model


def fit_optimum(points: list[tuple[int, float]]) -> float | None:
    """N at the vertex of a parabola through (log N, bits per byte), or None when the
    curve has no minimum inside the sizes tried (the best size is at an edge)."""
    if len(points) < 3:
        return None
    log_n = np.log10([n for n, _ in points])
    bpb = np.array([b for _, b in points])
    best = int(bpb.argmin())
    if best in (0, len(points) - 1):
        return None
    near = slice(max(0, best - 2), best + 3)  # the minimum and its neighbours
    a, b, _ = np.polyfit(log_n[near], bpb[near], 2)
    return float(10 ** (-b / (2 * a))) if a > 0 else None


def fit_exponent(optima: dict[float, float]) -> float | None:
    """The slope a of log N_opt against log C: N_opt ∝ C^a."""
    if len(optima) < 2:
        return None
    budgets = sorted(optima)
    slope, _ = np.polyfit(np.log10(budgets), np.log10([optima[c] for c in budgets]), 1)
    return float(slope)


def run(budgets: list[float], widths: list[int], min_steps: int, max_steps: int, prepared: Path) -> dict:
    meta = read_meta(prepared)
    sizes = {w: make_model(w, meta["vocab_size"]).num_params() for w in widths}
    curves: dict[float, list[dict]] = {}
    for budget in budgets:
        curves[budget] = []
        for width in widths:
            steps = steps_for(budget, sizes[width])
            if not min_steps <= steps <= max_steps:
                continue
            start = time.perf_counter()
            model = train_one(width, steps, prepared)
            loss = score_model(model, prepared)
            bpb = bits_per_byte(loss, meta["val_tokens"], meta["val_bytes"])
            seconds = round(time.perf_counter() - start, 1)
            tokens = steps * TOKENS_PER_STEP
            point = {"width": width, "n_params": sizes[width], "steps": steps, "tokens": tokens,
                     "val_bpb": round(bpb, 4), "seconds": seconds}  # fmt: skip
            curves[budget].append(point)
            print(f"C = {budget:.1e}: width {width:3d}, N = {sizes[width]:>8,}, {steps:>6,} steps "
                  f"(D/N = {tokens / sizes[width]:6.1f}): {bpb:.3f} bits/byte "
                  f"[{point['seconds']:.0f} s]", flush=True)  # fmt: skip
    optima = {}
    for budget, points in curves.items():
        n_opt = fit_optimum([(p["n_params"], p["val_bpb"]) for p in points])
        if n_opt is not None:
            optima[budget] = n_opt
    return {"budgets": budgets, "widths": widths, "layers": LAYERS, "tokens_per_step": TOKENS_PER_STEP,
            "curves": {str(c): points for c, points in curves.items()},
            "optimal_n": {str(c): round(n) for c, n in optima.items()},
            "exponent": fit_exponent(optima)}  # fmt: skip


def report(results: dict) -> None:
    for budget, n_opt in results["optimal_n"].items():
        c = float(budget)
        print(f"C = {c:.1e}: fitted optimum N ≈ {n_opt:,} parameters "
              f"(Chinchilla's 20 tokens per parameter would say {math.sqrt(c / 120):,.0f})")  # fmt: skip
    missing = [c for c in results["curves"] if c not in results["optimal_n"]]
    if missing:
        budgets = ", ".join(f"{float(c):.1e}" for c in missing)
        print(f"no minimum inside the sizes tried for C = {budgets}: try more widths")
    if results["exponent"] is not None:
        print(f"N_opt ∝ C^{results['exponent']:.2f} (Chinchilla: C^{CHINCHILLA_EXPONENT})")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_curves(results, plt.subplots(figsize=(7, 4))[1])
    plt.tight_layout()
    plt.savefig(path)


def plot_curves(results: dict, ax) -> None:
    """Loss against N per budget, with each fitted optimum marked (also used by the notebook)."""
    for budget, points in results["curves"].items():
        line = ax.plot([p["n_params"] for p in points], [p["val_bpb"] for p in points], "o-",
                       label=f"C = {float(budget):.1e} FLOPs")[0]  # fmt: skip
        if budget in results["optimal_n"]:
            ax.axvline(results["optimal_n"][budget], color=line.get_color(), linestyle=":", alpha=0.8)
    ax.set(xscale="log", xlabel="parameters N (log scale)", ylabel="validation bits per byte",
           title="Same compute for every size; dotted: fitted optimum")  # fmt: skip
    ax.legend()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a miniature: 2 small budgets, 3 sizes")
    p.add_argument("--min_steps", type=int, default=100, help="skip a size that would train fewer steps")
    p.add_argument("--max_steps", type=int, default=10000, help="skip a size that would train more steps")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "scaling")
    args = p.parse_args()
    prepared = ROOT / "data" / "shakespeare_char"
    if read_meta(prepared) is None:
        prepare("char", out_dir=prepared)
    config = QUICK if args.quick else FULL
    results = run(config["budgets"], config["widths"], args.min_steps, args.max_steps, prepared)
    report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "scaling.png")
    print(f"wrote {args.out / 'scaling.json'} and {args.out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
