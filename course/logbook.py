"""What a run reports: the progress bar, and on rank 0 metrics.jsonl, metrics.png and samples.txt
(docs/commands.md, "What a run writes"), the same numbers to course.tracking. The loss is summed
over real targets on the device and read once per log line (each read makes the CPU wait for the
GPU), then summed over the processes: every real target weighs the same.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from course import run_folder
from course.config import RunConfig
from course.devices import describe_dtype, forked_rng, gpu_peak_flops
from course.distributed import ProcessGroup, is_dtensor, is_sharded
from course.guards import check_finite
from course.reference import final_validation, find_reference, nearest_reference, recipe, verdict
from course.run_folder import RunFolder, data_identity
from course.tracking import open_tracker


def bits_per_byte(loss: float, n_tokens: int, n_bytes: int) -> float:
    """Loss in bits per byte of text, loss_nats · tokens / (bytes · ln 2): a loss per token
    cannot compare a char model with a BPE one (a token holds one character or about four)."""
    return loss * n_tokens / (n_bytes * math.log(2))


def append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def rewrite_metrics(path: Path, records: list[dict]) -> None:
    """metrics.jsonl holding exactly `records`: written beside it, then renamed over it,
    so a run killed meanwhile leaves the old file whole (a resume reads it again)."""
    tmp = run_folder.temporary_name(path)
    try:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_metrics(path: Path, up_to_step: int | None = None, note: bool = True) -> list[dict]:
    """The records of metrics.jsonl (up to a step); a line that is not a whole record, as a run
    killed mid-append leaves its last one, is left out (with a note)."""
    if not path.is_file():
        return []
    records, damaged = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            damaged.append(number)
            continue
        records.append(record)
    if damaged and note:
        lines = ", ".join(map(str, damaged))
        print(f"note: {path}: line {lines} is not a whole record (a run stopped while writing it); left out")
    return [r for r in records if up_to_step is None or r["step"] <= up_to_step]


def plot_metrics(records: list[dict], path: Path, reference: dict | None = None) -> None:
    """metrics.png: see draw_metrics."""
    import matplotlib

    matplotlib.use("Agg")  # draw to a file; no screen needed
    import matplotlib.pyplot as plt

    fig = draw_metrics(records, reference)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_metrics(records: list[dict], reference: dict | None = None):
    """Loss curves (train and val) and the LR schedule, one above the other; with a
    reference run (course.reference), its curves in grey behind this run's."""
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(2, 1))
    if reference is not None:  # broad grey bands behind the run's own lines: a run on track covers them
        machine = f"{reference['recipe']['dtype']}, {reference['machine']}"
        ref_train, ref_val = reference["train_curve"], reference["val_curve"]
        ax_loss.plot(*zip(*ref_train, strict=True), color="0.85", lw=5, label="reference train")
        val_label = f"reference val ({machine})"
        ax_loss.plot(*zip(*ref_val, strict=True), color="0.6", lw=5, alpha=0.6, label=val_label)
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    # A log axis keeps the end of the run readable: the loss falls from ln(vocab) ≈ 4
    # to about 1.5, and the last tenths of a nat are where runs differ.
    ax_loss.set_yscale("log")
    ax_loss.set_yticks(*loss_ticks(ax_loss.get_ylim()))
    ax_loss.minorticks_off()
    ax_loss.set(title="Loss", ylabel="cross-entropy (nats/token, log scale)")
    ax_loss.legend(fontsize="small")
    ax_loss.grid(alpha=0.3)
    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:green")
    ax_lr.set(title="Learning rate", xlabel="optimizer step", ylabel="LR")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def loss_ticks(limits: tuple[float, float]) -> tuple[list[float], list[str]]:
    """Round values inside the loss axis's limits, written as plain numbers (a log axis
    alone labels only the powers of ten, none of which a loss curve here reaches)."""
    low, high = limits
    nice = [0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 8, 10, 12, 15]
    ticks = [t for t in nice if low <= t <= high] or [round(low, 2), round(high, 2)]
    return ticks, [f"{t:g}" for t in ticks]


