"""The main job against nanoGPT's CPU recipe, side by side on this machine, per CPU class.

    python tools/benchmark_main_job.py                    # this CPU's class, 2 seeds: about 8 minutes
    python tools/benchmark_main_job.py --cpu_class all    # also the classes below this CPU's (oneDNN capped)
    python tools/benchmark_main_job.py --seeds 1 --cpu_class AVX2

nanoGPT cannot be installed from the package index, so its README's CPU recipe runs as a
configuration of this project: 4 layers, 4 heads, 128 wide, context 64, batch 12, 2,000
steps on the whole training split, AdamW (betas 0.9/0.99, weight decay 0.1), LR 1e-3 with
100 warmup steps and a cosine to 1e-4, clip 1.0, float32, no dropout, an evaluation every
250 steps (nanoGPT scores 20 batches of each split: 40 batches here, and no text sample,
as nanoGPT prints none). "main job" is `python train_solution.py` with no options.

Each runs in a fresh process with its seed, alternating, so both see the same load; the
wall time is the whole command's (start-up, data, evaluation, samples and checkpoints
included), and the final weights are scored on the whole validation split (every
non-overlapping 64-character window), in bits per byte.

CPU classes: the number type `--dtype auto` picks, and the speed of bfloat16, depend on
the CPU's bfloat16 instructions (course/devices.py): AMX (Intel Xeon from Sapphire Rapids
on), AVX512_BF16 (AMD Zen 4 and newer; Intel Cooper Lake), or none (AVX2). ONEDNN_MAX_CPU_ISA
caps the instructions PyTorch's matmuls use (and ATEN_CPU_CAPABILITY=avx2 its other
kernels), so a CPU of a higher class stands in for the lower ones. A stand-in is its own
chip with fewer instructions: an Intel core capped at AVX512_BF16 is an Intel Cooper Lake
(bfloat16 dot products no faster than float32 FMAs, so `auto` keeps float32 there; run
--float32 to see it), not an AMD Zen 4/5, whose bfloat16 dot products run well ahead of
float32 (tools/results/README.md has the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from ablation import score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from course.corpus import read_meta  # noqa: E402
from course.logbook import bits_per_byte  # noqa: E402

NANOGPT = ["--optimizer", "adamw", "--dtype", "float32", "--batch_size", "12", "--max_steps", "2000",
           "--learning_rate", "1e-3", "--min_lr", "1e-4", "--warmup_steps", "100", "--beta2", "0.99",
           "--weight_decay", "0.1", "--grad_clip", "1.0", "--dropout", "0", "--max_train_tokens", "0",
           "--eval_interval", "250", "--eval_iters", "40", "--sample_tokens", "0"]  # fmt: skip
JOBS = {"nanoGPT's CPU recipe": NANOGPT, "main job: python train_solution.py": []}
FLOAT32_JOB = {"main job in float32: --dtype float32": ["--dtype", "float32"]}  # with --float32
FOLDERS = {"nanoGPT's CPU recipe": "nanogpt", "main job: python train_solution.py": "main_job",
           "main job in float32: --dtype float32": "main_job_float32"}  # fmt: skip
TARGET_BPB, TARGET_WALL = 2.20, 1.0

# Each class as an environment that caps PyTorch's CPU kernels at it; ordered from the top.
CPU_CLASSES = {
    "AMX": {},
    "AVX512_BF16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}


def this_cpu() -> tuple[str, str]:
    """(the CPU's model name, its class: AMX, AVX512_BF16 or AVX2, from its feature flags)."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        name = names[0] if names else name
    if torch.cpu._is_amx_tile_supported():
        return name, "AMX"
    return name, "AVX512_BF16" if torch.cpu._is_avx512_bf16_supported() else "AVX2"


def classes_below(own_class: str) -> list[str]:
    """The CPU classes a CPU of own_class can stand in for: its own and those below it
    (a cap on PyTorch's CPU kernels can only lower the class)."""
    return list(CPU_CLASSES)[list(CPU_CLASSES).index(own_class) :]


def main_job(options: list[str], seed: int, save_dir: Path, env: dict[str, str]) -> tuple[float, str]:
    """Run the main job with these options; returns its wall time in seconds and the
    number type it trained in, as its setup line names it ("bfloat16: AMX")."""
    command = [sys.executable, "train_solution.py", "--seed", str(seed), "--save_dir", str(save_dir)]
    command += ["--overwrite", "1"]  # a benchmark that is run again measures again
    command += options
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[1:])} failed:\n{done.stderr[-2000:]}")
    wall = time.perf_counter() - start
    setup = next(line for line in done.stdout.splitlines() if line.startswith("device "))
    return wall, setup.split("(", 1)[1].split(")", 1)[0]


