"""Memory per process of DDP, FSDP and FSDP with activation checkpointing, with AdamW and
with Muon, measured next to the ZeRO arithmetic (Linux: it reads the processes' peak
resident memory).

    python tools/memory_per_process.py            # about 6 minutes on 2 CPU cores
    python tools/memory_per_process.py --steps 2 --hidden_size 256

Each setup trains the same model (25M parameters at the default size, float32) for a few
steps on the Shakespeare corpus, once with each optimizer, with the training script
itself under torchrun. With AdamW every parameter costs 4 bytes of weight, 4 of gradient
and 8 of Adam's two moments, 16 bytes in all, as in mixed precision's 2 + 2 + 4 (master
copy) + 8; Muon keeps one momentum (4 bytes) for the Blocks' matrices instead of two
moments, so 12 bytes for those. Under FSDP each process orthogonalises only its share of
Muon's matrices (optim.orthogonalize_shards), so Muon's working memory is sharded too. Each process
reports how far its resident memory rose above what it held before the model was built:
the peak of the training steps (activations come and go every step), and the peak with
the final checkpoint too (gathering model.pt on rank 0 and writing shards need more). The ZeRO arithmetic
(Rajbhandari et al., 2019) for N processes:

    DDP (every process holds all of it)   16 · P bytes
    ZeRO-1 (shard Adam's moments)         (4 + 4) · P + 8 · P / N
    ZeRO-2 (shard the gradients too)      4 · P + 12 · P / N
    ZeRO-3 = FSDP (shard the weights too) 16 · P / N

plus, for each of them, the activations of the batch (the same for every setup: each
process has a batch of its own), and for FSDP one Block's full weights and gradients at
a time. Activation checkpointing trades the activations for a second forward pass per
Block. The results go to tools/results/memory.json (the notebook draws AdamW's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmark_main_job import this_cpu  # noqa: E402

from model import GPT, GPTConfig  # noqa: E402

RESULTS = ROOT / "tools" / "results" / "memory.json"
BYTES_PER_PARAMETER = 16  # float32 weight, gradient, two Adam moments
OPTIMIZERS = ("adamw", "muon")

# (name, processes, options)
SETUPS = [
    ("one process", 1, []),
    ("DDP", 2, ["--parallel", "ddp"]),
    ("FSDP", 2, ["--parallel", "fsdp"]),
    ("FSDP", 4, ["--parallel", "fsdp"]),
    ("FSDP + activation checkpointing", 2, ["--parallel", "fsdp", "--activation_checkpointing", "1"]),
]

MOST_PROCESSES = max(processes for _, processes, _ in SETUPS)

# Runs as each training process: peak resident memory above the level before the model.
DRIVER = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, {root!r})
import train_solution as train

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise KeyError(field)

before = {{}}
build_model = train.build_model

def measured_build_model(*args, **kwargs):
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from here
    before["rss"] = status("VmRSS")
    return build_model(*args, **kwargs)

save_checkpoint = train.save_checkpoint

def measured_save_checkpoint(*args, **kwargs):
    before.setdefault("training_peak", status("VmHWM"))  # the steps, before any checkpoint is written
    return save_checkpoint(*args, **kwargs)

train.build_model = measured_build_model
train.save_checkpoint = measured_save_checkpoint
code = train.main()
if code != 0:
    sys.exit(code)  # the run said why; it has no peaks to report
rank = int(os.environ.get("RANK", 0))
peak = status("VmHWM")
report = {{"training": before["training_peak"] - before["rss"], "with_checkpoint": peak - before["rss"]}}
Path({out!r}, f"rank{{rank}}.json").write_text(json.dumps(report))
sys.exit(code)
"""


def zero_arithmetic(params: int, processes: int) -> dict[str, float]:
    """Bytes per process of the model's state (weights, gradients, Adam's moments) for each stage."""
    p, n = params, processes
    return {
        "DDP": 16 * p,
        "ZeRO-1": 8 * p + 8 * p / n,
        "ZeRO-2": 4 * p + 12 * p / n,
        "ZeRO-3 / FSDP": 16 * p / n,
    }


def state_bytes(model: GPT, optimizer: str, processes: int, sharded: bool) -> float:
    """Bytes per process of the weights, gradients and optimizer moments: 16 per parameter
    with AdamW; with Muon, 12 for the Blocks' matrices (one momentum) and 16 for the rest
    (the AdamW half). FSDP shards all of it over the processes; DDP copies it to each."""
    total = 16 * sum(p.numel() for p in model.parameters())
    if optimizer == "muon":
        total -= 4 * sum(p.numel() for p in model.transformer.h.parameters() if p.dim() >= 2)
    return total / processes if sharded else total


