"""The command line of the training script: options, presets, checks, exit codes.

    python train_solution.py --help     every option, grouped, with its default

Option names follow MiniMind's `train_pretrain.py` (--epochs --batch_size
--learning_rate --accumulation_steps --grad_clip --dtype --device --save_dir ...)
plus what nanoGPT users expect (--max_steps --warmup_steps --min_lr --eval_interval
--seed). Options marked [preset] default to the `cpu` or `gpu` preset for the device.
A mistake in the options ends the run before anything is written: one line that
starts with `error:`, exit code 2. A run never writes into another run's folder
(course.run_folder).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

import torch
import torch.distributed as dist

from course import corpus, tracking
from course.config import RunConfig
from course.corpus import TOKENIZERS
from course.devices import enable_tf32, memory_of, resolve_device, resolve_dtype, usable_cpus
from course.distributed import PARALLEL_MODES, ProcessGroup, init_distributed, shut_down
from course.errors import (
    DataError,
    Interrupted,
    OneLineErrorParser,
    StopNow,
    StorageError,
    TrainingDiverged,
    UsageError,
    says_the_error,
)
from course.grading import show_hint
from course.guards import STOP_SIGNALS, stop_at_once_on_sigterm
from course.run_folder import RESUME_FILE, RunFolder, check_folder, out_of_space
from course.todos import TODOS
from course.tracking import BACKENDS
from model import CHOICES, GPTConfig

HINT_HELP = "print the next hint for a TODO: first the idea, then the API names, pseudocode last"

# Defaults that depend on the hardware. CPU: a 0.8M-parameter model that learns
# Shakespeare's look in about the wall time of nanoGPT's CPU recipe (docs/reference-runs.md
# gives it for each kind of CPU), on 2.5M tokens: windows that each come once, from all the plays
# (an epoch is 2,222 steps). GPU: nanoGPT's shakespeare-char scale (10.7M parameters),
# a few minutes on one GPU.
PRESETS = {
    "cpu": dict(
        num_hidden_layers=4,
        num_attention_heads=4,
        hidden_size=128,
        max_seq_len=64,
        dropout=0.0,
        batch_size=32,
        learning_rate=2e-3,
        max_steps=1200,
        max_train_tokens=0,
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


MAX_STEPS = 10**9  # more optimizer steps than any run here could take: a typo (--epochs 1e300)
MAX_SAMPLE_TOKENS = 10_000  # a sample at every evaluation; longer ones would stall the run
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit; each process seeds with seed + rank
# Learning rates the optimizer could not even apply are refused: AdamW's first update is 10 x lr
# (its bias correction), more than float32 holds (3.4e38) from about 3e37 on; 1e30 leaves a margin.
# A lower one that is far too high (3e4 typed for 3e-4) ends in the divergence guard's one line.
MAX_LR = 1e30
# Training memory below which no model fits: float32 weights, their gradients and at least
# one optimizer moment (AdamW keeps two, Muon one), 4 bytes each, before any activation.
TRAINING_BYTES_PER_PARAMETER = 12
# Validation tokens per evaluation, chosen with tools/eval_budget.py: how close each budget
# comes to the whole split is in docs/reference-runs.md ("How the validation loss is measured").
EVAL_TOKENS = 196_608


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default, once: not when it is None (the help says what happens
    then) and not when the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def preset_help(option: str, text: str) -> str:
    """The help of a [preset] option, with the value of each preset."""
    values = ", ".join(f"{name} {preset[option]}" for name, preset in PRESETS.items())
    return f"[preset] {text} (default: {values})"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        description="Pretrain a GPT on next-token prediction. With no options: prepares "
        "Shakespeare's plays, picks your device and trains a small model (a few minutes on a "
        "laptop CPU). Options marked [preset] default to the cpu or gpu preset.",
        formatter_class=HelpFormatter,
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
    model.add_argument("--hidden_size", type=int, help=preset_help("hidden_size", "embedding size (n_embd)"))
    model.add_argument(
        "--num_hidden_layers", type=int, help=preset_help("num_hidden_layers", "Transformer blocks (n_layer)")
    )
    model.add_argument(
        "--num_attention_heads", type=int, help=preset_help("num_attention_heads", "heads per layer (n_head)")
    )
    model.add_argument(
        "--max_seq_len", type=int, help=preset_help("max_seq_len", "context length in tokens (block_size)")
    )
    model.add_argument("--dropout", type=float, help=preset_help("dropout", "dropout probability"))
    model.add_argument(
        "--use_moe",
        type=int,
        default=0,
        choices=(0, 1),
        help="1: mixture-of-experts MLPs (4 experts, top-2 routing, load-balancing loss)",
    )

    recipe = p.add_argument_group(
        "recipe (GPT-2's 2019 piece or its modern replacement; see tools/results/README.md)"
    )
    recipe.add_argument(
        "--position",
        choices=CHOICES["position"],
        default=GPTConfig.position,
        help="learned: GPT-2's position table; rope: rotary position embeddings",
    )
    recipe.add_argument(
        "--norm", choices=CHOICES["norm"], default=GPTConfig.norm, help="layer: LayerNorm; rms: RMSNorm"
    )
    recipe.add_argument(
        "--mlp",
        choices=CHOICES["mlp"],
        default=GPTConfig.mlp,
        help="gelu: GPT-2's MLP; relu2: squared ReLU; swiglu: LLaMA's gated MLP",
    )
    recipe.add_argument(
        "--qk_norm",
        type=int,
        choices=(0, 1),
        default=int(GPTConfig.qk_norm),
        help="1: RMS-normalise queries and keys",
    )
    recipe.add_argument(
        "--zero_init",
        type=int,
        choices=(0, 1),
        default=int(GPTConfig.zero_init),
        help="1: output projections start at zero",
    )
    recipe.add_argument(
        "--tie_weights",
        type=int,
        choices=(0, 1),
        default=int(GPTConfig.tie_weights),
        help="1: lm_head shares the token embedding's matrix",
    )
    recipe.add_argument(
        "--optimizer",
        choices=("adamw", "muon"),
        default="muon",
        help="adamw: AdamW everywhere; muon: Muon for the blocks' matrices, AdamW for the rest",
    )
    recipe.add_argument(
        "--muon_lr", type=float, default=0.02, help="Muon's peak LR (same warmup and cosine as the others)"
    )

    train = p.add_argument_group("training")
    train.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="passes over the training split; sets the number of steps unless --max_steps is given",
    )
    train.add_argument(
        "--max_steps",
        type=int,
        default=None,
        help=preset_help("max_steps", "optimizer steps to train (wins over --epochs)"),
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
        help=preset_help(
            "max_train_tokens",
            "train on N tokens of the training split, as windows spread evenly over it (0 = all: "
            "with the cpu preset an epoch is 2,222 steps; 1000000 makes it 488)",
        ),
    )
    train.add_argument("--batch_size", type=int, help=preset_help("batch_size", "sequences per micro-batch"))
    train.add_argument(
        "--accumulation_steps",
        type=int,
        default=1,
        help="micro-batches per optimizer step (gradient accumulation)",
    )
    train.add_argument("--learning_rate", type=float, help=preset_help("learning_rate", "peak learning rate"))
    train.add_argument(
        "--min_lr", type=float, default=None, help="final LR of the cosine (default: learning_rate / 10)"
    )
    train.add_argument(
        "--warmup_steps", type=int, default=None, help="linear warmup steps (default: 10%% of the steps)"
    )
    train.add_argument("--weight_decay", type=float, default=0.1, help="AdamW weight decay on 2-D weights")
    train.add_argument(
        "--beta2",
        type=float,
        default=0.95,
        help="AdamW's decay of its squared-gradient average (nanoGPT: 0.99)",
    )
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
    system.add_argument(
        "--num_workers",
        type=int,
        help=preset_help("num_workers", "DataLoader worker processes (at most the CPU cores)"),
    )
    system.add_argument(
        "--parallel",
        default="ddp",
        choices=PARALLEL_MODES,
        help="under torchrun: ddp: a whole copy of the model per process; fsdp: shard weights, gradients "
        "and optimizer state over the processes (FSDP2, for a model that outgrows one device)",
    )
    system.add_argument(
        "--activation_checkpointing",
        type=int,
        default=0,
        choices=(0, 1),
        help="1: recompute each Block's activations in the backward pass instead of storing them "
        "(less memory, about a third more compute)",
    )
    system.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="N > 0: record N training steps with torch.profiler into save_dir/profile.pt.trace.json "
        "(Perfetto, TensorBoard) and print where their time goes",
    )

    out = p.add_argument_group("output")
    out.add_argument(
        "--save_dir",
        default="out",
        help="checkpoints, metrics, plot and samples go here; one run per folder (see --overwrite)",
    )
    out.add_argument("--log_interval", type=int, default=10, help="steps between log lines")
    out.add_argument(
        "--eval_interval",
        type=int,
        help=preset_help("eval_interval", "steps between evaluations and samples"),
    )
    out.add_argument(
        "--eval_tokens",
        type=int,
        default=EVAL_TOKENS,
        help="validation tokens per evaluation, as windows spread evenly over the split: the same windows "
        "whatever the batch size or the number of processes (0: the whole split)",
    )
    out.add_argument(
        "--eval_iters",
        type=int,
        default=None,
        help="the budget as nanoGPT gives it: N batches of batch_size x max_seq_len tokens "
        "(sets --eval_tokens)",
    )
    out.add_argument("--save_interval", type=int, default=500, help="steps between checkpoints")
    out.add_argument(
        "--from_resume",
        type=int,
        default=0,
        choices=(0, 1),
        help=f"1: continue the run saved in save_dir/{RESUME_FILE}",
    )
    out.add_argument(
        "--overwrite",
        type=int,
        default=0,
        choices=(0, 1),
        help="1: replace the run saved in save_dir (its files stay until this run's first checkpoint); "
        "0: refuse a save_dir that holds a run",
    )
    out.add_argument("--from_weight", default="none", help="start from the weights in this .pt file")
    out.add_argument("--prompt", default="", help="text that samples start from (default: a new document)")
    out.add_argument(
        "--sample_tokens",
        type=int,
        default=300,
        help=f"tokens per sample (at most {MAX_SAMPLE_TOKENS:,}; 0: no samples)",
    )

    track = p.add_argument_group("watching the run (course/tracking.py, docs/watching.md)")
    track.add_argument(
        "--tensorboard",
        type=int,
        default=1,
        choices=(0, 1),
        help="1: TensorBoard event files in save_dir/tensorboard/ (`tensorboard --logdir out`); 0: none",
    )
    track.add_argument(
        "--use_wandb",
        type=int,
        default=0,
        choices=(0, 1),
        help='1: log to W&B too (pip install -e ".[wandb]"; offline without an account), as MiniMind does',
    )
    track.add_argument(
        "--wandb_backend",
        default="wandb",
        choices=tuple(BACKENDS),
        help="wandb: Weights & Biases; swanlab: SwanLab (MiniMind's choice, reachable from China)",
    )
    track.add_argument("--wandb_project", default="pretrain-a-gpt", help="the W&B or SwanLab project")
    track.add_argument(
        "--wandb_run_name", default=None, help="the tracked run's name (default: one the tracker makes up)"
    )

    grading = p.add_argument_group("exercises")
    grading.add_argument(
        "--test",
        nargs="?",
        const="all",
        metavar="TODO",
        help="grade the TODOs of this file with pytest and print a scoreboard (or one TODO: --test 2b)",
    )
    grading.add_argument(
        "--hint",
        metavar="TODO",
        help="print the next hint for a TODO: the idea, then the API, then pseudocode",
    )
    return p


def with_preset(options: Mapping, device: torch.device) -> dict:
    """The options, those left unset taking the preset's value for this hardware."""
    preset = options["preset"] if options["preset"] != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    filled = {**options, "preset": preset}
    for key, value in PRESETS[preset].items():
        if options[key] is None and not (key == "max_steps" and options["epochs"] is not None):
            filled[key] = value
    return filled


