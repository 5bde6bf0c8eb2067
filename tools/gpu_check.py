"""The CUDA paths end to end, on the GPUs of this machine: the gpu preset on one GPU
(bfloat16, compiled), under torchrun with DDP and with FSDP on every GPU, and float16
with its GradScaler; for each run, tokens/s, MFU, peak GPU memory and the final
validation loss.

    python tools/gpu_check.py                      # the whole gpu preset, 4 runs (~15 min on one H100)
    python tools/gpu_check.py --max_steps 500      # shorter

Each run is the training script itself, in a folder of its own under --out (a folder
that holds runs already is refused by the script, as always: give another --out).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def runs(gpus: int) -> dict[str, list[str]]:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    script = str(ROOT / "train_solution.py")
    preset = ["--preset", "gpu", "--use_compile", "1"]
    return {
        "one GPU, bfloat16": [sys.executable, script, *preset],
        f"DDP on {gpus} GPU(s)": [*torchrun, script, *preset, "--parallel", "ddp"],
        f"FSDP on {gpus} GPU(s)": [*torchrun, script, *preset, "--parallel", "fsdp"],
        "one GPU, float16 + GradScaler": [sys.executable, script, *preset, "--dtype", "float16"],
    }


def summary(save_dir: Path) -> dict:
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "tokens_per_sec" in r][1:]  # the first window pays for compilation
    evals = [r for r in records if "val_loss" in r]

    def median(key: str) -> float | None:
        values = [r[key] for r in train if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "tokens_per_sec": median("tokens_per_sec"),
        "mfu": median("mfu"),
        "max_memory_gb": max((r.get("max_memory_gb", 0) for r in train), default=None),
        "skipped_steps": train[-1].get("skipped_steps") if train else None,
        "val_loss": evals[-1]["val_loss"] if evals else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check", help="the runs' folders go here")
    parser.add_argument("--max_steps", type=int, help="steps of each run (default: the gpu preset's)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: tools/gpu_check.py checks the CUDA paths, and this machine has no CUDA GPU")
    gpus = torch.cuda.device_count()
    print(f"{gpus} × {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    extra = ["--max_steps", str(args.max_steps)] if args.max_steps else []
    for name, command in runs(gpus).items():
        save_dir = Path(args.out) / re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        start = time.perf_counter()
        result = subprocess.run(
            [*command, *extra, "--save_dir", str(save_dir)], capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        if result.returncode != 0:
            print(f"{name}: FAILED (exit {result.returncode})\n{result.stderr[-3000:]}")
            continue
        s = summary(save_dir)
        mfu = f"{s['mfu']:.1%}" if s["mfu"] is not None else "n/a"
        skipped = (
            f", {s['skipped_steps']} steps skipped by the scaler" if s["skipped_steps"] is not None else ""
        )
        print(f"{name}: {s['tokens_per_sec']:,.0f} tokens/s, MFU {mfu}, peak memory {s['max_memory_gb']:.2f} "
              f"GiB per GPU, final val loss {s['val_loss']:.4f}, {wall:.0f} s in all{skipped}")  # fmt: skip


if __name__ == "__main__":
    main()
