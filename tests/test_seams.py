"""The seams between files and processes: a commit killed at any step leaves one whole
run, damaged checkpoints are refused in one line, nothing is unpickled from a
checkpoint folder but DCP's metadata, a run removes only its own leftovers, and lock
and temporary files are never written through a link. Real processes, real kills."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, ROOT, TINY_MODEL, VERSE, background_job, run_checked
from forked import commit_killed_at, run_forked
from test_faults import checksums, one_error_line, records, run

import train_solution as train
from course import run_folder, sample
from course.errors import UsageError
from course.run_folder import CHECKSUM, save_atomic
from course.shards import MetadataOnlyReader

# --- a commit is whole or not at all ------------------------------------------------------------

SINGLE = ["best.pt", "metrics.jsonl", "metrics.png", "model.pt", "samples.txt", "tensorboard", "resume.pt"]
SHARDED = [*SINGLE, "resume-shards"]


def make_old_run(save_dir: Path, names: list[str]) -> None:
    for name in names:
        path = save_dir / name
        if name in ("resume-shards", "tensorboard"):
            (path / "inner").mkdir(parents=True)
            path = path / "inner" / "file"
        path.write_text("old " + name)


def run_state(save_dir: Path) -> dict[str, str]:
    return {name: text for name, text in checksums_as_text(save_dir).items() if name not in USER_FILES}


def checksums_as_text(save_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(save_dir)): p.read_text() for p in sorted(save_dir.rglob("*")) if p.is_file()}


USER_FILES = {"notes.txt", ".draft.tmp", ".staging-mine/keep"}


@pytest.mark.parametrize(
    "old, new",
    [
        (SINGLE, SINGLE),
        ([*SINGLE, "profile.pt.trace.json"], [n for n in SINGLE if n != "best.pt"]),
        (SHARDED, SHARDED),  # FSDP: the old run's shards are replaced by the new run's
    ],
    ids=["single process", "new run lacks files of the old", "fsdp shards"],
)
def test_a_commit_killed_at_any_step_leaves_the_old_run_or_the_new_one(old, new, tmp_path):
    """SIGKILLed before each rename in turn: the next claim of the folder finds exactly
    the old run (killed before the commit list was written) or exactly the new one (its
    commit finished), and the user's own files are untouched."""
    outcomes = set()
    for kill_at in range(1, 40):
        out = tmp_path / f"kill{kill_at}"
        out.mkdir()
        make_old_run(out, old)
        (out / "notes.txt").write_text("mine")
        (out / ".draft.tmp").write_text("mine")
        (out / ".staging-mine").mkdir()
        (out / ".staging-mine" / "keep").write_text("mine")
        old_state = run_state(out)
        exit_code = run_forked(commit_killed_at, out, kill_at, new)  # a real process, started in ms
        assert exit_code in (0, -signal.SIGKILL), f"killed at step {kill_at}: the commit failed (see above)"
        run_folder.RunFolder.claim(out, resume=True, overwrite=False).release()  # finishes a commit
        state = run_state(out)
        new_state = {k: v.replace("old", "new") for k, v in make_state(tmp_path / "expected", new).items()}
        assert state in (old_state, new_state), f"killed at step {kill_at}: a mix of two runs: {state}"
        outcomes.add("new" if state == new_state else "old")
        assert {k: v for k, v in checksums_as_text(out).items() if k in USER_FILES} == dict.fromkeys(
            USER_FILES, "mine"
        ), f"killed at step {kill_at}: the user's files changed"
        assert not list(out.glob(f"{run_folder.STAGING_PREFIX}*")), "no staging folder left"
        if exit_code == 0:
            break
    assert outcomes == {"old", "new"} and kill_at > len(new), outcomes


def make_state(where: Path, names: list[str]) -> dict[str, str]:
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir()
    make_old_run(where, names)
    return run_state(where)


