"""Nothing a learner made is ever lost: the faults of everyday use, each a real case.

A second run into a used folder, a new run that fails early or diverges, two runs at
once, SIGTERM and SIGKILL, a corpus that changed or whose prepared files were
damaged, a folder that is a file or cannot be written, a full disk. Each case checks
the exit code, the one-line message, and, with checksums taken before and after,
that no earlier file changed. Real processes where a real process must die."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, ROOT, VERSE
from test_ddp import gone

import train_solution as train
from course import corpus, run_folder

# What these runs write: every run's files but TensorBoard's events (TINY_MODEL turns them off;
# an overwrite's events are tested in test_tracking.py).
RUN_FILES_HERE = sorted(set(run_folder.EVERY_RUN_FILES) - {run_folder.TENSORBOARD_DIR})


def run(argv: list, capsys) -> tuple[int, list[str]]:
    """The CLI in this process: (exit code, the lines of stderr that are not progress bars)."""
    try:
        code = train.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and not line.lstrip().startswith(("tokenizing", "training"))
    ]
    return code, lines


def checksums(folder: Path) -> dict[str, str]:
    """Every file under `folder`, hidden ones included, with the SHA-256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def one_error_line(lines: list[str], *fragments: str) -> str:
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one 'error: ...' line, got {lines}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def records(save_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]


# --- 1, 2: a run never touches another run's files -------------------------------------------


def test_the_same_command_twice_is_refused_and_changes_nothing(used_folder, capsys):
    out, base = used_folder
    before = checksums(out)
    code, lines = run([*base, "--max_steps", 6], capsys)
    assert code == 2
    one_error_line(lines, f"{out}/ holds a run", "--from_resume 1", "another --save_dir", "--overwrite 1")
    assert checksums(out) == before


@pytest.mark.parametrize(
    "case, options, code, fragments",
    [
        (
            "a prompt outside the vocabulary",
            ["--prompt", "€"],
            2,
            ["--prompt:", "'€' is not in this char vocabulary"],
        ),
        (
            "a run that diverges before its first checkpoint",
            ["--learning_rate", "1e30", "--min_lr", "1e30", "--save_interval", "1000", "--max_steps", "20"],
            1,
            ["the loss became", "this run had saved no checkpoint yet", "is as it was"],
        ),
    ],
)
def test_an_overwrite_that_fails_before_its_first_checkpoint_leaves_the_old_run(
    case, options, code, fragments, used_folder, capsys
):
    out, base = used_folder
    before = checksums(out)
    result, lines = run([*base, "--overwrite", 1, *options], capsys)
    assert result == code, f"{case}: exit {result}, {lines}"
    one_error_line(lines, *fragments)
    assert checksums(out) == before, f"{case}: the previous run's files changed"


def test_an_overwrite_keeps_nothing_of_the_old_run(used_folder, capsys):
    out, base = used_folder
    code, _ = run([*base, "--overwrite", 1, "--max_steps", 3, "--seed", 7], capsys)
    assert code == 0
    steps = [r["step"] for r in records(out)]
    assert max(steps) == 3 and steps.count(0) == 1, f"metrics.jsonl mixes two runs: steps {steps}"
    assert torch.load(out / "best.pt", weights_only=True)["step"] <= 3, "best.pt is the old run's"
    assert torch.load(out / "resume.pt", weights_only=True)["step"] == 3
    samples = (out / "samples.txt").read_text()
    evaluations = sum("val_loss" in r for r in records(out))
    assert samples.count("=== step") == evaluations and samples.count("=== step 0:") == 1, (
        "samples.txt holds the old run's samples"
    )
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES_HERE, "no staging or lock left"


def test_a_new_run_is_staged_until_its_first_checkpoint(corpus_txt, tmp_path, capsys, monkeypatch):
    """A fresh folder stays empty until the first checkpoint: a run killed before it
    leaves only a staging folder, which the next run removes."""
    out = tmp_path / "out"
    seen = {}
    real_save = train.RunFolder.save_checkpoint

    def look_then_save(run_files, model, optimizer, state, group):
        seen["before"] = sorted(p.name for p in out.iterdir())
        real_save(run_files, model, optimizer, state, group)

    monkeypatch.setattr(train.RunFolder, "save_checkpoint", look_then_save)
    assert run(["--data_path", corpus_txt, "--save_dir", out, *FAST, "--max_steps", 3], capsys)[0] == 0
    assert seen["before"] == [".lock", f"{run_folder.STAGING_PREFIX}{os.getpid()}"], seen["before"]
    assert "samples.txt" in os.listdir(out) and "resume.pt" in os.listdir(out)


