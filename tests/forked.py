"""Children forked from a process that has already imported torch and the course.

A new Python process that imports them costs more than a second of CPU before its first
line of work. A test that needs many short-lived processes (one killed at each step of a
commit) forks them from multiprocessing's fork server instead: one clean, single-threaded
process that imports the course once; each child is a fork of it, so it starts in
milliseconds, and is still a real process that a real SIGKILL ends."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from course import run_folder

FORK_SERVER = multiprocessing.get_context("forkserver")
# By its package name, found from the repository's root where pytest runs: Python 3.11's fork
# server does not take the tests' sys.path (a module it cannot import is left to each child).
FORK_SERVER.set_forkserver_preload(["course.run_folder"])


def run_forked(target: Callable, *args) -> int:
    """Run target(*args) (a function of this module) in a child of the fork server; its exit
    code: 0 when it returned, 1 when it raised, -9 when SIGKILL ended it."""
    child = FORK_SERVER.Process(target=target, args=args)
    child.start()
    child.join()
    return child.exitcode


def commit_killed_at(save_dir: Path, kill_at: int, new_files: list[str]) -> None:
    """Stage a new run's files over the old run in save_dir and commit them, SIGKILLing this
    process before the kill_at-th rename or folder removal of the commit."""
    folder = run_folder.RunFolder.claim(save_dir, resume=False, overwrite=True)
    for name in new_files:
        path = folder.path(name)
        if name in ("resume-shards", "tensorboard"):
            (path / "inner").mkdir(parents=True)
            path = path / "inner" / "file"
        path.write_text("new " + name)
    steps = 0

    def counted(real: Callable) -> Callable:
        def call(*args, **kwargs):
            nonlocal steps
            steps += 1
            if steps == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        return call

    os.replace, shutil.rmtree = counted(os.replace), counted(shutil.rmtree)  # this child's only
    folder.commit()