def test_a_run_killed_in_its_commit_is_continued_as_the_new_run(used_folder, capsys):
    """A real --overwrite 1 run killed after its commit list and one move (a new best.pt
    beside the old run's other files): --from_resume 1 finishes the commit and continues
    the new run, with the new run's metrics alone."""
    out, base = used_folder
    killed = subprocess.run([sys.executable, "tests/kill_during_commit.py", "3", *map(str, base),
                             "--overwrite", "1", "--seed", "7", "--max_steps", "3"],
                            cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert torch.load(out / "resume.pt", weights_only=True)["train_args"]["seed"] != 7, (
        "still the old resume.pt"
    )
    code = train.main([str(a) for a in [*base, "--from_resume", 1, "--max_steps", 5]])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "note: finishing the commit of a run stopped while its files moved into" in err
    resumed = torch.load(out / "resume.pt", weights_only=True)
    assert resumed["step"] == 5 and resumed["train_args"]["seed"] == 7, "the new run continues"
    steps = [r["step"] for r in records(out)]
    assert steps.count(0) == 1 and max(steps) == 5, f"metrics.jsonl mixes two runs: {steps}"
    assert not list(out.glob(f"{run_folder.STAGING_PREFIX}*"))


# --- FSDP: a commit killed while the old shards are gone, and a planted pickle ------------------

FSDP_RUN = [*TINY_MODEL, "--parallel", "fsdp", "--dtype", "float32", "--eval_interval", "100",
            "--sample_tokens", "0", "--save_interval", "4", "--learning_rate", "3e-3"]  # fmt: skip


def torchrun_one(args: list) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        *map(str, args),
    ]


def fsdp_options(workdir: Path, save_dir: str = "out") -> list:
    return ["--data_path", workdir / "verse.txt", "--data_dir", workdir / "prepared",
            "--save_dir", workdir / save_dir, *FSDP_RUN]  # fmt: skip


PLANTED = "import pathlib; pathlib.Path({marker!r}).touch()"


class Planted:
    """A pickle that runs code when it is loaded: it creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (PLANTED.format(marker=self.marker),))


@background_job("fsdp_seams", seconds=21)
def fsdp_seams(workdir: Path) -> None:
    """An FSDP run of 4 steps; an --overwrite 1 run killed in its commit just after the
    old shards moved out; its resume; then a resume with a planted .metadata pickle."""
    (workdir / "verse.txt").write_text(VERSE * 40)
    options = fsdp_options(workdir)
    run_checked(torchrun_one(["train_solution.py", *options, "--max_steps", 4]))
    # The commit's steps: the list, best.pt, metrics.jsonl, metrics.png, model.pt, then the
    # old resume-shards/ out (6), the new one in (7): killed before the 7th.
    killed = subprocess.run(torchrun_one(["tests/kill_during_commit.py", 7, *options, "--overwrite", 1,
                                          "--seed", 7, "--max_steps", 4]),
                            cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert killed.returncode != 0, killed.stderr[-2000:]
    (workdir / "after_kill.txt").write_text("\n".join(sorted(p.name for p in (workdir / "out").iterdir())))
    resumed = run_checked(torchrun_one(["train_solution.py", *options, "--from_resume", 1, "--max_steps", 6]))
    (workdir / "resumed.txt").write_text(resumed.stderr)
    shutil.copytree(workdir / "out", workdir / "planted")
    metadata = workdir / "planted" / "resume-shards" / "step6" / ".metadata"
    metadata.write_bytes(pickle.dumps(Planted(workdir / "code_ran")))
    resume_planted = [
        "train_solution.py",
        *fsdp_options(workdir, "planted"),
        "--from_resume",
        1,
        "--max_steps",
        8,
    ]
    refused = subprocess.run(
        torchrun_one([*resume_planted, "--max_steps", 8]), cwd=ROOT, capture_output=True, text=True
    )
    (workdir / "refused.txt").write_text(f"{refused.returncode}\n{refused.stderr}")


@pytest.mark.background("fsdp_seams")
def test_an_fsdp_commit_killed_without_shards_resumes_as_the_new_run(background):
    after_kill = (background / "after_kill.txt").read_text().split()
    assert "resume-shards" not in after_kill and "resume.pt" in after_kill, (
        f"the kill was meant to come when the old shards had moved out: {after_kill}"
    )
    assert "note: finishing the commit of a run stopped" in (background / "resumed.txt").read_text()
    resumed = torch.load(background / "out" / "resume.pt", weights_only=True)
    assert resumed["step"] == 6 and resumed["train_args"]["seed"] == 7
    assert sorted(p.name for p in (background / "out" / "resume-shards").iterdir()) == ["step6"]


@pytest.mark.background("fsdp_seams")
def test_a_planted_pickle_in_the_shards_runs_no_code(background):
    code, *lines = (background / "refused.txt").read_text().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert int(code) != 0 and len(errors) == 1, lines[-20:]
    assert ".metadata is damaged: it does not match its checksum" in errors[0], errors[0]
    assert not (background / "code_ran").exists(), "the planted pickle ran"


@pytest.mark.background("fsdp_seams")
def test_shard_metadata_is_unpickled_into_dcps_classes_only(background, tmp_path):
    """Even where resume.pt's checksums were rewritten to match, the planted .metadata is
    read by an unpickler that refuses anything but DCP's metadata classes."""
    shards = shutil.copytree(background / "out" / "resume-shards" / "step6", tmp_path / "step6")
    assert MetadataOnlyReader(shards).read_metadata().storage_data, "a real metadata file reads"
    (shards / ".metadata").write_bytes(pickle.dumps(Planted(tmp_path / "code_ran")))
    with pytest.raises(
        UsageError, match=r"\.metadata is not a checkpoint's metadata \(builtins\.exec is not"
    ):
        MetadataOnlyReader(shards).read_metadata()
    assert not (tmp_path / "code_ran").exists()