# --- 3, 4: one run per folder; SIGTERM and SIGKILL of real processes ---------------------------


def wait_until(condition, process: subprocess.Popen, what: str, log: Path | None = None) -> None:
    """Poll `condition` until it holds; the deadline only keeps a broken run from hanging the suite."""
    deadline = time.monotonic() + 600
    while not condition():
        if process.poll() is not None:
            output = log.read_text() if log else process.stderr.read()
            raise AssertionError(f"the process ended before {what}:\n{output[-2000:]}")
        assert time.monotonic() < deadline, f"no {what} in 600 s"
        time.sleep(0.01)


# A process that claims a run folder as a training run does, then waits to be killed:
# the lock is the real one, without the cost of starting a training run.
HOLD_THE_FOLDER = """
import sys, threading
from pathlib import Path
from course.run_folder import RunFolder
RunFolder.claim(Path(sys.argv[1]), resume=True, overwrite=False)
Path(sys.argv[2]).touch()
threading.Event().wait()
"""


def test_two_runs_cannot_share_a_folder_and_a_killed_runs_lock_is_free(used_folder, tmp_path, capsys):
    out, base = used_folder
    before, ready = checksums(out), tmp_path / "holding"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_FOLDER, str(out), str(ready)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_until(ready.exists, holder, "the lock")
    for options in (["--overwrite", 1], ["--from_resume", 1, "--max_steps", 9]):
        code, lines = run([*base, *options], capsys)  # while the other process holds the folder
        assert code == 2
        one_error_line(lines, f"another run (pid {holder.pid}) is writing to {out}/", "another --save_dir")
    holder.send_signal(signal.SIGKILL)  # killed outright: it leaves its lock file behind
    holder.wait()
    assert (out / ".lock").read_text().strip() == str(holder.pid)
    assert {k: v for k, v in checksums(out).items() if k != ".lock"} == before
    code, lines = run([*base, "--from_resume", 1, "--max_steps", 9], capsys)
    assert code == 0, lines
    assert torch.load(out / "resume.pt", weights_only=True)["step"] == 9, (
        "the stale lock did not stop the resume"
    )
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES_HERE, "no lock or staging left"


def test_temporary_files_carry_the_writers_pid(tmp_path):
    assert run_folder.temporary_name(tmp_path / "resume.pt").name == f".resume.pt.{os.getpid()}.tmp"


# --- 5: a corpus is its content ---------------------------------------------------------------


def prepared_bytes(prepared: Path) -> dict[str, bytes]:
    return {name: (prepared / name).read_bytes() for name in ("train.bin", "val.bin")}


def test_new_content_with_the_same_size_and_date_is_prepared_again(tmp_path):
    source, out = tmp_path / "verse.txt", tmp_path / "p"
    source.write_text(VERSE * 20)
    corpus.prepare("char", source, out)
    stat = source.stat()
    source.write_text((VERSE * 20).replace("e", "z"))  # same size, other text
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    corpus.prepare("char", source, out)
    assert corpus.read_meta(out)["source"]["sha256"] == corpus.file_sha256(source)
    assert "e" not in corpus.read_meta(out)["chars"] and "z" in corpus.read_meta(out)["chars"], (
        "the prepared tokens must be those of the new text"
    )