def check_options(config: RunConfig) -> None:
    if config.dataset_mode == "documents" and not (config.data_path or "").endswith(".jsonl"):
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
        "muon_lr",
        "log_interval",
        "eval_interval",
        "eval_iters",
        "save_interval",
    ]
    for name in positive + ["max_steps", "epochs"]:
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name} must be positive, got {value}")
    for name in ["min_lr", "warmup_steps", "weight_decay", "grad_clip", "num_workers", "max_train_tokens",
                 "sample_tokens", "profile", "eval_tokens"]:  # fmt: skip
        value = getattr(config, name)
        if value is not None and value < 0:
            raise UsageError(f"--{name} must not be negative, got {value}")
    for name in ["learning_rate", "min_lr", "muon_lr", "weight_decay", "grad_clip", "dropout", "epochs"]:
        value = getattr(config, name)
        if value is not None and not math.isfinite(value):  # nan passes every comparison above
            raise UsageError(f"--{name} must be a finite number, got {value}")
    for name in ["learning_rate", "muon_lr"]:
        if getattr(config, name) > MAX_LR:
            raise UsageError(
                f"--{name} {getattr(config, name)} is more than {MAX_LR:g}, too large for the optimizer to "
                "apply in float32 (useful ones are about 1e-3 for AdamW, 0.02 for Muon; is a minus sign "
                "missing from its exponent?)"
            )
    if "num_workers" in config.options_given and config.num_workers > usable_cpus():  # presets: 0 or 2
        raise UsageError(
            f"--num_workers {config.num_workers} is more than the {usable_cpus()} CPU cores this process "
            "may use: each DataLoader worker is a process of its own; give at most that many (0 loads "
            "in the training process)"
        )
    if config.max_steps is not None and config.max_steps > MAX_STEPS:
        raise UsageError(f"--max_steps {config.max_steps} is more than {MAX_STEPS:,} steps; is it a typo?")
    if config.sample_tokens > MAX_SAMPLE_TOKENS:
        raise UsageError(f"--sample_tokens must be at most {MAX_SAMPLE_TOKENS:,}, got {config.sample_tokens}")
    if config.from_resume and config.from_weight != "none":
        raise UsageError(
            "--from_resume 1 continues the saved run with its own weights, so --from_weight would be "
            "ignored: give one of the two"
        )
    if config.from_resume and config.overwrite:
        raise UsageError("--from_resume 1 continues the saved run and --overwrite 1 replaces it: give one")
    if not 0 <= config.dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {config.dropout}")
    if not 0 <= config.beta2 < 1:  # also refuses nan
        raise UsageError(f"--beta2 must be in [0, 1), got {config.beta2}")
    if config.hidden_size % config.num_attention_heads:
        raise UsageError(
            f"--hidden_size {config.hidden_size} must be divisible by "
            f"--num_attention_heads {config.num_attention_heads}"
        )
    if config.eval_iters is not None and "eval_tokens" in config.options_given:
        raise UsageError("--eval_iters and --eval_tokens both set the validation budget: give one")
    if config.min_lr is not None and config.min_lr > config.learning_rate:
        raise UsageError(f"--min_lr {config.min_lr} is larger than --learning_rate {config.learning_rate}")
    tracking.check_installed(config)


