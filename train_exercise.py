# Generated from train_solution.py by tools/make_exercises.py: fill in the TODOs here.
# (To change the course itself, edit train_solution.py and run the script again.)
"""Pretrain a GPT on next-token prediction (下一个词预测): the training chapter.

What you build here, in the order the tutorial meets it (TODO numbers in brackets):

1. `get_lr`: the learning-rate schedule, linear warmup then cosine decay [2a, 2b].
2. The training step: `set_lr` [3a], `compute_loss` [3b], `clip_and_step` [3c] and
   gradient accumulation over micro-batches, `accumulate_gradients` [4], put together
   by `train_step`.
3. Mixed precision: the autocast context and the GradScaler [5].
4. `evaluate`: the mean loss per real target over fixed validation batches, and perplexity [6].
5. `checkpoint_state` / `restore_checkpoint`: everything an exact resume needs [8].
6. The training loop, `train`: set up, then for every optimizer step: LR, batches,
   train_step, log, evaluate, save.

The machinery around it (options and presets, corpus files, the resumable batch
order, processes under torchrun, the run's folder and checkpoint files, logging,
Ctrl+C/SIGTERM and the NaN guard) is in the `course` package: one call each from here.

Check your TODOs and run it:
    python train_exercise.py --test               # grade the TODOs of this file (--test 2b: one)
    python train_exercise.py --hint 2b            # one hint at a time for a TODO
    python train_exercise.py                      # the main job: Shakespeare on your CPU/GPU
    python train_exercise.py --help               # every option
    python train_exercise.py --from_resume 1      # continue the run saved in out/
    python train_exercise.py --overwrite 1        # replace it with a new run
    torchrun --standalone --nproc_per_node=2 train_exercise.py   # several processes (DDP)
    torchrun --standalone --nproc_per_node=2 train_exercise.py --parallel fsdp   # sharded (FSDP)

A step is one optimizer step: the LR schedule, logging, evaluation and checkpoints
all count optimizer steps, never micro-batches. Losses are in nats per token.
"""

from __future__ import annotations

import math
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from course import cli, open_todos
from course.batches import BatchStream, block_dataset, document_datasets, fixed_eval_batches, limit_windows
from course.checkpoints import (
    capture_rng_state,
    fit_scaler_state,
    load_weights,
    restore_rng_state,
    seed_everything,
)
from course.config import RunConfig
from course.corpus import prepare, prepared_dir, read_meta
from course.devices import forked_rng
from course.distributed import (
    ProcessGroup,
    build_sharded,
    mean_over_processes,
    no_sync,
    sum_over_processes,
    whole_weights,
    wrap_for_training,
)
from course.errors import Interrupted
from course.guards import StopRequests
from course.logbook import Logbook
from course.profiling import StepProfiler
from course.run_folder import BEST_FILE, RunFolder
from data_exercise import BlockDataset, PretrainDataset, Tokenizer, tokenizer_from_meta
from model import GPT, IGNORE_INDEX, GPTConfig
from optim import configure_optimizers

NO_AUTOCAST = nullcontext()  # float32 everywhere: the context that changes nothing


# ---------------------------------------------------------------------------
# 1. The learning-rate schedule
# ---------------------------------------------------------------------------


def get_lr(step: int, warmup_steps: int, total_steps: int, max_lr: float, min_lr: float) -> float:
    """The learning rate for optimizer step `step` (0-based): warmup, then cosine decay.

    Warmup: at the start the weights are random and Adam's moment estimates are
    still empty, so a full-size step can throw the model somewhere it never recovers
    from (the loss spikes or diverges). Growing the LR linearly over warmup_steps
    avoids that. The very first step must already move the weights: an LR of 0 would
    waste it.

    Cosine decay: once training is stable, big steps help it travel fast; near the
    end, small steps let it settle into a minimum instead of bouncing around it.
    Half a cosine falls slowly at first, fastest midway and slowly again at the end;
    below min_lr the steps would be too small to be worth their compute.
    """
    if step < warmup_steps:
        # TODO 2a: warmup: a linear ramp up to max_lr
        #   For step < warmup_steps: the LR climbs from 0 to max_lr in warmup_steps equal
        #   increments, one per step, so it already moves the weights at step 0 and is
        #   max_lr at the last step of the warmup. Stuck? python train_exercise.py --hint 2a
        raise NotImplementedError("TODO 2a: warmup: a linear ramp up to max_lr")
        # END TODO 2a
    # TODO 2b: cosine decay from max_lr to min_lr
    #   For step >= warmup_steps: max_lr at step warmup_steps, where the decay starts;
    #   min_lr at step total_steps and at every later step; in between, the LR follows
    #   half a cosine period as the step moves through the decay, never below min_lr.
    #   Stuck? python train_exercise.py --hint 2b
    raise NotImplementedError("TODO 2b: cosine decay from max_lr to min_lr")
    # END TODO 2b


