"""The ways a run ends early, each with a message a user can act on.

The command line (`course.cli`) prints the message on one line and exits with a
code that tells scripts what happened: 2 for a usage or data mistake, 1 for a
training run that diverged, 130 for Ctrl+C.
"""


class UsageError(Exception):
    """A bad option or combination of options, explained in one line."""


class DataError(ValueError):
    """A problem with the user's data or data options, explained in one line."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the message says when and what to try."""


class Interrupted(Exception):
    """Ctrl+C: the run stopped after saving a checkpoint."""
