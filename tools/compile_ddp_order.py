"""torch.compile and DDP: which wraps which? Both orders measured on 2 CPU processes (gloo).

    python tools/compile_ddp_order.py                # about 4 minutes on 2 cores
    python tools/compile_ddp_order.py --steps 60 --hidden_size 128

- DDP(torch.compile(model)): DDP sees the compiled model as one module whose backward
  is one compiled graph, so every gradient becomes ready only when that whole backward
  ends; the all-reduce of the buckets cannot start before, and never overlaps compute.
- torch.compile(DDP(model)): Dynamo knows DDP and splits the graph at DDP's bucket
  boundaries (its "DDPOptimizer"), so each bucket's all-reduce starts as soon as its
  part of the backward is done, while the rest of the backward still computes.

Each order trains the same run (the training script under torchrun, with a hook that
wraps the model in that order); the script prints the steady-state ms per step (the
log lines after the first, which pays for compilation), the time to the first step, and
the largest difference between the two orders' final weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

DRIVER = """
import sys
sys.path.insert(0, {root!r})
import torch
from torch.nn.parallel import DistributedDataParallel
import train_solution as train

def wrap(model, group, device, compile):
    if {order!r} == "compile(DDP(model))":
        return torch.compile(DistributedDataParallel(model))
    return DistributedDataParallel(torch.compile(model))

train.wrap_for_training = wrap
sys.exit(train.main())
"""

ORDERS = ("DDP(compile(model))", "compile(DDP(model))")


def run(order: str, args: argparse.Namespace, workdir: Path) -> dict:
    driver = workdir / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT), order=order))
    save_dir = workdir / order.replace("(", "_").replace(")", "")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(driver), "--device", "cpu", "--use_compile", "1", "--max_steps", str(args.steps),
               "--hidden_size", str(args.hidden_size), "--num_attention_heads", str(args.hidden_size // 32),
               "--log_interval", "10", "--eval_interval", str(args.steps), "--sample_tokens", "0",
               "--save_dir", str(save_dir)]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{order} failed:\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r]
    tokens_per_step = 2 * 32 * 64  # two processes, the cpu preset's batch and context
    steady = [1000 * tokens_per_step / rate for rate in rates[1:]]  # after the first window (compilation)
    weights = torch.load(save_dir / "model.pt", weights_only=True)["model"]
    shutil.rmtree(save_dir)  # the next run of this order is a new run
    return {
        "order": order,
        "ms_per_step": sorted(steady)[len(steady) // 2],
        "wall_s": wall,
        "weights": weights,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each order, alternating")
    args = parser.parse_args()
    print(f"2 CPU processes (gloo), the cpu preset at width {args.hidden_size}, {args.steps} steps; "
          f"{platform.processor() or platform.machine()}")  # fmt: skip
    results = {order: [] for order in ORDERS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for order in ORDERS:
                results[order].append(run(order, args, Path(tmp)))
    for order, runs in results.items():
        ms = ", ".join(f"{r['ms_per_step']:.1f}" for r in runs)
        wall = ", ".join(f"{r['wall_s']:.0f}" for r in runs)
        print(f"  {order:<22} median ms per step after compiling: {ms}; whole command: {wall} s")
    one, two = (results[order][0]["weights"] for order in ORDERS)
    largest = max((one[k].float() - two[k].float()).abs().max().item() for k in one)
    print(f"largest difference between the two orders' final weights: {largest:.2e}")


if __name__ == "__main__":
    main()
