"""Pretrain a GPT on next-token prediction (下一个词预测): the training program.

The pieces, section by section (the exercise's TODO numbers in brackets):

1. `get_lr`: the learning-rate schedule, linear warmup then cosine decay [2a, 2b].
2. Devices, processes (DDP under torchrun) and mixed precision: autocast and the GradScaler [5].
3. The training step: `set_lr` [3a], `compute_loss` [3b], `accumulate_gradients` [4]
   and `clip_and_step` [3c], put together by `train_step`.
4. `evaluate`: the mean loss over fixed validation batches, perplexity, bits per byte [6].
5. `BatchStream`: the order of the training batches, shared out among processes and
   reproducible from a checkpoint.
6. Checkpoints: atomic saves, random states, refusing to resume a different model.
7. Logging: the metrics file, the plot, text samples.
8. Running the exercise file while some TODOs are still open.
9. The command line and the training loop: `main` and `train`.

Run it:
    python train_solution.py                      # the main job: Shakespeare on your CPU/GPU
    python train_solution.py --help               # every option
    python train_solution.py --from_resume 1      # continue the run saved in out/

A step is one optimizer step: the LR schedule, logging, evaluation and checkpoints
all count optimizer steps, never micro-batches. Losses are in nats per token.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from data_solution import (
    TOKENIZERS,
    BlockDataset,
    DataError,
    PretrainDataset,
    Tokenizer,
    load_tokens,
    prepare,
    prepared_dir,
    read_meta,
    tokenizer_from_meta,
)
from model import GPT, GPTConfig

RESUME_FILE = "resume.pt"  # everything needed to continue the run
WEIGHTS_FILE = "model.pt"  # the model alone, to sample from or start another run
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
SAMPLES_FILE = "samples.txt"


class UsageError(Exception):
    """A bad option or combination of options, explained in one line."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the message says when and what to try."""


class Interrupted(Exception):
    """Ctrl+C: the run stopped after saving a checkpoint."""


# ---------------------------------------------------------------------------
# 1. Learning-rate schedule
# ---------------------------------------------------------------------------


def get_lr(step: int, warmup_steps: int, total_steps: int, max_lr: float, min_lr: float) -> float:
    """The learning rate for optimizer step `step` (0-based): warmup, then cosine decay.

    Warmup: at the start the weights are random and Adam's moment estimates are
    still empty, so a full-size step can throw the model somewhere it never recovers
    from (the loss spikes or diverges). Growing the LR linearly over warmup_steps
    avoids that. It uses step + 1 so the very first step already moves the weights.

    Cosine decay: once training is stable, big steps help it travel fast; near the
    end, small steps let it settle into a minimum instead of bouncing around it.
    The LR follows half a cosine from max_lr down to min_lr over the remaining
    total_steps - warmup_steps steps, and stays at min_lr from total_steps on.
    """
    if step < warmup_steps:
        # TODO 2a: warmup: grow the LR linearly, reaching max_lr at step warmup_steps - 1
        #   Step 0 gets max_lr * 1 / warmup_steps (count from step + 1, not from 0).
        return max_lr * (step + 1) / warmup_steps
        # END TODO 2a
    # TODO 2b: cosine decay from max_lr to min_lr, then min_lr from total_steps on
    #   progress runs from 0 at warmup_steps to 1 at total_steps;
    #   lr = min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * progress))   (math.cos, math.pi)
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 → 1
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    # END TODO 2b


# ---------------------------------------------------------------------------
# 2. Devices and precision
# ---------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps (Apple silicon), then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for but MPS is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


@dataclass
class ProcessGroup:
    """This process's place among the training processes (one, unless torchrun started several)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0  # rank 0 logs, evaluates, samples and saves

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of `value` over all processes (an all-reduce)."""
        if self.world_size == 1:
            return value
        total = value.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world_size


def init_distributed(device: torch.device) -> tuple[ProcessGroup, torch.device]:
    """Join the process group when torchrun started this process (it sets RANK,
    LOCAL_RANK and WORLD_SIZE); otherwise this is the only process. NCCL connects
    GPUs; gloo connects CPU processes, so DDP also runs (and is tested) on a laptop."""
    if "RANK" not in os.environ:
        return ProcessGroup(), device
    if device.type == "mps":
        raise UsageError(
            "multi-process training needs CUDA or the CPU; use --device cpu with torchrun on a Mac"
        )
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per process
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ProcessGroup(dist.get_rank(), dist.get_world_size()), device


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on CUDA GPUs that support it, float16 on older ones, else float32."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
    if name == "float16" and device.type == "cpu":
        raise UsageError("float16 training needs a GPU; use --dtype bfloat16 or float32 on CPU")
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("this GPU does not support bfloat16; use --dtype float16")
    return DTYPES[name]


NO_AUTOCAST = nullcontext()  # float32 everywhere: the context that changes nothing


def autocast_context(device: torch.device, dtype: torch.dtype):
    """Mixed precision (AMP): matmuls run in a 16-bit type, about twice as fast and
    with half the activation memory, while the weights, the optimizer state and
    precision-sensitive ops (softmax, losses) stay in float32.

    bfloat16 keeps float32's 8 exponent bits (same range, fewer digits): nothing
    overflows or underflows, so it needs no GradScaler. float16 has 5 exponent bits
    (largest 65,504, smallest normal 6e-5): small gradients flush to zero unless the
    loss is scaled up first (see make_grad_scaler). Use bfloat16 where the GPU has it.
    """
    # TODO 5: the autocast context for this device and dtype (NO_AUTOCAST for float32)
    #   torch.autocast(device_type=..., dtype=...): device_type is "cuda", "cpu" or "mps".
    if dtype == torch.float32:
        return NO_AUTOCAST
    return torch.autocast(device_type=device.type, dtype=dtype)
    # END TODO 5