# ---------------------------------------------------------------------------
# 2. The training step
# ---------------------------------------------------------------------------


@dataclass
class StepStats:
    loss: torch.Tensor  # the LM loss: mean per real target of the step (detached, on the device)
    aux_loss: torch.Tensor  # the routers' load-balancing loss, weighted the same way (0 without MoE)
    targets: torch.Tensor  # this process's count of real targets in the step
    grad_norm: torch.Tensor  # gradient norm before clipping


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's LR, handed to the optimizer for its next step.

    An optimizer holds no single learning rate: its parameters come in groups (optim.py
    makes one with weight decay and one without, and one for Muon), each with its own
    settings. Groups may need different LRs: Muon's orthogonalised steps want a much
    larger LR than AdamW's, so its group carries an "lr_scale", a multiple of the
    schedule's LR. One schedule (warmup, cosine) then drives every group.
    """
    # TODO 3a: the learning rate of the optimizer's next step
    #   After this call the next step trains every parameter at lr, or at lr × lr_scale
    #   where its group carries an "lr_scale" (a group without one takes lr itself), and
    #   every other setting of every group is as it was. Where does the optimizer read
    #   its LR from? Stuck? python train_exercise.py --hint 3a
    raise NotImplementedError("TODO 3a: the learning rate of the optimizer's next step")
    # END TODO 3a


def compute_loss(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward pass: the model scores every next token; returns the two losses.

    The language-model loss is the mean cross-entropy against the targets y (x shifted
    by one), in nats per token: what evaluation reports. With mixture-of-experts MLPs
    (--use_moe 1) training also minimises the routers' load-balancing loss, added to it
    (MiniMind: loss = res.loss + res.aux_loss); kept apart, each is logged as itself.
    """
    # TODO 3b: the forward pass: (the LM loss of predicting y from x, the auxiliary loss)
    #   Returns two scalar tensors, still attached to the autograd graph (backward
    #   follows): the mean cross-entropy in nats per real target, and the routers'
    #   load-balancing loss (a zero without mixture-of-experts). The model in model.py
    #   can compute both for you. Stuck? python train_exercise.py --hint 3b
    raise NotImplementedError(
        "TODO 3b: the forward pass: (the LM loss of predicting y from x, the auxiliary loss)"
    )
    # END TODO 3b


def clip_and_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, grad_clip: float
) -> torch.Tensor:
    """Update the weights from the accumulated gradients; returns the gradient norm.

    Clipping the global gradient norm to grad_clip keeps one unlucky batch from
    throwing the weights far away (0 turns clipping off; the norm is still measured,
    for the log). With float16 the gradients are still multiplied by the scaler's
    factor, and a clip must compare true numbers. The scaler also skips a step whose
    float16 gradients overflowed, and adapts its factor after every step. Gradients
    reset to None cost less than zeros, and the next backward writes them fresh
    instead of adding to stale ones.
    """
    # TODO 3c: update the weights from the accumulated gradients; return the norm
    #   Returns the gradient norm before clipping, in true (unscaled) units. The weights
    #   move by the true gradient clipped to norm grad_clip (0: no clipping); a float16
    #   step whose gradients overflowed leaves them unchanged, and the scaler's scale is
    #   updated after every step; the gradients are None afterwards. The order of the
    #   calls is the point. Stuck? python train_exercise.py --hint 3c
    raise NotImplementedError("TODO 3c: update the weights from the accumulated gradients; return the norm")
    # END TODO 3c


