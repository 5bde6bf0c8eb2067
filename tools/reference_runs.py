"""Run the commands the course gives a learner and commit what they reached, so every
run of the same command and number type can say whether it is on track.

    python tools/reference_runs.py                     # every command: this CPU's class, and AVX2 below it
    python tools/reference_runs.py --commands main     # the main job only
    python tools/reference_runs.py --cpu_class AVX2    # only as an AVX2-only CPU (float32)
    python tools/reference_runs.py --table             # the table of docs/reference-runs.md
    python tools/reference_runs.py --record main metrics.jsonl --device cuda --machine "one NVIDIA H200" \
        --wall_seconds 140                             # a run of the command made on another machine

Each run trains with train_solution.py in a scratch folder, exactly as the command
line reads (`python train_solution.py`, `python train_solution.py --epochs 3`), and
its recipe (course.reference), validation curve, thinned training curve, wall time and
machine go into course/reference_runs.json; runs of other commands and classes already
there are kept. The CPU classes are those of tools/benchmark_main_job.py: `--dtype auto`
picks bfloat16 on AMX and float32 on an AVX2-only CPU, and an AMX machine stands in for
the AVX2 class with oneDNN and ATen capped at AVX2. On a GPU machine, `--cpu_class none`
runs the commands on the GPU (the gpu preset).

It prints, for the main job, the spread between two seeds: what "on track" allows.

`--record` commits a run that was made elsewhere (a GPU lent for minutes, whose metrics.jsonl
is all that came back): the command must have run exactly as COMMANDS gives it on that device,
and its recipe is rebuilt from today's options for that device, as the run's own end-of-run line
would build it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmark_main_job import CPU_CLASSES, classes_below, this_cpu  # noqa: E402

from course.reference import REFERENCE_FILE, load_references, recipe  # noqa: E402

COMMANDS = {
    "main": [],  # the quick start's run, and the learner's `train_exercise.py --save_dir mine`
    "epochs3": ["--epochs", "3"],  # longer: three passes over the training split
    "wide": ["--hidden_size", "256", "--num_attention_heads", "8", "--epochs", "1"],  # larger: 4× the weights
}
TRAIN_POINTS = 150  # the training curve, thinned: enough to draw, small enough to commit
SETUP_LINE = re.compile(r"device (?P<device>\S+) \((?P<dtype>\w+)")


def machine_class(cpu_class: str) -> str:
    """How the end-of-run line names the machine: its class and cores, and what it really was."""
    model, own_class = this_cpu()
    cores = os.cpu_count()
    if cpu_class == own_class:
        return f"a {cores}-core {cpu_class} CPU"
    plain = " ".join(model.replace("(R)", "").replace("(TM)", "").split())
    return f"a {cores}-core {cpu_class} CPU ({plain} with {own_class}, capped at {cpu_class})"


def train(command: list[str], env: dict, save_dir: Path) -> tuple[str, float]:
    """One run of train_solution.py; returns its output and its wall time."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "train_solution.py"), *command, "--save_dir", str(save_dir)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command) or 'the main job'} failed:\n{done.stderr[-2000:]}")
    return done.stdout, seconds


