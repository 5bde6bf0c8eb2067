"""The grading checks itself: exercise files are generated and up to date, every
graded test fails on the unsolved exercise with its own TODO's message and passes on
the solution, each TODO grades on its own, plausible mistakes are caught by the right
TODO with a message naming the mistake, and the exercise file runs as far as the
learner has got."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import test_todo_data
import test_todo_train
from conftest import (
    ROOT,
    TINY_MODEL,
    background_job,
    exercise_level,
    make_exercises,
    skip_if_learner_edited,
)
from scoreboard import FAILED, NOT_STARTED, Scoreboard
from todos import CATALOG, TODOS, Learner, isolate, load, rank, where_it_failed

GRADED_MODULES = [test_todo_data, test_todo_train]


def todo_marker(func):
    """The todo marker of a graded test function, or None."""
    return next((m for m in getattr(func, "pytestmark", []) if m.name == "todo"), None)


def graded_cases():
    """(todo id, test function, params) for every graded test, parametrized ones expanded,
    in the order pytest runs them (the order of the file)."""
    for module in GRADED_MODULES:
        for func in vars(module).values():
            marker = todo_marker(func)
            if marker is None:
                continue
            todo = marker.args[0]
            params = [m for m in func.pytestmark if m.name == "parametrize"]
            if not params:
                yield todo, func, {}
                continue
            argnames = [a.strip() for a in params[0].args[0].split(",")]
            for values in params[0].args[1]:
                values = values if isinstance(values, tuple) else (values,)
                yield todo, func, dict(zip(argnames, values, strict=True))


def run_case(func, learner, kwargs, tmp_path, monkeypatch):
    """func(learner, ...) with the fixtures it asks for (tmp_path, monkeypatch) and its params."""
    fixtures = {"tmp_path": tmp_path, "monkeypatch": monkeypatch}
    arguments = func.__code__.co_varnames[: func.__code__.co_argcount]
    return func(learner, **{name: fixtures[name] for name in arguments if name in fixtures}, **kwargs)


def test_every_todo_has_graded_tests():
    assert {todo for todo, _, _ in graded_cases()} == set(TODOS)


def test_the_scoreboard_shows_the_failure_that_names_the_mistake_most_directly():
    board = Scoreboard()
    board.record("4", True, "with mixture-of-experts MLPs the objective ...", rank=1)
    board.record("4", True, "weight each micro-batch's mean loss by its count ...", rank=0)
    board.record("4", True, "under DDP ...", rank=1)
    board.record("4", True, "the returned loss ...", rank=0)
    assert board.status["4"] == FAILED
    assert board.reason["4"] == "weight each micro-batch's mean loss by its count ...", (
        "a plain test's failure comes before a special case's, and the first among equals"
    )
    board.record("5", True, "TODO 5: the autocast context ...")
    board.record("5", True, "make_grad_scaler must return a torch.amp.GradScaler", rank=1)
    assert (board.status["5"], board.reason["5"]) == (
        FAILED,
        "make_grad_scaler must return a torch.amp.GradScaler",
    )
    board.record("6", False)
    board.record("6", True, "TODO 6: eval mode ...")
    assert (board.status["6"], board.reason["6"]) == (NOT_STARTED, "TODO 6: eval mode ...")


def test_each_todo_s_plain_tests_come_before_its_special_cases():
    """The file reads as the scoreboard ranks: a TODO's plain property first, then the
    special cases (float16, DDP, MoE, whole training runs) it must also survive."""
    for module in GRADED_MODULES:
        seen_special: dict[str, str] = {}
        for name, func in vars(module).items():
            marker = todo_marker(func)
            if marker is None:
                continue
            todo = marker.args[0]
            if rank(marker):
                seen_special.setdefault(todo, name)
            else:
                assert todo not in seen_special, (
                    f"{module.__name__}: {name} tests TODO {todo}'s plain property but comes after the "
                    f"special case {seen_special[todo]}; move it up"
                )


@pytest.mark.pristine
@pytest.mark.parametrize("exercise", make_exercises.PAIRS.values())
def test_exercise_files_are_up_to_date(exercise):
    skip_if_learner_edited(exercise)
    expected = make_exercises.expected_files(exercise_level(exercise))[ROOT / exercise]
    assert (ROOT / exercise).read_text() == expected, (
        f"{exercise} is out of date: run python tools/make_exercises.py"
    )


def test_exercise_differs_from_solution_only_inside_todo_regions():
    for solution, exercise in make_exercises.PAIRS.items():
        source = (ROOT / solution).read_text()
        solved = make_exercises.make_exercise(source, solution, solved=frozenset(TODOS))
        renamed = make_exercises.rename(source)
        assert solved.split("\n", 2)[2] == renamed, (
            f"{exercise} with every TODO solved must be {solution} itself"
        )


@pytest.mark.pristine
@pytest.mark.parametrize("todo", list(TODOS))
def test_graded_tests_fail_on_the_unsolved_exercise_with_their_own_message(todo, monkeypatch, tmp_path):
    skip_if_learner_edited(f"{TODOS[todo].module}_exercise.py", todo)
    cases = [(func, kwargs) for t, func, kwargs in graded_cases() if t == todo]
    for func, kwargs in cases:
        with monkeypatch.context() as patch:
            learner = isolate(load("exercise"), todo, load("solution"), patch)
            with pytest.raises(NotImplementedError, match=f"^TODO {todo}: "):
                run_case(func, learner, kwargs, tmp_path, patch)


def load_variant(solved: set[str], directory: Path, level: str = "guided") -> Learner:
    """data/train modules generated at `level` with only the TODOs in `solved` filled in,
    as if the learner had pasted those solution regions into the exercise files."""
    tag = "_".join([*sorted(solved), level]) if solved else f"none_{level}"
    modules = {}
    for name in ("data", "train"):
        source = (ROOT / f"{name}_solution.py").read_text()
        text = make_exercises.make_exercise(source, f"{name}_solution.py", frozenset(solved), level)
        text = text.replace("from data_exercise import", f"from data_variant_{tag} import")
        path = directory / f"{name}_variant_{tag}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        modules[name] = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = modules[name]
        spec.loader.exec_module(modules[name])
    return Learner(modules["data"], modules["train"])


@pytest.mark.parametrize("level", make_exercises.LEVELS)
@pytest.mark.parametrize("solved", list(TODOS))
def test_pasting_one_solution_region_turns_exactly_that_todo_green(solved, level, monkeypatch, tmp_path):
    """At either level: every other TODO fails with its own message, this one passes."""
    variant = load_variant({solved}, tmp_path, level)
    for todo, func, kwargs in graded_cases():
        with monkeypatch.context() as patch:
            learner = isolate(Learner(variant.data, variant.train), todo, load("solution"), patch)
            if todo == solved:
                run_case(func, learner, kwargs, tmp_path, patch)  # must pass
            else:
                with pytest.raises(NotImplementedError, match=f"^TODO {todo}: "):
                    run_case(func, learner, kwargs, tmp_path, patch)


def test_the_challenge_level_differs_from_the_guided_only_in_the_todo_comments():
    for solution, exercise in make_exercises.PAIRS.items():
        source = (ROOT / solution).read_text()
        guided, challenge = (
            make_exercises.make_exercise(source, solution, level=lv) for lv in make_exercises.LEVELS
        )
        assert make_exercises.level_of_text(challenge, exercise) == "challenge"
        solved = make_exercises.make_exercise(source, solution, frozenset(TODOS), "challenge")
        assert solved.split("\n", 2)[2] != make_exercises.rename(source), (
            "the challenge texts replace the contracts"
        )
        for (todo, ours), (_, theirs) in zip(
            make_exercises.regions(challenge), make_exercises.regions(guided), strict=True
        ):
            assert ours != theirs, f"TODO {todo}: the challenge level states it in its own words"
            code = lambda text: [line for line in text.splitlines() if not line.strip().startswith("#")]
            assert code(ours) == code(theirs), f"TODO {todo}: the levels differ in the comments only"
        outside = lambda text: re.sub(r"# TODO (\w+):.*?# END TODO \1", "", text, flags=re.S).split("\n", 2)[
            2
        ]
        assert outside(challenge) == outside(guided), (
            f"{exercise}: outside the TODOs both levels are one file"
        )
        assert max(map(len, challenge.splitlines())) <= make_exercises.MAX_LINE


def copy_for_the_generator(tmp_path: Path, monkeypatch) -> Path:
    """The solution and exercise files in a folder of their own, which make_exercises writes."""
    for solution, exercise in make_exercises.PAIRS.items():
        shutil.copy2(ROOT / solution, tmp_path / solution)
        (tmp_path / exercise).write_text(make_exercises.expected_files()[ROOT / exercise])
    monkeypatch.setattr(make_exercises, "ROOT", tmp_path)
    return tmp_path


def test_the_level_command_switches_both_files_and_never_overwrites_your_work(tmp_path, monkeypatch, capsys):
    folder = copy_for_the_generator(tmp_path, monkeypatch)
    assert make_exercises.main(["--level", "challenge"]) == 0
    assert all(make_exercises.level_of(folder / e) == "challenge" for e in make_exercises.PAIRS.values())
    assert make_exercises.main(["--check"]) == 1
    assert "train_exercise.py is at the challenge level" in capsys.readouterr().err
    assert make_exercises.main([]) == 0, "without --level a file keeps its level"
    assert make_exercises.level_of(folder / "train_exercise.py") == "challenge"

    train = folder / "train_exercise.py"
    open_3a = '    raise NotImplementedError("TODO 3a'
    answered = train.read_text().replace(open_3a, "    pass  # my answer\n" + open_3a, 1)
    train.write_text(answered)
    capsys.readouterr()
    assert make_exercises.main(["--level", "guided"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train_exercise.py holds your work in TODO 3a; not overwritten" in err
    assert train.read_text() == answered, "the learner's file is untouched"
    assert make_exercises.level_of(folder / "data_exercise.py") == "guided", "the other file switched"
    assert make_exercises.main(["--check"]) == 1
    assert "holds edits in TODO 3a" in capsys.readouterr().err

    assert make_exercises.main(["--level", "guided", "--force"]) == 0
    assert (folder / "train_exercise.py.bak").read_text() == answered
    assert make_exercises.main(["--check"]) == 0, "back at the guided level, as generated"


def test_scoreboard_rejects_an_unknown_todo(capsys):
    assert load("exercise").train.main(["--test", "9z"]) == 2
    assert "has no TODO '9z'" in capsys.readouterr().err


# --- the exercise file runs as far as the learner has got ------------------------------------

TINY_RUN = [*TINY_MODEL, "--eval_interval", "3", "--max_steps", "6"]


def run_variant(open_todos: set[str], corpus_txt, tmp_path, capsys, *extra_args):
    variant = load_variant(set(TODOS) - open_todos, tmp_path)
    out = tmp_path / "out"
    args = [
        *TINY_RUN,
        "--learning_rate",
        "3e-3",
        *extra_args,
        "--data_path",
        str(corpus_txt),
        "--save_dir",
        str(out),
    ]
    code = variant.train.main(args)
    captured = capsys.readouterr()
    records = (
        [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] if code == 0 else []
    )
    return code, captured.out + captured.err, records


def test_open_lr_schedule_falls_back_to_a_constant_lr_and_says_so_once(corpus_txt, tmp_path, capsys):
    code, output, records = run_variant({"2a", "2b"}, corpus_txt, tmp_path, capsys, "--warmup_steps", "2")
    assert code == 0, output
    assert output.count("note: TODO 2a is not done yet, so the learning rate stays at 0.003") == 1
    assert output.count("note: TODO 2b is not done yet, so the learning rate stays at 0.003") == 1
    assert {r["lr"] for r in records if "lr" in r} == {3e-3}, "with TODO 2 open every step uses max_lr"


def test_open_amp_and_evaluation_fall_back_and_training_goes_on(corpus_txt, tmp_path, capsys):
    code, output, records = run_variant({"5", "6"}, corpus_txt, tmp_path, capsys)
    assert code == 0, output
    assert output.count("note: TODO 5 is not done yet, so training runs in float32.") == 1
    assert output.count("note: TODO 6 is not done yet, so there is no validation loss") == 1
    assert not any("val_loss" in r for r in records)
    assert any("loss" in r for r in records)


@pytest.mark.parametrize("todo", ["1", "3a", "3b", "3c", "4"])
def test_open_core_todo_stops_training_with_its_message(todo, corpus_txt, tmp_path, capsys):
    code, output, _ = run_variant({todo}, corpus_txt, tmp_path, capsys)
    assert code == 1
    assert f"stopped at TODO {todo}:" in output and f"--hint {todo}` gives a hint" in output
    if TODOS[todo].module == "data":  # the run is the train file's, the TODO is in the data file
        assert "Fill it in in data_exercise.py; `python data_exercise.py --hint 1`" in output


# --- a learner's checkout: "done" is done ---------------------------------------------------

FILLED = {
    "finished": set(TODOS),
    "half-finished": {"1", "2a", "2b", "3a", "3b", "3c"},
    "challenge, half-finished": {"1", "2a", "2b", "3a", "3b", "3c"},  # after --level challenge
}
COURSE_FILES = ["course", "tests", "tools", "data/gpt2.tiktoken", "model.py", "optim.py",
                "data_solution.py", "train_solution.py", "pyproject.toml", "tutorial.ipynb"]  # fmt: skip


CHECKOUT = """
import contextlib, io, json, sys
from pathlib import Path
import pytest
import train_exercise
from course.grading import data_main

