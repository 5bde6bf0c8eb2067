"""One run per folder: a run's files, where each goes and when, and how a save reaches the disk
whole: staged until the first checkpoint, committed with a redo log (commit.json), locked, every
.pt file with a checksum of its content, FSDP's shards written with DCP. docs/what-is-kept.md
gives the rules, docs/scale.md the sharded checkpoints.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer

from course.distributed import ProcessGroup, full_weights, is_sharded
from course.errors import StorageError, UsageError
from course.guards import saves_finish_first

try:
    import fcntl  # POSIX file locks (Linux, macOS)
except ImportError:  # Windows
    fcntl = None

RESUME_FILE = "resume.pt"  # everything needed to continue the run
WEIGHTS_FILE = "model.pt"  # the latest weights, to sample from or start another run
BEST_FILE = "best.pt"  # the weights of the best validation loss
METRICS_FILE, PLOT_FILE, SAMPLES_FILE = "metrics.jsonl", "metrics.png", "samples.txt"
TENSORBOARD_DIR = "tensorboard"  # TensorBoard's event files (course.tracking); --tensorboard 0: none
SHARDS_DIR = "resume-shards"  # FSDP: the weights and optimizer state of resume.pt, one file per process
PROFILE_FILE = "profile.pt.trace.json"  # --profile N
# What every run writes; FSDP adds its shards, --profile a trace (RUN_FILES: all, resume.pt last).
EVERY_RUN_FILES = WEIGHTS_FILE, BEST_FILE, METRICS_FILE, PLOT_FILE, SAMPLES_FILE, TENSORBOARD_DIR, RESUME_FILE
RUN_FILES = (*EVERY_RUN_FILES[:-1], SHARDS_DIR, PROFILE_FILE, RESUME_FILE)
WEIGHTS_KEYS = ("model", "model_config", "tokenizer")  # model.pt and best.pt
RESUME_KEYS = (*WEIGHTS_KEYS, "step", "data_source", "plan")  # resume.pt (and checkpoint_state's keys)
CHECKSUM = "sha256"  # the key of a checkpoint's own checksum (content_sha256 of the rest)
LOCK_FILE = ".lock"
STAGING_PREFIX = ".pretrain-staging-"  # only folders with this prefix are this project's
COMMIT_FILE = "commit.json"  # in a staging folder: the staged files, written when they are complete
REPLACED_DIR = ".replaced"  # in a staging folder: the old run's files, removed with the folder
# The temporary files of run files (temporary_name): the only hidden .tmp files a claim removes.
LEFTOVER_TEMPORARY = re.compile(r"\.(" + "|".join(map(re.escape, RUN_FILES)) + r")\.\d+\.tmp")
SHARD_FOLDER = re.compile(re.escape(SHARDS_DIR) + r"/step\d+")  # what resume.pt's "shards" may name
NO_LOCKS = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)  # no flock (Lustre without -o flock, some NFS)
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # disk full, quota, file-size limit


class RunFolder:
    """One run's folder and files: `claim` it, write each file at `path(name)` (staged until a
    new run's first checkpoint), `save_checkpoint` and commit, `release`. The processes other
    than rank 0 hold one with writes=False: they write only their FSDP shards."""

    def __init__(self, save_dir: Path, writes: bool = True) -> None:
        self.save_dir, self.writes = save_dir, writes
        busy = f"another run (pid {{pid}}) is writing to {save_dir}/; wait for it to end, or give this one "
        self.lock = FileLock(save_dir / LOCK_FILE, busy + "another --save_dir")
        self.staging: Path | None = None
        self.committed = not writes  # has this run saved a checkpoint into the folder?
        self.created = False  # did this run create the folder? (then a run that saved nothing removes it)
        # Called before the staged files move: writers with a file open there close it (TensorBoard's).
        self.before_commit: list[Callable[[], None]] = []
        self.identity: dict = {}  # what identifies the run (describe), in every checkpoint
        self.tracked_run: dict | None = None  # the W&B or SwanLab run (course.tracking) a resume continues

    @classmethod
    def claim(cls, save_dir: Path, resume: bool, overwrite: bool) -> RunFolder:
        """This run's folder: checked, locked, and for a new run a staging folder. Nothing
        changes before this run is known to be allowed there, but a killed run's commit."""
        if resume or overwrite:
            check_run_files_writable(save_dir, resume)
        check_folder(save_dir, "--save_dir")
        no_resume = UsageError(f"--from_resume 1: there is no {RESUME_FILE} in {save_dir}/ to continue from")
        if resume and not save_dir.is_dir():
            raise no_resume
        folder = cls(save_dir)
        folder.created = not save_dir.exists()
        save_dir.mkdir(parents=True, exist_ok=True)
        folder.lock.acquire()
        try:
            finish_interrupted_commits(save_dir)
            if resume and not (save_dir / RESUME_FILE).is_file():
                raise no_resume
            held = folder.run_files()
            if not resume and held and not overwrite:
                raise UsageError(
                    f"{save_dir}/ holds a run ({', '.join(held)}): continue it with --from_resume 1, "
                    "start a new one with another --save_dir, or replace it with --overwrite 1"
                )
            # This project's leftovers (no one writes them while we hold the lock); the rest is the user's.
            for path in save_dir.glob(f"{STAGING_PREFIX}*"):
                remove(path)
            for path in save_dir.glob(".*.tmp"):
                if LEFTOVER_TEMPORARY.fullmatch(path.name):
                    path.unlink(missing_ok=True)
            if resume:
                folder.committed = True  # the folder is this run's: write in place
            else:
                folder.staging = save_dir / f"{STAGING_PREFIX}{os.getpid()}"
                folder.staging.mkdir()
        except BaseException:
            folder.release()
            raise
        return folder

    def run_files(self) -> list[str]:
        return [name for name in RUN_FILES if (self.save_dir / name).exists()]

    def path(self, name: str) -> Path:
        """Where the file `name` of this run is written now."""
        return (self.staging or self.save_dir) / name

    def final_path(self, name: str) -> Path:
        """Where the file `name` of this run ends up (what messages name)."""
        return self.save_dir / name

    def commit(self) -> None:
        """After a new run's first checkpoint: the list of its staged files makes it the folder's run."""
        if self.staging is not None:
            for close in self.before_commit:
                close()
            staged = json.dumps({"files": sorted(path.name for path in self.staging.iterdir())}) + "\n"
            write_atomic(self.staging / COMMIT_FILE, lambda f: f.write(staged), "w")
            sync_folder(self.staging)
            finish_commit(self.staging)
            self.staging = None
        self.committed = True

    def release(self) -> None:
        """End of the run, however it ends: an uncommitted staging folder goes, the lock is freed."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        self.lock.release()
        if self.created and not self.committed and not any(self.save_dir.iterdir()):
            self.save_dir.rmdir()  # a folder this run made and never wrote to: as it was, not there

    def describe(
        self, model_config: dict, tokenizer_meta: dict, data_meta: dict, options: dict, plan: dict
    ) -> None:
        """What identifies this run, in every checkpoint; a resume continues its plan (cli.run_plan)."""
        self.identity = {
            "model_config": model_config,
            "data_source": data_identity(data_meta),
            "tokenizer": tokenizer_meta,
            "train_args": options,
            "plan": plan,
        }

    def check_free_space(self, model: nn.Module) -> None:
        """Room, before anything is written, for the old and the new resume.pt (weights and up
        to two optimizer moments each), model.pt and best.pt in float32, plus a margin."""
        if not self.writes:
            return
        needed = int(1.25 * 4 * sum(p.numel() for p in model.parameters()) * 8) + 10**7
        free = shutil.disk_usage(self.save_dir).free
        if free < needed:
            raise UsageError(
                f"{self.save_dir} has {free / 1e6:,.0f} MB free, and one checkpoint needs about "
                f"{needed / 1e6:,.0f} MB; free some space or choose another folder"
            )

    @saves_finish_first()  # a second signal quits once the file is written
    def save_weights(self, model: nn.Module, name: str = WEIGHTS_FILE, **extra) -> None:
        """model.pt or best.pt, written by rank 0; under FSDP every process calls it (to gather)."""
        weights = full_weights(model)
        if self.writes:
            identity = {key: self.identity[key] for key in ("model_config", "tokenizer")}
            save_atomic({"model": weights, **identity, **extra}, self.path(name))

    @saves_finish_first()  # ... once the whole checkpoint is written
    def save_checkpoint(
        self, model: nn.Module, optimizer: Optimizer, state: dict | None, group: ProcessGroup
    ) -> None:
        """model.pt, resume.pt (checkpoint_state() and the run's identity; none while TODO 8 is
        open), then the commit. Every process calls it: under FSDP each writes its shards first."""
        self.save_weights(model)
        if state is not None and is_sharded(model):
            state = self.save_shards(state, model, optimizer, group)
        if not self.writes:
            return
        if state is not None:
            tracked = {"tracked_run": self.tracked_run} if self.tracked_run is not None else {}
            save_atomic({**state, **self.identity, **tracked}, self.path(RESUME_FILE))
        if state is not None and "shards" in state:  # resume.pt names the new shards: the older ones go
            for folder in self.path(SHARDS_DIR).iterdir():
                if folder.name != Path(state["shards"]).name:
                    shutil.rmtree(folder, ignore_errors=True)
        self.commit()

    def save_shards(self, state: dict, model: nn.Module, optimizer: Optimizer, group: ProcessGroup) -> dict:
        """Every process writes its shards (DCP) into a folder of this step; returns the rest of the
        state, naming it, for resume.pt. The optimizer state in DCP's form names its parameters."""
        name = f"step{state['step']}"
        folder = Path(group.main_says(str(self.path(SHARDS_DIR) / name) if self.writes else None))
        if self.writes:
            shutil.rmtree(folder, ignore_errors=True)  # left by a run killed while writing this step
            folder.mkdir(parents=True)
        group.barrier()
        from course import shards  # here: DCP is for runs with shards only (course.shards)

        with full_disk_said(folder):
            shards.save(state["model"], model, optimizer, folder)
        rest = {key: value for key, value in state.items() if key not in ("model", "optimizer")}
        checksums = files_sha256(folder) if self.writes else {}  # dcp.save returns once all are written
        return {**rest, "shards": f"{SHARDS_DIR}/{name}", "shards_sha256": checksums}

    def load_resume(self) -> dict:
        """The checkpoint --from_resume 1 continues; an FSDP run's tensors stay in its shards."""
        checkpoint = load_checkpoint(self.final_path(RESUME_FILE), "--from_resume 1", RESUME_KEYS)
        self.tracked_run = checkpoint.get("tracked_run")
        return checkpoint

    def check_same_run(self, checkpoint: dict) -> None:
        """A resume must continue the same model on the same data."""
        check_same("model config", checkpoint["model_config"], self.identity["model_config"])
        saved = checkpoint["data_source"]
        if "source_sha256" not in saved:  # saved before corpora were identified by content
            print("note: this checkpoint predates content-identified corpora: only its tokenizer is compared")
            saved = {**self.identity["data_source"], "tokenizer": saved.get("tokenizer")}
        check_same("data", saved, self.identity["data_source"])

    def read_shards(self, checkpoint: dict, model: nn.Module, optimizer: Optimizer) -> None:
        """The weights and optimizer state in this run's layout, for restore_checkpoint: DCP reads
        the shards, resharded, into the model and optimizer; a whole checkpoint is cut into shards."""
        from course import shards  # here: DCP is for runs with shards only (course.shards)

        if "shards" not in checkpoint:
            if is_sharded(model):
                shards.shard_whole_state(checkpoint, model, optimizer)
            return
        weights, optimizer_state = shards.load(self.checked_shards(checkpoint), model, optimizer)
        checkpoint.update(model=weights, optimizer=optimizer_state)

    def checked_shards(self, checkpoint: dict) -> Path:
        """The shard folder resume.pt names, once rank 0 found it holding the files checksummed there."""
        name, resume = checkpoint["shards"], self.final_path(RESUME_FILE)
        if not isinstance(name, str) or not SHARD_FOLDER.fullmatch(name):
            raise UsageError(f"{resume} names shards outside its run folder ({name!r}): refused")
        folder = self.save_dir / name
        said = [shards_problem(folder, checkpoint.get("shards_sha256")) if self.writes else None]
        if dist.is_initialized():
            dist.broadcast_object_list(said, src=0)
        if said[0] is not None:
            raise UsageError(f"--from_resume 1: {said[0]}; the run cannot continue from {resume}")
        return folder


