"""The scoreboard behind `python data_exercise.py` and `python train_exercise.py --test`.

It runs the graded tests of one file with pytest and prints one row per TODO:
passed, failed (with the check that names the mistake most directly, in words) or not
started.

pytest runs in a child process, watched from here, so the scoreboard is printed
whatever a TODO does: a TODO whose test runs far longer than the reference (an
endless loop) fails with "took longer than N s", and one that ends the process
(`os._exit`, a crash) fails with what happened; the tests after it are then graded
in a new child. A KeyboardInterrupt or SystemExit raised by a TODO fails that TODO's
test alone. Ctrl+C on the grader stops the child and prints the scoreboard so far
(exit code 130); a child whose grader is gone (killed, its terminal closed) stops
itself. The exit code is otherwise 0 exactly when the scoreboard says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))

from todos import CATALOG, TODOS, fallback_notes, rank  # noqa: E402

from course.todos import hints_used  # noqa: E402

PASSED, FAILED, NOT_STARTED, NOT_GRADED = "passed", "failed", "not started", "not graded"
MARKS = {PASSED: "✓", FAILED: "✗", NOT_STARTED: "·", NOT_GRADED: "–"}
# Every graded test of the reference takes well under a second (the slowest, a few
# seconds); a TODO's test that runs this long is stuck. The environment variable is
# for the suite's own test of an endless loop, so that it does not wait a minute.
TIME_LIMIT_S = float(os.environ.get("COURSE_GRADING_TIME_LIMIT", "60"))
STARTUP_LIMIT_S = 600  # for pytest to start and collect, before the first test (a slow laptop's cold start)


class Scoreboard:
    """How the graded tests of each TODO went: status and the failure shown, per TODO id."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.reason: dict[str, str] = {}
        self.notes: list[str] = []
        self.shown: dict[str, tuple[bool, int]] = {}  # how the failure shown ranks, per TODO
        self.interrupted = False  # stopped by Ctrl+C: a TODO without a result is "not graded"

    def record(self, todo: str, failed: bool, reason: str = "", rank: int = 0) -> None:
        """One test's result. Of a TODO's failures the one shown names the mistake most
        directly: a failure of the code written before the NotImplementedError of a part
        not written yet, then a test of the plain property before a special case's
        (`rank`, tests/todos.py), then the first to fail. A TODO is "not started" when
        every failure is its own NotImplementedError."""
        self.status.setdefault(todo, PASSED)
        key = (is_open(todo, reason), rank)
        if not failed or (todo in self.shown and self.shown[todo] <= key):
            return
        self.shown[todo], self.reason[todo] = key, reason
        self.status[todo] = NOT_STARTED if is_open(todo, reason) else FAILED

    def interrupt(self, todo: str | None) -> None:
        """Ctrl+C while the tests of `todo` ran: a failure found so far stands, but a TODO
        that only passed (or only showed its NotImplementedError) so far is not graded."""
        if todo is not None and self.status.get(todo) != FAILED:
            self.status.pop(todo, None)


def is_open(todo: str, reason: str) -> bool:
    """Whether a failure is the TODO's own NotImplementedError (its code is not written)."""
    return reason.startswith(f"TODO {todo}:")


# --- in the child process: pytest, with a plugin that writes what happens to a file -------------


class Recorder:
    """A pytest plugin that writes one JSON line per event (a test starts, a test phase
    reports) to a file the parent reads while the child runs."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 (open for the whole session)

    def write(self, event: dict) -> None:
        self.file.write(json.dumps(event) + "\n")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem) -> None:
        marker = item.get_closest_marker("todo")
        self.write({"start": item.nodeid, "todo": marker.args[0] if marker else None})

    def pytest_runtest_logfinish(self, nodeid: str, location) -> None:
        self.write({"end": nodeid})

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):
        """A KeyboardInterrupt would end pytest's whole session, and the TODOs after this
        one would never be graded: raised by the learner's code, it fails this test alone.
        (A real Ctrl+C never gets here: this process runs in a session of its own, and
        the grader stops it.)"""
        try:
            return (yield)
        except KeyboardInterrupt:
            pytest.fail(
                "the code raised KeyboardInterrupt (what Ctrl+C raises): a TODO should return or raise "
                "an error, not stop the program",
                pytrace=False,
            )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        marker = item.get_closest_marker("todo")
        if marker and (call.when == "call" or report.failed):
            reason = describe(call.excinfo.value) if call.excinfo is not None else ""
            self.write(
                {"todo": marker.args[0], "failed": report.failed, "reason": reason, "rank": rank(marker)}
            )
        return report

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.write({"finished": True, "notes": fallback_notes()})
        self.file.close()


# What comes after a file's last TODO.
NEXT_STEP = {
    "data": "the training TODOs, `python train_exercise.py --test`",
    "train": "train the main job with your code, `python train_exercise.py --save_dir mine`, then talk to "
    "the model it trained: `python -m course.sample mine/best.pt --interactive`",
}


def describe(error: BaseException) -> str:
    """The first line of the failure, in the test's own words."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(error, (AssertionError, NotImplementedError, pytest.fail.Exception)):
        return first or type(error).__name__
    if isinstance(error, SystemExit):
        return f"the code called sys.exit({first}) (SystemExit): a TODO should return or raise, not exit"
    return f"{type(error).__name__}: {first}"  # the learner's code raised something else