def measure(name: str, processes: int, options: list[str], optimizer: str, args: argparse.Namespace,
            model: GPT) -> dict:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        out = tmp_path / "reports"
        out.mkdir()
        driver = tmp_path / "driver.py"
        driver.write_text(DRIVER.format(root=str(ROOT), out=str(out)))
        torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        launcher = [sys.executable, *(torchrun if processes > 1 else [])]
        command = [*launcher, str(driver), "--device", "cpu", "--dtype", "float32", "--optimizer", optimizer,
                   "--hidden_size", str(args.hidden_size), "--num_hidden_layers", str(args.layers),
                   "--num_attention_heads", str(args.hidden_size // 64), "--max_seq_len", str(args.seq_len),
                   "--batch_size", str(args.batch_size), "--max_steps", str(args.steps),
                   "--warmup_steps", "0", "--eval_interval", "1000",
                   # one evaluation batch per process, at the largest process count (SETUPS)
                   "--eval_tokens", str(MOST_PROCESSES * args.batch_size * args.seq_len),
                   "--sample_tokens", "0", "--save_dir", str(tmp_path / "run"), *options]  # fmt: skip
        # A fixed threshold above which glibc's malloc maps memory for each allocation and
        # returns it when it is freed: then a process's resident memory follows the tensors
        # it holds (glibc would otherwise raise the threshold and keep freed memory).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            sys.exit(f"{name} with {processes} processes and {optimizer} failed:\n{result.stderr[-3000:]}")
        reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]
    state = state_bytes(model, optimizer, processes, sharded="fsdp" in options)
    training = [report["training"] / 1e6 for report in reports]
    with_checkpoint = [report["with_checkpoint"] / 1e6 for report in reports]
    return {"setup": name, "processes": processes, "optimizer": optimizer,
            "peak_mb": sum(training) / processes, "peak_mb_each": training,
            "peak_with_checkpoint_mb_each": with_checkpoint, "state_mb": state / 1e6}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no_save", action="store_true", help=f"do not write {RESULTS.name}")
    args = parser.parse_args()
    if not Path("/proc/self/clear_refs").exists():
        sys.exit("this script reads Linux's /proc to measure each process's peak memory")
    config = GPTConfig(vocab_size=65, block_size=args.seq_len, n_layer=args.layers,
                       n_head=args.hidden_size // 64, n_embd=args.hidden_size)  # fmt: skip
    model = GPT(config)
    params = sum(p.numel() for p in model.parameters())
    model_name, cpu_class = this_cpu()
    machine = f"{os.cpu_count()}-core {model_name} with {cpu_class}, Linux"
    muon_state = state_bytes(model, "muon", 1, sharded=False)
    print(f"{params / 1e6:.1f}M parameters, float32: {BYTES_PER_PARAMETER} bytes each with AdamW = "
          f"{BYTES_PER_PARAMETER * params / 1e6:,.0f} MB of state, {muon_state / 1e6:,.0f} MB with Muon; "
          f"batch {args.batch_size} × {args.seq_len} per process; {machine}")  # fmt: skip
    rows = []
    for name, processes, options in SETUPS:
        for optimizer in OPTIMIZERS:
            row = measure(name, processes, options, optimizer, args, model)
            rows.append(row)
            print(f"  {name:<32} {processes} process(es), {optimizer:<5}: peak {row['peak_mb']:>5,.0f} MB "
                  f"per process (state by the arithmetic {row['state_mb']:>5,.0f} MB, the rest: activations "
                  f"and buffers {row['peak_mb'] - row['state_mb']:>5,.0f} MB)", flush=True)  # fmt: skip
    by = {(r["setup"], r["processes"]): r["peak_mb"] for r in rows if r["optimizer"] == "adamw"}
    checks = {
        "FSDP 2 → 4 processes saves (measured, predicted 4·P)": (
            by[("FSDP", 2)] - by[("FSDP", 4)], 4 * params / 1e6),
        "DDP → FSDP at 2 processes saves (measured, predicted 8·P)": (
            by[("DDP", 2)] - by[("FSDP", 2)], 8 * params / 1e6),
        "activation checkpointing saves at 2 FSDP processes (measured)": (
            by[("FSDP", 2)] - by[("FSDP + activation checkpointing", 2)], None),
    }  # fmt: skip
    print("With AdamW:")
    for what, (measured, predicted) in checks.items():
        ratio = f" ({measured / predicted:.2f}× the prediction)" if predicted else ""
        print(f"  {what}: {measured:,.0f} MB{ratio}" + (f" vs {predicted:,.0f} MB" if predicted else ""))
    print("Muon's peak per process minus AdamW's (measured, and the state by the arithmetic):")
    for adamw, muon in zip(rows[::2], rows[1::2], strict=True):  # the rows alternate: AdamW, Muon
        measured, arithmetic = muon["peak_mb"] - adamw["peak_mb"], muon["state_mb"] - adamw["state_mb"]
        where = f"{adamw['setup']:<32} {adamw['processes']} process(es)"
        print(f"  {where}: {measured:+5,.0f} MB measured, {arithmetic:+5,.0f} MB of state")
    if not args.no_save:
        RESULTS.write_text(json.dumps({
            "params": params, "bytes_per_parameter": BYTES_PER_PARAMETER, "options": vars(args),
            "machine": machine, "setups": rows,
            "arithmetic_mb": {n: {k: v / 1e6 for k, v in zero_arithmetic(params, n).items()}
                              for n in (1, 2, 4, 8)},
        }, indent=1) + "\n")  # fmt: skip
        print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