def run(call):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = call()
    return [int(code), out.getvalue()]

results = {
    "pytest": run(lambda: pytest.main(["-q", "-p", "no:cacheprovider", "-m", "pristine", "-rs",
                                       "tests/test_grading.py", "tests/test_notebook.py"])),
    "train": run(lambda: train_exercise.main(["--test"])),
    "data": run(lambda: data_main([], Path("data_exercise.py"))),
}
print(json.dumps(results))
"""


def copy_course(copy: Path, filled: set[str], level: str = "guided") -> None:
    """A copy of the course whose exercise files, at `level`, hold the solution of the
    TODOs in `filled`."""
    for item in COURSE_FILES:
        source, target = ROOT / item, copy / item
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    for solution, exercise in make_exercises.PAIRS.items():
        text = make_exercises.make_exercise((ROOT / solution).read_text(), solution, frozenset(filled), level)
        (copy / exercise).write_text(text)


@background_job("checkouts", seconds=41)
def learner_checkouts(workdir: Path) -> None:
    """Copies of the course whose exercise files hold working answers (every TODO, or
    TODOs 1-3c), where a learner would run plain pytest (its checks that need pristine
    files) and both graders."""
    env = {key: value for key, value in os.environ.items() if key != "CI"}  # a learner's machine
    results = {}
    for name, filled in FILLED.items():
        copy = workdir / name.replace(", ", "_")
        copy_course(copy, filled, "challenge" if name.startswith("challenge") else "guided")
        # One process per checkout (they are slow to start): the only checks of plain pytest
        # that read the exercise files or the notebook's outputs, then both graders.
        command = [sys.executable, "-c", CHECKOUT]
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        results.update({f"{name} {key}": value for key, value in json.loads(done.stdout).items()})
    (workdir / "results.json").write_text(json.dumps(results))


@pytest.mark.background("checkouts")
def test_a_finished_checkout_passes_pytest_and_both_graders(background):
    results = json.loads((background / "results.json").read_text())
    for key in ("finished pytest", "finished train", "finished data"):
        code, output = results[key]
        assert code == 0, f"{key}: exit {code}\n{output[-2000:]}"
    assert "9/9 TODOs done in train_exercise.py" in results["finished train"][1]
    assert "next: train the main job with your code" in results["finished train"][1], (
        "all green says what next"
    )
    assert "1/1 TODOs done in data_exercise.py; bonus TODO 7 done" in results["finished data"][1]
    assert "your work in TODO" in results["finished pytest"][1], "the pristine checks say why they skip"


@pytest.mark.background("checkouts")
def test_a_checkout_at_the_challenge_level_passes_pytest_and_grades_as_the_guided_one(background):
    results = json.loads((background / "results.json").read_text())
    code, output = results["challenge, half-finished pytest"]
    assert code == 0, output[-2000:]
    assert "your work in TODO" in output, "the pristine checks skip for the answers, not for the level"
    board = lambda key: results[key][1][results[key][1].index("TODO  what you write") :]
    assert board("challenge, half-finished train") == board("half-finished train"), (
        "the same tests grade both"
    )


@pytest.mark.background("checkouts")
def test_a_half_finished_checkout_passes_pytest_and_its_graders_name_the_open_todos(background):
    results = json.loads((background / "results.json").read_text())
    code, output = results["half-finished pytest"]
    assert code == 0, output[-2000:]
    code, output = results["half-finished train"]
    assert code == 1
    for todo in ("2a", "2b", "3a", "3b", "3c"):
        assert f"{todo:<5} {TODOS[todo].title:<46} ✓ passed" in output, output
    for todo in ("4", "5", "6", "8"):
        assert f"{todo:<5} {TODOS[todo].title:<46} · not started" in output, output
    assert "5/9 TODOs done" in output and "next: TODO 4 " in output
    rows = [todo for todo in CATALOG if todo.module == "train" and f"{todo.id:<5} {todo.title}" in output]
    assert len(rows) == 9, "one scoreboard row per TODO of the train file"
    code, output = results["half-finished data"]
    assert code == 0 and "1/1 TODOs done in data_exercise.py; bonus TODO 7 open" in output, output


# --- graders that always end with a scoreboard ----------------------------------------------

# What a learner may put into a TODO that is not an answer: per checkout, the TODOs left
# open, and (file, where, text) for each change: the text goes in before the first match
# of `where`, or None deletes the match; every other TODO holds its solution. The endless
# loop leaves its process's id in a file: the tests wait for it, and look for the process.
LOOP = '    Path("looping.pid").write_text(str(__import__("os").getpid()))\n    while True:\n        pass\n'
BAD_IMPORT = "from model import GTP  # a typo\n"


def open_todo(todo: str) -> re.Pattern:
    """Where an open TODO's raise starts: on one line, or over two where the generator
    wrapped a long title."""
    return re.compile(rf'^[ ]*raise NotImplementedError\(\s*"TODO {todo}:', re.MULTILINE)


BROKEN = {
    "endless loop": ({"3a"}, [("train_exercise.py", open_todo("3a"), LOOP)]),
    # One checkout for every fault that leaves the file importable, one grader run: it must
    # get past all of them. TODOs 5-8 stay open too: their graded tests (real training
    # runs) would add nothing here. The hint counts beside it are cut short.
    "faults inside TODOs": ({"3a", "3b", "3c", "4", "5", "6", "8"}, [
        ("train_exercise.py", re.compile(r"^def set_lr\(.*?(?=^def )", re.MULTILINE | re.DOTALL), None),
        ("train_exercise.py", open_todo("3b"), '    __import__("os")._exit(0)\n'),
        ("train_exercise.py", open_todo("3c"), "    raise SystemExit(3)\n"),
        ("train_exercise.py", open_todo("4"), "    raise KeyboardInterrupt\n"),
        ("data_exercise.py", re.compile("^class BlockDataset", re.MULTILINE), "(:\n"),
        (".hints_used.json", re.compile(""), '{"2a": 1, "2'),
    ]),
    "a file that does not import": ({"4", "5", "6", "8"}, [
        ("train_exercise.py", re.compile("^def get_lr", re.MULTILINE), BAD_IMPORT),
    ]),
}  # fmt: skip
GRADER_TIME_LIMIT_S = 2  # the endless loop's test is stopped after this (the reference's take milliseconds)


def break_checkout(copy: Path, name: str) -> None:
    """A copy of the course, changed as BROKEN[name] says."""
    left_open, changes = BROKEN[name]
    copy_course(copy, set(TODOS) - left_open)
    for file, where, text in changes:
        old = (copy / file).read_text() if (copy / file).exists() else ""
        found = where.search(old)
        assert found, f"{name}: the exercise file has changed; update BROKEN"
        end = found.end() if text is None else found.start()
        (copy / file).write_text(old[: found.start()] + (text or "") + old[end:])


def start_grader(copy: Path, *options: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python train_exercise.py --test [OPTIONS]` in a copy of the course."""
    command = [sys.executable, "train_exercise.py", "--test", *options]
    return subprocess.Popen(command, cwd=copy, env={**os.environ, **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def interrupted_grader(copy: Path) -> list:
    """[exit code, output, whether its pytest child still ran 30 s later] for a grader in
    the endless loop's checkout sent Ctrl+C's SIGINT once the loop runs."""
    marker = copy / "looping.pid"
    marker.unlink(missing_ok=True)
    grader = start_grader(copy)
    wait_for(lambda: marker.exists() and marker.read_text(), grader)
    grader.send_signal(signal.SIGINT)
    output = grader.communicate()[0]
    return [grader.returncode, output, still_runs_30_s_later(int(marker.read_text()))]


def wait_for(condition: Callable[[], object], process: subprocess.Popen) -> None:
    """Until `condition()` holds; fails if `process` ends first."""
    while not condition():
        assert process.poll() is None, f"ended too early:\n{(process.communicate()[0] or '')[-3000:]}"
        time.sleep(0.05)


def still_runs_30_s_later(pid: int) -> bool:
    """Whether process `pid` runs on for 30 s; if so it is killed here (the machine is shared)."""
    deadline = time.monotonic() + 30
    while is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if is_running(pid):
        os.kill(pid, signal.SIGKILL)
        return True
    return False


def is_running(pid: int) -> bool:
    """Whether process `pid` runs; a zombie (ended, not yet reaped by its new parent) does not."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except ProcessLookupError:
        return False
    except FileNotFoundError:  # no /proc on this system: os.kill's answer stands
        return True
    return state != "Z"


@background_job("broken graders", seconds=19)
def broken_checkouts(workdir: Path) -> None:
    """`python train_exercise.py --test` in checkouts whose TODOs loop forever, exit the
    process or lost their function, beside a data chapter that does not compile, or
    whose file does not import; then the looping grader stopped by Ctrl+C."""
    results = {}
    for name in BROKEN:
        copy = workdir / name.replace(" ", "_")
        break_checkout(copy, name)
        # Only the endless loop is graded with a short limit, and only its own TODO: the
        # other graded tests (TODO 8's runs a real training twice) keep the usual one.
        limit = {"COURSE_GRADING_TIME_LIMIT": str(GRADER_TIME_LIMIT_S)}
        grader = start_grader(copy, "3a", env=limit) if name == "endless loop" else start_grader(copy)
        output = grader.communicate()[0]
        results[name] = [grader.returncode, output]
    results["Ctrl+C"] = interrupted_grader(workdir / "endless_loop")
    (workdir / "results.json").write_text(json.dumps(results))


def board_row(todo: str, result: str) -> str:
    return f"{todo:<5} {TODOS[todo].title:<46} {result}"


def line_of(path: Path, text: str) -> int:
    """The number of the line where `text` starts in the file."""
    content = path.read_text()
    return content[: content.index(text)].count("\n") + 1


@pytest.mark.background("broken graders")
def test_a_todo_that_never_ends_fails_after_the_time_limit(background):
    code, output = json.loads((background / "results.json").read_text())["endless loop"]
    assert code == 1, output
    assert (
        board_row("3a", f"✗ failed: took longer than {GRADER_TIME_LIMIT_S} s: an endless loop?") in output
    ), output
    assert "TODO 3a is not done yet" in output


@pytest.mark.background("broken graders")
def test_faults_inside_todos_fail_those_todos_alone_and_the_others_are_graded(background):
    code, output = json.loads((background / "results.json").read_text())["faults inside TODOs"]
    assert code == 1, f"os._exit(0) inside a TODO must not make the grader exit 0:\n{output}"
    for todo, result in [
        ("2a", "✓ passed"),
        ("2b", "✓ passed"),
        ("3a", "✗ failed: train_exercise.py has no set_lr (deleted or renamed?): TODO 3a is graded through "
               "that name; put it back"),
        ("3b", "✗ failed: the test ended the grading process (exit code 0)"),
        ("3c", "✗ failed: the code called sys.exit(3) (SystemExit)"),
        ("4", "✗ failed: the code raised KeyboardInterrupt (what Ctrl+C raises): a TODO should return"),
        ("5", "· not started"),
        ("8", "· not started"),
    ]:  # fmt: skip
        assert board_row(todo, result) in output, f"TODO {todo} must be graded on its own:\n{output}"
    assert "2/9 TODOs done in train_exercise.py" in output
    line = line_of(background / "faults_inside_TODOs" / "data_exercise.py", "(:\n")
    assert f"note: data_exercise.py does not import (line {line}: SyntaxError: " in output, output
    assert "graded with data_solution.py in its place" in output
    assert "note: .hints_used.json is unreadable or damaged; the hints used are counted from 0" in output
    assert "Traceback" not in output, output


@pytest.mark.background("broken graders")
def test_a_file_that_does_not_import_fails_each_of_its_todos_with_the_line(background):
    code, output = json.loads((background / "results.json").read_text())["a file that does not import"]
    line = line_of(background / "a_file_that_does_not_import" / "train_exercise.py", BAD_IMPORT)
    error = f"train_exercise.py does not import: line {line}: ImportError: cannot import name 'GTP'"
    assert code == 1
    for todo in (todo.id for todo in CATALOG if todo.module == "train"):
        assert board_row(todo, f"✗ failed: {error}") in output, output
    assert "Traceback" not in output, output


def test_a_syntax_error_is_named_by_its_line():
    with pytest.raises(SyntaxError) as error:
        compile("x = 1\nif x\n    pass\n", "train_exercise.py", "exec")
    assert where_it_failed(error.value, "train_exercise") == "line 2: SyntaxError: expected ':'"


@pytest.mark.background("broken graders")
def test_ctrl_c_on_the_grader_stops_its_pytest_and_prints_the_scoreboard_so_far(background):
    code, output, child_runs = json.loads((background / "results.json").read_text())["Ctrl+C"]
    assert code == 130, output
    assert "stopped by Ctrl+C: the scoreboard so far" in output
    for todo, result in [("2a", "✓ passed"), ("3a", "– not graded"), ("8", "– not graded")]:
        assert board_row(todo, result) in output, output
    assert "2/9 TODOs done in train_exercise.py" in output and "Traceback" not in output, output
    assert not child_runs, "pytest runs in a session of its own: the grader must stop it"


LOOPING_TEST = """
import os
from pathlib import Path

def test_loops():
    Path("looping.pid").write_text(str(os.getpid()))
    while True:
        pass
"""


def test_the_pytest_child_of_a_killed_grader_stops_by_itself(tmp_path):
    """No signal that ends the grader (SIGKILL, a closed terminal's SIGHUP) reaches its
    pytest child, in a session of its own: the child must notice, or a TODO that loops
    spins on for ever. A stand-in grader starts the child as grade() does, on one test."""
    (tmp_path / "test_loop.py").write_text(LOOPING_TEST)
    child = [sys.executable, str(ROOT / "tests" / "scoreboard.py"), str(tmp_path / "events.jsonl"),
             "test_loop.py", f"--rootdir={tmp_path}", "-p", "no:cacheprovider"]  # fmt: skip
    start = f"import subprocess; subprocess.Popen({child!r}, start_new_session=True).wait()"
    grader = subprocess.Popen([sys.executable, "-c", start], cwd=tmp_path)
    marker = tmp_path / "looping.pid"
    wait_for(lambda: marker.exists() and marker.read_text(), grader)
    grader.kill()
    grader.wait()
    assert not still_runs_30_s_later(int(marker.read_text()))
