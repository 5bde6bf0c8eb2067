"""Several processes with DistributedDataParallel, on the CPU with gloo (torchrun):
two processes with batch B each equal one process with batch 2B, and a DDP run
resumes where it stopped."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_MODEL, VERSE

# A constant LR (min_lr = learning_rate, no warmup), so a run stopped at step 4 and
# resumed to step 8 follows the same schedule as one run of 8 steps.
ARGS = [*TINY_MODEL, "--max_steps", "8", "--eval_interval", "4", "--save_interval", "4",
        "--learning_rate", "3e-3", "--min_lr", "3e-3", "--warmup_steps", "0", "--dropout", "0"]  # fmt: skip


def run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def torchrun(args: list[str]) -> None:
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "train_solution.py", *args])  # fmt: skip


def weights(save_dir):
    return torch.load(save_dir / "model.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    (root / "verse.txt").write_text(VERSE * 60)
    base = [*ARGS, "--data_path", str(root / "verse.txt"), "--data_dir", str(root / "prepared")]
    run([sys.executable, "train_solution.py", *base, "--batch_size", "8", "--save_dir", str(root / "single")])
    torchrun([*base, "--batch_size", "4", "--save_dir", str(root / "ddp")])
    return root, base


def test_two_gloo_processes_equal_one_process_with_the_global_batch(runs):
    root, _ = runs
    single, ddp = weights(root / "single"), weights(root / "ddp")
    for name in single:
        assert torch.allclose(single[name], ddp[name], atol=1e-6, rtol=0), (
            f"{name}: 2 processes × batch 4 should train like 1 process × batch 8 "
            f"(largest difference {(single[name] - ddp[name]).abs().max().item():.2e})"
        )


def test_a_ddp_run_resumes_where_it_stopped(runs):
    root, base = runs
    resumed = root / "resumed"
    torchrun([*base, "--batch_size", "4", "--save_dir", str(resumed), "--max_steps", "4"])
    torchrun([*base, "--batch_size", "4", "--save_dir", str(resumed), "--from_resume", "1"])
    assert torch.load(resumed / "resume.pt", weights_only=True)["step"] == 8
    straight, after_resume = weights(root / "ddp"), weights(resumed)
    for name in straight:
        assert torch.equal(straight[name], after_resume[name]), f"{name} differs after the DDP resume"