@pytest.mark.parametrize("shards", ["/etc", "resume-shards/../../elsewhere", "resume-shards/step6/../../x"])
def test_shards_outside_the_run_folder_are_refused(shards, tmp_path):
    with pytest.raises(UsageError, match="names shards outside its run folder"):
        run_folder.RunFolder(tmp_path).checked_shards({"shards": shards})


# --- damaged checkpoints ---------------------------------------------------------------------


def flip_a_weight_byte(path: Path) -> None:
    """Flip one byte inside the tensor data of a checkpoint (torch.load does not notice)."""
    checkpoint = torch.load(path, weights_only=True)
    weights = checkpoint["model"]["transformer.wte.weight"] if "model" in checkpoint else None
    data = bytearray(path.read_bytes())
    at = data.find(weights.numpy().tobytes()[:64]) + 40
    assert at > 40, "the weights' bytes were found"
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["resume.pt", "model.pt", "best.pt"])
def test_a_damaged_checkpoint_is_refused_in_one_line_naming_a_good_one(name, used_folder, capsys):
    out, base = used_folder
    flip_a_weight_byte(out / name)
    torch.load(out / name, weights_only=True)  # torch reads it without a complaint
    good = "best.pt" if name == "model.pt" else "model.pt"
    if name == "resume.pt":
        code, lines = run([*base, "--from_resume", 1, "--max_steps", 9], capsys)
        prefix = "--from_resume 1"
    else:
        code, lines = sample.main([str(out / name), "--max_new_tokens", "5"]), None
        lines = [line for line in capsys.readouterr().err.splitlines() if line]
        prefix = "checkpoint"
    assert code == 2
    damaged = f"{prefix}: {out / name} is damaged: its content does not match its checksum"
    intact = f"{out / good} is intact (a run can start from it with --from_weight {out / good})"
    one_error_line(lines, damaged, intact)


def test_a_checkpoint_saved_again_gets_a_checksum_of_its_new_content(tmp_path):
    save_atomic({"model": {"w": torch.ones(3)}, "step": 1}, tmp_path / "a.pt")
    checkpoint = torch.load(tmp_path / "a.pt", weights_only=True)
    checkpoint["step"] = 2
    save_atomic(checkpoint, tmp_path / "a.pt")  # it still holds the old checksum
    assert sample.load_checkpoint(tmp_path / "a.pt", "x", needs=("step",))["step"] == 2
    assert CHECKSUM in torch.load(tmp_path / "a.pt", weights_only=True)