def accumulate_gradients(
    model: torch.nn.Module,
    scaler: torch.amp.GradScaler,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    amp_ctx=NO_AUTOCAST,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and backward over k micro-batches; returns the step's mean losses (detached)
    and its count of real targets.

    backward() adds into .grad, so k micro-batches give the gradient of one batch k
    times larger, in the memory of one micro-batch, if each loss gets the right
    weight. The model's loss is a mean over its micro-batch's real targets (padding
    is IGNORE_INDEX and does not count). With packed blocks every micro-batch has
    B·T of them and the weight is simply 1/k. With padded documents the counts
    differ, and dividing by k would make a token of a mostly-padding micro-batch
    weigh more than a token of a full one (Hugging Face transformers fixed this bug
    in October 2024). What each micro-batch backwards is the training objective, the
    LM loss plus the auxiliary loss (compute_loss).

    Under DistributedDataParallel every backward also averages gradients across
    processes; `no_sync(model)` skips that for all but the last micro-batch, where it
    is needed once (for a model sharded with FSDP it turns the reduce-scatter off the
    same way). DDP averages the processes' gradients: for every real target of every
    process to weigh the same, all of them must weight their losses by the same count,
    not each by its own.
    """
    # TODO 4: forward + backward over every micro-batch; return its mean losses and target count
    #   Afterwards .grad holds the gradient of the training objective (LM loss + auxiliary
    #   loss) averaged over every real target of the step (targets equal to IGNORE_INDEX
    #   are padding), as one batch k times larger would give, also when micro-batches hold
    #   different numbers of real targets. Under DDP only the last backward averages
    #   gradients across processes (the others run inside no_sync(model)), and the count
    #   that divides is the mean count of a process (mean_over_processes; both imported at
    #   the top). Forwards run under amp_ctx, backwards go through the scaler. Returns this
    #   process's (LM loss, auxiliary loss, count of real targets), the losses each a mean
    #   per real target of the step. Stuck? python train_exercise.py --hint 4
    raise NotImplementedError(
        "TODO 4: forward + backward over every micro-batch; return its mean losses and target count"
    )
    # END TODO 4


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
    lm_loss, aux_loss, targets = accumulate_gradients(model, scaler, micro_batches, amp_ctx)
    grad_norm = clip_and_step(model, optimizer, scaler, grad_clip)
    return StepStats(loss=lm_loss, aux_loss=aux_loss, targets=targets, grad_norm=grad_norm)


# ---------------------------------------------------------------------------
# 3. Mixed precision
# ---------------------------------------------------------------------------


def autocast_context(device: torch.device, dtype: torch.dtype):
    """Mixed precision (AMP): matmuls run in a 16-bit type, about twice as fast and
    with half the activation memory, while the weights, the optimizer state and
    precision-sensitive ops (softmax, losses) stay in float32.

    bfloat16 keeps float32's 8 exponent bits (same range, fewer digits): nothing
    overflows or underflows, so it needs no GradScaler. float16 has 5 exponent bits
    (largest 65,504, smallest normal 6e-5): small gradients flush to zero unless the
    loss is scaled up first (see make_grad_scaler). Use bfloat16 where the GPU has it.
    """
    # TODO 5: mixed precision for this device and number type
    #   Returns a context manager. With bfloat16 or float16, the matmuls inside it run in
    #   that type on the kind of device given (cpu, cuda or mps), the other devices'
    #   untouched; with float32 nothing changes inside it. Stuck? python train_exercise.py --hint 5
    raise NotImplementedError("TODO 5: mixed precision for this device and number type")
    # END TODO 5


def make_grad_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    """float16 has only 5 exponent bits: small gradients underflow to zero. The scaler
    multiplies the loss by a large factor before backward and divides the gradients
    by it before the update. bfloat16 has float32's range and needs no scaler; a
    disabled scaler passes every call straight through."""
    # TODO 5: the GradScaler this number type needs
    #   Returns a torch.amp.GradScaler for this device, switched on for the number type
    #   whose range needs loss scaling and off for the two that do not (the docstring
    #   says which). The training step always calls one: a scaler that is off passes
    #   every call through. Stuck? python train_exercise.py --hint 5
    raise NotImplementedError("TODO 5: the GradScaler this number type needs")
    # END TODO 5


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
    """Mean loss per real target over the fixed validation windows, shared out over the
    processes: `batches` are this process's share (course.batches.fixed_eval_batches).

    Fixed windows (not random ones) make evaluations comparable between steps and
    between runs: a change in val loss is a change in the model, not in the sample.
    Each process adds up its losses and its real targets, and one all-reduce adds up
    the processes: every real target of every window weighs the same, whatever the
    batch size or the number of processes. eval() turns dropout off; no_grad() skips
    building the backward graph.
    """
    # TODO 6: the validation loss and perplexity of the model as it is
    #   Returns an EvalResult: the mean loss over every real target of every process's
    #   batches (targets equal to IGNORE_INDEX are padding; with padded documents, batches
    #   hold different numbers of real targets) as a Python float, and its exponential. The
    #   sums over processes come from sum_over_processes (imported at the top), which every
    #   process calls. Forwards run under amp_ctx, with dropout off and no autograd graph;
    #   the model is back in training mode afterwards. Stuck? python train_exercise.py --hint 6
    raise NotImplementedError("TODO 6: the validation loss and perplexity of the model as it is")
    # END TODO 6


# ---------------------------------------------------------------------------
# 5. Checkpoints for an exact resume
# ---------------------------------------------------------------------------


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
    resumed run quietly becomes a different run.

    The data position is the stream's own account of where it is: `stream.state()`
    gives it as a small dict (the epoch and how many batches of it were served), and
    `stream.seek(**position)` sends a stream back there. The random generators of every
    process are captured by `capture_rng_state()` and put back by `restore_rng_state()`
    (course/checkpoints.py, imported at the top). The run's checkpoint files read four
    keys of this dict: "model", "optimizer", "scaler" (the state dicts) and "step"; name
    the others as you like.
    """
    # TODO 8: a dict with everything an exact resume needs
    #   After checkpoint_state and restore_checkpoint the run goes on exactly as if it had
    #   never stopped: the same weights, optimizer moments, GradScaler scale, step, next
    #   batch, next random numbers and best_val_loss. The dict holds them under keys of your
    #   choice, but the model's, the optimizer's and the scaler's states must be under
    #   "model", "optimizer" and "scaler", and the step under "step" (the run's checkpoint
    #   files read those). Stuck? python train_exercise.py --hint 8
    raise NotImplementedError("TODO 8: a dict with everything an exact resume needs")
    # END TODO 8


def restore_checkpoint(
    checkpoint: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> tuple[int, dict, float]:
    """Load a checkpoint_state() dict back; returns (step, data position, best val loss).

    train() then sends its stream to the returned position with `stream.seek(**position)`,
    so the position is the dict that `stream.state()` gave when the state was saved.
    """
    # TODO 8: load a checkpoint_state() dict back into the run
    #   The model, the optimizer, the scaler and the random generators take back their
    #   saved states; returns (step, data position, best_val_loss) as they were saved, the
    #   position as stream.state() gave it. Stuck? python train_exercise.py --hint 8
    raise NotImplementedError("TODO 8: load a checkpoint_state() dict back into the run")
    # END TODO 8


# ---------------------------------------------------------------------------
# 6. The training loop
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """The command line (`--help` lists every option); the exit code says how the run ended."""
    return open_todos.main(sys.modules[__name__], argv, script=Path(__file__))


def load_data(
    config: RunConfig, group: ProcessGroup, device: torch.device
) -> tuple[dict, Tokenizer, BatchStream, list]:
    """The corpus's meta.json and tokenizer, the training batches and the fixed
    validation batches. The data are windows of the token files (BlockDataset, TODO 1)
    or, with --dataset_mode documents, MiniMind's padded documents (PretrainDataset, TODO 7)."""
    data_path = Path(config.data_path) if config.data_path else None
    target = prepared_dir(data_path, config.tokenizer, Path(config.data_dir) if config.data_dir else None)
    if group.is_local_main:  # one process per machine: each machine has its own disk
        prepare(config.tokenizer, data_path, target)  # tokenize once; later runs reuse the files
    group.barrier()  # the others wait until the data is on disk (course.distributed: timeouts)
    meta = read_meta(target)
    tokenizer = tokenizer_from_meta(meta)
    cli.check_prompt(config.prompt, tokenizer)
    T = config.max_seq_len
    if config.dataset_mode == "documents":
        train_set, val_set = document_datasets(PretrainDataset, data_path, tokenizer, T)
    else:
        # The cpu preset trains on a spread-out subset of the windows (--max_train_tokens).
        train_set = limit_windows(block_dataset(BlockDataset, target, "train", T), config.max_train_tokens)
        val_set = block_dataset(BlockDataset, target, "val", T)
    # Each process draws its own share of every batch; page-locked (pinned) memory copies faster to a GPU.
    stream = BatchStream(
        train_set,
        config.batch_size,
        config.seed,
        rank=group.rank,
        world_size=group.world_size,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )
    # This process's share of the validation windows: the same windows for any batch size or process count.
    share = fixed_eval_batches(val_set, config.eval_tokens, config.batch_size, group.rank, group.world_size)
    eval_batches = [(x.to(device), y.to(device)) for x, y in share]
    return meta, tokenizer, stream, eval_batches


def build_model(
    config: RunConfig, tokenizer: Tokenizer, device: torch.device, group: ProcessGroup, dtype: torch.dtype
) -> GPT:
    """The GPT of the chosen size (model.py): fresh, or with --from_weight an earlier run's
    weights. Under FSDP sharded as it is built, so that it never exists whole on one device
    (course.distributed.build_sharded), before the optimizer, whose state is then sharded too."""
    model_config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        block_size=config.max_seq_len,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_embd=config.hidden_size,
        dropout=config.dropout,
        use_moe=bool(config.use_moe),
        position=config.position,
        norm=config.norm,
        mlp=config.mlp,
        qk_norm=bool(config.qk_norm),
        zero_init=bool(config.zero_init),
        tie_weights=bool(config.tie_weights),
    )
    # The same initial weights in every process, from --seed (not seed + rank): FSDP keeps
    # each process's shard of the same draws (DDP would copy rank 0's to the others anyway).
    # Forked, so that the dropout masks still come from seed + rank, on the device too.
    with forked_rng(device):
        torch.manual_seed(config.seed)
        if config.parallel == "fsdp":
            model = build_sharded(lambda: GPT(model_config), group, device, dtype)
        else:
            model = GPT(model_config).to(device)
    model.activation_checkpointing = bool(config.activation_checkpointing)  # memory for compute
    if config.from_weight != "none":
        load_weights(model, Path(config.from_weight), tokenizer.meta())
    return model


def validate(
    step: int,
    model: GPT,
    eval_batches: list,
    amp_ctx,
    best_val_loss: float,
    logbook: Logbook,
    run: RunFolder,
    group: ProcessGroup,
) -> float:
    """Evaluate [6], log it with a text sample, and keep the weights of the best
    validation loss so far in best.pt (what nanoGPT keeps); returns the best loss.
    Every process runs this on its share of the validation windows, and gets the
    loss over all of them; rank 0 writes. Under FSDP the weights are gathered once for
    the evaluation and its sample (whole_weights), not once per forward pass."""
    with whole_weights(model):
        result = evaluate(model, eval_batches, amp_ctx)
        logbook.log_eval(step, result, model)
    # None: the exercise file's stand-in while its TODO 6 is open (course.open_todos).
    if result is not None and result.loss < best_val_loss:
        best_val_loss = result.loss
        run.save_weights(model, BEST_FILE, step=step, val_loss=result.loss)
        group.barrier()  # while rank 0 writes (course.distributed: timeouts)
    return best_val_loss


def evaluation_due(done: int, eval_interval: int, end_step: int) -> bool:
    """Evaluate every eval_interval steps and at the end, and three times more in the
    first interval (after 1/8, 1/4 and 1/2 of it), where the loss falls fastest: the
    validation curve then shows its shape instead of a straight line from step 0."""
    early = {eval_interval // 8, eval_interval // 4, eval_interval // 2} - {0}
    return done % eval_interval == 0 or done == end_step or done in early


def save_checkpoint(
    run: RunFolder,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    step: int,
    stream: BatchStream,
    best_val_loss: float,
    group: ProcessGroup,
) -> None:
    """model.pt (the weights, to sample from or start another run) and resume.pt (the
    checkpoint_state [8] that continues this run), each written atomically by rank 0.
    Every process builds the state: the random generators of all of them go into it.
    Under FSDP every process also writes its own shard of the weights and optimizer
    state (course.run_folder)."""
    state = checkpoint_state(model, optimizer, scaler, step, stream, best_val_loss)
    run.save_checkpoint(model, optimizer, state, group)
    # The others wait for rank 0's writing here, on the gloo group with its long timeout,
    # not in the next step's collectives (course.distributed: timeouts).
    group.barrier()


def train(command_line: cli.CommandLine) -> None:
    """Set up, then for every optimizer step: LR, batches, train_step, log, evaluate, save.
    Under torchrun every process runs this; only rank 0 logs and saves."""
    # The run's config (course.config): the command line and the preset, checked; frozen.
    group, device, dtype, config = cli.configure(command_line)  # and the device, number type, processes
    run = cli.claim_run_folder(config, group)  # this run's files; another run's are never touched
    checkpoint = run.load_resume() if config.from_resume else None
    config, saved_plan = cli.continue_plan(config, checkpoint, group)  # a resume: its saved plan
    cli.check_parallel(config, group, dtype)
    seed_everything(config.seed, group.rank)

    meta, tokenizer, stream, eval_batches = load_data(config, group, device)
    schedule = cli.plan_schedule(config, stream.batches_per_epoch, saved_plan)  # steps, warmup, min LR

    model = build_model(config, tokenizer, device, group, dtype)
    run.check_free_space(model)  # room for a checkpoint, found before anything is written
    # Muon's LR as a multiple of the schedule's (set_lr applies it); 0: AdamW for everything.
    muon_lr_scale = config.muon_lr / config.learning_rate if config.optimizer == "muon" else 0.0
    optimizer = configure_optimizers(
        model,
        config.weight_decay,
        config.learning_rate,
        (0.9, config.beta2),
        device.type,
        muon_lr_scale,
        dtype,
    )
    amp_ctx, scaler = autocast_context(device, dtype), make_grad_scaler(device, dtype)  # mixed precision [5]
    run.describe(
        model.config.to_dict(),
        tokenizer.meta(),
        meta,
        config.to_dict(),
        cli.run_plan(config, schedule, group),
    )
    start_step, best_val_loss = 0, float("inf")
    if checkpoint is not None:  # continue the stopped run exactly: same state, same next batch
        run.check_same_run(checkpoint)
        run.read_shards(checkpoint, model, optimizer)  # FSDP: each process reads its own shards
        checkpoint = fit_scaler_state(checkpoint, scaler)  # --dtype float16 on a run saved without it
        start_step, data_position, best_val_loss = restore_checkpoint(checkpoint, model, optimizer, scaler)
        stream.seek(**data_position)
    resumed_at = start_step if checkpoint is not None else None
    logbook = Logbook(config, group, device, dtype, tokenizer, meta, scaler, optimizer, resumed_at, run)
    train_model = wrap_for_training(model, group, device, config.use_compile)
    logbook.print_setup(model, len(stream.dataset), schedule, start_step, stream.batches_per_epoch)

    if start_step == 0:  # the untrained model: loss ≈ ln(vocab size)
        best_val_loss = validate(0, model, eval_batches, amp_ctx, best_val_loss, logbook, run, group)
    end_step = schedule.end_step
    profiler = StepProfiler(config.profile, run, device, group.is_main)  # --profile N
    with StopRequests(announce=group.is_main) as signals, logbook.progress(start_step, end_step), profiler:
        for step in range(start_step, end_step):
            lr = get_lr(
                step, schedule.warmup_steps, schedule.total_steps, config.learning_rate, schedule.min_lr
            )
            micro_batches = [
                (x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                for x, y in (next(stream) for _ in range(config.accumulation_steps))
            ]
            stats = train_step(train_model, optimizer, scaler, micro_batches, lr, config.grad_clip, amp_ctx)
            logbook.step_done(stats)
            profiler.step()

            done = step + 1  # optimizer steps completed
            # Read once, and agreed by every process: a Ctrl+C or SIGTERM stops them all after this step.
            stop = group.any(signals.requested is not None)
            at_log = done % config.log_interval == 0 or done == end_step
            at_eval = evaluation_due(done, config.eval_interval, end_step)
            at_save = done % config.save_interval == 0 or done == end_step or stop
            if at_log or at_eval or at_save:
                # The losses and real targets since the last log line, summed over the processes;
                # checked before a NaN is logged or saved over a good checkpoint.
                window = sum_over_processes(logbook.window)
                logbook.check_finite(done, window)
            if at_log:
                logbook.log_train(done, lr, model.flops_per_token(), window)
            with profiler.paused():  # --profile records training steps only
                if at_eval:  # every process evaluates its share of the windows (one all-reduce)
                    best_val_loss = validate(
                        done, model, eval_batches, amp_ctx, best_val_loss, logbook, run, group
                    )
                if at_save:
                    logbook.plot()  # metrics.png goes with the checkpoint
                    save_checkpoint(run, model, optimizer, scaler, done, stream, best_val_loss, group)
            if at_eval or at_save:
                logbook.restart_clock()  # tokens/s counts training steps only
            if stop:
                raise Interrupted(f"checkpoint of step {done} saved in {run.save_dir}", signals.signum())
    logbook.print_done()


if __name__ == "__main__":
    sys.exit(main())
