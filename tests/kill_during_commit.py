"""Run train_solution.py, and SIGKILL this process at the Nth step of the run folder's
commit: before its Nth rename (or folder removal), the first being that of the commit
list. Used by tests/test_seams.py, directly or under torchrun:

    python tests/kill_during_commit.py N train_solution.py's options...

A run that commits in fewer than N steps ends normally."""

from __future__ import annotations

import os
import runpy
import shutil
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course import run_folder  # noqa: E402

kill_at, steps, committing = int(sys.argv[1]), 0, False


def counted(real):
    """`real` (os.replace or shutil.rmtree), killing the process before the kill_at-th call of a commit."""

    def call(*args, **kwargs):
        global steps
        if committing:
            steps += 1
            if steps == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    return call


def commit_with_kill(folder: run_folder.RunFolder, real_commit=run_folder.RunFolder.commit) -> None:
    global committing
    committing = folder.staging is not None  # only a new run's first checkpoint moves files
    try:
        real_commit(folder)
    finally:
        committing = False


os.replace, shutil.rmtree = counted(os.replace), counted(shutil.rmtree)
run_folder.RunFolder.commit = commit_with_kill
sys.argv = [str(ROOT / "train_solution.py"), *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