def test_a_touched_or_copied_corpus_is_the_same_corpus_and_resumes(corpus_txt, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(["--data_path", corpus_txt, "--save_dir", out, *FAST, "--max_steps", 3], capsys)[0] == 0
    prepared = next((tmp_path / "prepared").iterdir())
    before = prepared_bytes(prepared)
    os.utime(corpus_txt)  # touch
    copy = tmp_path / "elsewhere" / corpus_txt.name
    copy.parent.mkdir()
    shutil.copy(corpus_txt, copy)
    code, lines = run(
        ["--data_path", copy, "--save_dir", out, *FAST, "--max_steps", 5, "--from_resume", 1], capsys
    )
    assert code == 0, lines
    assert prepared_bytes(prepared) == before, "the same content: the prepared tokens are reused"

    copy.write_text(VERSE * 39 + "An edited line.\n")
    code, lines = run(
        ["--data_path", copy, "--save_dir", out, *FAST, "--max_steps", 7, "--from_resume", 1], capsys
    )
    assert code == 2
    one_error_line(lines, "the checkpoint's data differs: source_sha256=")


@pytest.mark.parametrize(
    "damage, note",
    [
        ("train.bin cut to an even size", "train.bin has"),
        ("train.bin cut to an odd size", "train.bin has"),
        ("a flipped byte in val.bin", "val.bin does not match its checksum"),
        ("val.bin missing", "val.bin is missing"),
        ("meta.json not JSON", "meta.json is damaged"),
        ("eot_id one less in meta.json", "meta.json does not match its checksum"),
        ("two chars swapped in meta.json", "meta.json does not match its checksum"),
        ('"files": [] in meta.json', "meta.json does not match its checksum"),
        ("meta.json of an older version", "meta.json has no checksum (prepared by an older version)"),
    ],
)
def test_damaged_prepared_files_are_prepared_again_with_a_note(damage, note, corpus_txt, tmp_path, capsys):
    out = tmp_path / "p"
    corpus.prepare("char", corpus_txt, out)
    good = prepared_bytes(out)
    if damage == "train.bin cut to an even size":
        os.truncate(out / "train.bin", len(good["train.bin"]) // 3 * 2)
    elif damage == "train.bin cut to an odd size":
        os.truncate(out / "train.bin", len(good["train.bin"]) - 1)
    elif damage == "a flipped byte in val.bin":
        flipped = bytearray(good["val.bin"])
        flipped[5] ^= 1
        (out / "val.bin").write_bytes(bytes(flipped))
    elif damage == "val.bin missing":
        (out / "val.bin").unlink()
    elif damage == "meta.json not JSON":
        (out / "meta.json").write_text('{"tokenizer": "ch')
    else:
        edit_meta(out / "meta.json", damage)
    capsys.readouterr()
    corpus.prepare("char", corpus_txt, out)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and note in notes[0] and "preparing the corpus again" in notes[0], notes
    assert prepared_bytes(out) == good, f"{damage}: the corpus must be prepared again, whole"


def edit_meta(path: Path, damage: str) -> None:
    """A meta.json that is still valid JSON, with one field changed (or its checksum gone)."""
    meta = json.loads(path.read_text("utf-8"))
    if damage.startswith("eot_id"):
        meta["eot_id"] -= 1  # a character's id would end every document
    elif damage.startswith("two chars"):
        chars = meta["chars"]  # a string: the character of each id
        meta["chars"] = chars[0] + chars[2] + chars[1] + chars[3:]
    elif damage.startswith('"files"'):
        meta["files"] = []
    else:
        del meta[corpus.META_CHECKSUM]
    path.write_text(json.dumps(meta, indent=2, ensure_ascii=False), "utf-8")


def test_a_bit_flipped_in_any_byte_of_meta_json_is_found(corpus_txt, tmp_path, capsys):
    """One bit flipped in meta.json (a bad sector, a bad copy), in each of its bytes in turn
    (bit 0 of the first, bit 1 of the second, ...): a note, never a traceback, and the corpus
    is prepared again rather than read with a wrong field."""
    out = corpus.prepare("char", corpus_txt, tmp_path / "p")
    good = (out / "meta.json").read_bytes()
    capsys.readouterr()
    for position in range(len(good)):
        flipped = bytearray(good)
        flipped[position] ^= 1 << position % 8
        (out / "meta.json").write_bytes(bytes(flipped))
        assert corpus.read_meta_or_none(out) is None, f"a flipped bit in byte {position} went unnoticed"
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == len(good) and all("preparing the corpus again" in n for n in notes)


PAUSE_WHILE_PREPARING = """
import sys, threading
from pathlib import Path
from course import corpus
real_write_tokens = corpus.write_tokens
def write_then_wait(*args):
    result = real_write_tokens(*args)
    Path(sys.argv[1]).touch()  # tell the test: the staging folder holds tokens now
    threading.Event().wait()
    return result
corpus.write_tokens = write_then_wait
import train_solution
sys.exit(train_solution.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_preparation_stopped_by_a_signal_leaves_no_staging_folder(signum, corpus_txt, tmp_path):
    prepared, ready, log = tmp_path / "prepared", tmp_path / "ready", tmp_path / "run.log"
    args = [
        "--data_path",
        corpus_txt,
        "--data_dir",
        prepared,
        "--save_dir",
        tmp_path / "out",
        *FAST,
        "--max_steps",
        2,
    ]
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "-c", PAUSE_WHILE_PREPARING, str(ready), *map(str, args)],
                                   cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
    wait_until(ready.exists, process, "the tokens in the staging folder", log)
    staging = list(prepared.glob(f".verse_char{corpus.STAGING}*"))
    assert len(staging) == 1 and (staging[0] / "train.bin").is_file()
    process.send_signal(signum)
    code = process.wait(timeout=600)
    if signum == signal.SIGTERM:  # the process removes its own staging folder and says so in one line
        assert code == 128 + signal.SIGTERM
        said = [line for line in log.read_text().splitlines() if line.startswith("stopped")]
        assert said == ["stopped at once by SIGTERM: the last saved checkpoint is kept"], log.read_text()
        assert not staging[0].exists()
    else:
        assert staging[0].exists(), "SIGKILL gives a process no chance to clean up"
    corpus.prepare("char", corpus_txt, prepared / "verse_char")  # the next run
    assert [p.name for p in prepared.iterdir()] == ["verse_char"], "the killed preparation's folder is gone"


# A process that holds a corpus's preparation lock, as a preparing process does.
HOLD_THE_CORPUS = """
import sys, threading
from pathlib import Path
from course.run_folder import FileLock
FileLock(Path(sys.argv[1]), "another process (pid {pid}) prepares it").acquire()
Path(sys.argv[2]).touch()
threading.Event().wait()
"""


def test_a_second_process_waits_for_a_preparation_then_reuses_it(corpus_txt, tmp_path, capsys):
    out, ready = tmp_path / "p", tmp_path / "holding"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_CORPUS, str(tmp_path / ".p.lock"), str(ready)],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_until(ready.exists, holder, "the lock")
    waiting = threading.Thread(target=corpus.prepare, args=("char", corpus_txt, out))
    waiting.start()
    said = ""
    deadline = time.monotonic() + 600  # only keeps a broken lock from hanging the suite
    while "waiting for it" not in said:
        said += capsys.readouterr().err
        assert time.monotonic() < deadline and waiting.is_alive(), f"prepare did not wait: {said!r}"
        time.sleep(0.01)
    assert f"another process (pid {holder.pid}) prepares {out}; waiting for it" in said
    assert not (out / "meta.json").exists(), "it waits while the other process holds the corpus"
    holder.send_signal(signal.SIGKILL)  # the lock goes with the process
    holder.wait()
    waiting.join()
    assert corpus.read_meta(out)["train_tokens"] > 0


# --- 7: folders that cannot be written, and a full disk ----------------------------------------


def with_folder(option: str, folder: Path, corpus_txt: Path, tmp_path: Path) -> list:
    """A short run's options, with `folder` as its --save_dir or --data_dir."""
    folders = {"--save_dir": tmp_path / "out", "--data_dir": tmp_path / "prepared", option: folder}
    return [
        "--data_path",
        corpus_txt,
        *[x for pair in folders.items() for x in pair],
        *FAST,
        "--max_steps",
        2,
    ]


@pytest.mark.parametrize("option", ["--save_dir", "--data_dir"])
def test_a_file_given_as_a_folder_is_refused_before_preparation(option, corpus_txt, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    args = with_folder(option, a_file, corpus_txt, tmp_path)
    code, lines = run(args, capsys)
    assert code == 2
    one_error_line(lines, f"{option} {a_file} is a file, not a folder")
    assert a_file.read_text() == "not a folder"
    assert not (tmp_path / "prepared").exists(), "found before anything was prepared"


@pytest.mark.parametrize("option", ["--save_dir", "--data_dir"])
def test_a_folder_that_cannot_be_written_is_refused_before_preparation(option, corpus_txt, tmp_path, capsys):
    if os.geteuid() == 0:  # root may write into any folder whatever its mode; not into sysfs
        locked = Path("/sys")
    else:
        locked = tmp_path / "read_only"
        locked.mkdir(mode=0o555)
    args = with_folder(option, locked / "runs", corpus_txt, tmp_path)
    code, lines = run(args, capsys)
    assert code == 2
    one_error_line(lines, f"{option} {locked / 'runs'} cannot be written to (Permission denied)")
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "out").exists(), (
        "found before anything was prepared or written"
    )


def test_too_little_free_space_is_found_before_anything_is_written(used_folder, capsys, monkeypatch):
    out, base = used_folder
    before = checksums(out)
    monkeypatch.setattr(
        run_folder.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 10**6)
    )
    code, lines = run([*base, "--overwrite", 1, "--max_steps", 6], capsys)
    assert code == 2
    one_error_line(lines, f"{out} has 1 MB free, and one checkpoint needs about")
    assert checksums(out) == before


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(used_folder, capsys, monkeypatch):
    """The disk fills up (ENOSPC) in the middle of writing resume.pt."""
    out, base = used_folder
    before = checksums(out)
    real_save = torch.save

    def save_until_the_disk_is_full(obj, f):
        if ".resume.pt." in getattr(f, "name", ""):
            f.write(b"the first bytes of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    code, lines = run([*base, "--from_resume", 1, "--max_steps", 9], capsys)
    assert code == 1
    kept = "the earlier checkpoint is kept: free some disk space, then continue with --from_resume 1"
    one_error_line(lines, f"could not write {out / 'resume.pt'}: No space left on device", kept)
    assert torch.load(out / "resume.pt", weights_only=True)["step"] == 6, "the checkpoint of step 6 is kept"
    assert checksums(out)["resume.pt"] == before["resume.pt"]
    assert not list(out.glob(".*")), "the temporary file and the lock are gone"


def test_a_resume_that_cannot_rewrite_metrics_jsonl_leaves_it_whole(used_folder, capsys, monkeypatch):
    """A resume keeps the metrics up to its checkpoint by writing metrics.jsonl anew, beside
    it first: a write that fails midway (the disk fills up) leaves the old file whole."""
    out, base = used_folder
    before = checksums(out)
    write_text = Path.write_text

    def half_then_full(path: Path, text: str, *args, **kwargs):
        if "metrics.jsonl" in path.name:  # the file itself, or its temporary
            write_text(path, text[: len(text) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write_text(path, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", half_then_full)
    code, lines = run([*base, "--from_resume", 1, "--max_steps", 8], capsys)
    assert code == 1
    one_error_line(lines, "No space left on device; free some disk space")
    assert checksums(out) == before, "metrics.jsonl and every other file as they were, no temporary file"


def limit_file_size(size: int):
    """For a child process: files may not grow past `size` bytes; a write beyond fails
    with EFBIG (SIGXFSZ ignored) — a real failing write, without root or a small disk."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return apply


def test_a_real_write_that_fails_midway_keeps_the_previous_checkpoint(used_folder, tmp_path):
    out, base = used_folder
    before = checksums(out)
    limit = ((out / "model.pt").stat().st_size + (out / "resume.pt").stat().st_size) // 2  # resume.pt fails
    command = [sys.executable, "train_solution.py", *map(str, base), "--from_resume", "1", "--max_steps", "9"]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, preexec_fn=limit_file_size(limit)
    )
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert lines == [lines[0]] and f"could not write {out / 'resume.pt'}: File too large" in lines[0], (
        done.stderr
    )
    assert "the earlier checkpoint is kept: raise the file-size limit" in lines[0]
    assert checksums(out)["resume.pt"] == before["resume.pt"], "the previous checkpoint is whole"
    assert not list(out.glob(".*")), "the temporary file and the lock are gone"


def test_a_full_disk_during_preparation_is_one_line_and_leaves_nothing(
    corpus_txt, tmp_path, capsys, monkeypatch
):
    def disk_full(src, dst, dtype, keep):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(corpus, "move_tail", disk_full)
    code, lines = run(
        ["--data_path", corpus_txt, "--save_dir", tmp_path / "out", *FAST, "--max_steps", 2], capsys
    )
    assert code == 1
    one_error_line(lines, "could not write", "val.bin: No space left on device; free some disk space")
    assert list((tmp_path / "prepared").iterdir()) == [], "no staging folder or lock left behind"
    assert not (tmp_path / "out").exists(), "the run wrote nothing, and the folder it made is gone"


# --- 6: signals at bad moments ------------------------------------------------------------------


# train_solution.py whose resume.pt of step 2 is written by a torch.save that gets two SIGTERMs
# midway (real signals to this process): the first during one write, the second during a later
# one, once the stop handler has seen the first. The window in which a repeated signal counts
# once (course.guards.REPEAT_WINDOW) is 0 here, so the second stands for a person who insists.
TWO_SIGNALS_DURING_A_SAVE = """
import os, signal, sys, torch
import train_solution
from course import guards
guards.REPEAT_WINDOW = 0.0
real_save, sent = torch.save, []

class SignalledFile:
    def __init__(self, f):
        self.f = f
    def __getattr__(self, name):
        return getattr(self.f, name)
    def write(self, data):
        first_seen = signal.getsignal(signal.SIGTERM).__self__.requested is not None
        if len(sent) == 0 or (len(sent) == 1 and first_seen):
            os.kill(os.getpid(), signal.SIGTERM)
            sent.append(signal.SIGTERM)
        return self.f.write(data)

def save(obj, f):
    is_resume = getattr(f, "name", "").endswith(f".resume.pt.{os.getpid()}.tmp")
    real_save(obj, SignalledFile(f) if is_resume and obj["step"] == 2 else f)

torch.save = save
sys.exit(train_solution.main(sys.argv[1:]))
"""


def test_two_sigterms_during_a_save_finish_the_save_then_quit(corpus_txt, tmp_path):
    out = tmp_path / "out"
    args = ["--data_path", corpus_txt, "--data_dir", tmp_path / "prepared", "--save_dir", out, *FAST,
            "--max_steps", 4, "--save_interval", 2]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", TWO_SIGNALS_DURING_A_SAVE, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    said = [line for line in done.stderr.splitlines() if line.startswith(("stopped", "error", "Traceback"))]
    assert said == ["stopped at once by SIGTERM: the last saved checkpoint is kept"], done.stderr[-2000:]
    assert torch.load(out / "resume.pt", weights_only=True)["step"] == 2, "the save was finished first"
    assert not list(out.glob(".*")), "no temporary file, lock or staging folder is left"


# A torchrun worker in miniature: a launcher that starts a worker in a session of its own
# (as torchrun does) and waits. The worker asks for a signal at the launcher's death, then
# hangs in its training loop, as a worker whose peer no longer answers a collective would.
ORPHANED_WORKER = f"""
import os, subprocess, sys, threading
from pathlib import Path
if sys.argv[1] == "launcher":
    subprocess.Popen([sys.executable, sys.argv[0], "worker", sys.argv[2]], start_new_session=True)
    threading.Event().wait()
sys.path.insert(0, {str(ROOT)!r})
from course import guards
guards.stop_with_the_launcher()
with guards.StopRequests():
    Path(sys.argv[2]).write_text(str(os.getpid()))
    threading.Event().wait()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_whose_launcher_is_killed_stops_within_its_shutdown_time(tmp_path):
    driver, pid_file, log = tmp_path / "orphan.py", tmp_path / "worker.pid", tmp_path / "worker.log"
    driver.write_text(ORPHANED_WORKER)
    env = {**os.environ, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "1"}
    with log.open("w") as output:
        launcher = subprocess.Popen([sys.executable, str(driver), "launcher", str(pid_file)], env=env,
                                    stdout=output, stderr=output)  # fmt: skip
    wait_until(lambda: pid_file.exists() and pid_file.read_text(), launcher, "the worker in its loop", log)
    worker = int(pid_file.read_text())
    launcher.kill()  # as the OOM killer or `kill -9` would: torchrun forwards nothing
    launcher.wait()
    deadline = time.monotonic() + 600  # only keeps a worker that never stops from hanging the suite
    while not gone(worker):
        assert time.monotonic() < deadline, f"the orphaned worker {worker} still runs after 600 s"
        time.sleep(0.01)
    assert f"the launcher (pid {launcher.pid}) is gone: saving a checkpoint after this step (ended by " \
           "SIGALRM in 1 s if it hangs)" in log.read_text(), log.read_text()  # fmt: skip
