"""What pays off at this scale? Recipe changes and budget knobs, at equal wall time.

    python tools/ablation.py                        # every variant, 2 seeds, 120 s each
    python tools/ablation.py --budget 60 --only baseline adamw rope
    python tools/ablation.py --cumulative rope relu2     # baseline, +rope, +rope+relu2
    python tools/ablation.py --parallel 2           # two runs at a time, one core each

Each variant is the main job (`python train_solution.py`, the cpu preset) with a few
options changed. Every run gets the same wall-clock budget: a short calibration run
measures the variant's time per step and its fixed costs (start-up, data, compilation),
and the real run trains for as many steps as fit in what is left, with its full
warmup and cosine schedule. Each model is then scored on the whole validation split
(every non-overlapping window), in bits per byte, averaged over the seeds.

Writes out/ablation/results.json (one record per run) and out/ablation/ablation.png,
and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from course.corpus import load_tokens, read_meta  # noqa: E402
from course.logbook import bits_per_byte  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

# Options added to the main job's, per variant: first the recipe changes, then the knobs
# of the budget itself (the cpu preset: 4 layers × 128 wide, context 64, batch 32, LR 2e-3,
# Muon at 0.02). The baseline is today's recipe: GPT-2's block trained with Muon, in
# bfloat16 where the CPU has bfloat16 instructions (AMX or AVX512_BF16); "gpt-2 recipe"
# is the 2019 one (AdamW, float32).
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "gpt-2 recipe": ["--optimizer", "adamw", "--dtype", "float32"],
    "adamw": ["--optimizer", "adamw"],
    "float32": ["--dtype", "float32"],
    "rope": ["--position", "rope"],
    "rms": ["--norm", "rms"],
    "relu2": ["--mlp", "relu2"],
    "swiglu": ["--mlp", "swiglu"],
    "qk_norm": ["--qk_norm", "1"],
    "zero_init": ["--zero_init", "1"],
    "untied": ["--tie_weights", "0"],
    "compile": ["--use_compile", "1"],
    "width 192": ["--hidden_size", "192", "--num_attention_heads", "6"],
    "depth 6": ["--num_hidden_layers", "6"],
    "context 128": ["--max_seq_len", "128", "--batch_size", "16"],
    "batch 64": ["--batch_size", "64"],
    "lr 4e-3": ["--learning_rate", "4e-3"],
    "lr 1e-3": ["--learning_rate", "1e-3"],
    "muon lr 0.04": ["--muon_lr", "0.04"],
    "muon lr 0.01": ["--muon_lr", "0.01"],
    "no warmup": ["--warmup_steps", "0%"],
    "warmup 25%": ["--warmup_steps", "25%"],
}
CALIBRATION_STEPS = 60
SCORE_WINDOW = 64  # characters per scored window, whatever the variant's context


def run_training(options: list[str], save_dir: Path, threads: int) -> float:
    """train_solution.py with these options in a fresh process; returns its wall time.
    (--overwrite 1: an ablation that is run again measures again, in its own folders.)"""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "train_solution.py", "--preset", "cpu", "--device", "cpu", "--sample_tokens",
               "1", "--eval_iters", "1", "--save_dir", str(save_dir), "--overwrite", "1",
               *options]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(options)} failed:\n{done.stderr[-2000:]}")
    return wall


def tokens_per_second(save_dir: Path) -> float:
    """The throughput of the last logged window (warm: after compilation and the first steps)."""
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r][-1]


def with_warmup(options: list[str], steps: int | None) -> list[str]:
    """A warmup given as a share of the steps ("25%"): that many steps once the number of
    steps is known; left out for the calibration run (it does not change a step's time)."""
    if "--warmup_steps" not in options or not options[options.index("--warmup_steps") + 1].endswith("%"):
        return options
    i = options.index("--warmup_steps")
    if steps is None:
        return options[:i] + options[i + 2 :]
    share = float(options[i + 1].removesuffix("%")) / 100
    return [*options[: i + 1], str(int(steps * share)), *options[i + 2 :]]


def steps_for_budget(options: list[str], work: Path, budget: float, threads: int) -> tuple[int, float]:
    """(steps that fit in the budget, seconds per step), from a short calibration run."""
    n = CALIBRATION_STEPS
    calibration = work / "calibration"
    schedule = ["--max_steps", str(n), "--eval_interval", str(n), "--save_interval", str(n), "--log_interval",
                str(n // 3)]  # fmt: skip
    wall = run_training([*with_warmup(options, None), *schedule], calibration, threads)
    tokens_per_step = option_value(options, "--batch_size", 32) * option_value(options, "--max_seq_len", 64)
    seconds_per_step = tokens_per_step / tokens_per_second(calibration)
    fixed = wall - n * seconds_per_step  # start-up, data, compilation, evaluation
    return max(n, int((budget - fixed) / seconds_per_step)), seconds_per_step


def option_value(options: list[str], name: str, default: int) -> int:
    return int(options[options.index(name) + 1]) if name in options else default


def score(save_dir: Path, prepared: Path) -> float:
    """Mean loss (nats per token) of a run's final weights over the whole validation split."""
    weights = torch.load(save_dir / "model.pt", weights_only=True)
    model = GPT(GPTConfig(**weights["model_config"]))
    model.load_state_dict(weights["model"])
    return score_model(model, prepared)


@torch.no_grad()
def score_model(model: GPT, prepared: Path) -> float:
    """Mean loss (nats per token) over every non-overlapping window of the validation split."""
    model.eval()
    tokens = torch.from_numpy(load_tokens(prepared, "val")[:].astype("int64"))
    n = (len(tokens) - 1) // SCORE_WINDOW
    x = tokens[: n * SCORE_WINDOW].view(n, SCORE_WINDOW)
    y = tokens[1 : n * SCORE_WINDOW + 1].view(n, SCORE_WINDOW)
    total = 0.0
    for i in range(0, n, 256):
        logits = model(x[i : i + 256]).logits
        total += F.cross_entropy(logits.flatten(0, 1), y[i : i + 256].flatten(), reduction="sum").item()
    return total / (n * SCORE_WINDOW)


def run_variant(name: str, options: list[str], seed: int, args: argparse.Namespace) -> dict:
    """Calibrate, train and score one variant with one seed; a run already done with the
    same options and budget is read back, so an interrupted ablation continues."""
    work = args.out / name.replace(" ", "_") / f"seed{seed}"
    options = [*options, "--seed", str(seed)]
    done = work / "result.json"
    if done.is_file():
        result = json.loads(done.read_text())
        if result["options"] == options and result["budget_s"] == args.budget:
            return result
    steps, seconds_per_step = steps_for_budget(options, work, args.budget, args.threads)
    run = work / "run"
    schedule = ["--max_steps", str(steps), "--eval_interval", str(steps), "--save_interval", str(steps)]
    wall = run_training([*with_warmup(options, steps), *schedule, "--log_interval", "50"], run, args.threads)
    loss = score(run, args.prepared)
    meta = read_meta(args.prepared)
    bpb = bits_per_byte(loss, meta["val_tokens"], meta["val_bytes"])
    result = {"variant": name, "options": options, "seed": seed, "budget_s": args.budget, "steps": steps,
              "wall_s": round(wall, 1), "ms_per_step": round(1000 * seconds_per_step, 2),
              "val_loss": round(loss, 4), "val_bpb": round(bpb, 4)}  # fmt: skip
    done.write_text(json.dumps(result))
    return result


def summarise(results: list[dict]) -> list[dict]:
    """One row per variant: mean and spread over seeds, and the gain over the baseline."""
    rows = []
    for name in dict.fromkeys(r["variant"] for r in results):
        runs = [r for r in results if r["variant"] == name]
        bpb = [r["val_bpb"] for r in runs]
        mean = {key: statistics.mean(r[key] for r in runs) for key in ("steps", "ms_per_step", "wall_s")}
        rows.append({"variant": name, "seeds": len(runs), **mean, "val_bpb": statistics.mean(bpb),
                     "spread": (max(bpb) - min(bpb)) / 2})  # fmt: skip
    base = next((row["val_bpb"] for row in rows if row["variant"] == "baseline"), None)
    for row in rows:
        row["gain"] = None if base is None else base - row["val_bpb"]
    return rows


def print_table(rows: list[dict]) -> None:
    print("| variant | steps | ms/step | wall s | val bits/byte | ± | vs baseline |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        gain = "" if r["gain"] is None or r["variant"] == "baseline" else f"{-r['gain']:+.3f}"
        print(f"| {r['variant']} | {r['steps']:.0f} | {r['ms_per_step']:.1f} | {r['wall_s']:.0f} | "
              f"{r['val_bpb']:.3f} | {r['spread']:.3f} | {gain} |")  # fmt: skip


def plot(rows: list[dict], results: list[dict], path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.2))
    names = [r["variant"] for r in rows]
    ax.barh(names, [r["val_bpb"] for r in rows], color="tab:blue", alpha=0.6)
    for i, name in enumerate(names):
        seeds = [r["val_bpb"] for r in results if r["variant"] == name]
        ax.plot(seeds, [i] * len(seeds), "k.", markersize=6)
    low = min(r["val_bpb"] for r in results)
    high = max(r["val_bpb"] for r in results)
    ax.set_xlim(low - 0.1 * (high - low) - 0.01, high + 0.1 * (high - low) + 0.01)
    ax.invert_yaxis()
    ax.set_xlabel(f"validation bits per byte after {budget:.0f} s (lower is better; dots: seeds)")
    fig.tight_layout()
    fig.savefig(path)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=120.0, help="wall-clock seconds per run")
    p.add_argument("--seeds", type=int, default=2, help="seeds per variant")
    p.add_argument("--only", nargs="+", choices=VARIANTS, metavar="VARIANT", help="these variants only")
    p.add_argument("--cumulative", nargs="+", choices=VARIANTS, metavar="VARIANT",
                   help="baseline, then each variant added on top of the previous ones")  # fmt: skip
    p.add_argument(
        "--parallel", type=int, default=1, help="runs at a time (each gets cores / parallel threads)"
    )
    p.add_argument("--out", type=Path, default=ROOT / "out" / "ablation")
    args = p.parse_args()
    args.threads = max(1, (os.cpu_count() or 1) // args.parallel)
    args.prepared = ROOT / "data" / "shakespeare_char"
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    if args.cumulative:
        steps, options = [("baseline", [])], []
        for name in args.cumulative:
            options = [*options, *VARIANTS[name]]
            steps.append((" + ".join(["baseline", *args.cumulative[: len(steps)]]), options))
        return steps
    return [(name, VARIANTS[name]) for name in (args.only or VARIANTS)]


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if read_meta(args.prepared) is None:  # the main job prepares the corpus on its first run
        run_training(["--max_steps", "1", "--eval_interval", "1"], args.out / "prepare", args.threads)
    jobs = [(name, options, seed) for name, options in plan(args) for seed in range(1, args.seeds + 1)]
    minutes = math.ceil(len(jobs) / args.parallel) * (args.budget + 30) / 60
    each = f"{args.parallel} at a time, {args.threads} thread(s) each"
    print(f"{len(jobs)} runs of {args.budget:.0f} s, {each}: about {minutes:.0f} minutes")
    results = []
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        for result in pool.map(lambda job: run_variant(*job, args), jobs):
            results.append(result)
            print(f"  {result['variant']} (seed {result['seed']}): {result['steps']} steps in "
                  f"{result['wall_s']:.0f} s, {result['val_bpb']:.3f} bits/byte", flush=True)  # fmt: skip
    rows = summarise(results)
    summary = {"budget_s": args.budget, "runs": results, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    plot(rows, results, args.out / "ablation.png", args.budget)
    print_table(rows)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'ablation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