def check_seed(seed: int, world_size: int) -> None:
    highest = MAX_SEED - (world_size - 1)
    if not 0 <= seed <= highest:
        processes = f" with {world_size} processes (each seeds with seed + rank)" if world_size > 1 else ""
        raise UsageError(f"--seed must be between 0 and {highest}{processes}, got {seed}")


def check_model_fits(config: RunConfig, device: torch.device, world_size: int) -> None:
    """A model too large for the device's memory would end in the allocator's traceback (or the
    kernel's OOM killer): refused before anything is built. The bound is a floor (the blocks'
    matrices alone, 12 x layers x hidden_size^2, without embeddings or activations), so it
    refuses only what cannot fit; under FSDP each process holds its share."""
    memory = memory_of(device)
    parameters = 12 * config.num_hidden_layers * config.hidden_size**2
    needed = parameters * TRAINING_BYTES_PER_PARAMETER // world_size
    if memory is not None and needed > memory:
        per_process = f" per process (over {world_size})" if world_size > 1 else ""
        where = "GPU" if device.type == "cuda" else "machine"
        raise UsageError(
            f"--hidden_size {config.hidden_size} with --num_hidden_layers {config.num_hidden_layers} is a "
            f"model of at least {parameters:.3g} parameters: training it needs at least {gigabytes(needed)}"
            f"{per_process} (weights, gradients, optimizer state), and this {where} has "
            f"{gigabytes(memory)}; choose a smaller --hidden_size or --num_hidden_layers"
        )