def check_folder(path: Path, option: str) -> None:
    """A folder, or one that can be created, where a file can be written (a probe, removed at once)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folder is created later: its nearest existing parent decides
    if not existing.is_dir():
        where = "" if existing == path else f" (its parent {existing} is a file)"
        raise UsageError(f"{option} {path} is a file, not a folder{where}; give a folder's path")
    try:
        probe, probe_path = tempfile.mkstemp(dir=existing, prefix=".write-check-")
        os.close(probe)
        os.unlink(probe_path)
    except OSError as err:
        reason = "no space left on the device" if err.errno in OUT_OF_SPACE else err.strerror
        raise UsageError(
            f"{option} {path} cannot be written to ({reason}); give a folder you can write to"
        ) from None


def check_run_files_writable(save_dir: Path, resume: bool) -> None:
    """A run file made read-only (chmod 444) is a sign to keep it; a resume's append to it would fail.
    A folder is writable where entries can be added and removed."""
    paths = [save_dir / name for name in RUN_FILES if (save_dir / name).exists()]
    read_only = [p.name for p in paths if not os.access(p, (os.W_OK | os.X_OK) if p.is_dir() else os.W_OK)]
    if read_only:
        option = "--from_resume 1" if resume else "--overwrite 1"
        raise UsageError(
            f"--save_dir {save_dir}: read-only: {', '.join(read_only)}, and {option} writes to them; "
            f"make them writable (chmod -R u+w {save_dir}) or give another --save_dir"
        )


class FileLock:
    """An exclusive lock on a file holding its holder's pid, freed however the process ends. busy:
    what a refused or waiting process is told ({pid}: the holder's)."""

    def __init__(self, path: Path, busy: str) -> None:
        self.path, self.busy = path, busy
        self.fd: int | None = None

    def acquire(self, wait: bool = False) -> None:
        """Take the lock; if another process holds it, wait for it (wait=True) or refuse."""
        if fcntl is None:  # no POSIX locks (Windows): one run per folder is then up to the user
            return
        while True:
            fd = self.open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy = self.busy.format(pid=os.read(fd, 64).decode(errors="replace").strip() or "?")
                if not wait:
                    os.close(fd)
                    raise UsageError(busy) from None
                print(f"note: {busy}; waiting for it", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as err:
                if err.errno not in NO_LOCKS:
                    raise
                print(
                    f"note: {self.path.parent} has no file locks ({err.strerror}): "
                    "run one process here at a time",
                    file=sys.stderr,
                )
                break
            # The holder may have removed the file between our open and our lock: then the
            # lock is on a file no one else can see. Retry.
            if os.path.exists(self.path) and os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def open(self) -> int:
        """The lock file, never through a symbolic link (the pid would go where it points)."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise
            raise UsageError(
                f"{self.path} is a symbolic link, not a lock file this project made; remove it and run again"
            ) from None

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # removed while still locked: no one can take it in between
            os.close(self.fd)
            self.fd = None


def remove(path: Path) -> None:
    """Remove a file or a folder of files (never what a link points to), if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def sync_folder(path: Path) -> None:
    """Make the names created in a folder durable (a power cut keeps them)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_commit_list(staging: Path) -> list[str] | None:
    """The files a staging folder's commit moves in; None if it is a leftover (never committed)."""
    try:
        files = json.loads((staging / COMMIT_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, list) or not all(isinstance(name, str) and name in RUN_FILES for name in files):
        return None
    return files


def finish_commit(staging: Path) -> None:
    """Move a committed run's files in, resume.pt last, and the old run's out into REPLACED_DIR (a
    folder cannot be renamed over another). Redoable: a second call finishes a stopped commit."""
    files = read_commit_list(staging)
    assert files is not None, f"{staging} has no commit list"
    save_dir, replaced = staging.parent, staging / REPLACED_DIR
    replaced.mkdir(exist_ok=True)
    for name in sorted(files, key=lambda name: name == RESUME_FILE):
        if not (staging / name).exists() and not (staging / name).is_symlink():
            continue  # moved in before the stop
        if (save_dir / name).is_dir() and not (save_dir / name).is_symlink():
            os.replace(save_dir / name, replaced / name)
        os.replace(staging / name, save_dir / name)
    for name in RUN_FILES:
        if name not in files and ((save_dir / name).exists() or (save_dir / name).is_symlink()):
            os.replace(save_dir / name, replaced / name)  # the old run's, which this run does not have
    sync_folder(save_dir)
    remove(staging)


def finish_interrupted_commits(save_dir: Path) -> None:
    """A staging folder with a commit list is a killed run's commit, the folder's run now: finish it."""
    for staging in sorted(save_dir.glob(f"{STAGING_PREFIX}*")):
        if staging.is_dir() and not staging.is_symlink() and read_commit_list(staging) is not None:
            print(
                f"note: finishing the commit of a run stopped while its files moved into {save_dir}/",
                file=sys.stderr,
            )
            finish_commit(staging)


def temporary_name(path: Path) -> Path:
    """Where `path` is written before its rename: hidden, with the pid, so writers never share one."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: Path, write: Callable, mode: str = "wb") -> None:
    """write(file) into a new temporary file (one left there, or a link, is removed, never written
    through), then an atomic rename over `path`: a crash leaves the old file whole."""
    tmp = temporary_name(path)
    tmp.unlink(missing_ok=True)
    exclusive = os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        with open(tmp, mode, opener=lambda name, flags: os.open(name, flags | exclusive, 0o644)) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save with the content's checksum, whole or not at all; a full disk in one line."""
    content = {key: value for key, value in obj.items() if key != CHECKSUM}  # a re-saved checkpoint's
    with full_disk_said(path):
        write_atomic(path, lambda f: torch.save({**content, CHECKSUM: content_sha256(content)}, f))


@contextmanager
def full_disk_said(path: Path) -> Iterator[None]:
    """A write to `path` that fails for lack of space becomes a one-line StorageError."""
    try:
        yield
    except BaseException as err:
        full = out_of_space(err)
        if full is None:
            raise
        remedy = (
            "raise the file-size limit (ulimit -f)" if full.errno == errno.EFBIG else "free some disk space"
        )
        raise StorageError(
            f"could not write {path}: {full.strerror or 'no space left on the device'}; the earlier "
            f"checkpoint is kept: {remedy}, then continue with --from_resume 1"
        ) from None


def out_of_space(error: BaseException) -> OSError | None:
    """The OSError behind a write that failed for lack of space (torch.save wraps it), or None."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in OUT_OF_SPACE:
            return error
        error = error.__cause__ or error.__context__
    return None


def content_sha256(obj) -> str:
    """Every tensor's dtype, shape and bytes, every other value's type and repr, in order."""
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


def load_checkpoint(path: Path, option: str, needs: tuple[str, ...], mmap: bool = False) -> dict:
    """A checkpoint this script saved, with the keys `needs` and its checksum checked; anything
    else in one line. mmap: the tensors stay in the file, read when used."""
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
    """The checkpoint in `path` with its checksum checked (if it has one), or what is wrong with it."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # a truncated or foreign file: say so in one line
        return f"cannot read checkpoint {path} ({type(err).__name__}); is it a file this script saved?"
    if not isinstance(checkpoint, dict):
        return f"{path} is not a checkpoint of this script (it holds a {type(checkpoint).__name__})"
    saved = checkpoint.pop(CHECKSUM, None)
    if saved is None or saved == content_sha256(checkpoint):
        return checkpoint
    others = [path.with_name(name) for name in (WEIGHTS_FILE, BEST_FILE)] if name_a_good_one else []
    intact = [p for p in others if p != path and p.is_file() and isinstance(read_checked(p, False), dict)]
    beside = (
        f"; {intact[0]} is intact (a run can start from it with --from_weight {intact[0]})" if intact else ""
    )
    return f"{path} is damaged: its content does not match its checksum{beside}"


def check_same(what: str, saved: dict, current: dict) -> None:
    """Refuse to resume into a different model or data, naming the first difference."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise UsageError(
                f"the checkpoint's {what} differs: {key}={saved.get(key)!r} in the checkpoint, "
                f"{current.get(key)!r} now; use the options of the saved run or a new --save_dir"
            )


def data_identity(data_meta: dict) -> dict:
    """The tokenizer and the source file's content: a copied file still resumes, an edited one not."""
    return {"tokenizer": data_meta["tokenizer"], "source_sha256": data_meta["source"]["sha256"]}


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read 1 MB at a time (constant memory)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


def files_sha256(folder: Path) -> dict[str, str]:
    return {path.name: file_sha256(path) for path in sorted(folder.iterdir())}


def shards_problem(folder: Path, saved: dict[str, str] | None) -> str | None:
    """What is wrong with the shard files, or None: exactly the files resume.pt has checksums of."""
    if not folder.is_dir() or folder.is_symlink():
        return f"its shards {folder}/ are missing"
    if saved is None:  # saved before shards had checksums
        return None
    here = files_sha256(folder)
    if sorted(here) != sorted(saved):
        return f"{folder}/ does not hold the shard files it was saved with"
    damaged = [name for name in here if here[name] != saved[name]]
    return f"{folder / damaged[0]} is damaged: it does not match its checksum" if damaged else None
