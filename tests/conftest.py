"""Shared fixtures: tiny corpora and tiny models, so every test runs in milliseconds
and nothing needs the network; and the grading options.

    pytest                          tests the solutions and everything given
    pytest --impl exercise          grades the learner's *_exercise.py files
    pytest --impl exercise --todo 2b   grades one TODO (comma-separate several)
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# One thread per process, in this one and in every process a test starts (they inherit
# the variable): the tiny models here gain nothing from a second thread, and the slow
# jobs that run in the background (see the end of this file) get the other core.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

# Started in the background by a script (`pytest &`), this process ignores Ctrl+C's SIGINT,
# and so would every process it starts: the graders and training runs of the tests that
# send SIGINT would never see it. Those tests are of a process started from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from todos import TODOS, Learner, isolate, load  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
import make_exercises  # noqa: E402

from course.devices import usable_cpus  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

# A few hundred lines of varied text: enough for a tiny model to learn something.
VERSE = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles\n"
    "And by opposing end them.\n\n"
)


# Command-line options for a model small enough to train for real in well under a second.
# Without TensorBoard's events: a run that reaches its first checkpoint within a second of
# its start would wait for the next second to open its next event file (course.tracking);
# the tests of the events turn them on (test_tracking.py, test_resume.py, test_ddp.py).
TINY_MODEL = ["--device", "cpu", "--hidden_size", "32", "--num_hidden_layers", "2",
              "--num_attention_heads", "2", "--max_seq_len", "16", "--batch_size", "4",
              "--eval_tokens", "128", "--log_interval", "1", "--sample_tokens", "5",
              "--tensorboard", "0"]  # fmt: skip


@pytest.fixture
def corpus_txt(tmp_path: Path) -> Path:
    path = tmp_path / "verse.txt"
    path.write_text(VERSE * 40, encoding="utf-8")
    return path


@pytest.fixture
def corpus_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl"
    docs = ["今天天气真好", "The weather is nice today.", VERSE]
    path.write_text(
        "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8"
    )
    return path


def tiny_gpt(vocab_size: int = 32, block_size: int = 16, dropout: float = 0.0, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(
        GPTConfig(
            vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32, dropout=dropout
        )
    )


def load_balancing_reference(model, x, y):
    """The model's output, and the Switch Transformer's load-balancing loss computed here
    from the routers' scores (caught by hooks) over the positions with a real target."""
    scores = []
    hooks = [block.mlp.router.register_forward_hook(lambda m, i, out: scores.append(out))
             for block in model.transformer.h]  # fmt: skip
    out = model(x, targets=y)
    for hook in hooks:
        hook.remove()
    real = (y != -100).view(-1)  # -100: IGNORE_INDEX, padding
    total = 0.0
    for layer_scores in scores:
        probs = layer_scores.softmax(dim=-1)[real]  # (real positions, experts)
        n_experts = probs.size(-1)
        chosen = probs.topk(model.config.experts_per_token, dim=-1).indices
        share = torch.stack([(chosen == e).sum() for e in range(n_experts)]) / chosen.numel()
        total = total + n_experts * (share * probs.mean(dim=0)).sum()
    return out, model.config.aux_loss_weight * total


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Prepared corpora go to a temporary folder, never into the repository's data/."""
    from course import corpus

    prepared = tmp_path / "prepared"
    monkeypatch.setattr(corpus, "DATA_DIR", prepared)
    return prepared


# --- grading ---------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--impl",
        default="solution",
        choices=("solution", "exercise"),
        help="which files the graded (todo-marked) tests grade",
    )
    parser.addoption("--todo", default=None, help="run only the graded tests of these TODO ids (e.g. 2a,2b)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests that wait for a background job run last, so the job has the whole suite to finish,
    # in the order the jobs start (run_in_lanes): the tests of the first jobs to end come first.
    items.sort(key=job_order)
    wanted = config.getoption("--todo")
    if wanted is None:
        return
    ids = set(wanted.split(","))
    unknown = ids - set(TODOS)
    if unknown:
        raise pytest.UsageError(f"unknown TODO id(s) {sorted(unknown)}; known: {', '.join(TODOS)}")
    keep = [item for item in items if (m := item.get_closest_marker("todo")) and m.args[0] in ids]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


@pytest.fixture
def learner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Learner:
    """The modules under grade for this test's TODO: the learner's code for that TODO,
    the reference (solution) code for every other TODO."""
    marker = request.node.get_closest_marker("todo")
    assert marker, "the learner fixture is for tests marked @pytest.mark.todo(<id>)"
    impl = request.config.getoption("--impl")
    return isolate(load(impl, marker.args[0]), marker.args[0], load("solution"), monkeypatch)


# --- slow jobs in the background -----------------------------------------------------------
# A few tests need their own processes that take long to start or to run: torch.compile's
# first compilation, torchrun with two processes. Such a job runs in a thread of this
# process as soon as a test that needs it is collected, so its processes run beside the
# rest of the suite; the test then waits for the job to finish.
#
# The jobs run in as many lanes as there are cores, the longest first. All at once, they
# would start dozens of processes on 2 cores and starve the tests in the foreground, which
# then ran on alone on one core for the last 50 s once the jobs had ended. (Nice values
# cannot help there: torchrun starts each worker in a session of its own, and Linux shares
# the CPU out between sessions first.)

BACKGROUND_JOBS: dict[str, Callable[[Path], None]] = {}
JOB_SECONDS: dict[str, float] = {}


def background_job(name: str, seconds: float):
    """Register `job(workdir)`: it runs subprocesses only (no torch work in this process).
    seconds: about how long it takes alone (2-core AMD EPYC), to start the longest first."""

    def register(job: Callable[[Path], None]) -> Callable[[Path], None]:
        BACKGROUND_JOBS[name], JOB_SECONDS[name] = job, seconds
        return job

    return register


def run_checked(command: list[str]) -> subprocess.CompletedProcess:
    """Run a command from the repository root; fail with the end of its stderr if it fails."""
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command[:4])} ... failed:\n{result.stderr[-3000:]}"
    return result