def gigabytes(n_bytes: int) -> str:
    """1,234.5 GB; 1.23e+26 GB for the sizes a typo gives."""
    return f"{n_bytes / 1e9:,.1f} GB" if n_bytes < 1e15 else f"{n_bytes / 1e9:.3g} GB"


def check_folders(config: RunConfig) -> None:
    """The run's folder and the prepared corpora's, before anything is written: no
    symbolic link to nowhere on the way to either (creating the folder would fail), and
    neither inside the other. Preparing a corpus again replaces its folder whole
    (course.corpus.replace_dir), which would delete a run folder inside it; and a
    corpus inside a run folder would go with that run's folder."""
    save_dir, data_dir = Path(config.save_dir), data_root(config)
    for path, option in ((save_dir, "--save_dir"), (data_dir, "--data_dir")):
        for part in (path, *path.parents):
            if part.is_symlink() and not part.exists():
                raise UsageError(
                    f"{option} {path}: {part} is a symbolic link to {os.readlink(part)}, which does not "
                    f"exist; create that folder or give another {option}"
                )
    run, data = save_dir.resolve(), data_dir.resolve()
    for corpora in (data, corpus.DATA_DIR.resolve()):
        if run.is_relative_to(corpora):
            where = "is" if run == corpora else "is inside"
            raise UsageError(
                f"--save_dir {save_dir} {where} {corpora}, where prepared corpora are kept and replaced "
                "whole when prepared again: give a --save_dir outside it"
            )
    for folder in (data, *data.parents):
        if folder == run or (folder / RESUME_FILE).is_file():  # this run's folder, or another run's
            raise UsageError(
                f"the prepared corpora's folder {data_dir} (--data_dir) is inside the run folder {folder}: "
                "a run folder holds one run's files only; give a --data_dir outside it"
            )


def data_root(config: RunConfig) -> Path:
    """Where this run's prepared corpora are kept: --data_dir, or data/."""
    return Path(config.data_dir) if config.data_dir else corpus.DATA_DIR


def count_total_steps(config: RunConfig, batches_per_epoch: int) -> int:
    steps_per_epoch = batches_per_epoch // config.accumulation_steps
    if steps_per_epoch == 0:
        raise UsageError(
            f"one optimizer step of {config.accumulation_steps} micro-batches is more than an epoch "
            f"({batches_per_epoch} micro-batches of this data); lower --batch_size or --accumulation_steps"
        )
    if config.max_steps is not None:
        return config.max_steps
    steps = config.epochs * steps_per_epoch
    if steps > MAX_STEPS:
        raise UsageError(
            f"--epochs {config.epochs} is {steps:.3g} steps, more than {MAX_STEPS:,}; is it a typo?"
        )
    return max(1, round(steps))