# What Logbook.window sums until the next log line: the LM and auxiliary losses times the count
# of real targets (sums, not means: every target weighs the same), that count, and the count
# since the clock last restarted (for tokens/s).
WINDOW = ("lm_sum", "aux_sum", "targets", "timed_targets")


def sample_text(model, tokenizer, prompt: str, max_new_tokens: int, device: torch.device, seed: int) -> str:
    """Text the model writes after `prompt` (empty: after an end-of-text token, a new document),
    from the same seed at every evaluation, in a forked RNG: training's random state is kept."""
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    with forked_rng(device):
        torch.manual_seed(seed)
        out = model.generate(idx, max_new_tokens, temperature=0.8, top_k=200)
    model.train(was_training)
    return tokenizer.decode(out[0, len(ids) :].tolist())


class Logbook:
    """The reports of one run: created once the run is set up, fed by the training loop."""

    def __init__(
        self,
        config: RunConfig,
        group: ProcessGroup,
        device: torch.device,
        dtype: torch.dtype,
        tokenizer,
        meta: dict,
        scaler: torch.amp.GradScaler,
        optimizer: torch.optim.Optimizer | None,
        resumed_at: int | None,
        run: RunFolder,
    ) -> None:
        """meta: the corpus's meta.json; optimizer: its groups' LRs are tracked; resumed_at: the
        step of the checkpoint a resumed run continues (None: a new run); run: its RunFolder."""
        self.config, self.group, self.device, self.dtype = config, group, device, dtype
        self.tokenizer, self.meta, self.scaler, self.optimizer = tokenizer, meta, scaler, optimizer
        self.resumed_at, self.folder, self.save_dir = resumed_at, run, Path(config.save_dir)
        # The text bits per byte is measured against: the validation split, or in documents mode
        # the whole corpus's bytes per token (the validation documents are not the split).
        splits = ("train", "val") if config.dataset_mode == "documents" else ("val",)
        self.text_size = (sum(meta[f"{s}_tokens"] for s in splits), sum(meta[f"{s}_bytes"] for s in splits))
        per_process = config.batch_size * config.accumulation_steps * config.max_seq_len
        self.tokens_per_step = per_process * group.world_size
        self.reference = None  # the course's reference run of this recipe, found by print_setup
        self.nearest = None  # without one: the nearest reference and how it differs (nearest_reference)
        self.peak_flops = gpu_peak_flops(device, dtype)
        self.records = []  # a new run's files are new (course.run_folder)
        if resumed_at is not None:  # keep the metrics up to the checkpoint, drop any logged after it
            metrics = self.folder.path(run_folder.METRICS_FILE)
            self.records = read_metrics(metrics, up_to_step=resumed_at, note=group.is_main)
            if group.is_main:
                rewrite_metrics(metrics, self.records)
        self.tracker = open_tracker(config, group.is_main, run, resumed_at)  # course.tracking

    def print(self, message: str) -> None:
        if self.group.is_main:
            print(message)

    @contextmanager
    def progress(self, start_step: int, total_steps: int):
        """The progress bar, and the counters of the steps between two log lines."""
        hidden = not self.group.is_main
        self.bar = tqdm(total=total_steps, initial=start_step, desc="training", unit="step", disable=hidden)
        self.window = torch.zeros(len(WINDOW))  # this process's sums since the last log line
        self.skipped_steps = 0  # float16 steps the GradScaler skipped because of inf/NaN gradients
        self.bad_grad_steps = torch.zeros((), dtype=torch.int)  # inf/NaN gradient norms, without a scaler
        self.last_checked = start_step
        self.restart_clock()
        try:
            yield self
        finally:
            self.bar.close()

    def restart_clock(self) -> None:
        """Throughput counts training steps only: the clock restarts after an evaluation or a save."""
        self.window[WINDOW.index("timed_targets")] = 0
        self.timer_start = time.perf_counter()

    def step_done(self, stats) -> None:
        """Count one optimizer step (a StepStats), without waiting for the device."""
        grad_norm = stats.grad_norm
        if is_dtensor(grad_norm):  # FSDP: the norm over every shard, the same on each process
            grad_norm = grad_norm.full_tensor()
        self.last_grad_norm = grad_norm
        targets = stats.targets.float()
        step = torch.stack([stats.loss * targets, stats.aux_loss * targets, targets, targets])  # as WINDOW
        self.window = self.window.to(step.device) + step
        grad_is_bad = ~torch.isfinite(grad_norm)
        if self.scaler.is_enabled():  # float16 overflows now and then: the scaler skips those steps
            self.skipped_steps += int(grad_is_bad)  # a GPU sync, but scaler.step() just made one anyway
        else:  # without a scaler, a bad gradient has already reached the weights
            self.bad_grad_steps = self.bad_grad_steps.to(grad_is_bad.device) + grad_is_bad.int()
        self.bar.update(1)

    def check_finite(self, step: int, window: torch.Tensor) -> None:
        """The NaN guard (course.guards) on every process's losses since the last log line
        (`window`: this logbook's window summed over the processes)."""
        losses = window[WINDOW.index("lm_sum")] + window[WINDOW.index("aux_sum")]
        check_finite(losses, self.bad_grad_steps, self.last_checked + 1, step, self.what_is_kept())
        self.last_checked = step

    def log_train(self, step: int, lr: float, flops_per_token: int, window: torch.Tensor) -> None:
        """A log line: the mean LM (and MoE's auxiliary) loss per real target since the last one,
        the LR, the last gradient norm, real targets per second; `window`: summed over processes."""
        # .tolist() waits for the GPU to finish, so the clock is read after the work.
        lm_sum, aux_sum, targets, timed_targets = window.tolist()
        loss = lm_sum / targets
        tokens_per_sec = timed_targets / (time.perf_counter() - self.timer_start)
        if self.group.is_main:
            norm = self.last_grad_norm.item()
            norm = norm if math.isfinite(norm) else None
            record = dict(step=step, loss=loss, lr=lr, grad_norm=norm, tokens_per_sec=tokens_per_sec)
            if self.config.use_moe:
                record["aux_loss"] = aux_sum / targets
            if self.scaler.is_enabled():
                record["skipped_steps"] = self.skipped_steps
            if self.peak_flops:  # tokens_per_sec counts every process; the peak is one GPU's
                record["mfu"] = flops_per_token * tokens_per_sec / (self.peak_flops * self.group.world_size)
            if self.device.type == "cuda":  # the most this process's GPU has held so far
                record["max_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            self.records.append(record)
            append_metrics(self.folder.path(run_folder.METRICS_FILE), record)
            self.tracker.log(step, record, self.optimizer)
            memory = {"mem_gb": f"{record['max_memory_gb']:.1f}"} if "max_memory_gb" in record else {}
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}", **memory)
        self.window = torch.zeros_like(self.window)
        self.restart_clock()

    def log_eval(self, step: int, result, model: torch.nn.Module) -> None:
        """An evaluation (an EvalResult, or None while TODO 6 is open) and a text sample. Every process
        calls it: rank 0 samples and writes, and under FSDP the others sample along (to gather)."""
        summary = f"step {step}"
        if result is not None:
            # The training loss of this step was still finite, but the step itself may have
            # thrown the weights to inf/NaN: stop here, before sampling from them or saving them.
            check_finite(torch.tensor(result.loss), torch.zeros(()), step, step, self.what_is_kept())
            bpb = bits_per_byte(result.loss, *self.text_size)
            record = {"step": step, "val_loss": result.loss, "val_ppl": result.perplexity, "val_bpb": bpb}
            self.records.append(record)
            if self.group.is_main:
                append_metrics(self.folder.path(run_folder.METRICS_FILE), record)
                self.tracker.log(step, record)
            summary += (
                f": val loss {result.loss:.4f}, perplexity {result.perplexity:.2f}, {bpb:.3f} bits/byte"
            )
        config, sample = self.config, None
        if config.sample_tokens > 0 and (self.group.is_main or is_sharded(model)):
            prompt, length = config.prompt, config.sample_tokens
            sample = sample_text(model, self.tokenizer, prompt, length, self.device, config.seed)
        if not self.group.is_main:
            return
        if sample is None:
            tqdm.write(summary)
        else:
            with open(self.folder.path(run_folder.SAMPLES_FILE), "a") as f:
                f.write(f"=== {summary} ===\n{sample}\n\n")
            self.tracker.text("samples", sample, step)
            tqdm.write(f"{summary}\n--- sample ---\n{sample}\n--------------")

    def plot(self) -> None:
        """metrics.png, drawn with each checkpoint (the curves it keeps) rather than at every
        evaluation: drawing costs about as much as a tiny run's training steps."""
        if self.group.is_main:
            plot_metrics(self.records, self.folder.path(run_folder.PLOT_FILE), self.reference)

    def print_setup(self, model, train_windows: int, schedule, start_step: int, epoch_batches: int) -> None:
        """What this run is about to do, and the reference run it will be compared with at the end."""
        config, group, meta, dtype = self.config, self.group, self.meta, self.dtype
        dtype_name = str(dtype).removeprefix("torch.")
        run_recipe = recipe(config.to_dict(), schedule, dtype_name, group.world_size, data_identity(meta))
        self.reference = find_reference(run_recipe)
        self.nearest = None if self.reference is not None else nearest_reference(run_recipe)
        processes = f"{group.world_size} processes, " if group.world_size > 1 else ""
        self.print(
            f"{processes}device {self.device} ({describe_dtype(config.dtype, self.device, dtype)}), preset "
            f"{config.preset}, {model.num_params() / 1e6:.2f}M parameters, tokenizer {self.tokenizer.name} "
            f"(vocab {self.tokenizer.vocab_size}), training on {train_windows * config.max_seq_len:,} "
            f"of {meta['train_tokens']:,} tokens"
        )
        self.print(
            f"steps {start_step} → {schedule.end_step}, {self.tokens_per_step:,} tokens per step, "
            f"{epoch_batches // config.accumulation_steps} steps per epoch, warmup {schedule.warmup_steps}"
        )
        if schedule.end_step > schedule.total_steps:
            first = max(start_step, schedule.total_steps) + 1
            self.print(
                f"note: the saved run's schedule ends at step {schedule.total_steps}; "
                f"steps {first}-{schedule.end_step} continue at its min_lr {schedule.min_lr:g}"
            )
        if self.device.type == "cuda":
            held = torch.cuda.max_memory_allocated(self.device) / 2**30  # by torch's allocator
            self.print(f"GPU memory before the first step (the weights): {held:.2f} GiB at most so far")
        if (ref := self.reference) is not None:
            self.print(
                f"reference: the course's run of this command reached val {ref['final']['val_loss']:.3f} "
                f"in {dtype_name} on {ref['machine']} ({ref['wall_seconds']:.0f} s); metrics.png draws it"
            )
        if self.resumed_at is None and self.folder.run_files():
            self.print(
                f"note: --overwrite 1: the run in {self.save_dir}/ is replaced once this one has saved "
                "its first checkpoint; until then it stays as it is"
            )

    def what_is_kept(self) -> str:
        """For the NaN guard's message: what of this run is on disk."""
        resume = self.folder.final_path(run_folder.RESUME_FILE)
        if self.folder.committed and resume.is_file():
            return (
                f"the last good checkpoint ({resume}) is kept: continue from it with --from_resume 1 "
                "and a lower --learning_rate"
            )
        return (
            f"this run had saved no checkpoint yet, so nothing of it was kept ({self.save_dir}/ is as it "
            "was): start it again with a lower --learning_rate"
        )

    def print_done(self) -> None:
        final = self.folder.final_path
        written = [f"weights in {final(run_folder.WEIGHTS_FILE)}"]
        if final(run_folder.BEST_FILE).is_file():
            written.append(f"best weights in {final(run_folder.BEST_FILE)}")
        if final(run_folder.RESUME_FILE).is_file():
            written.append(f"resume checkpoint in {final(run_folder.RESUME_FILE)}")
        written += [f"metrics in {final(run_folder.METRICS_FILE)}", f"plot in {final(run_folder.PLOT_FILE)}"]
        if (events := final(run_folder.TENSORBOARD_DIR)).is_dir():
            written.append(f"TensorBoard events in {events} (tensorboard --logdir {self.save_dir})")
        self.print("done: " + ", ".join(written))
        last = final_validation(self.records)
        if last is not None:
            self.print(verdict(last["val_loss"], last["val_bpb"], self.reference, self.nearest))
