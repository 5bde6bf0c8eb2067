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

Every file carries a checksum of its content (the key "sha256": of every tensor's bytes
and every other value), checked whenever it is read: torch.load does not notice a
flipped byte in tensor data, and a resume from damaged numbers would train on
silently. A sharded resume.pt holds the checksums of its shard files too, and their
metadata is read by an unpickler that builds nothing but DCP's metadata classes:
DCP itself unpickles it, so a planted file could otherwise run code.

What goes into resume.pt is the lesson of TODO 8; how it gets onto the disk safely,
and how a resume refuses a checkpoint of another model or corpus, is here. Which
folder a file goes to, and when (a new run never touches another run's files), is
course.run_folder's.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from course.corpus import file_sha256
from course.distributed import ProcessGroup, full_weights, is_sharded, load_full_weights
from course.errors import UsageError
from course.guards import saves_finish_first
from course.run_folder import (
    BEST_FILE,
    RESUME_FILE,
    SHARDS_DIR,
    WEIGHTS_FILE,
    RunFolder,
    UnclaimedFolder,
    check_free_space,
    open_new,
    out_of_space,
    storage_error,
    temporary_name,
)

CHECKSUM = "sha256"  # the key of a checkpoint's own checksum (content_sha256 of the rest)


def content_sha256(obj) -> str:
    """A checksum of a checkpoint's content: every tensor's dtype, shape and bytes, and
    every other value's type and repr, in the order torch.save keeps them."""
    digest = hashlib.sha256()
    add_to_digest(digest, obj)
    return digest.hexdigest()


def add_to_digest(digest: hashlib._Hash, obj) -> None:
    if isinstance(obj, torch.Tensor):
        flat = obj.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor {flat.dtype} {tuple(obj.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy())  # the raw bytes, whatever the dtype
    elif isinstance(obj, dict):
        digest.update(f"dict {len(obj)}|".encode())
        for key, value in obj.items():
            add_to_digest(digest, key)
            add_to_digest(digest, value)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{type(obj).__name__} {len(obj)}|".encode())
        for item in obj:
            add_to_digest(digest, item)
    else:
        digest.update(f"{type(obj).__name__} {obj!r}|".encode())


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save, with the content's checksum, to a temporary file, then rename it over
    `path`. A rename is atomic, so a crash mid-save leaves the previous file intact, never
    a half-written one. A full disk is said in one line, and the temporary file does not
    stay behind."""
    tmp = temporary_name(path)
    try:
        with open_new(tmp) as f:
            content = {key: value for key, value in obj.items() if key != CHECKSUM}  # a re-saved checkpoint's
            torch.save({**content, CHECKSUM: content_sha256(content)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        full = out_of_space(err)
        if full is not None:
            raise storage_error(path, full) from None
        raise


def load_checkpoint(path: Path, option: str, needs: tuple[str, ...], mmap: bool = False) -> dict:
    """A checkpoint file this script saved, holding the keys `needs`, with its checksum
    checked; anything else (a truncated or damaged file, a bare state_dict, model.pt given
    as resume.pt) in one line. A sharded (FSDP) resume.pt holds its weights in its
    shards, not under "model". mmap: the tensors stay in the file (mapped), read when used."""
    checkpoint = read_checked(path, mmap=mmap)
    if isinstance(checkpoint, str):
        raise UsageError(f"{option}: {checkpoint}")
    if "shards" in checkpoint and "step" in needs:
        needs = tuple(key for key in needs if key != "model")
    missing = [key for key in needs if key not in checkpoint]
    if missing:
        kind = (
            "a resume checkpoint (resume.pt)" if "step" in needs else "a weights file (model.pt or best.pt)"
        )
        raise UsageError(f"{option}: {path} is not {kind} of this script: it has no {', '.join(missing)}")
    return checkpoint


def read_checked(path: Path, name_a_good_one: bool = True, mmap: bool = False) -> dict | str:
    """The checkpoint in `path` with its checksum checked (a file saved before checkpoints
    had one is taken as it is), or what is wrong with it, naming a good file beside it."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # a truncated or foreign file: say so in one line
        return f"cannot read checkpoint {path} ({type(err).__name__}); is it a file this script saved?"
    if not isinstance(checkpoint, dict):
        return f"{path} is not a checkpoint of this script (it holds a {type(checkpoint).__name__})"
    saved = checkpoint.pop(CHECKSUM, None)
    if saved is not None and saved != content_sha256(checkpoint):
        beside = good_file_beside(path) if name_a_good_one else ""
        return f"{path} is damaged: its content does not match its checksum{beside}"
    return checkpoint


def good_file_beside(path: Path) -> str:
    """For a damaged file of a run folder: the run's other weights file, if it is intact."""
    for name in (WEIGHTS_FILE, BEST_FILE):
        other = path.with_name(name)
        if other != path and other.is_file() and isinstance(read_checked(other, False), dict):
            return f"; {other} is intact (a run can start from it with --from_weight {other})"
    return ""


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
        # This process's GPU, if the run uses one: reading it would start CUDA on GPU 0
        # in every process of a --device cpu run on a GPU machine.
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
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
    """Each process takes back its own generators' states from capture_rng_state()'s dict.
    A run resumed on more processes than it saved (course.cli.check_global_batch) has
    none for the extra ones: they keep the generators seed_everything gave them."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank >= len(state["ranks"]):
        return
    mine = state["ranks"][rank]
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
    # Mapped: the file's pages are the system's cache, shared by the processes of a machine,
    # and under FSDP each process copies only its shards out of them (load_full_weights).
    weights = load_checkpoint(path, "--from_weight", WEIGHTS_KEYS, mmap=True)
    saved = weights["tokenizer"]
    if saved != tokenizer_meta:
        same_kind = describe_tokenizer(saved) == describe_tokenizer(tokenizer_meta)
        raise UsageError(
            f"--from_weight {path} was trained with another tokenizer ({describe_tokenizer(saved)} there, "
            f"{describe_tokenizer(tokenizer_meta)}{', other characters' if same_kind else ''} here): every "
            "embedding would stand for another token; use the --tokenizer and --data_path of that run"
        )
    check_same("model config", architecture(weights["model_config"]), architecture(model.config.to_dict()))
    load_full_weights(model, weights["model"])


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
        are made first: the model's state dict, and the optimizer's state, which
        appears only at its first step (get_optimizer_state_dict makes it, with a step
        at learning rate 0). The optimizer state is read in DCP's own form, keyed by
        parameter names (see save_shards), loaded into the optimizer, and handed to
        restore_checkpoint as the optimizer's state_dict().

        DCP reshards: the tensors it reads into may be split over another number of
        processes than the saved ones, or be whole (a DDP or single-process run goes on
        from an FSDP checkpoint, without a process group in the latter). The other way
        round, an FSDP run shares out the whole tensors of a checkpoint that is not
        sharded (shard_whole_state); for any other run there is nothing to do."""
        if "shards" not in checkpoint:
            if is_sharded(model):
                shard_whole_state(checkpoint, model, optimizer)
            return
        folder = self.checked_shards(checkpoint)
        state = {"model": model.state_dict(), "optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.load(state, storage_reader=MetadataOnlyReader(folder), no_dist=not dist.is_initialized())
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
        checkpoint.update(model=state["model"], optimizer=optimizer.state_dict())

    def checked_shards(self, checkpoint: dict) -> Path:
        """The shard folder that resume.pt names, once it is known to be inside the run
        folder and to hold the files resume.pt has the checksums of (checked by rank 0,
        which tells every process)."""
        name, resume = checkpoint["shards"], self.folder.final_path(RESUME_FILE)
        if not isinstance(name, str) or not SHARD_FOLDER.fullmatch(name):
            raise UsageError(f"{resume} names shards outside its run folder ({name!r}): refused")
        folder = self.save_dir / name
        problem = shards_problem(folder, checkpoint.get("shards_sha256")) if self.writes else None
        if dist.is_initialized():
            said = [problem]
            dist.broadcast_object_list(said, src=0)
            problem = said[0]
        if problem is not None:
            raise UsageError(f"--from_resume 1: {problem}; the run cannot continue from {resume}")
        return folder

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
        checksums = files_sha256(folder) if self.writes else {}  # dcp.save returns once all are written
        return {**rest, "shards": f"{SHARDS_DIR}/{name}", "shards_sha256": checksums}


def shard_whole_state(checkpoint: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The whole weights and optimizer state of a DDP or single-process checkpoint (every
    process read resume.pt), into this FSDP run's shards, each process keeping its own;
    then handed to restore_checkpoint in this run's form, as read_shards does. The saved
    optimizer numbers the parameters in the order of its groups, DCP's form names them:
    the numbers are those of this run's optimizer, built alike for the same model."""
    whole = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, checkpoint["model"], options=whole)
    names = {param: name for name, param in model.named_parameters()}
    name_of = [names[param] for group in optimizer.param_groups for param in group["params"]]
    saved = checkpoint["optimizer"]
    named = {
        "state": {name_of[number]: state for number, state in saved["state"].items()},
        "param_groups": [
            {**group, "params": [name_of[number] for number in group["params"]]}
            for group in saved["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, named, options=whole)
    checkpoint.update(model=model.state_dict(), optimizer=optimizer.state_dict())


SHARD_FOLDER = re.compile(re.escape(SHARDS_DIR) + r"/step\d+")  # what resume.pt's "shards" may name


def files_sha256(folder: Path) -> dict[str, str]:
    return {path.name: file_sha256(path) for path in sorted(folder.iterdir())}


def shards_problem(folder: Path, saved: dict[str, str] | None) -> str | None:
    """What is wrong with a checkpoint's shard files, or None: each file resume.pt has a
    checksum of is there and matches it, and there is no other file."""
    if not folder.is_dir() or folder.is_symlink():
        return f"its shards {folder}/ are missing"
    if saved is None:  # saved before shards had checksums
        return None
    here = sorted(path.name for path in folder.iterdir())
    if here != sorted(saved):
        return f"{folder}/ does not hold the shard files it was saved with"
    damaged = [name for name in here if file_sha256(folder / name) != saved[name]]
    return f"{folder / damaged[0]} is damaged: it does not match its checksum" if damaged else None


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles a DCP .metadata file into DCP's own metadata classes and nothing else:
    pickle can call any function, and the file sits in a folder anyone with write access
    could change. The allowed names are those DCP's metadata is made of."""

    ALLOWED = {
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in self.ALLOWED or is_dtype or module == "torch.distributed.checkpoint.metadata":
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


class MetadataOnlyReader(dcp.FileSystemReader):
    """DCP's file reader, with its metadata read by MetadataUnpickler, and the shard
    files it names kept inside the checkpoint's folder."""

    def read_metadata(self, *args, **kwargs) -> dcp.Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as f:
                metadata = MetadataUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as err:
            raise UsageError(f"--from_resume 1: {path} is not a checkpoint's metadata ({err})") from None
        if not isinstance(metadata, dcp.Metadata) or not all(
            map(names_a_file_here, (metadata.storage_data or {}).values())
        ):
            raise UsageError(f"--from_resume 1: {path} is not a checkpoint's metadata of its own folder")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp.metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def names_a_file_here(info: object) -> bool:
    """A shard's storage entry names a file of the checkpoint's own folder."""
    name = getattr(info, "relative_path", None) if isinstance(info, _StorageInfo) else None
    return isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", "..")


def remove_other_shards(shards: Path, keep: str) -> None:
    """After resume.pt names the newest shards, the older ones are no longer needed."""
    for folder in shards.iterdir():
        if folder.name != keep:
            shutil.rmtree(folder, ignore_errors=True)


def data_identity(data_meta: dict) -> dict:
    """What a resume compares: the tokenizer and the content of the source file."""
    return {"tokenizer": data_meta["tokenizer"], "source_sha256": data_meta["source"]["sha256"]}