# --- a run removes only its own leftovers; no link is followed -----------------------------------


def test_a_refused_run_removes_nothing_and_a_run_only_its_own_leftovers(used_folder, capsys):
    out, base = used_folder
    (out / ".draft.tmp").write_text("mine")
    (out / ".staging-mine").mkdir()
    killed_staging = out / f"{run_folder.STAGING_PREFIX}999999"  # a killed run's, never committed
    killed_staging.mkdir()
    (out / ".model.pt.999999.tmp").write_text("a killed run's temporary file")
    before = checksums(out)
    code, lines = run([*base, "--max_steps", 6], capsys)  # the same command twice: refused
    assert code == 2 and checksums(out) == before, "a refused run changed the folder"
    assert killed_staging.is_dir()
    assert run([*base, "--from_resume", 1, "--max_steps", 7], capsys)[0] == 0
    assert not killed_staging.exists() and not (out / ".model.pt.999999.tmp").exists(), "its own leftovers go"
    assert (out / ".draft.tmp").read_text() == "mine" and (out / ".staging-mine").is_dir(), "the user's stay"


@pytest.mark.parametrize("lock", ["run folder", "corpus"])
def test_a_lock_that_is_a_link_is_not_followed(lock, used_folder, tmp_path, capsys):
    out, base = used_folder
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    if lock == "run folder":
        (out / ".lock").symlink_to(victim)
        message = f"{out / '.lock'} is a symbolic link, not a lock file this project made"
    else:
        data_dir = tmp_path / "data"
        base = [*base, "--data_dir", data_dir]  # a corpus prepared afresh, under a linked lock
        data_dir.mkdir()
        (data_dir / ".verse_char.lock").symlink_to(victim)
        message = "is a symbolic link, not a lock file this project made; remove it and run again"
    code, lines = run([*base, "--from_resume", 1, "--max_steps", 7], capsys)
    assert code == 2
    one_error_line(lines, message)
    assert victim.read_text() == "precious"


def test_a_temporary_file_that_is_a_link_is_replaced_not_followed(used_folder, tmp_path, capsys):
    out, base = used_folder
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / run_folder.temporary_name(out / "resume.pt").name).symlink_to(victim)  # this process's name
    (out / ".model.pt.1.tmp").symlink_to(victim)
    assert run([*base, "--from_resume", 1, "--max_steps", 7], capsys)[0] == 0
    assert victim.read_text() == "precious"
    assert (
        not (out / "resume.pt").is_symlink() and torch.load(out / "resume.pt", weights_only=True)["step"] == 7
    )


def test_a_file_system_without_locks_is_a_note_not_a_traceback(tmp_path, monkeypatch, capsys):
    """Lustre without -o flock answers flock with ENOSYS: the run goes on, unlocked, and says so."""

    def no_locks(fd, operation):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(run_folder.fcntl, "flock", no_locks)
    folder = run_folder.RunFolder.claim(tmp_path / "out", resume=False, overwrite=False)
    folder.release()
    no_locks = "has no file locks (Function not implemented): run one process here at a time"
    note = f"note: {tmp_path / 'out'} {no_locks}"
    assert capsys.readouterr().err.strip() == note


def test_a_run_that_saved_nothing_leaves_no_folder_it_made(finished_run, tmp_path, capsys):
    """Diverged before its first checkpoint: the folder it created is gone again, as the
    message says ("is as it was")."""
    out = tmp_path / "new" / "run"
    diverging = ["--learning_rate", 1e30, "--min_lr", 1e30, "--save_interval", 1000, "--max_steps", 20]
    code, lines = run(["--data_path", finished_run / "verse.txt", "--data_dir", finished_run / "prepared",
                       "--save_dir", out, *FAST, *diverging], capsys)  # fmt: skip
    assert code == 1
    one_error_line(lines, "this run had saved no checkpoint yet", f"({out}/ is as it was)")
    assert not out.exists()