@dataclass
class Schedule:
    """How long the run trains and how its learning rate moves. A resumed run keeps
    the saved schedule; end_step may differ from total_steps there (--max_steps)."""

    total_steps: int
    warmup_steps: int
    min_lr: float
    end_step: int


UNSET = object()


@dataclass(frozen=True)
class CommandLine:
    """The options as typed: every option's value (its default where it was left out),
    and the names of those given (a resume must tell an option given from one left at
    its default)."""

    options: Mapping[str, object]
    given: tuple[str, ...]


def parse_args(argv: list[str] | None) -> CommandLine:
    """argv (None: the script's own arguments) as a CommandLine; a mistake ends here (exit 2)."""
    parser = build_parser()
    defaults = vars(parser.parse_args([]))
    typed = vars(parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(defaults, UNSET))))
    given = tuple(sorted(name for name, value in typed.items() if value is not UNSET))
    options = {name: defaults[name] if value is UNSET else value for name, value in typed.items()}
    return CommandLine(MappingProxyType(options), given)


def plan_schedule(config: RunConfig, batches_per_epoch: int, saved_plan: dict | None = None) -> Schedule:
    """The number of steps (--max_steps, or --epochs of the training split), the warmup
    (default: 10% of the steps) and the final LR (default: learning_rate / 10); when
    resuming, the saved run's, with --max_steps or --epochs moving only where it ends."""
    if saved_plan is not None:
        given_length = {"max_steps", "epochs"} & set(config.options_given)
        end_step = count_total_steps(config, batches_per_epoch) if given_length else saved_plan["total_steps"]
        if end_step <= saved_plan["step"]:
            asked = f"--max_steps {end_step}" if given_length else f"the saved plan of {end_step} steps"
            raise UsageError(
                f"the checkpoint is at step {saved_plan['step']}, so {asked} leaves nothing to train: "
                f"give a --max_steps above {saved_plan['step']} to train on"
            )
        return Schedule(saved_plan["total_steps"], saved_plan["warmup_steps"], config.min_lr, end_step)
    total_steps = count_total_steps(config, batches_per_epoch)
    warmup_steps = config.warmup_steps if config.warmup_steps is not None else total_steps // 10
    if warmup_steps >= total_steps:
        raise UsageError(
            f"--warmup_steps {warmup_steps} must be smaller than the {total_steps} training steps"
        )
    min_lr = config.min_lr if config.min_lr is not None else config.learning_rate / 10
    return Schedule(total_steps, warmup_steps, min_lr, total_steps)


# The options that decide a run's plan: its LR schedule, the order of its batches, and
# the optimizer's settings (which load_state_dict would otherwise quietly restore).
PLAN_OPTIONS = ("learning_rate", "min_lr", "warmup_steps", "batch_size", "accumulation_steps", "seed",
                "max_train_tokens", "dataset_mode", "optimizer", "muon_lr", "beta2", "weight_decay",
                "parallel")  # fmt: skip


# How a step is split over the processes: a resume may change them while the global batch
# (batch size × accumulation × processes) stays the same (check_global_batch).
SPLIT_OPTIONS = ("batch_size", "accumulation_steps", "parallel")


def run_plan(config: RunConfig, schedule: Schedule, group: ProcessGroup) -> dict:
    """What a resume must continue: saved with every resume checkpoint."""
    plan = {name: getattr(config, name) for name in PLAN_OPTIONS}
    plan.update(total_steps=schedule.total_steps, warmup_steps=schedule.warmup_steps, min_lr=schedule.min_lr)
    # The windows of a step over all processes; a plan that has it comes with a data
    # position that a resume on another split of it can continue (check_global_batch).
    global_batch = config.batch_size * config.accumulation_steps * group.world_size
    return {**plan, "world_size": group.world_size, "global_batch": global_batch}


# Options a resume may change, with an honest meaning: the rest of the schedule keeps its
# shape (warmup, cosine, total steps) at the new learning rates; lowering the LR after
# the loss diverged is the usual fix.
RESUME_MAY_CHANGE = ("learning_rate", "min_lr")

