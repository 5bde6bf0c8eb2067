"""The main job before and after the modern recipe, side by side on this machine.

    python tools/benchmark_main_job.py              # 2 seeds each, about 9 minutes on 2 cores
    python tools/benchmark_main_job.py --seeds 1

"Before" is the main job as it trained GPT-2's recipe (AdamW, float32, 1,800 steps);
"after" is `python train_solution.py` today. Each runs in a fresh process with its
seed; its wall time is the whole command's (start-up, data, evaluation and samples
included), and its final weights are scored on the whole validation split (every
non-overlapping 64-character window), in bits per byte. Then the training step
alone, at the same model and batch: median tokens per second of each recipe's step.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from ablation import score
from benchmark_throughput import step_times

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from course.corpus import read_meta  # noqa: E402
from course.devices import resolve_dtype  # noqa: E402
from course.logbook import bits_per_byte  # noqa: E402

BEFORE = ["--optimizer", "adamw", "--dtype", "float32", "--max_steps", "1800", "--eval_interval", "450"]
JOBS = {"before: GPT-2 recipe": BEFORE, "after: python train_solution.py": []}
TARGET_BPB, TARGET_WALL, TARGET_SPEEDUP = 2.25, 0.8, 1.2


def main_job(options: list[str], seed: int, save_dir: Path) -> float:
    """Run the main job with these options; returns its wall time in seconds."""
    command = [sys.executable, "train_solution.py", "--seed", str(seed), "--save_dir", str(save_dir)]
    command += ["--overwrite", "1"]  # a benchmark that is run again measures again
    command += options
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[1:])} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "out" / "benchmark_main_job")
    args = p.parse_args()
    prepared = ROOT / "data" / "shakespeare_char"
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in JOBS}
    print("| job | seed | wall s | val bits/byte |\n| --- | ---: | ---: | ---: |")
    for seed in range(1337, 1337 + args.seeds):
        for name, options in JOBS.items():  # before and after alternate: both see the same load
            save_dir = args.out / f"{name.split(':')[0]}_seed{seed}"
            wall = main_job(options, seed, save_dir)
            meta = read_meta(prepared)
            bpb = bits_per_byte(score(save_dir, prepared), meta["val_tokens"], meta["val_bytes"])
            results[name].append((wall, bpb))
            print(f"| {name} | {seed} | {wall:.0f} | {bpb:.3f} |", flush=True)
    means = [
        (statistics.mean(w for w, _ in runs), statistics.mean(b for _, b in runs))
        for runs in results.values()
    ]
    (before_wall, before_bpb), (after_wall, after_bpb) = means
    dtype = resolve_dtype("auto", torch.device("cpu"))
    threads = torch.get_num_threads()
    old_step = statistics.median(step_times(60, threads)[0])
    new_step = statistics.median(step_times(60, threads, optimizer="muon", dtype=dtype)[0])
    speedup = old_step / new_step
    tokens = 32 * 64
    print(f"\nmean over {args.seeds} seed(s): before {before_wall:.0f} s, {before_bpb:.3f} bits/byte; "
          f"after {after_wall:.0f} s, {after_bpb:.3f} bits/byte")  # fmt: skip
    print(f"training step, same model and batch: before (AdamW, float32) {tokens / old_step:,.0f} tokens/s, "
          f"after (Muon, {str(dtype).removeprefix('torch.')}) {tokens / new_step:,.0f} tokens/s")  # fmt: skip
    wall_ratio = after_wall / before_wall
    checks = [
        (f"val ≤ {TARGET_BPB} bits/byte", f"{after_bpb:.3f}", after_bpb <= TARGET_BPB),
        (f"wall time ≤ {TARGET_WALL}× before", f"{wall_ratio:.2f}×", wall_ratio <= TARGET_WALL),
        (f"step tokens/s ≥ {TARGET_SPEEDUP}× before", f"{speedup:.2f}×", speedup >= TARGET_SPEEDUP),
    ]
    for target, measured, met in checks:
        print(f"  {target:28s} {measured:>7s}  {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
