"""The command line of the training script: presets, checks, exit codes.

    python train_solution.py --help     every option, grouped, with its default

The options are declared in course.config, with MiniMind's names (--epochs --batch_size
--learning_rate ...) and nanoGPT's (--max_steps --warmup_steps --min_lr --seed); those
marked [preset] default to the cpu or gpu preset for the device. A mistake in the options
ends the run before anything is written: one line that starts with `error:`, exit code 2.
A run never writes into another run's folder (course.run_folder).
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
from course.config import (
    CHECKS,
    FINITE,
    MAX_SAMPLE_TOKENS,
    NOT_NEGATIVE,
    OPTIONS,
    PLAN_OPTIONS,
    POSITIVE,
    PRESETS,
    RESUME_MAY_CHANGE,
    SPLIT_OPTIONS,
    RunConfig,
    read_type,
)
from course.devices import enable_tf32, memory_of, resolve_device, resolve_dtype, usable_cpus
from course.distributed import ProcessGroup, init_distributed, shut_down
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

MAX_STEPS = 10**9  # more optimizer steps than any run here could take: a typo (--epochs 1e300)
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit; each process seeds with seed + rank
# Learning rates the optimizer could not even apply: AdamW's first update is 10 x lr (its
# bias correction), more than float32 holds from about 3e37 on; 1e30 leaves a margin. A
# lower one far too high (3e4 typed for 3e-4) ends in the divergence guard's one line.
MAX_LR = 1e30
# Training memory below which no model fits: float32 weights, their gradients and at least
# one optimizer moment (AdamW keeps two, Muon one), 4 bytes each, before any activation.
TRAINING_BYTES_PER_PARAMETER = 12


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default, once: not when it is None (the help says what happens
    then) and not when the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """An argument for every option, in the group of --help that the last group= started."""
    parser = OneLineErrorParser(
        description="Pretrain a GPT on next-token prediction. With no options: prepares "
        "Shakespeare's plays, picks your device and trains a small model (a few minutes on a "
        "laptop CPU). Options marked [preset] default to the cpu or gpu preset.",
        formatter_class=HelpFormatter,
    )
    for option in OPTIONS:
        declared = option.metadata
        if declared["group"]:
            group = parser.add_argument_group(declared["group"])
        text = declared["help"]
        if declared["preset"]:
            values = ", ".join(f"{name} {value}" for name, value in declared["preset"].items())
            text = f"[preset] {text} (default: {values})"
        kind, choices, _ = read_type(option.type)
        group.add_argument(
            f"--{option.name}", type=kind, choices=choices, help=text, **declared["parser_options"]
        )
    return parser


def check_options(config: RunConfig) -> None:
    if config.dataset_mode == "documents" and not (config.data_path or "").endswith(".jsonl"):
        raise UsageError(
            "--dataset_mode documents reads MiniMind .jsonl documents: give --data_path file.jsonl"
        )
    for name, check in CHECKS.items():  # course.config declares them
        value = getattr(config, name)
        if value is None:
            continue
        if (check == POSITIVE and value <= 0) or (check == NOT_NEGATIVE and value < 0):
            raise UsageError(f"--{name} {check}, got {value}")
        if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison above
            raise UsageError(f"--{name} {FINITE}, got {value}")
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
    """A model too large for the memory would end in the allocator's traceback or the OOM
    killer. The bound is a floor (the blocks' matrices alone, 12 x layers x hidden_size^2),
    so it refuses only what cannot fit; under FSDP each process holds its share."""
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
    """No symbolic link to nowhere on the way to the run's folder or the corpora's (creating
    it would fail), and neither inside the other: preparing a corpus again replaces its
    folder whole (course.corpus.replace_dir), and a run's folder goes with its run."""
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
    """How long the run trains and how its LR moves; a resume keeps the saved one, and
    --max_steps moves only its end_step."""

    total_steps: int
    warmup_steps: int
    min_lr: float
    end_step: int


UNSET = object()


@dataclass(frozen=True)
class CommandLine:
    """Every option's value as typed (or its default), and the names of those given: a
    resume must tell an option given from one left at its default."""

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
    """The steps (--max_steps, or --epochs of the training split), the warmup (default: 10%)
    and the final LR (default: learning_rate / 10); a resume keeps the saved ones."""
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


def run_plan(config: RunConfig, schedule: Schedule, group: ProcessGroup) -> dict:
    """What a resume must continue, saved with every resume checkpoint. global_batch, the
    windows of a step over all processes, lets a resume split it anew (check_global_batch)."""
    plan = {name: getattr(config, name) for name in PLAN_OPTIONS}
    plan.update(total_steps=schedule.total_steps, warmup_steps=schedule.warmup_steps, min_lr=schedule.min_lr)
    global_batch = config.batch_size * config.accumulation_steps * group.world_size
    return {**plan, "world_size": group.world_size, "global_batch": global_batch}


def continue_plan(
    config: RunConfig, checkpoint: dict | None, group: ProcessGroup
) -> tuple[RunConfig, dict | None]:
    """The run's final config, and the saved plan (None for a new run, or a checkpoint
    saved before plans were). On a resume, options left out take the saved run's values;
    one given with another value is refused, as course.config.ON_RESUME says. Then
    --eval_iters becomes the tokens it stands for."""
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
    """The batch size, accumulation and --parallel a resume goes on with: the saved run's
    where left out. Changed, or on another number of processes, the global batch (batch
    size × accumulation × processes) must stay the saved one: each step then reads the
    same windows and DCP reshards the saved state (RunFolder.read_shards). A note says
    that this is not bit-identical."""
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
    """--parallel fsdp needs processes to shard over, and a number type FSDP scales
    honestly (checked once a resume has taken the saved run's --parallel)."""
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
    """The command line, with the preset's values for this device where options were left
    out (--max_steps apart, when --epochs is given)."""
    options = {
        name: command_line.options[name] for name in RunConfig.field_names() if name != "options_given"
    }
    if options["preset"] == "auto":
        options["preset"] = "gpu" if device.type == "cuda" else "cpu"
    for name, value in PRESETS[options["preset"]].items():
        if options[name] is None and not (name == "max_steps" and options["epochs"] is not None):
            options[name] = value
    return RunConfig(**options, options_given=command_line.given)


def configure(command_line: CommandLine) -> tuple[ProcessGroup, torch.device, torch.dtype, RunConfig]:
    """This process's place among the processes, the device, the number type and the run's
    config, every option checked (a resume's saved plan comes in with continue_plan)."""
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
    0 done, 1 diverged or a full disk, 2 a usage or data mistake, 130 Ctrl+C, 143 SIGTERM
    (an exercise file runs through course.open_todos.main, which adds 1: an open TODO)."""
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
    finally:
        tracking.close_all()  # before the folders: a staged run's events go with its staging folder
        release_run_folders()
        shut_down()
        if signal.getsignal(signal.SIGTERM) is not previous_sigterm:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return 0
