"""Checkpoint files: written atomically, read with a clear error, refused when they
belong to a different run.

A run's folder (`--save_dir`, default out/) holds

    resume.pt   everything needed to continue the run (the dict of the training
                chapter's checkpoint_state, plus the configs and the data's identity)
    model.pt    the latest weights, with their model config and tokenizer
    best.pt     the weights with the lowest validation loss so far, in model.pt's format
    resume-shards/stepN/   FSDP runs only: the weights and optimizer state of resume.pt,
                one file per process (torch.distributed.checkpoint); resume.pt names
                the folder and holds the rest

Under FSDP no process holds the whole optimizer state, and gathering it on one would
need the memory FSDP saves; so every process writes its own shard, with PyTorch's
distributed checkpoint (DCP), in parallel. model.pt and best.pt are still gathered on
rank 0 into single files: they are small next to the optimizer state, and every tool
(sampling, --from_weight) reads them without torch.distributed. A sharded checkpoint
is complete only once resume.pt names it: resume.pt is written last, atomically, so a
run killed while writing shards resumes from the previous checkpoint.

What goes into resume.pt is the lesson of TODO 8; how it gets onto the disk safely,
and how a resume refuses a checkpoint of another model or corpus, is here. Which
folder a file goes to, and when (a new run never touches another run's files), is
course.run_folder's.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from course.distributed import ProcessGroup, full_weights, is_sharded
from course.errors import UsageError
from course.guards import saves_finish_first
from course.run_folder import (
    RESUME_FILE,
    SHARDS_DIR,
    WEIGHTS_FILE,
    RunFolder,
    UnclaimedFolder,
    check_free_space,
    out_of_space,
    storage_error,
    temporary_name,
)


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename it over `path`. A rename is atomic,
    so a crash mid-save leaves the previous file intact, never a half-written one. A
    full disk is said in one line, and the temporary file does not stay behind."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        full = out_of_space(err)
        if full is not None:
            raise storage_error(path, full) from None
        raise


def load_checkpoint(path: Path, option: str, needs: tuple[str, ...]) -> dict:
    """A checkpoint file this script saved, holding the keys `needs`; anything else
    (a truncated file, a bare state_dict, model.pt given as resume.pt) in one line.
    A sharded (FSDP) resume.pt holds its weights in its shards, not under "model"."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say so in one line
        raise UsageError(
            f"{option}: cannot read checkpoint {path} ({type(err).__name__}); is it a file this script saved?"
        ) from None
    if isinstance(checkpoint, dict) and "shards" in checkpoint and "step" in needs:
        needs = tuple(key for key in needs if key != "model")
    missing = [key for key in needs if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        kind = (
            "a resume checkpoint (resume.pt)" if "step" in needs else "a weights file (model.pt or best.pt)"
        )
        raise UsageError(f"{option}: {path} is not {kind} of this script: it has no {', '.join(missing)}")
    return checkpoint


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
        "mps": torch.mps.get_rng_state() if torch.backends.mps.is_available() else None,  # Apple silicon
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
    if mine.get("mps") is not None and torch.backends.mps.is_available():  # .get: saved before MPS's was
        torch.mps.set_rng_state(mine["mps"])


def fit_scaler_state(checkpoint: dict, scaler: torch.amp.GradScaler) -> dict:
    """The checkpoint, with a GradScaler state that this run's scaler can load. A run
    saved in bfloat16 or float32 has no scaler state ({}); resumed in float16 (moved to
    an older GPU) its scaler starts fresh, as a new float16 run's does, with a note. The
    other way round, a disabled scaler ignores the saved state."""
    if scaler.is_enabled() and not checkpoint.get("scaler"):
        print("note: the saved run did not train in float16: its GradScaler starts at the initial scale")
        return {**checkpoint, "scaler": scaler.state_dict()}
    return checkpoint


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
    weights = load_checkpoint(path, "--from_weight", WEIGHTS_KEYS)
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


WEIGHTS_KEYS = ("model", "model_config", "tokenizer")  # model.pt and best.pt
RESUME_KEYS = (*WEIGHTS_KEYS, "step", "data_source", "plan")  # resume.pt (and checkpoint_state's keys)


class RunFiles:
    """The checkpoint files of one run, and what identifies the run: the model's
    config, the tokenizer, the corpus and the options it was started with. Where each
    file goes (a new run stages its files until its first checkpoint) is the
    RunFolder's business (course.run_folder)."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder
        self.save_dir = folder.save_dir
        self.writes = not isinstance(folder, UnclaimedFolder)  # rank 0 writes the single files
        self.identity: dict = {}
        # The W&B or SwanLab run this run logs to (course.tracking), kept in every checkpoint
        # so that a resume continues it; None until --use_wandb 1 starts one.
        self.tracked_run: dict | None = None

    def load_resume(self) -> dict:
        """The checkpoint that --from_resume 1 continues (RunFolder.claim made sure it is there).
        An FSDP run's resume.pt holds everything but the weights and the optimizer state,
        which stay in its shards until read_shards."""
        checkpoint = load_checkpoint(self.folder.final_path(RESUME_FILE), "--from_resume 1", RESUME_KEYS)
        self.tracked_run = checkpoint.get("tracked_run")
        return checkpoint

    def read_shards(self, checkpoint: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """An FSDP checkpoint: every process reads its shards of the weights and the
        optimizer state into checkpoint["model"] and checkpoint["optimizer"], which
        restore_checkpoint then loads as usual. DCP reads into tensors that exist, so they
        are made first: the model's sharded state dict, and the optimizer's state, which
        appears only at its first step (get_optimizer_state_dict makes it, with a step
        at learning rate 0). The optimizer state is read in DCP's own form, keyed by
        parameter names (see save_shards), loaded into the optimizer, and handed to
        restore_checkpoint as the optimizer's state_dict(). Nothing to do for a
        checkpoint that is not sharded."""
        if "shards" not in checkpoint:
            return
        if not is_sharded(model):
            raise UsageError("this checkpoint was saved by an FSDP run: resume it with --parallel fsdp")
        state = {"model": model.state_dict(), "optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.load(state, checkpoint_id=self.save_dir / checkpoint["shards"])
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
        checkpoint.update(model=state["model"], optimizer=optimizer.state_dict())

    def describe(
        self, model_config: dict, tokenizer_meta: dict, data_meta: dict, options: dict, plan: dict
    ) -> None:
        """Remember what identifies this run; it is saved with every checkpoint. The plan
        (schedule and batch order, see course.cli.run_plan) is what a resume continues.
        The data are identified by their content (a hash of the source file), so a
        copied or touched file still resumes and an edited one does not."""
        self.identity = {
            "model_config": model_config,
            "data_source": data_identity(data_meta),
            "tokenizer": tokenizer_meta,
            "train_args": options,
            "plan": plan,
        }

    def check_same_run(self, checkpoint: dict) -> None:
        """A resume must continue the same model on the same data."""
        check_same("model config", checkpoint["model_config"], self.identity["model_config"])
        saved = checkpoint["data_source"]
        if "source_sha256" not in saved:  # saved before corpora were identified by content
            print("note: this checkpoint predates content-identified corpora: only its tokenizer is compared")
            saved = {**self.identity["data_source"], "tokenizer": saved.get("tokenizer")}
        check_same("data", saved, self.identity["data_source"])

    def check_free_space(self, model: torch.nn.Module) -> None:
        """Room for the run's checkpoints before anything is written: the old and the new
        resume.pt side by side during a save (weights and up to two optimizer moments
        each), model.pt and best.pt; float32 numbers, plus a margin."""
        if isinstance(self.folder, UnclaimedFolder):
            return  # rank 0 saves
        n_numbers = sum(p.numel() for p in model.parameters())
        check_free_space(self.save_dir, int(1.25 * 4 * n_numbers * 8) + 10**7, "one checkpoint")

    @saves_finish_first()  # a second signal quits once the file is written
    def save_weights(self, model: torch.nn.Module, name: str = WEIGHTS_FILE, **extra) -> None:
        """model.pt or best.pt, written by rank 0. Under FSDP every process must call it
        (the weights are gathered from all of them)."""
        weights = full_weights(model)
        if not self.writes:
            return
        weights = {
            "model": weights,
            "model_config": self.identity["model_config"],
            "tokenizer": self.identity["tokenizer"],
        }
        save_atomic({**weights, **extra}, self.folder.path(name))

    @saves_finish_first()  # ... once the whole checkpoint is written
    def save_checkpoint(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict | None,
        group: ProcessGroup,
    ) -> None:
        """model.pt, and resume.pt (a checkpoint_state() dict with the run's identity, so a
        resume can refuse a mismatch) unless TODO 8 is open (state None). The first
        checkpoint of a new run moves its staged files into the folder. Every process
        calls it; under FSDP each writes its shards first (save_shards)."""
        self.save_weights(model)
        if state is not None and is_sharded(model):
            state = self.save_shards(state, model, optimizer, group)
        if not self.writes:
            return
        if state is not None:
            tracked = {"tracked_run": self.tracked_run} if self.tracked_run is not None else {}
            save_atomic({**state, **self.identity, **tracked}, self.folder.path(RESUME_FILE))
        if state is not None and "shards" in state:
            remove_other_shards(self.folder.path(SHARDS_DIR), keep=Path(state["shards"]).name)
        self.folder.commit()

    def save_shards(
        self, state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, group: ProcessGroup
    ) -> dict:
        """Every process writes its shards of the weights and the optimizer state (DCP)
        into a folder of this step; returns the rest of the state, which names the folder
        and goes into resume.pt. The folder is rank 0's (a new run's is still staged).

        The weights are checkpoint_state's; the optimizer state is taken in DCP's own
        form (get_optimizer_state_dict), which names each parameter instead of numbering
        it as optimizer.state_dict() does, so that DCP can match every shard by name."""
        name = f"step{state['step']}"
        folder = Path(group.main_says(str(self.folder.path(SHARDS_DIR) / name) if self.writes else None))
        if self.writes:
            shutil.rmtree(folder, ignore_errors=True)  # left by a run killed while writing this step
            folder.mkdir(parents=True)
        group.barrier()
        try:
            sharded_state = {"model": state["model"], "optimizer": get_optimizer_state_dict(model, optimizer)}
            dcp.save(sharded_state, checkpoint_id=folder)
        except BaseException as err:
            full = out_of_space(err)
            if full is not None:
                raise storage_error(folder, full) from None
            raise
        rest = {key: value for key, value in state.items() if key not in ("model", "optimizer")}
        return {**rest, "shards": f"{SHARDS_DIR}/{name}"}


def remove_other_shards(shards: Path, keep: str) -> None:
    """After resume.pt names the newest shards, the older ones are no longer needed."""
    for folder in shards.iterdir():
        if folder.name != keep:
            shutil.rmtree(folder, ignore_errors=True)


def data_identity(data_meta: dict) -> dict:
    """What a resume compares: the tokenizer and the content of the source file."""
    return {"tokenizer": data_meta["tokenizer"], "source_sha256": data_meta["source"]["sha256"]}
