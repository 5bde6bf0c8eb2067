"""One run per folder: where a run writes in --save_dir, and when.

A run's folder (`--save_dir`, default out/) holds the run's files: resume.pt,
model.pt, best.pt, metrics.jsonl, metrics.png, samples.txt and its TensorBoard
event files in tensorboard/ (and resume-shards/ for an FSDP run, profile.pt.trace.json
with --profile). Three rules keep
what a learner made safe:

- A new run does not start in a folder that holds another run. It is refused, in one
  line that names the three ways on: `--from_resume 1` continues the saved run,
  another `--save_dir` starts beside it, `--overwrite 1` replaces it. (nanoGPT
  overwrites its out/ silently; PyTorch Lightning numbers its runs, so a path you
  typed no longer names the run you meant. Refusing keeps `out/model.pt` meaning
  the run you trained, and makes replacing it a choice.)
- Until its first checkpoint, a new run writes into a hidden staging folder inside
  the run's folder (`.pretrain-staging-<pid>`). Once that checkpoint is saved, the run
  is committed: a list of the staged files, `commit.json`, is written into the staging
  folder (atomically), then the files move into place and, with `--overwrite 1`, the
  old run's other files go. The list is the moment the new run becomes the folder's
  run: a run killed before it leaves the old run as it was (its staging folder is
  removed by the next run here); a run killed after it, halfway through the moves,
  leaves a commit that the next claim of the folder finishes first (a redo log, as
  databases keep one), so `--from_resume 1` continues the new run. Under FSDP the old
  run's shards are removed only by that commit, after the new ones are in place. (A
  writer that keeps a file open, as TensorBoard's does, closes it before the move: see
  `before_commit`.)
- One run at a time: the run holds a lock on `.lock` (which holds its pid) while it
  runs. The operating system releases the lock when the process ends, however it
  ends, so a lock file left by a killed run is recognised as free.
- Only the project's own leftovers are removed (staging folders with its prefix,
  temporary files named after a run file), and only once the folder is claimed: a
  refused run removes nothing. Lock and temporary files are never opened through a
  symbolic link.

Writes go to a temporary name with the writer's pid, created anew (never an existing
file or link), then are renamed into place (`course.checkpoints.save_atomic`), so two
processes never share a temporary file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from course.errors import StorageError, UsageError

try:
    import fcntl  # POSIX file locks (Linux, macOS)
except ImportError:  # Windows
    fcntl = None

RESUME_FILE = "resume.pt"  # everything needed to continue the run
WEIGHTS_FILE = "model.pt"  # the model alone, to sample from or start another run
BEST_FILE = "best.pt"  # the weights of the best validation loss
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
SAMPLES_FILE = "samples.txt"
SHARDS_DIR = "resume-shards"  # an FSDP run's resume.pt keeps its weights and optimizer state here
PROFILE_FILE = "profile.pt.trace.json"  # --profile N
TENSORBOARD_DIR = "tensorboard"  # TensorBoard's event files (course.tracking); --tensorboard 0: none
# What every run writes (TensorBoard's folder unless --tensorboard 0), and what some runs
# write too (FSDP, --profile).
EVERY_RUN_FILES = (
    WEIGHTS_FILE,
    BEST_FILE,
    METRICS_FILE,
    PLOT_FILE,
    SAMPLES_FILE,
    TENSORBOARD_DIR,
    RESUME_FILE,
)
RUN_FILES = (*EVERY_RUN_FILES[:-1], SHARDS_DIR, PROFILE_FILE, RESUME_FILE)  # resume.pt last

LOCK_FILE = ".lock"
STAGING_PREFIX = ".pretrain-staging-"  # only folders with this prefix are this project's
COMMIT_FILE = "commit.json"  # in a staging folder: the staged files, written when they are complete
REPLACED_DIR = ".replaced"  # in a staging folder: the old run's files, removed with the folder
# The temporary files of run files (temporary_name): the only hidden .tmp files a claim removes.
LEFTOVER_TEMPORARY = re.compile(r"\.(" + "|".join(map(re.escape, RUN_FILES)) + r")\.\d+\.tmp")
# A file system without flock (Lustre mounted without -o flock, some network file systems).
NO_LOCKS = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # disk full, quota, file-size limit


def temporary_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: hidden, and with this
    process's pid, so two writers never write to the same temporary file."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def open_new(path: Path, mode: str = "wb"):
    """Open `path` for writing as a file this process creates: a file or a symbolic link
    already there (left by a killed run, or planted) is removed first, never written
    through, since O_EXCL refuses any existing name and O_NOFOLLOW a link."""
    path.unlink(missing_ok=True)  # removes a link itself, not what it points to
    exclusive = os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    return open(path, mode, opener=lambda name, flags: os.open(name, flags | exclusive, 0o644))


def write_atomic(path: Path, text: str) -> None:
    """A small text file, written whole or not at all (a temporary file, then a rename)."""
    tmp = temporary_name(path)
    try:
        with open_new(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def out_of_space(error: BaseException) -> OSError | None:
    """The OSError behind `error` when a write failed for lack of space, else None.
    (torch.save reports a failed write as a RuntimeError raised while handling it.)"""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in OUT_OF_SPACE:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def storage_error(path: Path, error: OSError) -> StorageError:
    remedy = "raise the file-size limit (ulimit -f)" if error.errno == errno.EFBIG else "free some disk space"
    return StorageError(
        f"could not write {path}: {error.strerror or 'no space left on the device'}; the earlier "
        f"checkpoint is kept: {remedy}, then continue with --from_resume 1"
    )


def check_folder(path: Path, option: str) -> None:
    """A folder this run will write into: a folder, or one that can be created, where a
    file can be written. Checked before anything is prepared, built or written (and
    without writing anything: the probe file goes at once)."""
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


def check_free_space(path: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(path).free
    if free < needed:
        raise UsageError(
            f"{path} has {free / 1e6:,.0f} MB free, and {what} needs about {needed / 1e6:,.0f} MB; "
            "free some space or choose another folder"
        )


class FileLock:
    """An exclusive lock on a lock file, held while a run uses what it guards. The
    operating system releases it when the process ends, however it ends."""

    def __init__(self, path: Path, busy: str, unlocked: str = "run one process here at a time") -> None:
        """busy: what a refused (or waiting) process is told, with {pid} for the holder's pid;
        unlocked: what to do where the file system has no locks (the process goes on unlocked)."""
        self.path, self.busy, self.unlocked = path, busy, unlocked
        self.fd: int | None = None

    def acquire(self, wait: bool = False) -> None:
        """Take the lock; if another process holds it, wait for it (wait=True) or refuse."""
        if fcntl is None:  # no POSIX locks here (Windows): one run per folder is then up to the user
            return
        while True:
            fd = self.open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                if not wait:
                    os.close(fd)
                    raise UsageError(self.busy.format(pid=holder)) from None
                print(f"note: {self.busy.format(pid=holder)}; waiting for it", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as err:
                if err.errno not in NO_LOCKS:
                    raise
                print(
                    f"note: {self.path.parent} has no file locks ({err.strerror}): {self.unlocked}",
                    file=sys.stderr,
                )
                break
            # The lock file may have been removed by the process that held it, between our
            # open and our lock: then the lock is on a file no one else can see. Retry.
            if os.path.exists(self.path) and os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def open(self) -> int:
        """The lock file, opened without following a symbolic link: a link planted at its
        name would have this process write its pid into whatever the link points to."""
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


class RunFolder:
    """The folder of one run, and where each of its files goes right now.

    `claim` decides, before anything is written, whether this run may use the folder;
    `path(name)` is where a file goes (the staging folder until the first checkpoint of
    a new run); `commit` moves the staged files into place after that checkpoint;
    `release` ends the claim (a run that never reached a checkpoint leaves nothing).
    """

    def __init__(self, save_dir: Path) -> None:
        self.save_dir = save_dir
        self.lock = FileLock(
            save_dir / LOCK_FILE,
            f"another run (pid {{pid}}) is writing to {save_dir}/; wait for it to end, or give this one "
            "another --save_dir",
        )
        self.staging: Path | None = None
        self.committed = False  # has this run saved a checkpoint into the folder?
        self.created = False  # did this run create the folder? (then a run that saved nothing removes it)
        # Called before the staged files move: a writer with a file open in the staging
        # folder closes it there (and opens a new one where path() then points).
        self.before_commit: list[Callable[[], None]] = []

    @classmethod
    def claim(cls, save_dir: Path, resume: bool, overwrite: bool) -> RunFolder:
        """This run's folder: checked, locked, and for a new run a staging folder. A
        commit that a killed run left halfway is finished first; nothing else in the
        folder changes until this run is known to be allowed there."""
        check_folder(save_dir, "--save_dir")
        no_resume = UsageError(f"--from_resume 1: there is no {RESUME_FILE} in {save_dir}/ to continue from")
        if resume and not save_dir.is_dir():
            raise no_resume
        created = not save_dir.exists()
        save_dir.mkdir(parents=True, exist_ok=True)
        folder = cls(save_dir)
        folder.created = created
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
            folder.remove_leftovers()
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

    def remove_leftovers(self) -> None:
        """The staging folders and temporary files of this project's runs that were
        killed: no one else can be writing them, since this process holds the folder's
        lock. Other files, hidden or not, are the user's."""
        for path in self.save_dir.glob(f"{STAGING_PREFIX}*"):
            remove(path)
        for path in self.save_dir.glob(".*.tmp"):
            if LEFTOVER_TEMPORARY.fullmatch(path.name):
                path.unlink(missing_ok=True)

    def path(self, name: str) -> Path:
        """Where the file `name` of this run is written now."""
        return (self.staging or self.save_dir) / name

    def final_path(self, name: str) -> Path:
        """Where the file `name` of this run ends up (what messages name)."""
        return self.save_dir / name

    def commit(self) -> None:
        """After this run's first checkpoint: the list of its staged files makes it the
        folder's run, then they move into place (see finish_commit)."""
        if self.staging is not None:
            for close in self.before_commit:
                close()
            staged = sorted(path.name for path in self.staging.iterdir())
            write_atomic(self.staging / COMMIT_FILE, json.dumps({"files": staged}) + "\n")
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
    """The files a staging folder's commit moves in; None if it was never committed
    (or its list is not one this project wrote: then it is a leftover)."""
    try:
        files = json.loads((staging / COMMIT_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, list) or not all(isinstance(name, str) and name in RUN_FILES for name in files):
        return None
    return files


def finish_commit(staging: Path) -> None:
    """Move a committed run's staged files into the folder and take the old run's away.
    Every step can be done again: a commit stopped anywhere is finished by running
    this once more. A file or folder the new run replaces is first moved into the
    staging folder's REPLACED_DIR (a folder cannot be renamed over another), and goes
    with the staging folder at the end; resume.pt moves last."""
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
    """A run killed in the middle of its commit left a staging folder with a commit
    list: that run is the folder's run now, so its commit is finished, with a note."""
    for staging in sorted(save_dir.glob(f"{STAGING_PREFIX}*")):
        if staging.is_dir() and not staging.is_symlink() and read_commit_list(staging) is not None:
            print(
                f"note: finishing the commit of a run stopped while its files moved into {save_dir}/",
                file=sys.stderr,
            )
            finish_commit(staging)


class UnclaimedFolder(RunFolder):
    """The run folder as the processes other than rank 0 see it: they never write to it."""

    def __init__(self, save_dir: Path) -> None:
        super().__init__(save_dir)
        self.committed = True
