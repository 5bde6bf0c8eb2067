"""Where the main job's time goes, measured with torch.profiler on this machine.

    python tools/profile_step.py                 # the cpu preset's step in the number type --dtype auto picks
    python tools/profile_step.py --dtype float32 --steps 20

One training step of `python train_solution.py` (same model, batch, optimizer and number
type; real batches of the prepared corpus), split by phase (data, forward, backward,
clip + optimizer) and, inside each phase, by kind of operation (matmuls, casts between
number types, element-wise and normalisation kernels, the rest); then the costs that
come with each evaluation (the validation batches, the text sample, the plot, a
checkpoint). The last line adds it up for the main job's steps and evaluations.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import train_solution as train  # noqa: E402
from course.batches import BatchStream, block_dataset, fixed_eval_batches, limit_windows  # noqa: E402
from course.config import PRESETS  # noqa: E402
from course.corpus import prepare, prepared_dir, read_meta  # noqa: E402
from course.devices import resolve_dtype  # noqa: E402
from course.logbook import plot_metrics, sample_text  # noqa: E402
from data_solution import BlockDataset, tokenizer_from_meta  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from optim import configure_optimizers  # noqa: E402

PHASES = ("data", "forward", "backward", "clip + optimizer")
MATMULS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm"}
CASTS = {"aten::copy_", "aten::_to_copy"}  # autocast's and Newton–Schulz's changes of number type


def kind(op: str) -> str:
    if op in MATMULS:
        return "matmuls"
    if op in CASTS:
        return "casts"
    return "element-wise, norms, the rest"


def phase_of(event) -> str | None:
    """The phase (a record_function label) an operation ran under, if any."""
    while event is not None:
        if event.name in PHASES:
            return event.name
        event = event.cpu_parent
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=30, help="profiled steps (after 10 warm-up steps)")
    args = p.parse_args()
    preset, device = PRESETS["cpu"], torch.device("cpu")
    dtype = resolve_dtype(args.dtype, device)

    prepared = prepare("char", None, prepared_dir(None, "char", None))
    tokenizer = tokenizer_from_meta(read_meta(prepared))
    T, B = preset["max_seq_len"], preset["batch_size"]
    train_set = limit_windows(block_dataset(BlockDataset, prepared, "train", T), preset["max_train_tokens"])
    stream = BatchStream(train_set, B, seed=1337, rank=0, world_size=1, num_workers=0, pin_memory=False)
    eval_batches = fixed_eval_batches(block_dataset(BlockDataset, prepared, "val", T), 20 * B * T, B)
    torch.manual_seed(1337)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=T, n_layer=preset["num_hidden_layers"],
                       n_head=preset["num_attention_heads"], n_embd=preset["hidden_size"])  # fmt: skip
    model = GPT(config)
    muon_lr_scale = 0.02 / preset["learning_rate"]
    lr = preset["learning_rate"]
    optimizer = configure_optimizers(model, 0.1, lr, (0.9, 0.95), "cpu", muon_lr_scale, dtype)
    amp_ctx = train.autocast_context(device, dtype)
    scaler = train.make_grad_scaler(device, dtype)

    def step() -> None:
        with record_function("data"):
            x, y = next(stream)
        with record_function("forward"), amp_ctx:
            lm_loss, aux_loss = train.compute_loss(model, x, y)
        with record_function("backward"):
            (lm_loss + aux_loss).backward()
        with record_function("clip + optimizer"):
            train.clip_and_step(model, optimizer, scaler, 1.0)

    for _ in range(10):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        wall_per_step = (time.perf_counter() - start) / args.steps
    table: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in prof.events():
        phase = phase_of(event)
        if phase is not None and event.name.startswith("aten::"):
            table[phase][kind(event.name)] += event.self_cpu_time_total / 1e3 / args.steps  # ms per step
    kinds = ["matmuls", "casts", "element-wise, norms, the rest"]
    print(f"main job's step, {str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads: "
          f"{1e3 * wall_per_step:.1f} ms per step under the profiler "
          f"({B * T / wall_per_step:,.0f} tokens/s)\n")  # fmt: skip
    print(f"| phase (ms per step) | {' | '.join(kinds)} | all |\n| --- |{' ---: |' * (len(kinds) + 1)}")
    for phase in PHASES:
        row = [table[phase][k] for k in kinds]
        print(f"| {phase} | {' | '.join(f'{v:.1f}' for v in row)} | {sum(row):.1f} |")
    total = [sum(table[phase][k] for phase in PHASES) for k in kinds]
    print(f"| all | {' | '.join(f'{v:.1f}' for v in total)} | {sum(total):.1f} |")
    print("(operator time only: Python, the autograd engine and the profiler make up the rest)")

    per_eval = evaluation_costs(model, eval_batches, amp_ctx, tokenizer, optimizer)
    print("\n| each evaluation | ms |\n| --- | ---: |")
    for name, seconds in per_eval.items():
        print(f"| {name} | {1e3 * seconds:.0f} |")
    steps, evals = preset["max_steps"], preset["max_steps"] // preset["eval_interval"] + 1
    training, evaluating = steps * wall_per_step, evals * sum(per_eval.values())
    print(f"\nthe main job: {steps} steps ≈ {training:.0f} s, {evals} evaluations ≈ {evaluating:.0f} s "
          f"({100 * evaluating / (training + evaluating):.0f}% of the two)")  # fmt: skip
    return 0


def evaluation_costs(model, eval_batches, amp_ctx, tokenizer, optimizer) -> dict[str, float]:
    """Median seconds of each part of an evaluation, over 3 repeats (the first one warms up)."""
    train_records = [{"step": s, "loss": 2.0, "lr": 1e-3} for s in range(0, PRESETS["cpu"]["max_steps"], 10)]
    records = [*train_records, {"step": 0, "val_loss": 2.0}]
    folder = Path(tempfile.mkdtemp())
    parts = {
        "validation loss (20 batches)": lambda: train.evaluate(model, eval_batches, amp_ctx),
        "text sample (300 tokens)": lambda: sample_text(model, tokenizer, "", 300, torch.device("cpu"), 1337),
        "plot (metrics.png)": lambda: plot_metrics(records, folder / "metrics.png"),
        "checkpoint (model + optimizer)": lambda: torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, folder / "resume.pt"
        ),
    }
    costs = {}
    for name, part in parts.items():
        times = []
        for _ in range(3):
            start = time.perf_counter()
            part()
            times.append(time.perf_counter() - start)
        costs[name] = statistics.median(times[1:])
    return costs


if __name__ == "__main__":
    sys.exit(main())