def make_grad_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    """float16 has only 5 exponent bits: small gradients underflow to zero. The scaler
    multiplies the loss by a large factor before backward and divides the gradients
    by it before the update. bfloat16 has float32's range and needs no scaler; a
    disabled scaler passes every call straight through."""
    # TODO 5: a GradScaler that is enabled for float16 only
    #   torch.amp.GradScaler(device_type, enabled=...)
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    # END TODO 5


# ---------------------------------------------------------------------------
# 3. The training step
# ---------------------------------------------------------------------------


@dataclass
class StepStats:
    loss: torch.Tensor  # mean loss over the micro-batches (detached, still on the device)
    grad_norm: torch.Tensor  # gradient norm before clipping


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The optimizer reads its LR from each parameter group, so the schedule writes there."""
    # TODO 3a: write lr into every parameter group of the optimizer
    #   optimizer.param_groups is a list of dicts; each has an "lr" entry.
    for group in optimizer.param_groups:
        group["lr"] = lr
    # END TODO 3a


def compute_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The forward pass: the model scores every next token and returns the mean
    cross-entropy against the targets y (x shifted by one), in nats per token."""
    # TODO 3b: the forward pass: logits, loss = model(x, targets=y); return the loss
    _, loss = model(x, targets=y)
    return loss
    # END TODO 3b


def accumulate_gradients(
    model: torch.nn.Module,
    scaler: torch.amp.GradScaler,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    amp_ctx=NO_AUTOCAST,
) -> torch.Tensor:
    """Forward and backward over k micro-batches; returns their mean loss (detached).

    backward() adds into .grad, so k micro-batches give the gradient of one batch k
    times larger, in the memory of one micro-batch. Each loss is divided by k so
    that the sum is a mean, as it would be for the big batch. Under
    DistributedDataParallel every backward also averages gradients across processes;
    `no_sync` skips that for all but the last micro-batch, where it is needed once.
    """
    # TODO 4: forward + backward over every micro-batch; return the mean loss (detached)
    #   Per micro-batch: `with amp_ctx:` compute_loss(...), then scaler.scale(loss / k).backward().
    #   Wrap all but the last micro-batch in model.no_sync() when the model has it (DDP).
    k = len(micro_batches)
    losses = []
    for i, (x, y) in enumerate(micro_batches):
        is_last = i == k - 1
        sync_ctx = nullcontext() if is_last or not hasattr(model, "no_sync") else model.no_sync()
        with sync_ctx:
            with amp_ctx:
                loss = compute_loss(model, x, y)
            scaler.scale(loss / k).backward()
        losses.append(loss.detach())
    return torch.stack(losses).mean()
    # END TODO 4


def clip_and_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, grad_clip: float
) -> torch.Tensor:
    """Update the weights from the accumulated gradients; returns the gradient norm.

    1. Unscale: with float16 the gradients are still multiplied by the scaler's
       factor; divide it out first, or the clip would compare scaled numbers.
    2. Clip the global gradient norm to grad_clip: one unlucky batch cannot throw
       the weights far away (0 turns clipping off; the norm is still measured).
    3. Step (the scaler skips it if float16 gradients overflowed) and update the scale.
    4. Reset the gradients to None: cheaper than writing zeros, and the next
       backward writes them fresh instead of adding to stale ones.
    """
    # TODO 3c: unscale, clip, step, update the scale, clear the gradients; return the norm
    #   scaler.unscale_(optimizer), torch.nn.utils.clip_grad_norm_(params, max_norm) (it
    #   returns the norm before clipping), scaler.step(optimizer), scaler.update(),
    #   optimizer.zero_grad(set_to_none=True). grad_clip == 0 means max_norm = inf.
    scaler.unscale_(optimizer)
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.detach()
    # END TODO 3c


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    lr: float,
    grad_clip: float,
    amp_ctx=NO_AUTOCAST,
) -> StepStats:
    """One optimizer step: set the LR, accumulate gradients over the micro-batches,
    clip and update. A disabled GradScaler (anything but float16) passes every call
    straight through, so the same code serves float32, bfloat16 and float16."""
    set_lr(optimizer, lr)
    loss = accumulate_gradients(model, scaler, micro_batches, amp_ctx)
    grad_norm = clip_and_step(model, optimizer, scaler, grad_clip)
    return StepStats(loss=loss, grad_norm=grad_norm)


# ---------------------------------------------------------------------------
# 4. Evaluation
# ---------------------------------------------------------------------------


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy, nats per token
    perplexity: float  # exp(loss): as unsure as a uniform choice among this many tokens


