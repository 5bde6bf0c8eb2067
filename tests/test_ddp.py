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
ARGS = [*TINY_MODEL, "--max_steps", "8", "--eval_interval", "8", "--save_interval", "4",
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
    """Two processes straight to step 8 (without dropout, to compare with one process);
    and with dropout 0.1, where each process draws its own masks: straight to step 8,
    and stopped at step 4 then resumed to step 8. The first three overlap in time."""
    (workdir / "verse.txt").write_text(VERSE * 60)
    dropout = ["--dropout", "0.1"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        straight = pool.submit(run_checked, torchrun(ddp_args(workdir, "ddp")), nice=True)
        with_dropout = pool.submit(
            run_checked, torchrun([*ddp_args(workdir, "ddp_dropout"), *dropout]), nice=True
        )
        run_checked(torchrun([*ddp_args(workdir, "resumed"), *dropout, "--max_steps", "4"]), nice=True)
        run_checked(torchrun([*ddp_args(workdir, "resumed"), *dropout, "--from_resume", "1"]), nice=True)
        straight.result(), with_dropout.result()  # raise if a run failed


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
def test_a_ddp_run_with_dropout_resumes_where_it_stopped(background):
    assert torch.load(background / "resumed" / "resume.pt", weights_only=True)["step"] == 8
    straight, after_resume = weights(background / "ddp_dropout"), weights(background / "resumed")
    for name in straight:
        assert torch.equal(straight[name], after_resume[name]), f"{name} differs after the DDP resume"


def test_each_process_draws_its_own_dropout_masks():
    from course.checkpoints import seed_everything

    seed_everything(1337, rank=0)
    mask0 = torch.nn.functional.dropout(torch.ones(100), 0.5)
    seed_everything(1337, rank=1)
    mask1 = torch.nn.functional.dropout(torch.ones(100), 0.5)
    assert not torch.equal(mask0, mask1), "processes with the same seed would drop the same units"
