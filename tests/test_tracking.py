"""Watching a run: TensorBoard's event files hold every metric once per logged step,
also across a resume that supersedes what was logged after its checkpoint; TensorBoard's
own server serves them; an overwrite replaces the old run's events only at its first
checkpoint; --use_wandb (W&B or SwanLab, offline) continues one tracked run across a
SIGKILL and a resume; a cut last line of metrics.jsonl does not block a resume.
(Under torchrun only rank 0 writes: test_ddp.py, on the runs made there.)"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_MODEL, VERSE, background_job

import train_solution as train
from course.run_folder import RunFolder

TINY = [
    *TINY_MODEL,
    "--eval_interval",
    "4",
    "--save_interval",
    "4",
    "--learning_rate",
    "3e-3",
    "--tensorboard",
    "1",
]
EVALUATED = [0, 1, 2, 4, 8]  # every 4 steps and at the end, and at 1/8, 1/4 and 1/2 of the first interval
TRAIN_TAGS = ["train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_sec", "lr/adamw", "lr/muon"]
VAL_TAGS = ["val/loss", "val/perplexity", "val/bits_per_byte"]


def events(folder: Path, plugins: bool = False):
    """The run's TensorBoard events, as TensorBoard's own readers see them: its classic
    reader, or the one its server's plugins use (plugins=True: the text too, as tensors)."""
    from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator

    reader = plugin_event_accumulator if plugins else event_accumulator
    accumulator = reader.EventAccumulator(str(folder / "tensorboard"))
    accumulator.Reload()
    return accumulator