def evaluate(
    model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], amp_ctx=NO_AUTOCAST
) -> EvalResult:
    """Mean loss over a fixed list of validation batches.

    Fixed batches (not random ones) make evaluations comparable between steps and
    between runs: a change in val loss is a change in the model, not in the sample.
    eval() turns dropout off; no_grad() skips building the backward graph.
    """
    # TODO 6: eval mode, no gradients, mean loss over the batches, back to train mode
    #   model.eval() / model.train(), `with torch.no_grad(), amp_ctx:`, compute_loss(...);
    #   return EvalResult(loss=<mean as a float>, perplexity=math.exp(loss)).
    model.eval()
    with torch.no_grad(), amp_ctx:
        losses = [compute_loss(model, x, y).float() for x, y in batches]
    model.train()
    loss = torch.stack(losses).mean().item()
    return EvalResult(loss=loss, perplexity=math.exp(loss))
    # END TODO 6


def bits_per_byte(loss: float, n_tokens: int, n_bytes: int) -> float:
    """Loss in bits per byte of text: loss_nats · tokens / (bytes · ln 2).

    A loss per token depends on how much text a token holds (one character or
    about four), so it cannot compare a char model with a BPE model; per byte it can.
    """
    return loss * n_tokens / (n_bytes * math.log(2))


def fixed_eval_batches(dataset: BlockDataset, batch_size: int, n_batches: int) -> list:
    """n_batches batches of windows spread evenly over the whole validation split."""
    n_windows = min(len(dataset), batch_size * n_batches)
    picks = np.linspace(0, len(dataset) - 1, n_windows).round().astype(int)
    windows = [dataset[int(i)] for i in picks]
    return [
        (torch.stack([x for x, _ in chunk]), torch.stack([y for _, y in chunk]))
        for chunk in (windows[i : i + batch_size] for i in range(0, n_windows, batch_size))
    ]


# ---------------------------------------------------------------------------
# 5. Data order that a checkpoint can reproduce
# ---------------------------------------------------------------------------


class BatchStream:
    """Training batches, reshuffled every epoch, that can restart mid-epoch.

    The order of epoch e is a permutation drawn from seed + e alone, so
    (epoch, position) is all a checkpoint needs to continue with the very batch
    the run would have seen next: no batch is replayed and none is skipped.
    Under DDP, DistributedSampler gives each of the world_size processes every
    world_size-th window of that permutation, so together they read each global
    batch once (with world_size = 1 it is the plain permutation).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        epoch: int = 0,
        position: int = 0,
        rank: int = 0,
        world_size: int = 1,
        **loader_options,
    ) -> None:
        if len(dataset) < batch_size * world_size:
            raise DataError(
                f"the training split has {len(dataset)} windows, fewer than one batch "
                f"of {batch_size} per process; use a smaller --batch_size or more text"
            )
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.epoch, self.position = epoch, position
        self.rank, self.world_size = rank, world_size
        self.loader_options = loader_options
        self.batches_per_epoch = len(dataset) // world_size // batch_size
        self._iterator = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def seek(self, epoch: int, position: int) -> None:
        """Continue from batch `position` of epoch `epoch` (a state() from a checkpoint)."""
        self.epoch, self.position, self._iterator = epoch, position, None

    def _epoch_loader(self) -> DataLoader:
        sampler = DistributedSampler(
            self.dataset, self.world_size, self.rank, shuffle=True, seed=self.seed, drop_last=True
        )
        sampler.set_epoch(self.epoch)  # permutation from seed + epoch
        remaining = list(sampler)[self.position * self.batch_size :]
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        # The loader draws its workers' seeds from `generator` too; without it, it
        # would draw from the global RNG and shift every later dropout mask.
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=remaining,
            drop_last=True,
            generator=generator,
            **self.loader_options,
        )

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position == self.batches_per_epoch:  # epoch finished: start the next one
            self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
        if self._iterator is None:
            self._iterator = iter(self._epoch_loader())
        batch = next(self._iterator)
        self.position += 1
        return batch


# ---------------------------------------------------------------------------
# 6. Checkpoints
# ---------------------------------------------------------------------------


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename it over `path`. A rename is atomic,
    so a crash mid-save leaves the previous file intact, never a half-written one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say so in one line
        raise UsageError(
            f"cannot read checkpoint {path} ({type(err).__name__}); is it a file this script saved?"
        ) from None


def capture_rng_state() -> dict:
    """Every random generator a run draws from (dropout, sampling, user code)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    step: int,
    stream: BatchStream,
    best_val_loss: float,
) -> dict:
    """Everything a run needs to continue exactly as if it had never stopped.

    The weights alone are not enough: Adam keeps two moving averages per weight
    (its "momentum"), the GradScaler keeps its current scale, the step fixes where
    the LR schedule is, the data position says which batch comes next, and the
    random generators decide the next dropout masks. Leave any of them out and the
    resumed run quietly becomes a different run (seed 004: checkpoint contents).
    """
    # TODO 8: a dict with the model's, optimizer's and scaler's state_dict(), the step,
    #   the data position (stream.state()), the RNG states (capture_rng_state()) and
    #   best_val_loss. restore_checkpoint below reads the same dict back.
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "data_position": stream.state(),
        "rng": capture_rng_state(),
        "best_val_loss": best_val_loss,
    }
    # END TODO 8


