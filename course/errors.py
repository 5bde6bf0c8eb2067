"""The ways a run ends early, each with a one-line message a user can act on; `course.cli.main`
turns each into its exit code."""

import argparse
import os


def says_the_error() -> bool:
    """Under torchrun the first process of each machine says an error, not rank 0 alone: a
    mistake only one machine finds (its own copy of the data) would go unsaid."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


class OneLineErrorParser(argparse.ArgumentParser):
    """Errors in one line, and no abbreviations (argparse would take --max_step 5 for --max_steps)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see --help)\n" if says_the_error() else None)


class UsageError(Exception):
    """A bad option or combination of options, explained in one line."""


class DataError(ValueError):
    """A problem with the user's data or data options, explained in one line."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the message says when and what to try."""


class StorageError(Exception):
    """A file could not be written (the disk is full); the previous checkpoint is kept."""


class Interrupted(Exception):
    """Ctrl+C or SIGTERM: the run stopped after saving a checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopNow(KeyboardInterrupt):
    """A second Ctrl+C, or a signal outside the training loop: stop at once, saving nothing new."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
