"""Training that survives: a real training process killed (SIGKILL) at random steps and
resumed ends bit-for-bit where an uninterrupted run ends; a kill during a checkpoint
write leaves the previous checkpoint loadable; Ctrl+C saves before stopping; a loss
that becomes NaN stops the run without touching the last good checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, VERSE

import train_solution as train
from course import checkpoints

RUN = ["--device", "cpu", "--hidden_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4",
       "--max_seq_len", "32", "--batch_size", "8", "--accumulation_steps", "2", "--dropout", "0.1",
       "--max_steps", "36", "--save_interval", "4", "--eval_interval", "1000", "--eval_iters", "2",
       "--log_interval", "1", "--sample_tokens", "5"]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A corpus, a shared prepared-data folder, and one uninterrupted reference run."""
    root = tmp_path_factory.mktemp("resume")
    corpus = root / "verse.txt"
    corpus.write_text(VERSE * 60)
    base = [*RUN, "--data_path", str(corpus), "--data_dir", str(root / "prepared")]
    assert train.main([*base, "--save_dir", str(root / "straight")]) == 0
    return root, base


def start(args: list[str], save_dir: Path, driver: str | None = None) -> subprocess.Popen:
    """A real training process: train_solution.py, or a `python -c driver` that wraps it,
    in a process group of its own (as a terminal starts it)."""
    program = ["-c", driver] if driver else ["train_solution.py"]
    return subprocess.Popen(
        [sys.executable, *program, *args, "--save_dir", str(save_dir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_step(process: subprocess.Popen, save_dir: Path, step: int, timeout: float = 600) -> None:
    """Poll metrics.jsonl until the run has logged `step` (it logs every step); the
    timeout only keeps a broken run from hanging the suite."""
    metrics = save_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file() and any(
            json.loads(line).get("step", 0) >= step for line in metrics.read_text().splitlines() if line
        ):
            return
        assert process.poll() is None, f"the run ended before step {step}: {process.stderr.read()[-1000:]}"
        time.sleep(0.005)
    raise AssertionError(f"the run did not reach step {step} in {timeout} s")


def resume(base: list[str], save_dir: Path) -> None:
    """Continue a stopped run in this process (nothing here needs a process to die)."""
    assert train.main([*base, "--save_dir", str(save_dir), "--from_resume", "1"]) == 0


def assert_same_final_weights(a: Path, b: Path) -> None:
    wa = torch.load(a / "model.pt", weights_only=True)["model"]
    wb = torch.load(b / "model.pt", weights_only=True)["model"]
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, (
        f"after the resume, these weights differ from the uninterrupted run: {different[:5]}"
    )


def losses(save_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_sigkill_at_two_random_steps_then_resume_is_bit_identical(workspace):
    """Killed at a random step; the resumed process killed again at a later random step
    (a resume of a resume); resumed once more, the run ends as if it had never stopped."""
    root, base = workspace
    first, second = sorted(random.Random(2026).sample(range(5, 30), 2))
    save_dir = root / "killed"
    for kill_step, args in ((first, base), (second, [*base, "--from_resume", "1"])):
        process = start(args, save_dir)
        wait_for_step(process, save_dir, kill_step)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert (save_dir / "resume.pt").is_file(), "a checkpoint should exist (one every 4 steps)"
    resume(base, save_dir)
    assert_same_final_weights(root / "straight", save_dir)
    assert losses(save_dir) == losses(root / "straight"), "every logged loss must match the uninterrupted run"
    steps = [r["step"] for r in records(save_dir) if "loss" in r]
    assert steps == list(range(1, 37)), f"metrics.jsonl logs each step once: {steps}"
    tensorboard = tensorboard_losses(save_dir)
    assert list(tensorboard) == steps, (
        f"TensorBoard shows each step once after two kills: {list(tensorboard)}"
    )
    assert tensorboard == pytest.approx(tensorboard_losses(root / "straight"), rel=1e-6)


def records(save_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]


def tensorboard_losses(save_dir: Path) -> dict[int, float]:
    """The training loss of each step, as TensorBoard's reader sees the run's event files
    (a list of pairs first: a step logged twice would show)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(save_dir / "tensorboard"))
    events.Reload()
    pairs = [(event.step, event.value) for event in events.Scalars("train/loss")]
    assert len({step for step, _ in pairs}) == len(pairs), f"a step logged twice: {pairs}"
    return dict(pairs)


def test_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(workspace):
    root, base = workspace
    save_dir = root / "killed_mid_save"
    # A child whose torch.save writes half a resume checkpoint, then dies, at the second one.
    driver = (
        "import os, signal, sys, torch, train_solution\n"
        "real_save, count = torch.save, [0]\n"
        "def dying_save(obj, f):\n"
        "    if getattr(f, 'name', '').endswith(f'.resume.pt.{os.getpid()}.tmp'):\n"
        "        count[0] += 1\n"
        "        if count[0] == 2:\n"
        "            f.write(b'half a checkpoint')\n"
        "            f.flush()\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real_save(obj, f)\n"
        "torch.save = dying_save\n"
        "sys.exit(train_solution.main(sys.argv[1:]))\n"
    )
    process = start(base, save_dir, driver=driver)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert (save_dir / f".resume.pt.{process.pid}.tmp").read_bytes() == b"half a checkpoint", (
        "the kill hit the write"
    )
    checkpoint = torch.load(save_dir / "resume.pt", weights_only=True)
    assert checkpoint["step"] == 4, "the previous (first) checkpoint must still be there, whole"
    resume(base, save_dir)
    assert_same_final_weights(root / "straight", save_dir)
    assert not list(save_dir.glob(".*.tmp")), "the resume removes the killed write's temporary file"


# A run that waits before step 8 until its stop handler has seen the signal, so the
# signal always lands mid-run: however fast the machine, the run cannot finish first.
WAIT_FOR_THE_SIGNAL = """
import signal, sys, time
from pathlib import Path
import train_solution
real_train_step, calls = train_solution.train_step, [0]
def train_step(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 8:
        handler = signal.getsignal(signal.SIGINT)  # the run's course.guards.StopRequests
        Path(sys.argv[1]).touch()  # tell the test: send the signal now
        while handler.__self__.requested is None:
            time.sleep(0.01)
    return real_train_step(*args, **kwargs)
train_solution.train_step = train_step
sys.exit(train_solution.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl+C", "SIGTERM"])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_then_stops(signum, workspace):
    root, base = workspace
    name = signal.Signals(signum).name
    save_dir, ready = root / f"stopped_by_{name}", root / f"{name}_ready"
    # With a DataLoader worker: a terminal's Ctrl+C reaches every process of the group.
    process = start([str(ready), *base, "--num_workers", "1"], save_dir, driver=WAIT_FOR_THE_SIGNAL)
    while not ready.exists():
        assert process.poll() is None, f"the run ended before step 8: {process.stderr.read()[-1000:]}"
        time.sleep(0.01)
    if signum == signal.SIGINT:
        os.killpg(process.pid, signal.SIGINT)  # the terminal's Ctrl+C: the whole process group
    else:
        process.send_signal(signal.SIGTERM)  # kill, docker stop, timeout, Slurm: the process
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr[-1000:]
    what = "Ctrl+C" if signum == signal.SIGINT else "SIGTERM"
    said = [line for line in stderr.splitlines() if line.startswith("stopped")]
    assert said == [
        f"stopped by {what}: checkpoint of step 8 saved in {save_dir}; continue with --from_resume 1"
    ]
    announced = (stdout + stderr).count(f"{what}: saving a checkpoint")
    assert announced == 1, f"announced {announced} times: the worker must leave it to the training process"
    stopped_at = torch.load(save_dir / "resume.pt", weights_only=True)["step"]
    assert stopped_at == 8, "a signal during step 8: the run finishes that step, saves it, and stops"
    assert max(losses(save_dir)) == 8, "the metrics end at the checkpoint's step"
    resume(base, save_dir)
    assert_same_final_weights(root / "straight", save_dir)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(workspace, capsys):
    root, base = workspace
    save_dir = root / "diverging"
    short = [*base, "--save_dir", str(save_dir), "--max_steps", "8", "--warmup_steps", "0"]
    assert train.main(short) == 0
    good = (save_dir / "resume.pt").read_bytes()
    capsys.readouterr()
    code = train.main(
        [
            *short,
            "--max_steps",
            "16",
            "--from_resume",
            "1",
            "--learning_rate",
            "1e6",
            "--min_lr",
            "1e6",
            "--grad_clip",
            "0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert "the loss became nan" in err and "lower --learning_rate" in err and "resume.pt) is kept" in err
    assert (save_dir / "resume.pt").read_bytes() == good, "the last good checkpoint must not be overwritten"


def test_a_cpu_run_on_a_gpu_machine_does_not_start_cuda_for_its_random_state(monkeypatch):
    """Reading the CUDA generator starts CUDA on GPU 0: a --device cpu run (every process
    of one under torchrun) on a GPU machine must not, so it reads it only once CUDA is in use."""

    def starts_cuda():
        raise AssertionError("torch.cuda.get_rng_state() was called: it starts CUDA on GPU 0")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state", starts_cuda)
    assert checkpoints.this_process_rng_state()["cuda"] is None