def restore_checkpoint(
    checkpoint: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> tuple[int, dict, float]:
    """Load a checkpoint_state() dict back; returns (step, data position, best val loss)."""
    # TODO 8: load_state_dict() into the model, the optimizer and the scaler, and
    #   restore_rng_state(...); then return the step, data position and best_val_loss.
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    restore_rng_state(checkpoint["rng"])
    return checkpoint["step"], checkpoint["data_position"], checkpoint["best_val_loss"]
    # END TODO 8


def check_same(what: str, saved: dict, current: dict) -> None:
    """Refuse to resume into a different model or data, naming the first difference."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise UsageError(
                f"the checkpoint's {what} differs: {key}={saved.get(key)!r} in the checkpoint, "
                f"{current.get(key)!r} now; use the options of the saved run or a new --save_dir"
            )


# ---------------------------------------------------------------------------
# 7. Logging: metrics file, plot, samples
# ---------------------------------------------------------------------------


def append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(path: Path, up_to_step: int | None = None) -> list[dict]:
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if up_to_step is None or r["step"] <= up_to_step]


def plot_metrics(records: list[dict], path: Path) -> None:
    """Loss curves (train and val) and the LR schedule, one above the other."""
    import matplotlib

    matplotlib.use("Agg")  # draw to a file; no screen needed
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(2, 1))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax_loss.set(title="Loss", ylabel="cross-entropy (nats/token)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:green")
    ax_lr.set(title="Learning rate", xlabel="optimizer step", ylabel="LR")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sample_text(
    model: GPT, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, device: torch.device, seed: int
) -> str:
    """Text the model writes after `prompt` (or after an end-of-text token when the
    prompt is empty: the start of a new document). The same seed at every
    evaluation, in a forked RNG that leaves training's random state untouched."""
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(idx, max_new_tokens, temperature=0.8, top_k=200)
    model.train(was_training)
    return tokenizer.decode(out[0, len(ids) :].tolist())


# ---------------------------------------------------------------------------
# 8. Running the exercise file before every TODO is done
# ---------------------------------------------------------------------------
# An open TODO raises NotImplementedError("TODO <id>: ..."). Where a sensible
# stand-in exists, the loop uses it and says so once; otherwise the run stops with
# the TODO's own message (see main).

_notes_shown: set[str] = set()


def note_once(message: str) -> None:
    if message not in _notes_shown:
        _notes_shown.add(message)
        tqdm.write(f"note: {message}")


def scheduled_lr(step: int, warmup_steps: int, total_steps: int, max_lr: float, min_lr: float) -> float:
    """get_lr, or a constant max_lr while TODO 2a or 2b is open."""
    try:
        return get_lr(step, warmup_steps, total_steps, max_lr, min_lr)
    except NotImplementedError as todo:
        note_once(f"{todo} -- not done yet, so the learning rate stays at {max_lr} for those steps")
        return max_lr


def mixed_precision(device: torch.device, dtype: torch.dtype):
    """(autocast context, GradScaler) for the dtype, or float32 without a scaler while TODO 5 is open."""
    try:
        return autocast_context(device, dtype), make_grad_scaler(device, dtype)
    except NotImplementedError as todo:
        note_once(f"{todo} -- not done yet, so training runs in float32")
        return NO_AUTOCAST, torch.amp.GradScaler(device.type, enabled=False)


def evaluate_if_done(model: torch.nn.Module, batches: list, amp_ctx) -> EvalResult | None:
    """evaluate, or None (no validation loss) while TODO 6 is open."""
    try:
        return evaluate(model, batches, amp_ctx)
    except NotImplementedError as todo:
        note_once(f"{todo} -- not done yet, so there is no validation loss")
        return None


class CtrlC:
    """The first Ctrl+C asks the loop to save a checkpoint and stop after the current
    step; a second one stops at once (KeyboardInterrupt), as usual. Not under DDP,
    where the processes could disagree on which step was the last."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested = False

    def __enter__(self) -> CtrlC:
        self.previous = None
        # Signals are delivered to the main thread only.
        if self.enabled and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("Ctrl+C: saving a checkpoint after this step (press Ctrl+C again to quit at once)")

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def check_finite(
    window_loss: torch.Tensor,
    bad_grad_steps: torch.Tensor,
    first_step: int,
    last_step: int,
    resume_path: Path,
) -> None:
    """Stop before a NaN or infinite loss or gradient is logged, evaluated or saved over a
    good checkpoint. (Checked at log, eval and save points only: each check makes the
    CPU wait for the GPU.)"""
    loss = window_loss.item()
    if math.isfinite(loss) and bad_grad_steps.item() == 0:
        return
    what = f"the loss became {loss}" if not math.isfinite(loss) else "the gradient norm became inf or nan"
    kept = (
        f"the last good checkpoint ({resume_path.name}) is kept"
        if resume_path.is_file()
        else "nothing was saved"
    )
    raise TrainingDiverged(
        f"{what} between steps {first_step} and {last_step}. Likely causes: a learning rate "
        f"too high for this model (lower --learning_rate or raise --warmup_steps), or float16 overflow (use "
        f"--dtype bfloat16); {kept}, continue from it with --from_resume 1 and a lower --learning_rate"
    )


def resume_state_if_done(*args) -> dict | None:
    """checkpoint_state(*args), or None (no resume checkpoint) while TODO 8 is open."""
    try:
        return checkpoint_state(*args)
    except NotImplementedError as todo:
        note_once(f"{todo} -- not done yet, so no resume checkpoint is saved (model.pt still is)")
        return None


# Dense bf16 peak FLOP/s of common training GPUs, for model FLOPs utilisation (MFU).
GPU_PEAK_FLOPS = {
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "4090": 165e12,
    "A10": 125e12,
    "V100": 125e12,
}


def gpu_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in GPU_PEAK_FLOPS.items() if key in name), None)


# ---------------------------------------------------------------------------
# 9. The command line and the training loop
# ---------------------------------------------------------------------------

# Defaults that depend on the hardware. CPU: a 0.8M-parameter model that learns
# Shakespeare's look in about 3 minutes on 2 cores, on a million characters
# (one epoch = 488 steps, so `--epochs 3` also takes a few minutes). GPU: nanoGPT's
# shakespeare-char scale (10.7M parameters) on all the plays, a few minutes on one GPU.
PRESETS = {
    "cpu": dict(
        num_hidden_layers=4,
        num_attention_heads=4,
        hidden_size=128,
        max_seq_len=64,
        dropout=0.0,
        batch_size=32,
        learning_rate=2e-3,
        max_steps=1800,
        max_train_tokens=1_000_000,
        eval_interval=300,
        num_workers=0,
    ),
    "gpu": dict(
        num_hidden_layers=6,
        num_attention_heads=6,
        hidden_size=384,
        max_seq_len=256,
        dropout=0.2,
        batch_size=64,
        learning_rate=1e-3,
        max_steps=5000,
        max_train_tokens=0,
        eval_interval=500,
        num_workers=2,
    ),
}


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        description="Pretrain a GPT on next-token prediction. With no options: prepares "
        "Shakespeare's plays, picks your device and trains a small model (about 3 minutes on "
        "a 2-core CPU). Options marked [preset] default to the cpu or gpu preset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--data_path",
        default=None,
        help='a .txt file or MiniMind .jsonl ({"text": ...} per line); default: Shakespeare',
    )
    data.add_argument(
        "--data_dir", default=None, help="where prepared corpora are kept (default: the data/ folder here)"
    )
    data.add_argument(
        "--tokenizer",
        default="char",
        choices=TOKENIZERS,
        help="char: one token per character; gpt2: GPT-2's BPE via tiktoken",
    )

    model = p.add_argument_group("model (MiniMind names; GPTConfig field in brackets)")
    model.add_argument("--hidden_size", type=int, help="[preset] embedding size (n_embd)")
    model.add_argument("--num_hidden_layers", type=int, help="[preset] Transformer blocks (n_layer)")
    model.add_argument("--num_attention_heads", type=int, help="[preset] heads per layer (n_head)")
    model.add_argument("--max_seq_len", type=int, help="[preset] context length in tokens (block_size)")
    model.add_argument("--dropout", type=float, help="[preset] dropout probability")
    model.add_argument(
        "--use_moe",
        type=int,
        default=0,
        choices=(0, 1),
        help="1: mixture-of-experts MLPs (4 experts, top-2 routing, load-balancing loss)",
    )

    train = p.add_argument_group("training")
    train.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="passes over the training split; sets the number of steps unless --max_steps is given",
    )
    train.add_argument(
        "--max_steps", type=int, default=None, help="[preset] optimizer steps to train (wins over --epochs)"
    )
    train.add_argument(
        "--dataset_mode",
        default="blocks",
        choices=("blocks", "documents"),
        help="blocks: the corpus packed into max_seq_len windows (no padding); documents: MiniMind's "
        "PretrainDataset, one padded document per sequence (needs a .jsonl --data_path)",
    )
    train.add_argument(
        "--max_train_tokens",
        type=int,
        help="[preset] train on N tokens of the training split, as windows spread evenly over it (0 = all); "
        "the cpu preset uses 1,000,000 so that an epoch is 488 steps and --epochs 3 takes a few minutes",
    )
    train.add_argument("--batch_size", type=int, help="[preset] sequences per micro-batch")
    train.add_argument(
        "--accumulation_steps",
        type=int,
        default=1,
        help="micro-batches per optimizer step (gradient accumulation)",
    )
    train.add_argument("--learning_rate", type=float, help="[preset] peak learning rate")
    train.add_argument(
        "--min_lr", type=float, default=None, help="final LR of the cosine (default: learning_rate / 10)"
    )
    train.add_argument(
        "--warmup_steps", type=int, default=None, help="linear warmup steps (default: 10%% of the steps)"
    )
    train.add_argument("--weight_decay", type=float, default=0.1, help="AdamW weight decay on 2-D weights")
    train.add_argument(
        "--grad_clip", type=float, default=1.0, help="clip the gradient norm to this (0 = off)"
    )
    train.add_argument("--seed", type=int, default=1337, help="random seed (weights, data order, dropout)")

    system = p.add_argument_group("system")
    system.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    system.add_argument(
        "--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (mixed precision)"
    )
    system.add_argument(
        "--preset",
        default="auto",
        choices=("auto", "cpu", "gpu"),
        help="defaults for the [preset] options; auto: gpu on CUDA, else cpu",
    )
    system.add_argument(
        "--use_compile", type=int, default=0, choices=(0, 1), help="1: torch.compile the model"
    )
    system.add_argument("--num_workers", type=int, help="[preset] DataLoader worker processes")

    out = p.add_argument_group("output")
    out.add_argument("--save_dir", default="out", help="checkpoints, metrics, plot and samples go here")
    out.add_argument("--log_interval", type=int, default=10, help="steps between log lines")
    out.add_argument("--eval_interval", type=int, help="[preset] steps between evaluations and samples")
    out.add_argument("--eval_iters", type=int, default=20, help="validation batches per evaluation")
    out.add_argument("--save_interval", type=int, default=500, help="steps between checkpoints")
    out.add_argument(
        "--from_resume",
        type=int,
        default=0,
        choices=(0, 1),
        help=f"1: continue the run saved in save_dir/{RESUME_FILE}",
    )
    out.add_argument("--from_weight", default="none", help="start from the weights in this .pt file")
    out.add_argument("--prompt", default="", help="text that samples start from (default: a new document)")
    out.add_argument("--sample_tokens", type=int, default=300, help="tokens per sample")

    grading = p.add_argument_group("exercises")
    grading.add_argument(
        "--test",
        nargs="?",
        const="all",
        metavar="TODO",
        help="grade the TODOs of this file with pytest and print a scoreboard (or one TODO: --test 2b)",
    )
    return p


def fill_preset(args: argparse.Namespace, device: torch.device) -> None:
    """Options left unset take the preset's value for this hardware."""
    preset = args.preset if args.preset != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    for key, value in PRESETS[preset].items():
        if getattr(args, key) is None and not (key == "max_steps" and args.epochs is not None):
            setattr(args, key, value)
    args.preset = preset


def check_options(args: argparse.Namespace) -> None:
    if args.dataset_mode == "documents" and not (args.data_path or "").endswith(".jsonl"):
        raise UsageError(
            "--dataset_mode documents reads MiniMind .jsonl documents: give --data_path file.jsonl"
        )
    positive = [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_seq_len",
        "batch_size",
        "accumulation_steps",
        "learning_rate",
        "log_interval",
        "eval_interval",
        "eval_iters",
        "save_interval",
        "sample_tokens",
    ]
    for name in positive + ["max_steps", "epochs"]:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name} must be positive, got {value}")
    for name in ["min_lr", "warmup_steps", "weight_decay", "grad_clip", "num_workers", "max_train_tokens"]:
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UsageError(f"--{name} must not be negative, got {value}")
    if not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.hidden_size % args.num_attention_heads:
        raise UsageError(
            f"--hidden_size {args.hidden_size} must be divisible by "
            f"--num_attention_heads {args.num_attention_heads}"
        )
    if args.min_lr is not None and args.min_lr > args.learning_rate:
        raise UsageError(f"--min_lr {args.min_lr} is larger than --learning_rate {args.learning_rate}")