class Job:
    def __init__(self, name: str, root: Path) -> None:
        self.name, self.workdir = name, root / name
        self.workdir.mkdir()
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            BACKGROUND_JOBS[self.name](self.workdir)
        except BaseException as err:  # handed to the test that waits for the job
            self.error = err
        finally:
            self.done.set()

    def result(self) -> Path:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.workdir


def job_order(item: pytest.Item) -> tuple[bool, float]:
    """Where a test goes in the suite: without a background job, before those that wait for
    one; these, after the tests of every longer job."""
    marker = item.get_closest_marker("background")
    return (False, 0) if marker is None else (True, -JOB_SECONDS[marker.args[0]])


def run_in_lanes(jobs: list[Job]) -> None:
    """Each lane, a thread, runs the longest job that no lane has taken yet, until none is left."""
    waiting = queue.Queue()
    for job in sorted(jobs, key=lambda job: -JOB_SECONDS[job.name]):
        waiting.put(job)

    def lane() -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                waiting.get_nowait().run()

    for _ in range(min(len(jobs), usable_cpus())):
        threading.Thread(target=lane, daemon=True).start()


def pytest_collection_finish(session: pytest.Session) -> None:
    wanted = {m.args[0] for item in session.items for m in item.iter_markers("background")}
    if not wanted:
        return
    root = Path(tempfile.mkdtemp(prefix="pytest-background-"))
    session.config.stash[JOBS] = jobs = {name: Job(name, root) for name in sorted(wanted)}
    run_in_lanes(list(jobs.values()))
    session.config.add_cleanup(lambda: shutil.rmtree(root, ignore_errors=True))


JOBS = pytest.StashKey[dict]()


@pytest.fixture
def background(request: pytest.FixtureRequest) -> Path:
    """The working folder of this test's background job, once the job has finished."""
    marker = request.node.get_closest_marker("background")
    assert marker, "the background fixture is for tests marked @pytest.mark.background(<job>)"
    return request.config.stash[JOBS][marker.args[0]].result()


# --- checks that need the files as generated and committed ---------------------------------
# In a learner's checkout the exercise files hold answers and the notebook has been run:
# the checks below would fail there for no fault of the learner, so they skip, saying why.
# There the exercise files may also be at the challenge level (make_exercises --level):
# they are then checked as that level generates them. CI (.ci/run sets CI=1) runs on a
# clean clone, where they stay strict: the committed files are the guided level.

STRICT = bool(os.environ.get("CI"))


def exercise_level(exercise: str) -> str:
    """The level `exercise` is checked at: guided on a clean clone, else the file's own."""
    return "guided" if STRICT else make_exercises.level_of(ROOT / exercise)


def skip_if_learner_edited(exercise: str, todo: str | None = None) -> None:
    """Skip when `exercise` (or the region of `todo` in it) differs from the generated file."""
    if STRICT:
        return
    path = ROOT / exercise
    expected = make_exercises.expected_files(exercise_level(exercise))[path]
    if path.read_text() == expected:
        return
    edited = make_exercises.edited_todos(path, expected)
    if todo is None:
        where = f"your work in TODO {', '.join(edited)}" if edited else "edits outside the TODO regions"
        pytest.skip(f"{exercise} holds {where}; this check is for the generated file (CI checks it)")
    if todo in edited:
        pytest.skip(f"TODO {todo} in {exercise} holds your answer; this check is for the unsolved file")


def skip_if_notebook_was_run(notebook: Path) -> None:
    """Skip when git says the notebook changed since checkout (the learner ran it)."""
    if STRICT:
        return
    git = lambda *args: subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    in_git = git("rev-parse", "--show-toplevel").stdout.strip() == str(ROOT)  # not a copy inside another repo
    if in_git and git("diff", "--quiet", "HEAD", "--", notebook.name).returncode == 1:
        pytest.skip(
            f"{notebook.name} changed since checkout (you ran it); this check is for the committed one"
        )


# --- a finished run to fault: shared by test_faults.py and test_seams.py --------------------------

FAST = [*TINY_MODEL, "--eval_interval", "3", "--learning_rate", "3e-3"]


def import_train():
    import train_solution  # here, not at the top: conftest loads before a learner's files are checked

    return train_solution


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished 6-step run (its own corpus and data folder), trained once for this file."""
    root = tmp_path_factory.mktemp("finished")
    (root / "verse.txt").write_text(VERSE * 40)
    options = ["--data_path", root / "verse.txt", "--data_dir", root / "prepared", "--save_dir", root / "out"]
    assert import_train().main([str(a) for a in [*options, *FAST, "--max_steps", 6]]) == 0
    return root


@pytest.fixture
def used_folder(finished_run, tmp_path):
    """A copy of the finished run in tmp_path/out, and the options that made it."""
    out = shutil.copytree(finished_run / "out", tmp_path / "out")
    return out, ["--data_path", finished_run / "verse.txt", "--data_dir", finished_run / "prepared",
                 "--save_dir", out, *FAST]  # fmt: skip
