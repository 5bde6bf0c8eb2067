"""Several processes with DistributedDataParallel, on the CPU with gloo (torchrun):
two processes with batch B each equal one process with batch 2B, and a DDP run
resumes where it stopped."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_MODEL, VERSE

import train_solution as train

# A constant LR (min_lr = learning_rate, no warmup), so a run stopped at step 4 and
# resumed to step 8 follows the same schedule as one run of 8 steps.
ARGS = [*TINY_MODEL, "--max_steps", "8", "--eval_interval", "4", "--save_interval", "4",
        "--learning_rate", "3e-3", "--min_lr", "3e-3", "--warmup_steps", "0", "--dropout", "0"]  # fmt: skip


def torchrun(args: list[str]) -> subprocess.Popen:
    """Two CPU processes under torchrun, started in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "train_solution.py", *args],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait(*processes: subprocess.Popen) -> None:
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]


def weights(save_dir):
    return torch.load(save_dir / "model.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with batch 8; two with batch 4, straight to step 8; and two stopped
    at step 4 then resumed to step 8. The independent runs overlap in time."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "verse.txt").write_text(VERSE * 60)
    base = [*ARGS, "--data_path", str(root / "verse.txt"), "--data_dir", str(root / "prepared")]
    assert (
        train.main([*base, "--batch_size", "8", "--save_dir", str(root / "single")]) == 0
    )  # prepares the data
    ddp = [*base, "--batch_size", "4"]
    straight = torchrun([*ddp, "--save_dir", str(root / "ddp")])
    first_half = torchrun([*ddp, "--save_dir", str(root / "resumed"), "--max_steps", "4"])
    wait(straight, first_half)
    wait(torchrun([*ddp, "--save_dir", str(root / "resumed"), "--from_resume", "1"]))
    return root


def test_two_gloo_processes_equal_one_process_with_the_global_batch(runs):
    single, ddp = weights(runs / "single"), weights(runs / "ddp")
    for name in single:
        assert torch.allclose(single[name], ddp[name], atol=1e-6, rtol=0), (
            f"{name}: 2 processes × batch 4 should train like 1 process × batch 8 "
            f"(largest difference {(single[name] - ddp[name]).abs().max().item():.2e})"
        )


def test_a_ddp_run_resumes_where_it_stopped(runs):
    assert torch.load(runs / "resumed" / "resume.pt", weights_only=True)["step"] == 8
    straight, after_resume = weights(runs / "ddp"), weights(runs / "resumed")
    for name in straight:
        assert torch.equal(straight[name], after_resume[name]), f"{name} differs after the DDP resume"