def count_total_steps(args: argparse.Namespace, batches_per_epoch: int) -> int:
    if args.max_steps is not None:
        return args.max_steps
    steps_per_epoch = batches_per_epoch // args.accumulation_steps
    if steps_per_epoch == 0:
        raise UsageError(
            "one epoch is shorter than one optimizer step; lower --batch_size or --accumulation_steps"
        )
    return max(1, round(args.epochs * steps_per_epoch))


def block_dataset(prepared: Path, split: str, block_size: int) -> BlockDataset:
    try:
        return BlockDataset(load_tokens(prepared, split), block_size)
    except DataError as err:
        raise DataError(f"{split} split of {prepared.name}: {err}") from None


def document_datasets(
    path: Path, tokenizer: Tokenizer, max_seq_len: int, val_fraction: float = 0.1
) -> tuple[PretrainDataset, PretrainDataset]:
    """MiniMind-style datasets: the last val_fraction of the documents for validation."""
    n_documents = len(PretrainDataset(path, tokenizer, max_seq_len))
    n_val = max(1, int(n_documents * val_fraction))
    if n_documents - n_val < 1:
        raise DataError(
            f"{path} has {n_documents} document(s); documents mode needs at least 2 (train and val)"
        )
    return (
        PretrainDataset(path, tokenizer, max_seq_len, range(n_documents - n_val)),
        PretrainDataset(path, tokenizer, max_seq_len, range(n_documents - n_val, n_documents)),
    )


