"""CPU throughput of the main job's training step: threads, fused AdamW, torch.compile,
Muon, bfloat16.

    python tools/benchmark_throughput.py            # the cpu preset's model and batch
    python tools/benchmark_throughput.py --steps 100

Each setting trains the same model on the same random batches in this process and
reports the median time per step after a few warm-up steps, as ratios measured in the
same run (the machine's load changes from run to run, not between neighbours).
bfloat16 pays only on CPUs with bfloat16 instructions (Intel AMX, AVX512_BF16).
torch.compile's first compilation is timed separately: within a short budget it
has to pay for itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train_solution as train  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from optim import configure_optimizers  # noqa: E402

BF16 = torch.bfloat16
CPU_PRESET = dict(vocab_size=85, block_size=64, n_layer=4, n_head=4, n_embd=128)


def step_times(steps: int, threads: int, optimizer: str = "adamw", fused: bool = False, compile: bool = False,
               dtype: torch.dtype = torch.float32) -> tuple[list[float], float]:  # fmt: skip
    """Seconds per training step (after 5 warm-up steps), and the first step's time."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CPU_PRESET))
    if optimizer == "muon":
        opt = configure_optimizers(model, 0.1, 2e-3, (0.9, 0.95), "cpu", muon_lr_scale=10.0, amp_dtype=dtype)
    else:
        groups = configure_optimizers(model, 0.1, 2e-3, (0.9, 0.95), "cpu").param_groups
        opt = torch.optim.AdamW(groups, lr=2e-3, betas=(0.9, 0.95), fused=fused)
    train_model = torch.compile(model) if compile else model
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    amp = train.autocast_context(torch.device("cpu"), dtype)
    batch = [(torch.randint(0, 85, (32, 64)), torch.randint(0, 85, (32, 64)))]
    times = []
    for _ in range(steps + 5):
        start = time.perf_counter()
        train.train_step(train_model, opt, scaler, batch, 2e-3, 1.0, amp)
        times.append(time.perf_counter() - start)
    return times[5:], times[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    cores = torch.get_num_threads()
    settings = {
        f"AdamW, float32, {cores} threads (GPT-2's)": dict(threads=cores),
        "AdamW, float32, 1 thread": dict(threads=1),
        f"AdamW fused, float32, {cores} threads": dict(threads=cores, fused=True),
        f"AdamW, torch.compile, {cores} threads": dict(threads=cores, compile=True),
        f"Muon + AdamW, float32, {cores} threads": dict(threads=cores, optimizer="muon"),
        f"AdamW, bfloat16, {cores} threads": dict(threads=cores, dtype=BF16),
        f"Muon + AdamW, bfloat16, {cores} threads": dict(threads=cores, optimizer="muon", dtype=BF16),
    }
    tokens = 32 * 64
    base = None
    print(f"{'setting':42s} {'ms/step':>8s} {'tokens/s':>9s} {'vs first':>8s} {'first step':>11s}")
    for name, options in settings.items():
        times, first = step_times(args.steps, **options)
        median = statistics.median(times)
        base = base or median
        print(f"{name:42s} {1000 * median:8.1f} {tokens / median:9,.0f} {base / median:7.2f}× {first:10.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