def child_main(argv: list[str]) -> int:
    """`python tests/scoreboard.py EVENTS_FILE PYTEST_ARGS...`: what the parent starts."""
    events, *args = argv
    threading.Thread(target=exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    return pytest.main(args, plugins=[Recorder(events)])


def exit_when_orphaned(grader: int) -> None:
    """In the child: stop once the grader is gone. The child runs in a session of its
    own, so a signal that ends the grader (SIGKILL, SIGTERM, SIGHUP from a closed
    terminal) never reaches it, and a TODO that loops would spin on for ever."""
    while os.getppid() == grader:
        time.sleep(0.5)
    os._exit(1)


# --- in the parent process: start the child, watch it, print the board --------------------------


def grade(path: Path, todo: str | None = None) -> int:
    """Grade the TODOs of `path` (a data_/train_ exercise or solution file). Returns 0
    when every required TODO passes (a bonus TODO is shown but does not count), 1 if
    not, 2 for a TODO id that this file does not have."""
    module, _, impl = path.stem.partition("_")
    ids = [t.id for t in CATALOG if t.module == module]
    if todo is not None:
        if todo in TODOS and todo not in ids:
            other = f"{TODOS[todo].module}_{impl}.py"
            print(f"error: TODO {todo} is in {other}; grade it with `python {other}`", file=sys.stderr)
            return 2
        if todo not in ids:
            print(f"error: {path.name} has no TODO {todo!r}; its TODOs are {', '.join(ids)}", file=sys.stderr)
            return 2
        ids = [todo]
    print(f"Grading {path.name} with pytest ...", flush=True)
    board = Scoreboard()
    started: list[str] = []  # every test that began, in every child so far
    to_grade = list(ids)
    try:
        while to_grade:
            stopped_at = run_child(pytest_args(module, impl, to_grade, started), started, board)
            # A child that ended early: its TODO has failed; the next child grades the others.
            to_grade = [t for t in to_grade if stopped_at is not None and t != stopped_at]
    except KeyboardInterrupt:  # watch() has stopped the child
        board.interrupted = True
        print("\nstopped by Ctrl+C: the scoreboard so far", flush=True)
    for note in board.notes:
        print(f"note: {note}")
    code = print_board(path.name, ids, board)
    if board.interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # watch() ignored a second Ctrl+C
        return 130
    return code


def pytest_args(module: str, impl: str, ids: list[str], started: list[str]) -> list[str]:
    return [
        str(TESTS / f"test_todo_{module}.py"),  # collect only the graded tests of this file
        f"--rootdir={TESTS.parent}",
        "--impl",
        impl,
        "--todo",
        ",".join(ids),
        *[f"--deselect={nodeid}" for nodeid in started],
        "-q",
        "--no-header",
        "-p",
        "no:cacheprovider",
        "--tb=no",
        "-rN",
        "-o",
        "addopts=",
    ]


def run_child(args: list[str], started: list[str], board: Scoreboard) -> str | None:
    """One pytest child over the tests not started yet, watched. Returns None when it got
    through them (or could not start: then nothing more can be graded), or the id of the
    TODO whose test ended it or ran past the time limit (that TODO is marked failed)."""
    with tempfile.TemporaryDirectory(prefix="scoreboard-") as tmp:
        events = Path(tmp) / "events.jsonl"
        events.touch()
        command = [sys.executable, str(Path(__file__)), str(events), *args]
        child = subprocess.Popen(
            command,
            cwd=TESTS.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=hasattr(os, "killpg"),  # its own group: stopped with all it started
        )
        forward = threading.Thread(target=copy_output, args=(child.stdout,), daemon=True)
        forward.start()
        try:
            current, finished, timed_out = watch(child, events, started, board)
        finally:  # also after a Ctrl+C: the child's last output comes before the board
            child.wait()
            forward.join()
    if finished:
        return None
    if current is not None and current["todo"]:
        if timed_out:
            reason = f"took longer than {TIME_LIMIT_S:.0f} s: an endless loop?"
        else:
            reason = (
                f"the test ended the grading process (exit code {child.returncode}): "
                "does the TODO call os._exit() or crash Python?"
            )
        board.record(current["todo"], True, reason)
        print(f"\n{current['start']}: {reason}; grading the other TODOs", flush=True)
        return current["todo"]
    print(f"\nerror: pytest stopped before grading anything (exit code {child.returncode})", flush=True)
    return None


def watch(child: subprocess.Popen, events: Path, started: list[str], board: Scoreboard):
    """Read the child's events into the board until the child exits or its test runs past
    the time limit. Returns (the event of the test that was running, whether the child
    finished its session, whether it ran past the limit). Ctrl+C stops the child here,
    before the KeyboardInterrupt goes on to grade(), which prints the board so far."""
    current, since, pending = None, time.monotonic(), ""  # pending: a line still being written
    finished = False
    try:
        with open(events) as f:
            while True:
                exited = child.poll() is not None
                *lines, pending = (pending + f.read()).split("\n")
                for line in lines:
                    event = json.loads(line)
                    if "start" in event:
                        started.append(event["start"])
                        current, since = event, time.monotonic()
                    elif "end" in event:
                        current = None
                    elif "finished" in event:
                        finished = True
                        board.notes = event["notes"]
                    else:
                        board.record(event["todo"], event["failed"], event["reason"], event["rank"])
                if exited:
                    return current, finished, False
                limit = TIME_LIMIT_S if current is not None else STARTUP_LIMIT_S
                if time.monotonic() - since > limit:
                    stop(child)
                    return current, finished, True
                time.sleep(0.05)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not cut the board short
        stop(child)
        board.interrupt(current["todo"] if current else None)
        raise


def copy_output(stream) -> None:
    """The child's output, as it comes (its progress dots are not whole lines)."""
    while chunk := os.read(stream.fileno(), 4096):
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()


def stop(child: subprocess.Popen) -> None:
    """The child and every process it started; nothing to do where all have ended already."""
    if hasattr(os, "killpg"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    else:
        child.kill()


def print_board(file: str, ids: list[str], board: Scoreboard) -> int:
    hints = hints_used()
    statuses = {t: board.status.get(t, NOT_GRADED if board.interrupted else FAILED) for t in ids}
    print(f"\n{'TODO':<5} {'what you write':<46} result")
    for todo_id in ids:
        status = statuses[todo_id]
        reason = board.reason.get(todo_id, "no graded test ran" if todo_id not in board.status else "")
        title = TODOS[todo_id].title + (" (bonus)" if TODOS[todo_id].bonus else "")
        line = f"{todo_id:<5} {title:<46} {MARKS[status]} {status}"
        if hints.get(todo_id):
            line += f" [{hints[todo_id]} hint{'s' * (hints[todo_id] > 1)} used]"
        if status == FAILED:
            line += f": {reason}"
        print(line)
    passed = [t for t in ids if board.status.get(t) == PASSED]
    if len(ids) == 1:
        verdict = {PASSED: "passed", NOT_GRADED: "was not graded"}.get(statuses[ids[0]], "is not done yet")
        print(f"\nTODO {ids[0]} {verdict}")
    else:
        required = [t for t in ids if not TODOS[t].bonus]
        done = sum(t in passed for t in required)
        bonus = [f"bonus TODO {t} {'done' if t in passed else 'open'}" for t in ids if TODOS[t].bonus]
        print(f"\n{done}/{len(required)} TODOs done in {file}" + "".join(f"; {b}" for b in bonus))
    todo_next = next((t for t in ids if statuses[t] in (FAILED, NOT_STARTED)), None)
    if todo_next:
        where = " / ".join(TODOS[todo_next].functions)
        print(
            f"next: TODO {todo_next} in {file} ({where}): read its docstring and the comment under the TODO"
        )
        print(f"      stuck? `python {file} --hint {todo_next}` gives one hint at a time")
    if len(ids) > 1 and all(t in passed for t in ids if not TODOS[t].bonus):
        print(f"next: {NEXT_STEP['train' if file.startswith('train') else 'data']}")
    # The exit code: every required TODO (or the one TODO asked for, a bonus one included).
    graded = ids if len(ids) == 1 else [t for t in ids if not TODOS[t].bonus]
    return 0 if all(t in passed for t in graded) else 1


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
