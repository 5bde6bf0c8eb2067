"""Checkpoint files: written atomically, read with a clear error, refused when they
belong to a different run.

A run's folder (`--save_dir`, default out/) holds

    resume.pt   everything needed to continue the run (the dict of the training
                chapter's checkpoint_state, plus the configs and the data's identity)
    model.pt    the latest weights, with their model config and tokenizer
    best.pt     the weights with the lowest validation loss so far, in model.pt's format

What goes into resume.pt is the lesson of TODO 8; how it gets onto the disk safely,
and how a resume refuses a checkpoint of another model or corpus, is here.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from course.errors import UsageError

RESUME_FILE = "resume.pt"  # everything needed to continue the run
WEIGHTS_FILE = "model.pt"  # the model alone, to sample from or start another run
BEST_FILE = "best.pt"  # the weights of the best validation loss


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


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed every generator a run draws from, offset by the process's rank (as nanoGPT
    does), so that under DDP each process draws its own dropout masks. The order of the
    batches has its own generator (course.batches), and DDP copies rank 0's initial
    weights to every process."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def this_process_rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,  # this process's GPU
    }


def capture_rng_state() -> dict:
    """Every random generator a run draws from (dropout, sampling, user code), in every
    training process: under DDP each process has its own, and one checkpoint must resume
    them all. Every process calls it (it gathers the states); rank 0 saves the result."""
    states = [this_process_rng_state()]
    if dist.is_initialized():
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, this_process_rng_state())
    return {"ranks": states}


def restore_rng_state(state: dict) -> None:
    """Each process takes back its own generators' states from capture_rng_state()'s dict."""
    mine = state["ranks"][dist.get_rank() if dist.is_initialized() else 0]
    random.setstate(mine["python"])
    np.random.set_state(mine["numpy"])
    torch.set_rng_state(mine["torch"])
    if mine["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["cuda"])


def check_same(what: str, saved: dict, current: dict) -> None:
    """Refuse to resume into a different model or data, naming the first difference."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise UsageError(
                f"the checkpoint's {what} differs: {key}={saved.get(key)!r} in the checkpoint, "
                f"{current.get(key)!r} now; use the options of the saved run or a new --save_dir"
            )


# GPTConfig fields that a new run may change: the weights do not depend on them.
TRAINING_SETTINGS = ("dropout", "aux_loss_weight")


def architecture(model_config: dict) -> dict:
    return {key: value for key, value in model_config.items() if key not in TRAINING_SETTINGS}


def describe_tokenizer(meta: dict) -> str:
    if meta["tokenizer"] == "char":
        return f"a char vocabulary of {len(meta['chars'])} characters"
    return f"the {meta['tokenizer']} vocabulary"


def load_weights(model: torch.nn.Module, path: Path, tokenizer_meta: dict) -> None:
    """--from_weight: the weights of model.pt (or best.pt) of another run, for the same
    tokenizer and architecture (dropout may differ: fine-tuning often changes it)."""
    if not path.is_file():
        raise UsageError(f"--from_weight {path}: no such file")
    weights = load_checkpoint(path)
    saved = weights["tokenizer"]
    if saved != tokenizer_meta:
        same_kind = describe_tokenizer(saved) == describe_tokenizer(tokenizer_meta)
        raise UsageError(
            f"--from_weight {path} was trained with another tokenizer ({describe_tokenizer(saved)} there, "
            f"{describe_tokenizer(tokenizer_meta)}{', other characters' if same_kind else ''} here): every "
            "embedding would stand for another token; use the --tokenizer and --data_path of that run"
        )
    check_same("model config", architecture(weights["model_config"]), architecture(model.config.to_dict()))
    model.load_state_dict(weights["model"])


class RunFiles:
    """The checkpoint files of one run, and what identifies the run: the model's
    config, the tokenizer, the corpus and the options it was started with."""

    def __init__(self, save_dir: Path) -> None:
        self.save_dir = save_dir
        self.resume_path = save_dir / RESUME_FILE
        self.identity: dict = {}

    def load_resume(self) -> dict:
        """The checkpoint that --from_resume 1 continues."""
        if not self.resume_path.is_file():
            raise UsageError(
                f"--from_resume 1: there is no {RESUME_FILE} in {self.save_dir}/ to continue from"
            )
        return load_checkpoint(self.resume_path)

    def describe(
        self, model_config: dict, tokenizer_meta: dict, data_meta: dict, options: dict, plan: dict
    ) -> None:
        """Remember what identifies this run; it is saved with every checkpoint. The plan
        (schedule and batch order, see course.cli.run_plan) is what a resume continues."""
        self.identity = {
            "model_config": model_config,
            "data_source": {"tokenizer": data_meta["tokenizer"], "source": data_meta["source"]},
            "tokenizer": tokenizer_meta,
            "train_args": options,
            "plan": plan,
        }

    def check_same_run(self, checkpoint: dict) -> None:
        """A resume must continue the same model on the same data."""
        check_same("model config", checkpoint["model_config"], self.identity["model_config"])
        check_same("data", checkpoint["data_source"], self.identity["data_source"])

    def save_weights(self, model: torch.nn.Module, name: str = WEIGHTS_FILE, **extra) -> None:
        weights = {
            "model": model.state_dict(),
            "model_config": self.identity["model_config"],
            "tokenizer": self.identity["tokenizer"],
        }
        save_atomic({**weights, **extra}, self.save_dir / name)

    def save_resume(self, state: dict) -> None:
        """A checkpoint_state() dict, with the run's identity so a resume can refuse a mismatch."""
        save_atomic({**state, **self.identity}, self.resume_path)
