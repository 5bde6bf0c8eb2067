"""Several processes with DistributedDataParallel, on the CPU with gloo (torchrun):
two processes with batch B each equal one process with batch 2B, also on padded
documents and with gradient accumulation, and a DDP run resumes where it stopped."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_MODEL, VERSE, background_job, run_checked

import train_solution as train

# A constant LR (min_lr = learning_rate, no warmup): every step of these short runs learns.
ARGS = [*TINY_MODEL, "--max_steps", "8", "--eval_interval", "8", "--save_interval", "4",
        "--learning_rate", "3e-3", "--min_lr", "3e-3", "--warmup_steps", "0", "--dropout", "0"]  # fmt: skip


def torchrun(args: list[str], script: str = "train_solution.py") -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            script, *args]  # fmt: skip


# train_solution.py whose processes, once the checkpoint of step 4 is on disk, write
# their process id and wait there to be killed (so the kill cannot come too late: the
# run never ends by itself). torchrun starts each worker in a session of its own.
HANG_AFTER_STEP_4 = f"""
import os, sys, threading
sys.path.insert(0, {str(ROOT)!r})
import train_solution as train

save_checkpoint = train.save_checkpoint

def save_then_wait(run, model, optimizer, scaler, step, stream, best_val_loss, group):
    save_checkpoint(run, model, optimizer, scaler, step, stream, best_val_loss, group)
    if step == 4:
        group.barrier()  # rank 0 has written the checkpoint
        pid_file = run.save_dir / f"rank{{group.rank}}.pid"
        pid_file.with_suffix(".tmp").write_text(str(os.getpid()))
        pid_file.with_suffix(".tmp").rename(pid_file)
        threading.Event().wait()

train.save_checkpoint = save_then_wait
sys.exit(train.main())
"""


def kill_after_step_4(args: list[str], workdir: Path) -> None:
    """Start a two-process run, SIGKILL torchrun and both workers once step 4 is saved."""
    driver = workdir / "hang_after_step_4.py"
    driver.write_text(HANG_AFTER_STEP_4)
    save_dir = Path(args[args.index("--save_dir") + 1])
    pid_files = [save_dir / f"rank{rank}.pid" for rank in range(2)]
    log = workdir / "killed_run.log"
    with log.open("w") as output:  # a file, not a pipe: a full pipe would stall the run
        process = subprocess.Popen(torchrun(args, str(driver)), cwd=ROOT,
                                   start_new_session=True, stdout=output, stderr=output)  # fmt: skip
    deadline = time.monotonic() + 600  # only keeps a broken run from hanging the suite
    while not all(pid_file.exists() for pid_file in pid_files):
        assert process.poll() is None, f"the run ended before step 4 was saved:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "the run did not save step 4 in 600 s"
        time.sleep(0.01)
    # Both workers, then torchrun, as a lost machine would (in this order: the workers would
    # get a SIGTERM if torchrun died first, course.guards.stop_with_the_launcher).
    for pid_file in pid_files:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# train_solution.py whose processes, resumed from a checkpoint, wait in their STOP_IN_CALL-th
# step until their stop handler has seen a signal, so the signal always lands mid-run.
WAIT_FOR_A_STOP_SIGNAL = f"""
import os, signal, sys, time
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
import train_solution as train

train_step, calls = train.train_step, [0]