def limit_windows(dataset: BlockDataset, max_tokens: int) -> Dataset:
    """All windows, or max_tokens worth of them spread evenly over the split, so that
    a small budget still sees every play rather than the first few."""
    n_windows = max(1, max_tokens // dataset.block_size)
    if not max_tokens or n_windows >= len(dataset):
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, n_windows).round().astype(int).tolist())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.test:
        from tests.scoreboard import grade  # the graded tests live in tests/

        return grade(Path(__file__), None if args.test == "all" else args.test)
    try:
        train(args)
    except (UsageError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Interrupted as stop:
        print(f"interrupted: {stop}; continue with --from_resume 1", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted at once: the last saved checkpoint is kept", file=sys.stderr)
        return 130
    except NotImplementedError as todo:
        file = Path(__file__).name
        print(
            f"stopped at {todo}\n  Fill it in in {file}; `python {file} --test` grades it.", file=sys.stderr
        )
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def train(args: argparse.Namespace) -> None:
    # --- options, device, precision --------------------------------------------------
    group, device = init_distributed(resolve_device(args.device))
    dtype = resolve_dtype(args.dtype, device)
    fill_preset(args, device)
    check_options(args)
    save_dir = Path(args.save_dir)
    resume_path = save_dir / RESUME_FILE
    checkpoint = None
    if args.from_resume:
        if not resume_path.is_file():
            raise UsageError(f"--from_resume 1: there is no {RESUME_FILE} in {save_dir}/ to continue from")
        checkpoint = load_checkpoint(resume_path)
    # The same seed in every process: they read different data, and one saved random
    # state then serves them all on resume (MiniMind adds the rank instead).
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    # --- data ----------------------------------------------------------------------
    data_path = Path(args.data_path) if args.data_path else None
    data_dir = Path(args.data_dir) if args.data_dir else None
    target = prepared_dir(data_path, args.tokenizer, data_dir)
    if group.is_main:
        prepare(args.tokenizer, data_path, target)
    group.barrier()  # the other processes wait until the data is on disk, then reuse it
    prepared = prepare(args.tokenizer, data_path, target)
    meta = read_meta(prepared)
    tokenizer = tokenizer_from_meta(meta)
    if args.dataset_mode == "documents":
        train_set, val_set = document_datasets(data_path, tokenizer, args.max_seq_len)
        # Bits per byte from the whole corpus's bytes per token (the val documents are not the val split).
        bpb_tokens, bpb_bytes = (
            meta["train_tokens"] + meta["val_tokens"],
            meta["train_bytes"] + meta["val_bytes"],
        )
    else:
        train_set = limit_windows(block_dataset(prepared, "train", args.max_seq_len), args.max_train_tokens)
        val_set = block_dataset(prepared, "val", args.max_seq_len)
        bpb_tokens, bpb_bytes = meta["val_tokens"], meta["val_bytes"]
    stream = BatchStream(
        train_set,
        args.batch_size,
        args.seed,
        rank=group.rank,
        world_size=group.world_size,
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",  # page-locked memory: faster copies to the GPU
    )
    total_steps = count_total_steps(args, stream.batches_per_epoch)
    warmup_steps = args.warmup_steps if args.warmup_steps is not None else total_steps // 10
    if warmup_steps >= total_steps:
        raise UsageError(
            f"--warmup_steps {warmup_steps} must be smaller than the {total_steps} training steps"
        )
    min_lr = args.min_lr if args.min_lr is not None else args.learning_rate / 10

    # --- model, optimizer, scaler --------------------------------------------------
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        block_size=args.max_seq_len,
        n_layer=args.num_hidden_layers,
        n_head=args.num_attention_heads,
        n_embd=args.hidden_size,
        dropout=args.dropout,
        use_moe=bool(args.use_moe),
    )
    model = GPT(config)
    if args.from_weight != "none":
        if not Path(args.from_weight).is_file():
            raise UsageError(f"--from_weight {args.from_weight}: no such file")
        weights = load_checkpoint(Path(args.from_weight))
        check_same("model config", weights["model_config"], config.to_dict())
        model.load_state_dict(weights["model"])
    model.to(device)
    optimizer = model.configure_optimizers(args.weight_decay, args.learning_rate, (0.9, 0.95), device.type)
    amp_ctx, scaler = mixed_precision(device, dtype)

    start_step, best_val_loss = 0, float("inf")
    metrics_path = save_dir / METRICS_FILE
    data_source = {"tokenizer": meta["tokenizer"], "source": meta["source"]}
    if checkpoint is not None:
        check_same("model config", checkpoint["model_config"], config.to_dict())
        check_same("data", checkpoint["data_source"], data_source)
        start_step, data_position, best_val_loss = restore_checkpoint(checkpoint, model, optimizer, scaler)
        stream.seek(**data_position)  # continue with the first batch the stopped run had not seen
    # On resume, keep the metrics up to the checkpoint and drop any logged after it.
    records = read_metrics(metrics_path, up_to_step=start_step) if checkpoint else []
    if group.is_main:
        save_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
        if checkpoint is None:
            (save_dir / SAMPLES_FILE).unlink(missing_ok=True)  # a new run starts a new samples file
    # torch.compile fuses the model's ops into faster kernels; DistributedDataParallel
    # averages the gradients of all processes during backward. Both wrap `model`, which
    # we keep for evaluation and state_dicts, so checkpoint keys stay plain.
    train_model = torch.compile(model) if args.use_compile else model
    if group.world_size > 1:
        train_model = DistributedDataParallel(
            train_model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.use_moe,  # an expert may get no token in a batch
        )

    tokens_per_step = args.batch_size * args.accumulation_steps * args.max_seq_len * group.world_size
    eval_batches = [
        (x.to(device), y.to(device)) for x, y in fixed_eval_batches(val_set, args.batch_size, args.eval_iters)
    ]
    peak_flops = gpu_peak_flops(device)
    log = print if group.is_main else (lambda *_: None)
    log(
        f"{group.world_size} processes, "
        * (group.world_size > 1)
        + f"device {device} ({str(dtype).removeprefix('torch.')}), preset {args.preset}, "
        f"{model.num_params() / 1e6:.2f}M parameters, tokenizer {tokenizer.name} "
        f"(vocab {tokenizer.vocab_size}), training on {len(train_set) * args.max_seq_len:,} "
        f"of {meta['train_tokens']:,} tokens"
    )
    log(
        f"steps {start_step} → {total_steps}, {tokens_per_step:,} tokens per step, "
        f"{stream.batches_per_epoch // args.accumulation_steps} steps per epoch, warmup {warmup_steps}"
    )
    if checkpoint is None and resume_path.is_file():
        log(f"note: starting a new run; {resume_path} will be replaced (--from_resume 1 continues it)")

    def run_evaluation(step: int) -> None:
        nonlocal best_val_loss
        summary = f"step {step}"
        result = evaluate_if_done(model, eval_batches, amp_ctx)
        if result is not None:
            bpb = bits_per_byte(result.loss, bpb_tokens, bpb_bytes)
            best_val_loss = min(best_val_loss, result.loss)
            record = {"step": step, "val_loss": result.loss, "val_ppl": result.perplexity, "val_bpb": bpb}
            records.append(record)
            append_metrics(metrics_path, record)
            summary += (
                f": val loss {result.loss:.4f}, perplexity {result.perplexity:.2f}, {bpb:.3f} bits/byte"
            )
        sample = sample_text(model, tokenizer, args.prompt, args.sample_tokens, device, args.seed)
        with open(save_dir / SAMPLES_FILE, "a") as f:
            f.write(f"=== {summary} ===\n{sample}\n\n")
        tqdm.write(f"{summary}\n--- sample ---\n{sample}\n--------------")
        plot_metrics(records, save_dir / PLOT_FILE)

    def log_train_record(step: int, loss: float, lr: float, grad_norm: float, tokens_per_sec: float) -> None:
        record = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
            "tokens_per_sec": tokens_per_sec,
        }
        if scaler.is_enabled():
            record["skipped_steps"] = skipped_steps
        if peak_flops:
            record["mfu"] = model.flops_per_token() * tokens_per_sec / peak_flops
        records.append(record)
        append_metrics(metrics_path, record)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}")

    def save(step: int) -> None:
        save_atomic(
            {"model": model.state_dict(), "model_config": config.to_dict(), "tokenizer": tokenizer.meta()},
            save_dir / WEIGHTS_FILE,
        )
        state = resume_state_if_done(model, optimizer, scaler, step, stream, best_val_loss)
        if state is not None:
            # With the configs and the data's identity, so a resume can refuse a mismatch.
            context = {
                "model_config": config.to_dict(),
                "data_source": data_source,
                "tokenizer": tokenizer.meta(),
                "train_args": vars(args),
            }
            save_atomic({**state, **context}, resume_path)

    # --- the loop ------------------------------------------------------------------
    if start_step == 0 and group.is_main:
        run_evaluation(0)  # the untrained model: loss ≈ ln(vocab size)
    bar = tqdm(total=total_steps, initial=start_step, desc="training", unit="step", disable=not group.is_main)
    window_loss, window_steps = torch.zeros(()), 0  # train loss averaged over a log interval
    timed_steps, timer_start = 0, time.perf_counter()  # throughput, not counting eval or saving
    skipped_steps = 0  # float16 steps the GradScaler skipped because of inf/NaN gradients
    bad_grad_steps = torch.zeros((), dtype=torch.int)  # steps with an inf/NaN gradient norm, no scaler
    last_checked = start_step
    with CtrlC(enabled=group.world_size == 1) as ctrl_c:
        for step in range(start_step, total_steps):
            lr = scheduled_lr(step, warmup_steps, total_steps, args.learning_rate, min_lr)
            micro_batches = [
                (x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                for x, y in (next(stream) for _ in range(args.accumulation_steps))
            ]
            stats = train_step(train_model, optimizer, scaler, micro_batches, lr, args.grad_clip, amp_ctx)
            window_loss = window_loss.to(stats.loss.device) + stats.loss
            window_steps += 1
            timed_steps += 1
            grad_is_bad = ~torch.isfinite(stats.grad_norm)
            if scaler.is_enabled():  # float16 overflows now and then: the scaler skips those steps
                skipped_steps += int(grad_is_bad)  # a GPU sync, but scaler.step() just made one anyway
            else:  # without a scaler, a bad gradient has already reached the weights
                bad_grad_steps = bad_grad_steps.to(grad_is_bad.device) + grad_is_bad.int()
            done = step + 1  # optimizer steps completed
            bar.update(1)

            at_log = done % args.log_interval == 0 or done == total_steps
            at_eval = done % args.eval_interval == 0 or done == total_steps
            at_save = done % args.save_interval == 0 or done == total_steps or ctrl_c.requested
            if at_log or at_eval or at_save:
                window_loss = group.mean(window_loss)  # every process's loss, averaged
                check_finite(window_loss, bad_grad_steps, last_checked + 1, done, resume_path)
                last_checked = done
            if at_log:
                # .item() waits for the GPU to finish, so the clock is read after the work.
                mean_loss = window_loss.item() / window_steps
                tokens_per_sec = timed_steps * tokens_per_step / (time.perf_counter() - timer_start)
                if group.is_main:
                    log_train_record(done, mean_loss, lr, stats.grad_norm.item(), tokens_per_sec)
                window_loss, window_steps = torch.zeros(()), 0
                timed_steps, timer_start = 0, time.perf_counter()
            if at_eval and group.is_main:
                run_evaluation(done)
                timed_steps, timer_start = 0, time.perf_counter()
            if at_save and group.is_main:
                save(done)
                timed_steps, timer_start = 0, time.perf_counter()
            if ctrl_c.requested:
                bar.close()
                raise Interrupted(f"checkpoint of step {done} saved in {save_dir}")
    bar.close()
    print(
        f"done: weights in {save_dir / WEIGHTS_FILE}, resume checkpoint in {resume_path}, "
        f"metrics in {metrics_path}, plot in {save_dir / PLOT_FILE}"
    )


if __name__ == "__main__":
    sys.exit(main())