def median_speed(save_dir: Path) -> float:
    """The run's median training tokens/s over its log lines (metrics.jsonl)."""
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["tokens_per_sec"] for r in records if "tokens_per_sec" in r)


def benchmark_class(cpu_class: str, seeds: int, out: Path, jobs: dict[str, list[str]]) -> None:
    env = CPU_CLASSES[cpu_class]
    prepared = ROOT / "data" / "shakespeare_char"
    capped = ", ".join(f"{k}={v}" for k, v in env.items()) or "no cap"
    print(f"\n## {cpu_class} ({capped})\n")
    print("| job | seed | number type | wall s | training tokens/s | val bits/byte |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in jobs}
    for seed in range(1337, 1337 + seeds):
        for name, options in jobs.items():  # the jobs alternate: both see the same load
            save_dir = out / cpu_class / f"{FOLDERS[name]}_seed{seed}"
            wall, dtype = main_job(options, seed, save_dir, env)
            meta = read_meta(prepared)
            bpb = bits_per_byte(score(save_dir, prepared), meta["val_tokens"], meta["val_bytes"])
            results[name].append((wall, bpb))
            speed = median_speed(save_dir)
            print(f"| {name} | {seed} | {dtype} | {wall:.1f} | {speed:,.0f} | {bpb:.3f} |", flush=True)
    means = {
        name: (statistics.mean(w for w, _ in runs), statistics.mean(b for _, b in runs))
        for name, runs in results.items()
    }
    (nano_wall, nano_bpb), (main_wall, main_bpb) = list(means.values())[:2]
    for name, (wall, bpb) in list(means.items())[2:]:
        print(f"{name}: {wall:.1f} s ({wall / nano_wall:.2f}× nanoGPT's), {bpb:.3f} bits/byte")
    ratio = main_wall / nano_wall
    print(f"\nmean over {seeds} seed(s): nanoGPT's recipe {nano_wall:.1f} s, {nano_bpb:.3f} bits/byte; "
          f"main job {main_wall:.1f} s ({ratio:.2f}×), {main_bpb:.3f} bits/byte")  # fmt: skip
    for target, measured, met in [
        (f"main job's wall ≤ {TARGET_WALL}× nanoGPT's", f"{ratio:.2f}×", ratio <= TARGET_WALL),
        (f"main job's val ≤ {TARGET_BPB} bits/byte", f"{main_bpb:.3f}", main_bpb <= TARGET_BPB),
    ]:
        print(f"  {target:34s} {measured:>7s}  {'met' if met else 'NOT met'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--cpu_class", choices=[*CPU_CLASSES, "all"], help="default: this CPU's class")
    p.add_argument("--float32", action="store_true", help="also the main job in float32")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "benchmark_main_job")
    args = p.parse_args()
    name, own_class = this_cpu()
    print(f"CPU: {name}, {torch.get_num_threads()} threads, class {own_class}")
    below = classes_below(own_class)
    wanted = below if args.cpu_class == "all" else [args.cpu_class or own_class]
    if not set(wanted) <= set(below):
        raise SystemExit(f"error: this {own_class} CPU can stand in for {', '.join(below)} only")
    for cpu_class in wanted:
        jobs = {**JOBS, **(FLOAT32_JOB if args.float32 else {})}
        benchmark_class(cpu_class, args.seeds, args.out, jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