def reference_of(name: str, command: list[str], output: str, seconds: float, save_dir: Path, machine: str):
    """The reference record of a finished run: its recipe, read back from resume.pt
    exactly as the run's own Logbook builds it, and its curves."""
    checkpoint = torch.load(save_dir / "resume.pt", map_location="cpu", weights_only=False)
    plan = checkpoint["plan"]
    schedule = SimpleNamespace(
        total_steps=plan["total_steps"],
        end_step=plan["total_steps"],
        warmup_steps=plan["warmup_steps"],
        min_lr=plan["min_lr"],
    )
    setup = SETUP_LINE.search(output)
    run_recipe = recipe(
        checkpoint["train_args"], schedule, setup["dtype"], plan["world_size"], checkpoint["data_source"]
    )
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    speeds = sorted(r["tokens_per_sec"] for r in train_records)
    return {
        "command": " ".join(["python train_solution.py", *command]),
        "name": name,
        "machine": machine,
        "device": setup["device"],
        "wall_seconds": round(seconds, 1),
        "tokens_per_sec": round(speeds[len(speeds) // 2]),
        "final": {key: val[-1][key] for key in ("step", "val_loss", "val_bpb")},
        "val_curve": [[r["step"], round(r["val_loss"], 5)] for r in val],
        "train_curve": thinned(train_records),
        "recipe": run_recipe,
    }


def recorded_elsewhere(
    name: str, metrics: Path, device: str, dtype: str, machine: str, seconds: float
) -> dict:
    """The reference record of `python train_solution.py <COMMANDS[name]>` run on another
    machine: its curves from the run's metrics.jsonl, its recipe from today's options for
    that device (the options a run there resolves to; the default corpus, one process)."""
    from course import cli
    from course.corpus import SHAKESPEARE_SHA256

    command = COMMANDS[name]
    config, _ = cli.continue_plan(cli.run_config(cli.parse_args(command), torch.device(device)), None, None)
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train_records = [r for r in records if "loss" in r]
    total = config.max_steps
    schedule = SimpleNamespace(
        total_steps=total,
        end_step=total,
        warmup_steps=config.warmup_steps if config.warmup_steps is not None else total // 10,
        min_lr=config.min_lr if config.min_lr is not None else config.learning_rate / 10,
    )
    corpus = {"tokenizer": config.tokenizer, "source_sha256": SHAKESPEARE_SHA256}
    run_recipe = recipe(config.to_dict(), schedule, dtype, 1, corpus)
    last_lr = train_records[-1]["lr"]
    if not math.isclose(last_lr, schedule.min_lr, rel_tol=0.05) or train_records[-1]["step"] != total:
        raise SystemExit(f"error: {metrics} is not of `{' '.join(command) or 'the main job'}` as run today")
    return {
        "command": " ".join(["python train_solution.py", *command]),
        "name": name,
        "machine": machine,
        "device": device,
        "wall_seconds": round(seconds, 1),
        "tokens_per_sec": round(statistics.median(r["tokens_per_sec"] for r in train_records)),
        "final": {
            key: [r for r in records if "val_loss" in r][-1][key] for key in ("step", "val_loss", "val_bpb")
        },
        "val_curve": [[r["step"], round(r["val_loss"], 5)] for r in records if "val_loss" in r],
        "train_curve": thinned(train_records),
        "recipe": run_recipe,
    }


def thinned(train_records: list[dict]) -> list[list]:
    every = max(1, len(train_records) // TRAIN_POINTS)
    return [[r["step"], round(r["loss"], 5)] for r in train_records[every - 1 :: every]]


def table_row(ref: dict) -> str:
    command = ref["command"].replace("python train_solution.py", "`python train_solution.py") + "`"
    final = ref["final"]
    return (
        f"| {command} | {ref['recipe']['dtype']} | {ref['machine']} | {final['step']:,} | "
        f"{final['val_loss']:.3f} | {final['val_bpb']:.3f} | {ref['wall_seconds']:.0f} s |"
    )


def table(references: list[dict]) -> str:
    """The table of the reference runs in docs/reference-runs.md ("Is my loss good?")."""
    head = (
        "| command | number type | machine | steps | val loss | bits/byte | wall time |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: |"
    )
    order = list(COMMANDS)
    rows = sorted(references, key=lambda ref: (order.index(ref["name"]), ref["recipe"]["dtype"]))
    return "\n".join([head, *map(table_row, rows)])


def merge(path: Path, new: list[dict]) -> None:
    """Replace the references of the same recipe, keep the others; drop those whose
    recipe has other fields than the new ones (an option was added or removed since:
    no run can match them any more)."""
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    recipes = [ref["recipe"] for ref in new]
    fields = {frozenset(recipe) for recipe in recipes}
    stale = [ref for ref in runs if frozenset(ref["recipe"]) not in fields]
    for ref in stale:
        print(f"dropped the reference of `{ref['command']}` ({ref['recipe']['dtype']}, {ref['machine']}): "
              "its recipe has other fields than today's, so no run matches it; run it again")  # fmt: skip
    runs = [ref for ref in runs if ref["recipe"] not in recipes and ref not in stale] + new
    runs.sort(key=lambda ref: (ref["name"], ref["recipe"]["dtype"], ref["machine"]))
    path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", nargs="+", choices=sorted(COMMANDS), default=sorted(COMMANDS))
    parser.add_argument(
        "--cpu_class",
        nargs="+",
        choices=[*CPU_CLASSES, "none"],
        help="default: this CPU's class, and AVX2 (float32) below it",
    )
    parser.add_argument("--output", type=Path, default=REFERENCE_FILE)
    parser.add_argument("--table", action="store_true", help="print docs/reference-runs.md's table and exit")
    parser.add_argument("--record", nargs=2, metavar=("COMMAND", "METRICS"), help="a run made elsewhere")
    parser.add_argument("--device", default="cuda", help="with --record: the device it ran on")
    parser.add_argument("--dtype", default="bfloat16", help="with --record: its number type")
    parser.add_argument("--machine", help="with --record: the machine, as the end-of-run line names it")
    parser.add_argument("--wall_seconds", type=float, help="with --record: the command's wall time")
    args = parser.parse_args()
    if args.table:
        print(table(load_references(args.output)))
        return
    if args.record:
        if args.machine is None or args.wall_seconds is None:
            raise SystemExit("error: --record needs --machine and --wall_seconds")
        name, metrics = args.record
        ref = recorded_elsewhere(
            name, Path(metrics), args.device, args.dtype, args.machine, args.wall_seconds
        )
        merge(args.output, [ref])
        print(f"recorded {ref['command']} on {args.machine}: val {ref['final']['val_loss']:.4f}")
        return
    own_class = this_cpu()[1]
    below = classes_below(own_class)
    wanted = args.cpu_class or sorted({own_class, "AVX2"}, key=list(CPU_CLASSES).index)
    if not set(wanted) - {"none"} <= set(below):
        raise SystemExit(f"error: this {own_class} CPU can stand in for {', '.join(below)} only")
    new = []
    for cpu_class in wanted:
        env = {**os.environ, **CPU_CLASSES.get(cpu_class, {})}
        machine = machine_class(cpu_class) if cpu_class != "none" else torch.cuda.get_device_name()
        for name in args.commands:
            with tempfile.TemporaryDirectory() as scratch:
                output, seconds = train(COMMANDS[name], env, Path(scratch) / "run")
                ref = reference_of(name, COMMANDS[name], output, seconds, Path(scratch) / "run", machine)
            new.append(ref)
            final = ref["final"]
            print(
                f"{ref['command']} on {machine} ({ref['recipe']['dtype']}): val {final['val_loss']:.4f}, "
                f"{final['val_bpb']:.3f} bits/byte, {seconds:.0f} s, {ref['tokens_per_sec']:,} tokens/s",
                flush=True,
            )
            merge(args.output, [ref])
            if name == "main":
                with tempfile.TemporaryDirectory() as scratch:
                    other, _ = train(["--seed", "1338"], env, Path(scratch) / "run")
                    other_ref = reference_of(
                        "main", ["--seed", "1338"], other, 0.0, Path(scratch) / "run", machine
                    )
                gap = other_ref["final"]["val_loss"] - ref["final"]["val_loss"]
                print(f"  seed 1338: val {other_ref['final']['val_loss']:.4f} ({gap:+.4f} nats)", flush=True)
    print(f"wrote {args.output} (CPU: {this_cpu()[0]})")


if __name__ == "__main__":
    main()