# What each option does to a run continued with --from_resume 1 (docs/faq.md: "Stopping
# and resuming"). tests/test_cli.py walks every option of --help through a resume.
PLAN = "refused when changed: part of the saved plan"
SPLIT = (
    "applied where the global batch (batch size × accumulation × processes) stays the saved one: each "
    "step reads the same windows, shared out anew (a note says so); refused where it changes"
)
MODEL = "refused when it changes the saved model's config"
DATA = "refused when it changes the saved run's data (tokenizer or content)"
NEW_LR = "applied: the rest of the schedule keeps its shape at the new learning rate (a note says so)"
LENGTH = "applied: the run trains on to the new length; the schedule keeps the saved shape"
FROM_HERE = "applied from the resume on: read at every step, evaluation or save, never saved in the state"
HOW_IT_STARTS = "where the run is and how it starts"
NO_RUN = "no run: grades the TODOs or prints a hint"
TRACKED_RUN = (
    "applied from the resume on: 1 continues the W&B or SwanLab run saved in the checkpoint (or starts "
    "one), 0 logs to none; the saved run's id stays in the checkpoint"
)
NAMES_THE_TRACKED_RUN = (
    "refused when it names another tracked run than the one saved in the checkpoint (its W&B or SwanLab "
    "run id is continued); applied while the run has none"
)
ON_RESUME = {
    **dict.fromkeys((name for name in PLAN_OPTIONS if name not in RESUME_MAY_CHANGE), PLAN),
    **dict.fromkeys(SPLIT_OPTIONS, SPLIT), **dict.fromkeys(
        ("hidden_size", "num_hidden_layers", "num_attention_heads", "max_seq_len", "dropout", "use_moe",
         "position", "norm", "mlp", "qk_norm", "zero_init", "tie_weights", "preset"), MODEL),
    "data_path": DATA, "tokenizer": DATA,
    "learning_rate": NEW_LR, "min_lr": NEW_LR,
    "epochs": LENGTH, "max_steps": LENGTH,
    # dtype: a run saved without float16 and resumed in it (on an older GPU) gets a fresh
    # GradScaler; eval_tokens (or eval_iters) changes which windows later evaluations read.
    **dict.fromkeys(
        ("grad_clip", "device", "dtype", "use_compile", "num_workers", "activation_checkpointing",
         "profile", "log_interval", "eval_interval", "eval_tokens", "eval_iters", "save_interval", "prompt",
         "sample_tokens", "tensorboard"), FROM_HERE),
    "use_wandb": TRACKED_RUN, **dict.fromkeys(tracking.TRACKED_RUN_OPTIONS, NAMES_THE_TRACKED_RUN),
    **dict.fromkeys(("save_dir", "data_dir", "from_resume", "overwrite", "from_weight"), HOW_IT_STARTS),
    "test": NO_RUN, "hint": NO_RUN,
}  # fmt: skip


def continue_plan(
    config: RunConfig, checkpoint: dict | None, group: ProcessGroup
) -> tuple[RunConfig, dict | None]:
    """The run's final config, and the saved plan (None for a new run, or a checkpoint
    saved before plans were). --from_resume 1: options left out take the saved run's
    values; an option given with another value would change the run the checkpoint
    continues, and is refused (the learning rates apart, see RESUME_MAY_CHANGE). Then
    --eval_iters becomes the tokens it stands for, with the run's batch size."""
    if checkpoint is not None:  # the tracked run goes on: W&B's or SwanLab's run id is in the checkpoint
        config = replace(config, **tracking.saved_tracked_run_options(config, checkpoint.get("tracked_run")))
        tracking.check_installed(config)
    plan = checkpoint.get("plan") if checkpoint is not None else None
    if plan is None:
        return with_eval_budget(config), None
    plan = {"optimizer": "adamw", "parallel": "ddp", **plan}  # saved before Muon or FSDP existed
    split = check_global_batch(config, plan, group)
    saved = {}
    for name in PLAN_OPTIONS:
        if name not in plan:  # saved by an older version of this script
            continue
        value, given = getattr(config, name), name in config.options_given
        if name in split:
            saved[name] = split[name]
        elif given and value != plan[name] and name in RESUME_MAY_CHANGE:
            print(f"note: --{name} {value} replaces the saved run's {plan[name]!r} from here on")
        elif given and value != plan[name]:
            raise UsageError(
                f"--{name} {value} would change the saved run ({name}={plan[name]!r}): "
                "leave it out to continue that run, or start a new one in another --save_dir"
            )
        else:
            saved[name] = plan[name]
    config = replace(config, **saved)
    if config.min_lr > config.learning_rate:
        raise UsageError(
            f"--learning_rate {config.learning_rate} is below the saved run's min_lr {config.min_lr}: "
            "give --min_lr too"
        )
    return with_eval_budget(config), {**plan, "step": checkpoint["step"]}