def wait_then_step(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(os.environ["STOP_IN_CALL"]):
        handler = signal.getsignal(signal.SIGTERM)  # the run's course.guards.StopRequests
        save_dir = Path(sys.argv[sys.argv.index("--save_dir") + 1])
        (save_dir / f"{{os.getpid()}}.ready").touch()  # tell the test: this process is in that step
        while handler.__self__.requested is None:
            time.sleep(0.01)
    return train_step(*args, **kwargs)

train.train_step = wait_then_step
sys.exit(train.main())
"""


def gone(pid: int) -> bool:
    """Ended (an orphan's zombie counts: it may wait long for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# The time torchrun gives its workers to stop, and that workers without a launcher give themselves:
# longer than the 30 s default, for a machine busy with other tests.
SHUTDOWN_TIME = {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "600"}


def stop_mid_run(args: list[str], workdir: Path, call: int, stop: Callable[[int, list[int]], None]) -> str:
    """Resume a two-process run and, once both workers are in their `call`-th step,
    `stop(torchrun's pid, the workers' pids)`; returns what the run printed once every
    process has ended."""
    driver = workdir / "wait_for_a_stop_signal.py"
    driver.write_text(WAIT_FOR_A_STOP_SIGNAL)
    save_dir = Path(args[args.index("--save_dir") + 1])
    log = workdir / "stopped_run.log"
    with log.open("w") as output:
        process = subprocess.Popen(torchrun(args, str(driver)), cwd=ROOT,
                                   env={**os.environ, "STOP_IN_CALL": str(call), **SHUTDOWN_TIME},
                                   start_new_session=True, stdout=output, stderr=output)  # fmt: skip
    deadline = time.monotonic() + 600  # only keeps a broken run from hanging the suite
    while len(ready := list(save_dir.glob("*.ready"))) < 2:
        assert process.poll() is None, f"the run ended before its step {call}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the run did not reach its step {call} in 600 s"
        time.sleep(0.01)
    workers = [int(path.stem) for path in ready]
    stop(process.pid, workers)
    process.wait()
    while not all(gone(pid) for pid in workers):
        if time.monotonic() > deadline:  # no orphans left behind by a failing test
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise AssertionError(
                f"workers {workers} still ran 600 s after the stop:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.01)
    for path in ready:
        path.unlink()
    return log.read_text()


def scancel(launcher: int, workers: list[int]) -> None:
    """SIGTERM to torchrun and every worker at once, as Slurm's scancel and systemd send it
    (torchrun also forwards its own to the workers: each gets two)."""
    for pid in [launcher, *workers]:
        os.kill(pid, signal.SIGTERM)


def kill_the_launcher(launcher: int, workers: list[int]) -> None:
    """SIGKILL to torchrun alone, as the OOM killer or `kill -9` of the job would send it."""
    os.kill(launcher, signal.SIGKILL)


# train_solution.py with a TODO 6 that forgets the other processes, run as the exercise
# file runs (course.open_todos): each process's loss is then the mean over its own share
# of the validation windows.
OWN_SHARE_ONLY = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
import train_solution as train
from course import open_todos

train.sum_over_processes = lambda value: value
sys.exit(open_todos.main(train, None, script=Path(train.__file__)))
"""


@background_job("ddp_disagree", seconds=5)
def disagreeing_processes(workdir: Path) -> None:
    """Two processes whose TODO 6 measures only their own share of the validation windows."""
    (workdir / "verse.txt").write_text(VERSE * 60)
    driver = workdir / "own_share_only.py"
    driver.write_text(OWN_SHARE_ONLY)
    done = subprocess.run(torchrun(ddp_args(workdir, "disagree"), str(driver)), cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    (workdir / "done.json").write_text(json.dumps([done.returncode, done.stderr]))


@pytest.mark.background("ddp_disagree")
def test_processes_that_disagree_on_the_val_loss_stop_at_todo_6(background):
    code, stderr = json.loads((background / "done.json").read_text())
    assert code != 0, "the processes went on with different validation losses"
    assert "stopped at TODO 6: the processes measured different validation losses" in stderr, stderr[-3000:]


def ddp_args(workdir: Path, run: str) -> list[str]:
    """Two processes with batch 4 each, on the corpus in workdir, with their own
    prepared-data folder (runs that overlap in time never prepare the same folder)."""
    return [*ARGS, "--batch_size", "4", "--data_path", str(workdir / "verse.txt"),
            "--data_dir", str(workdir / f"prepared_{run}"), "--save_dir", str(workdir / run)]  # fmt: skip


def write_documents(path: Path) -> None:
    """100 documents of 1 to 15 words: with --max_seq_len 64 (characters) the short ones
    are mostly padding and the long ones are cut, so batches hold very different
    numbers of real targets."""
    words = VERSE.split()
    rng = random.Random(0)
    lines = [" ".join(rng.choices(words, k=rng.randint(1, 15))) for _ in range(100)]
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))


def documents_args(
    documents: Path, workdir: Path, run: str, batch_size: int, accumulation_steps: int
) -> list[str]:
    """6 steps on padded documents, writing in workdir/run; in float32, because bfloat16
    (the default on CPUs with bfloat16 instructions) rounds a batch of 8 and two of 4 differently."""
    return [*ARGS, "--dtype", "float32", "--max_steps", "6", "--max_seq_len", "64",
            "--dataset_mode", "documents",
            "--data_path", str(documents), "--data_dir", str(workdir / f"prepared_{run}"),
            "--batch_size", str(batch_size), "--accumulation_steps", str(accumulation_steps),
            "--save_dir", str(workdir / run)]  # fmt: skip


@background_job("ddp", seconds=35)
def ddp_runs(workdir: Path) -> None:
    """Two processes on padded documents, with batch 2 and 2 micro-batches each (to
    compare with one process, without dropout); and with dropout 0.1, where each
    process draws its own masks: straight to step 8, and killed after the checkpoint of
    step 4 then resumed to step 8. The first three overlap in time."""
    (workdir / "verse.txt").write_text(VERSE * 60)
    write_documents(workdir / "documents.jsonl")
    dropout = ["--dropout", "0.1"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        two_processes = documents_args(workdir / "documents.jsonl", workdir, "ddp_documents", 2, 2)
        documents = pool.submit(run_checked, torchrun(two_processes))
        with_dropout = pool.submit(run_checked, torchrun([*ddp_args(workdir, "ddp_dropout"), *dropout]))
        # Killed (SIGKILL) after step 4; resumed and stopped by SIGTERM to every process in step 6;
        # resumed, its launcher killed in step 7; resumed to step 8; a refused resume. With
        # TensorBoard's events (test_only_rank_0_tracks_and_a_resumed_ddp_run_logs_each_step_once).
        resumed = [*ddp_args(workdir, "resumed"), *dropout, "--tensorboard", "1"]
        kill_after_step_4(resumed, workdir)
        said = stop_mid_run([*resumed, "--from_resume", "1"], workdir, 2, scancel)
        (workdir / "terminated.log").write_text(said)
        said = stop_mid_run([*resumed, "--from_resume", "1"], workdir, 1, kill_the_launcher)
        (workdir / "orphaned.log").write_text(said)
        last = run_checked(torchrun([*resumed, "--from_resume", "1"]))
        (workdir / "last_resume.log").write_text(last.stdout)
        refused = subprocess.run(torchrun([*resumed, "--from_resume", "1", "--batch_size", "8"]), cwd=ROOT,
                                 capture_output=True, text=True)  # fmt: skip
        (workdir / "refused.log").write_text(refused.stderr)
        documents.result(), with_dropout.result()  # raise if a run failed


def weights(save_dir: Path) -> dict:
    return torch.load(save_dir / "model.pt", weights_only=True)["model"]


def val_curve(save_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in records if "val_loss" in r}


def assert_same_weights(one: dict, two: dict, what: str, atol: float) -> None:
    for name in one:
        assert torch.allclose(one[name], two[name], atol=atol, rtol=0), (
            f"{name}: {what} (largest difference {(one[name] - two[name]).abs().max().item():.2e})"
        )


@pytest.mark.background("ddp")
def test_padded_documents_train_alike_with_accumulation_and_across_processes(background, tmp_path):
    """One optimizer step sees the same 8 documents whether they come as one batch of 8,
    two micro-batches of 4, or two processes with two micro-batches of 2 each: every
    real target must weigh the same, whatever the padding of its micro-batch."""
    for batch_size, accumulation_steps in [(8, 1), (4, 2)]:
        run = f"batch{batch_size}x{accumulation_steps}"
        args = documents_args(background / "documents.jsonl", tmp_path, run, batch_size, accumulation_steps)
        assert train.main(args) == 0
    big, accumulated = weights(tmp_path / "batch8x1"), weights(tmp_path / "batch4x2")
    assert_same_weights(big, accumulated, "--batch_size 4 --accumulation_steps 2 should train like "
                        "--batch_size 8 on padded documents", atol=1e-5)  # fmt: skip
    ddp = weights(background / "ddp_documents")
    assert_same_weights(big, ddp, "2 processes × batch 2 × 2 micro-batches should train like 1 process "
                        "× batch 8 on padded documents", atol=1e-5)  # fmt: skip
    # The same weights read the same validation loss at every evaluation, whatever the
    # batch size and the number of processes that share out the windows.
    curves = {run: val_curve(folder) for run, folder in
              [("batch 8", tmp_path / "batch8x1"), ("batch 4", tmp_path / "batch4x2"),
               ("2 processes × batch 2", background / "ddp_documents")]}  # fmt: skip
    (first, expected), *others = curves.items()
    assert len(expected) == 5, f"evaluations at steps 0, 1, 2, 4 and 6: {expected}"
    for run, curve in others:
        assert curve.keys() == expected.keys() and all(
            curve[step] == pytest.approx(expected[step], rel=1e-5) for step in expected
        ), f"validation losses of the same weights: {run} {curve}, {first} {expected}"


@pytest.mark.background("ddp")
def test_a_ddp_run_with_dropout_resumes_where_it_stopped(background):
    """Killed after step 4, stopped by SIGTERM in step 6, it ends bit-identical to the straight run."""
    assert torch.load(background / "resumed" / "resume.pt", weights_only=True)["step"] == 8
    straight, after_resume = weights(background / "ddp_dropout"), weights(background / "resumed")
    for name in straight:
        assert torch.equal(straight[name], after_resume[name]), f"{name} differs after the DDP resume"


@pytest.mark.background("ddp")
def test_only_rank_0_tracks_and_a_resumed_ddp_run_logs_each_step_once(background):
    """TensorBoard's events of the run killed after step 4, stopped in step 6 and resumed
    twice: written by rank 0 alone (no event file of rank 1's process), with the losses over
    both processes that metrics.jsonl logs, each step once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    save_dir = background / "resumed"
    rank1 = (save_dir / "rank1.pid").read_text()  # the killed run's rank 1 (kill_after_step_4)
    files = sorted(path.name for path in save_dir.rglob("events.out.tfevents.*"))
    assert files and all(
        path.parent.name == "tensorboard" for path in save_dir.rglob("events.out.tfevents.*")
    )
    assert not [name for name in files if name.split(".")[-2] == rank1], f"rank 1 wrote events: {files}"
    events = EventAccumulator(str(save_dir / "tensorboard"))
    events.Reload()
    records = map(json.loads, (save_dir / "metrics.jsonl").read_text().splitlines())
    logged = {r["step"]: r["loss"] for r in records if "loss" in r}
    steps = [event.step for event in events.Scalars("train/loss")]
    assert steps == list(range(1, 9)) == list(logged), (
        f"each step once: TensorBoard {steps}, metrics {logged}"
    )
    for event in events.Scalars("train/loss"):
        assert event.value == pytest.approx(logged[event.step], rel=1e-6), "the loss over both processes"


@pytest.mark.background("ddp")
def test_sigterm_to_torchrun_and_every_worker_stops_them_after_the_same_step_with_one_checkpoint(background):
    """As Slurm's scancel sends it: each worker gets SIGTERM twice (directly and from torchrun),
    which counts once; the resume from that checkpoint ends bit-identical to the straight run
    (test_a_ddp_run_with_dropout_resumes_where_it_stopped)."""
    said = (background / "terminated.log").read_text()
    stops = [line for line in said.splitlines() if line.startswith("stopped")]
    assert stops == [f"stopped by SIGTERM: checkpoint of step 6 saved in {background / 'resumed'}; "
                     "continue with --from_resume 1"], said[-3000:]  # fmt: skip
    assert said.count("SIGTERM: saving a checkpoint after this step") == 1, "said once, by rank 0"
    # torchrun itself reports the signal it got with a traceback of its own; the workers must not.
    frames = [line.strip() for line in said.splitlines() if line.strip().startswith('File "')]
    ours = [frame for frame in frames if "site-packages" not in frame and "<frozen" not in frame]
    assert not ours, f"a traceback from the workers: {ours}"


@pytest.mark.background("ddp")
def test_workers_whose_launcher_is_killed_save_their_step_and_stop(background):
    said = (background / "orphaned.log").read_text()
    announced = ") is gone: saving a checkpoint after this step (ended by SIGALRM in 600 s if it hangs)"
    assert said.count(announced) == 1, said[-3000:]
    stops = [line for line in said.splitlines() if line.startswith("stopped")]
    assert stops == [f"stopped by SIGTERM: checkpoint of step 7 saved in {background / 'resumed'}; "
                     "continue with --from_resume 1"], said[-3000:]  # fmt: skip
    assert "steps 7 → 8" in (background / "last_resume.log").read_text(), "the next resume starts there"


@pytest.mark.background("ddp")
def test_a_refusal_under_torchrun_is_said_once(background):
    said = (background / "refused.log").read_text()
    errors = [line for line in said.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, said[-3000:]
    assert errors[0].startswith(
        "error: --batch_size 8 × --accumulation_steps 1 × 2 process(es) is a step of 16 windows, the saved "
        "run's 4 × 1 × 2 = 8: keep the global batch with --batch_size 4"
    )


def test_each_process_draws_its_own_dropout_masks():
    from course.checkpoints import seed_everything

    seed_everything(1337, rank=0)
    mask0 = torch.nn.functional.dropout(torch.ones(100), 0.5)
    seed_everything(1337, rank=1)
    mask1 = torch.nn.functional.dropout(torch.ones(100), 0.5)
    assert not torch.equal(mask0, mask1), "processes with the same seed would drop the same units"