def records(save_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A run of 8 steps, with a copy of its checkpoint of step 4 put back in place: what a
    run killed after step 8 was logged, before its checkpoint, leaves; and the last line
    of its metrics.jsonl cut mid-write, as a kill while appending leaves it."""
    root = tmp_path_factory.mktemp("tracked")
    (root / "verse.txt").write_text(VERSE * 40)
    out = root / "out"
    args = ["--data_path", root / "verse.txt", "--data_dir", root / "prepared", "--save_dir", out, *TINY]
    args = [str(a) for a in args]
    save_checkpoint = train.RunFolder.save_checkpoint

    def save_and_copy(run_files, model, optimizer, state, group):
        save_checkpoint(run_files, model, optimizer, state, group)
        if state["step"] == 4:
            shutil.copy(out / "resume.pt", root / "resume-step4.pt")

    train.RunFolder.save_checkpoint = save_and_copy
    try:
        assert train.main([*args, "--max_steps", "8"]) == 0
    finally:
        train.RunFolder.save_checkpoint = save_checkpoint
    shutil.copy(root / "resume-step4.pt", out / "resume.pt")  # steps 5-8 were logged after it
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "loss": 1.2')
    return root, args


def test_tensorboard_holds_every_metric_once_per_logged_step_across_a_resume(tracked_run, capsys):
    root, args = tracked_run
    out = shutil.copytree(root / "out", root / "resumed")
    capsys.readouterr()
    assert train.main([*args, "--save_dir", str(out), "--from_resume", "1"]) == 0
    said = capsys.readouterr().out
    assert said.count("is not a whole record") == 1 and "metrics.jsonl: line" in said, (
        "a cut last line of metrics.jsonl is one note, not a traceback"
    )
    logged = records(out)
    train_steps = [r["step"] for r in logged if "loss" in r]
    assert train_steps == list(range(1, 9)), f"metrics.jsonl logs each step once: {train_steps}"
    tb = events(out)
    for tag in TRAIN_TAGS:
        steps = [event.step for event in tb.Scalars(tag)]
        assert steps == list(range(1, 9)), f"{tag}: one point per logged step, none twice: {steps}"
    for tag in VAL_TAGS:
        steps = [event.step for event in tb.Scalars(tag)]
        assert steps == EVALUATED, f"{tag}: one point per evaluation: {steps}"
    by_step = {r["step"]: r for r in logged if "loss" in r}
    for event in tb.Scalars("train/loss"):
        assert event.value == pytest.approx(by_step[event.step]["loss"], rel=1e-6), (
            "the loss metrics.jsonl logs"
        )
    muon, adamw = tb.Scalars("lr/muon")[-1].value, tb.Scalars("lr/adamw")[-1].value
    assert muon / adamw == pytest.approx(0.02 / 3e-3, rel=1e-5), (
        "each group's LR: Muon's is muon_lr / lr times"
    )
    val = {r["step"]: r for r in logged if "val_loss" in r}
    for event in tb.Scalars("val/bits_per_byte"):
        assert event.value == pytest.approx(val[event.step]["val_bpb"], rel=1e-6)
    served = events(out, plugins=True)  # also supersedes the steps after the checkpoint
    assert [e.step for e in served.Tensors("train/loss")] == list(range(1, 9))
    assert [e.step for e in served.Tensors("samples/text_summary")] == EVALUATED, "a sample per evaluation"
    config = [e.step for e in served.Tensors("config/text_summary")]
    assert config == [0, 5], f"the config of each part of the run, at its first step: {config}"


def free_server(process: subprocess.Popen, deadline: float) -> str:
    """The address TensorBoard prints once it listens (it picks a free port: --port 0)."""
    for line in process.stderr:
        found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        if found:
            return found.group(1)
        assert time.monotonic() < deadline, "TensorBoard did not start in 120 s"
    raise AssertionError(f"TensorBoard ended before it listened (exit {process.wait()})")


def test_tensorboards_server_serves_the_runs_scalars(tracked_run):
    """`tensorboard --logdir` on a run folder: its HTTP API lists the run and its scalars,
    each step once (the resume's supersession included)."""
    root, _ = tracked_run
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(root / "out"), "--host", "127.0.0.1",
         "--port", "0", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # only keeps a broken server from hanging the suite
        url = free_server(server, deadline)
        query = "data/plugin/scalars/scalars?run=tensorboard&tag=train/loss"
        steps = None
        while steps != list(range(1, 9)):  # until the server has read the files
            assert time.monotonic() < deadline, f"the server served steps {steps}, not 1-8, in 120 s"
            try:
                with urllib.request.urlopen(url + query, timeout=10) as answer:
                    steps = [step for _, step, _ in json.load(answer)]
            except OSError:  # not loaded yet: the tag is unknown until the first reload
                time.sleep(0.1)
        with urllib.request.urlopen(url + "data/runs", timeout=10) as answer:
            assert json.load(answer) == ["tensorboard"]
    finally:
        server.terminate()
        server.wait(timeout=60)


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}  # fmt: skip


def test_an_overwrite_replaces_the_old_runs_events_at_its_first_checkpoint(tracked_run, monkeypatch):
    root, args = tracked_run
    out = shutil.copytree(root / "out", root / "overwritten")
    old_events = checksums(out / "tensorboard")
    seen = {}
    real_commit = RunFolder.commit

    def look_then_commit(folder):
        if folder.staging is not None:  # the first checkpoint: the staged files move now
            seen["old"] = checksums(out / "tensorboard")
            seen["staged_steps"] = [e.step for e in events(folder.staging).Scalars("train/loss")]
        real_commit(folder)

    monkeypatch.setattr(RunFolder, "commit", look_then_commit)
    code = train.main([*args, "--save_dir", str(out), "--overwrite", "1", "--max_steps", "2"])
    assert code == 0
    assert seen["old"] == old_events, "until its first checkpoint the new run leaves the old events alone"
    assert seen["staged_steps"] == [1, 2], "the new run's events are staged with its other files"
    assert [e.step for e in events(out).Scalars("train/loss")] == [1, 2], "only the new run's events are left"


@pytest.mark.parametrize("package", ["wandb", "swanlab", "tensorboard"])
def test_a_missing_tracker_package_is_one_line_before_anything_is_written(
    package, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were not installed
    (tmp_path / "verse.txt").write_text(VERSE * 40)
    option = {"wandb": ["--use_wandb", "1"], "swanlab": ["--use_wandb", "1", "--wandb_backend", "swanlab"],
              "tensorboard": []}[package]  # fmt: skip
    out = tmp_path / "out"
    code = train.main(["--data_path", str(tmp_path / "verse.txt"), "--save_dir", str(out), *TINY, *option])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{package} is not installed" in err, err
    assert not out.exists(), "refused before anything was written"


# --- one W&B or SwanLab run across a SIGKILL and a resume ---------------------------------------

BACKENDS = ("wandb", "swanlab")

# train_solution.py that, once it has logged step 6 (its checkpoint is of step 4), tells the
# test and waits there to be killed: the kill cannot come too early or too late.
WAIT_AFTER_STEP_6 = """
import sys, threading
from pathlib import Path
import train_solution
from course.logbook import Logbook
log_train = Logbook.log_train
def log_then_wait(self, step, *args):
    log_train(self, step, *args)
    if step == 6:
        Path(sys.argv[1]).touch()
        threading.Event().wait()
Logbook.log_train = log_then_wait
sys.exit(train_solution.main(sys.argv[2:]))
"""


def offline(workdir: Path) -> dict[str, str]:
    """W&B and SwanLab offline, writing under workdir: no network, no account."""
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(workdir), "WANDB_SILENT": "true",
            "SWANLAB_MODE": "offline", "SWANLAB_LOG_DIR": str(workdir / "swanlog")}  # fmt: skip


@background_job("tracked", seconds=19)
def tracked_runs(workdir: Path) -> None:
    """For each installed backend: a --use_wandb run SIGKILLed after step 6 (checkpoint of
    step 4), then resumed to step 8, in a process of its own."""
    (workdir / "verse.txt").write_text(VERSE * 40)
    for backend in (name for name in BACKENDS if importlib.util.find_spec(name)):
        folder = workdir / backend
        args = ["--data_path", str(workdir / "verse.txt"), "--data_dir", str(workdir / "prepared"), *TINY,
                "--max_steps", "8", "--use_wandb", "1", "--wandb_backend", backend]  # fmt: skip
        ready = folder / "ready"
        folder.mkdir()
        killed = subprocess.Popen(
            [sys.executable, "-c", WAIT_AFTER_STEP_6, str(ready), *args, "--save_dir", str(folder / "out")],
            cwd=ROOT, env=offline(folder), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 600  # only keeps a broken run from hanging the suite
        while not ready.exists():
            assert killed.poll() is None, f"the run ended before step 6: {killed.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "the run did not reach step 6 in 600 s"
            time.sleep(0.01)
        os.killpg(killed.pid, signal.SIGKILL)  # the run and the tracker's own processes
        killed.wait()
        resume = [*args, "--save_dir", str(folder / "out"), "--from_resume", "1"]
        resumed = subprocess.run(
            [sys.executable, "train_solution.py", *resume],
            cwd=ROOT, env=offline(folder), capture_output=True, text=True,
        )  # fmt: skip
        (folder / "resumed.log").write_text(resumed.stdout + resumed.stderr)
        assert resumed.returncode == 0, resumed.stderr[-3000:]


def run_ids(backend: str, folder: Path) -> list[str]:
    """The ids of the runs the backend wrote offline (one folder per process that logged)."""
    if backend == "wandb":
        return [path.name.rsplit("-", 1)[1] for path in (folder / "wandb").glob("offline-run-*")]
    return [path.name.rsplit("-", 1)[1] for path in (folder / "swanlog").glob("run-*")]


@pytest.mark.background("tracked")
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_killed_run_resumed_logs_into_the_same_tracked_run(backend, background):
    pytest.importorskip(backend, reason=f'{backend} is optional: pip install -e ".[wandb]"')
    folder = background / backend
    checkpoint = torch.load(folder / "out" / "resume.pt", weights_only=False)
    assert checkpoint["step"] == 8
    saved = checkpoint["tracked_run"]
    assert saved["wandb_backend"] == backend and saved["wandb_project"] == "pretrain-a-gpt"
    ids = run_ids(backend, folder)
    assert len(ids) == 2 and set(ids) == {saved["id"]}, (
        f"the killed run and its resume log into one {backend} run (the id in resume.pt): {ids}"
    )
    said = (folder / "resumed.log").read_text()
    notes = [line for line in said.splitlines() if "logs offline" in line]
    assert len(notes) == 1 and f"{backend} sync" in notes[0], said[-2000:]
    assert not (folder / "out" / "wandb").exists(), "the tracker's files stay in its own folder"


@pytest.mark.background("tracked")
def test_a_resume_refuses_another_tracked_run_name(background, tmp_path, capsys):
    pytest.importorskip("wandb", reason='wandb is optional: pip install -e ".[wandb]"')
    out = shutil.copytree(background / "wandb" / "out", tmp_path / "out")
    args = ["--data_path", str(background / "verse.txt"), "--data_dir", str(background / "prepared"), *TINY]
    code = train.main([*args, "--save_dir", str(out), "--from_resume", "1", "--max_steps", "9",
                       "--use_wandb", "1", "--wandb_project", "another"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--wandb_project another would log into another run than the saved run's W&B run" in err, err
