"""tools/gpu_check.py works before a GPU ever runs it: its stages run on the CPU at a tiny
size (--dry_run), a stage that measures the wrong thing fails the script, a machine without
CUDA gets one line and exit 2, and the results page shows the committed GPU figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, background_job

sys.path.insert(0, str(ROOT / "tools"))
import gpu_check  # noqa: E402

RESULTS = json.loads((ROOT / "tools" / "results" / "gpu_check.json").read_text())


def test_without_cuda_it_says_so_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "check")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gpu_check: this machine has no CUDA GPU (the CPU parts: --dry_run)"]
    assert not (tmp_path / "check").exists(), "nothing is written before the check can run"


@background_job("gpu_check", seconds=16)
def dry_run_stages(workdir: Path) -> None:
    """The dry run of the stages with the most logic: the float32 reference, the agreement
    of bfloat16 with it, and the SIGTERM, checkpoint and resume of a real training process,
    bit-identical on the CPU. (compile, ddp and fsdp add a minute of compilation and
    launches: `python tools/gpu_check.py --dry_run` runs them all.)"""
    command = [sys.executable, "tools/gpu_check.py", "--dry_run", "--out", str(workdir / "check"),
               "--stages", "float32", "bfloat16", "resume"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    (workdir / "printed.json").write_text(json.dumps([done.returncode, done.stdout + done.stderr]))


@pytest.mark.background("gpu_check")
def test_the_stages_pass_on_the_cpu(background):
    code, printed = json.loads((background / "printed.json").read_text())
    assert code == 0, printed
    for stage in ("float32", "bfloat16", "resume"):
        assert f"PASS {stage}: " in printed
    assert "bit-identical weights" in printed
    out = background / "check"
    summary = json.loads((out / "gpu_check.json").read_text())
    assert [name for name, stage in summary["stages"].items() if stage["passed"]] == [
        "float32",
        "bfloat16",
        "resume",
    ]
    assert gpu_check.main(["--dry_run", "--out", str(out)]) == 2, "an earlier check's folder is refused"


def fake_run(val_loss: float) -> gpu_check.Run:
    return gpu_check.Run(0, 1.0, "", Path("."), val_losses=[4.0, val_loss])


def test_a_stage_that_disagrees_fails():
    checker = gpu_check.Checker(Path("."), [], 1, dry_run=True)
    checker.runs["float32"] = fake_run(1.70)
    assert checker.agrees(fake_run(1.72), "float32") == "val 1.7200 (+0.0200 from float32)"
    with pytest.raises(gpu_check.StageFailed, match=r"val 1\.8000 is \+0\.1000 from float32's 1\.7000"):
        checker.agrees(fake_run(1.80), "float32")
    with pytest.raises(gpu_check.StageFailed, match="needs the bfloat16 stage"):
        checker.agrees(fake_run(1.70), "bfloat16")


def test_the_committed_expectation_is_of_todays_check_and_on_the_results_page():
    assert RESULTS["command"] == gpu_check.GPU_RUN, "the gpu check's run changed: run it again on a GPU"
    assert gpu_check.expectation(gpu_check.GPU_RUN) == RESULTS["val_loss"]["bfloat16"]
    assert all(stage["passed"] for stage in RESULTS["stages"].values())
    page = (ROOT / "tools" / "results" / "README.md").read_text()
    for stage in RESULTS["stages"].values():
        assert f"| {stage['val_loss']:.4f} | {stage['tokens_per_sec']:,} |" in page
