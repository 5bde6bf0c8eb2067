"""Several processes with DistributedDataParallel, on the CPU with gloo (torchrun):
two processes with batch B each equal one process with batch 2B, and a DDP run
resumes where it stopped."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, VERSE, background_job, run_checked

import train_solution as train

# A constant LR (min_lr = learning_rate, no warmup), so a run stopped at step 4 and
# resumed to step 8 follows the same schedule as one run of 8 steps.
ARGS = [*TINY_MODEL, "--max_steps", "8", "--eval_interval", "4", "--save_interval", "4",
        "--learning_rate", "3e-3", "--min_lr", "3e-3", "--warmup_steps", "0", "--dropout", "0"]  # fmt: skip


def torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "train_solution.py", *args]  # fmt: skip


def ddp_args(workdir: Path, run: str) -> list[str]:
    """Two processes with batch 4 each, on the corpus in workdir, with their own
    prepared-data folder (runs that overlap in time never prepare the same folder)."""
    return [*ARGS, "--batch_size", "4", "--data_path", str(workdir / "verse.txt"),
            "--data_dir", str(workdir / f"prepared_{run}"), "--save_dir", str(workdir / run)]  # fmt: skip


@background_job("ddp")
def ddp_runs(workdir: Path) -> None:
    """Two processes straight to step 8, and two stopped at step 4 then resumed to step 8;
    the straight run and the first half overlap in time."""
    (workdir / "verse.txt").write_text(VERSE * 60)
    with ThreadPoolExecutor(max_workers=1) as pool:
        straight = pool.submit(run_checked, torchrun(ddp_args(workdir, "ddp")))
        run_checked(torchrun([*ddp_args(workdir, "resumed"), "--max_steps", "4"]))
        run_checked(torchrun([*ddp_args(workdir, "resumed"), "--from_resume", "1"]))
        straight.result()  # raises if the straight run failed


def weights(save_dir: Path) -> dict:
    return torch.load(save_dir / "model.pt", weights_only=True)["model"]


@pytest.mark.background("ddp")
def test_two_gloo_processes_equal_one_process_with_the_global_batch(background, tmp_path):
    single = tmp_path / "single"
    args = [
        *ARGS,
        "--batch_size",
        "8",
        "--data_path",
        str(background / "verse.txt"),
        "--save_dir",
        str(single),
    ]
    assert train.main(args) == 0
    one, two = weights(single), weights(background / "ddp")
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-6, rtol=0), (
            f"{name}: 2 processes × batch 4 should train like 1 process × batch 8 "
            f"(largest difference {(one[name] - two[name]).abs().max().item():.2e})"
        )


@pytest.mark.background("ddp")
def test_a_ddp_run_resumes_where_it_stopped(background):
    assert torch.load(background / "resumed" / "resume.pt", weights_only=True)["step"] == 8
    straight, after_resume = weights(background / "ddp"), weights(background / "resumed")
    for name in straight:
        assert torch.equal(straight[name], after_resume[name]), f"{name} differs after the DDP resume"