def check_global_batch(config: RunConfig, plan: dict, group: ProcessGroup) -> dict:
    """The batch size, accumulation and --parallel a resume goes on with: the saved
    run's where they are left out. On another number of processes, with another split
    of the step's batch, or another --parallel, the global batch (batch size ×
    accumulation × processes) must stay the same: then each step reads the same windows
    (course.batches.BatchStream), its gradient is the mean over the same targets, and
    the saved weights and optimizer state are read into this run's layout (DCP
    reshards them, course.run_folder.RunFolder.read_shards). A note says that this is
    not bit-identical; any other change of the global batch is refused."""
    split = {
        name: getattr(config, name) if name in config.options_given else plan[name] for name in SPLIT_OPTIONS
    }
    new = (split["batch_size"], split["accumulation_steps"], group.world_size)
    saved = (plan["batch_size"], plan["accumulation_steps"], plan["world_size"])
    if new != saved and "global_batch" not in plan:  # its data position counts this process's batches only
        raise UsageError(
            f"the saved run trained with --batch_size {saved[0]}, --accumulation_steps {saved[1]} on "
            f"{saved[2]} process(es), and was saved by an older version of this script: resume it with those"
        )
    if math.prod(new) != math.prod(saved):
        raise UsageError(
            f"--batch_size {new[0]} × --accumulation_steps {new[1]} × {new[2]} process(es) is a step of "
            f"{math.prod(new)} windows, the saved run's {saved[0]} × {saved[1]} × {saved[2]} = "
            f"{math.prod(saved)}: {how_to_keep(math.prod(saved), *new)}"
        )
    if (new, split["parallel"]) != (saved, plan["parallel"]) and group.is_main:
        print(
            f"note: resumed as {split['parallel']} × {new[2]} process(es), batch {new[0]} × {new[1]} "
            f"micro-batch(es) (saved: {plan['parallel']} × {saved[2]}, {saved[0]} × {saved[1]}), the same "
            f"{math.prod(saved)} windows a step: each process's share and the dropout masks are drawn anew, "
            "so the run goes on, but not bit-identically"
        )
    return split


def how_to_keep(windows: int, batch_size: int, accumulation: int, world_size: int) -> str:
    """How to give a step of `windows` windows on `world_size` processes."""
    if windows % (batch_size * world_size) == 0:
        return f"keep the global batch with --accumulation_steps {windows // (batch_size * world_size)}"
    if windows % (accumulation * world_size) == 0:
        return f"keep the global batch with --batch_size {windows // (accumulation * world_size)}"
    return f"{world_size} process(es) cannot share it: resume on a number of processes that divides {windows}"


def with_eval_budget(config: RunConfig) -> RunConfig:
    """--eval_iters N, nanoGPT's way to give the budget, as the tokens it stands for."""
    if config.eval_iters is None:
        return config
    return replace(config, eval_tokens=config.eval_iters * config.batch_size * config.max_seq_len)


def check_parallel(config: RunConfig, group: ProcessGroup, dtype: torch.dtype) -> None:
    """--parallel fsdp needs processes to shard over, and a number type FSDP can scale
    honestly. (Checked once a resume has taken the saved run's --parallel.)"""
    if config.parallel != "fsdp":
        return
    if "RANK" not in os.environ:
        resume = " (or resume it in this one process with --parallel ddp)" if config.from_resume else ""
        raise UsageError(
            "--parallel fsdp shards the model over the processes that torchrun starts: run "
            f"`torchrun --standalone --nproc_per_node=N train_solution.py --parallel fsdp ...`{resume}"
        )
    if dtype == torch.float16:
        raise UsageError(
            "--parallel fsdp with float16: the GradScaler would check only this process's shard of the "
            "gradients for overflow; use --dtype bfloat16 (or float32), or --parallel ddp"
        )


def run_config(command_line: CommandLine, device: torch.device) -> RunConfig:
    """The command line, with the preset's values for this device where options were left out."""
    options = {
        name: command_line.options[name] for name in RunConfig.field_names() if name != "options_given"
    }
    return RunConfig(**with_preset(options, device), options_given=command_line.given)


def configure(command_line: CommandLine) -> tuple[ProcessGroup, torch.device, torch.dtype, RunConfig]:
    """The device, the number type and this process's place among the processes, and
    the run's config: the command line with the preset's values for the options left
    unset, every option checked (a resume's saved plan comes in with continue_plan)."""
    group, device = init_distributed(resolve_device(command_line.options["device"]))
    dtype = resolve_dtype(command_line.options["dtype"], device)
    enable_tf32(device)
    config = run_config(command_line, device)
    check_options(config)
    check_seed(config.seed, group.world_size)
    check_model_fits(config, device, group.world_size)
    check_folders(config)
    check_folder(data_root(config), "--data_dir")
    return group, device, dtype, config


_claimed: list[RunFolder] = []  # released when the run ends, however it ends (see main)


def claim_run_folder(config: RunConfig, group: ProcessGroup) -> RunFolder:
    """This run's folder (course.run_folder): checked and locked by rank 0, refused if it
    holds another run (unless --from_resume 1 or --overwrite 1) or a run file it would
    change is read-only; a new run's files are staged until its first checkpoint. Every
    process gets rank 0's verdict."""
    save_dir, folder, error = Path(config.save_dir), None, None
    if group.is_main:
        try:
            folder = RunFolder.claim(
                save_dir, resume=bool(config.from_resume), overwrite=bool(config.overwrite)
            )
            _claimed.append(folder)
        except UsageError as err:
            error = str(err)
    error = group.main_says(error)
    if error is not None:
        raise UsageError(error)
    if group.nodes > 1:
        check_shared_folder(save_dir, folder, group)
    return folder or RunFolder(save_dir, writes=False)


def check_shared_folder(save_dir: Path, folder: RunFolder | None, group: ProcessGroup) -> None:
    """Several machines: every process reads resume.pt, and under FSDP writes its shards,
    in --save_dir, so it must be one folder that all machines see (a shared file system,
    such as NFS or Lustre). Checked by looking for a file that rank 0 writes there."""
    probe = group.main_says(str(save_dir / f".shared-check-{os.getpid()}") if folder is not None else None)
    if folder is not None:
        Path(probe).touch()
    group.barrier()
    missing = not Path(probe).exists()
    if group.any(missing):
        where = (
            f"this machine (rank {group.rank}) does not see" if missing else "another machine does not see"
        )
        error = UsageError(
            f"--save_dir {save_dir}: {where} the files rank 0 writes there; with several machines give a "
            "--save_dir on a file system that all of them share"
        )
    else:
        error = None
    group.barrier()
    if folder is not None:
        Path(probe).unlink(missing_ok=True)
    if error is not None:
        raise error


def release_run_folders() -> None:
    while _claimed:
        _claimed.pop().release()


def check_prompt(prompt: str, tokenizer) -> None:
    """--prompt must be text the tokenizer can encode; found before anything is written."""
    try:
        tokenizer.encode(prompt)
    except DataError as err:
        raise UsageError(f"--prompt: {err}") from None


def main(train: Callable[[CommandLine], None], argv: list[str] | None, script: Path) -> int:
    """Parse the options, run `train`, and turn the ways a run can end into exit codes:
    0 done, 1 diverged, a full disk or stopped at an open TODO, 2 a usage or data
    mistake, 130 Ctrl+C, 143 SIGTERM."""
    if sys.excepthook is grade_despite_a_broken_chapter:  # the script has started: no longer needed
        sys.excepthook = sys.__excepthook__
    command_line = parse_args(argv)
    hint, test = command_line.options["hint"], command_line.options["test"]
    if hint:
        return show_hint(hint, script)
    if test:
        from tests.scoreboard import grade  # the graded tests live in tests/

        return grade(script, None if test == "all" else test)
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    stop_at_once_on_sigterm()  # so that a SIGTERM before training still removes temporary files
    try:
        train(command_line)
    except (UsageError, DataError) as err:
        if says_the_error():  # under torchrun: once per machine, not once per process
            print(f"error: {err}", file=sys.stderr)
        return 2
    except (TrainingDiverged, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Interrupted as stop:
        if not dist.is_initialized() or dist.get_rank() == 0:  # one line, not one per process
            signal_name = STOP_SIGNALS[stop.signum]
            print(f"stopped by {signal_name}: {stop}; continue with --from_resume 1", file=sys.stderr)
        return 128 + stop.signum
    except StopNow as stop:
        if says_the_error():
            signal_name = STOP_SIGNALS[stop.signum]
            print(f"stopped at once by {signal_name}: the last saved checkpoint is kept", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        if says_the_error():
            print("stopped at once by Ctrl+C: the last saved checkpoint is kept", file=sys.stderr)
        return 130
    except OSError as err:
        if out_of_space(err) is None:
            raise
        where = err.filename or "a file"
        print(f"error: could not write {where}: {err.strerror}; free some disk space", file=sys.stderr)
        return 1
    except NotImplementedError as todo:
        todo_id = str(todo).split(":", 1)[0].removeprefix("TODO ")
        file = script.name if TODOS[todo_id].module in script.name else f"{TODOS[todo_id].module}_exercise.py"
        print(
            f"stopped at {todo}\n  Fill it in in {file}; `python {file} --hint {todo_id}` gives a hint.",
            file=sys.stderr,
        )
        return 1
    finally:
        tracking.close_all()  # before the folders: a staged run's events go with its staging folder
        release_run_folders()
        shut_down()
        if signal.getsignal(signal.SIGTERM) is not previous_sigterm:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


def grade_despite_a_broken_chapter(exc_type, exc, tb) -> None:
    """sys.excepthook for `python train_exercise.py --test`: the training chapter imports
    the data chapter before main() can run, so a syntax error in data_exercise.py would
    end the grader with a traceback and no scoreboard. The grader runs the tests in
    processes of its own and copes with a broken chapter, so it starts from here."""
    script = Path(sys.argv[0])
    if not issubclass(exc_type, Exception) or not script.stem.startswith("train_"):
        sys.__excepthook__(exc_type, exc, tb)
        return
    from tests.scoreboard import grade

    print(f"note: {script.name} could not start ({exc_type.__name__}: {exc})", flush=True)
    option = build_parser().parse_known_args(sys.argv[1:])[0].test
    code = grade(script, None if option in (None, "all") else option)
    sys.stdout.flush()
    os._exit(code)  # the exit code the scoreboard gives: this hook's own return would be 1


if "--test" in sys.argv[1:]:  # only when grading: see grade_despite_a_broken_chapter
    sys.excepthook = grade_despite_a_broken_chapter
