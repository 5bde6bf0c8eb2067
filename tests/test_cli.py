"""The training program end to end: a real (tiny) run, resume, and every bad input
ending with a one-line error and exit code 2 while earlier outputs stay untouched."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_MODEL, VERSE, background_job, run_checked

import train_solution as train
from course import checkpoints, run_folder

# A model small enough to train for real in well under a second.
TINY = [*TINY_MODEL, "--eval_interval", "10", "--learning_rate", "3e-3"]


def run(argv, capsys=None):
    """Run the CLI in this process; returns (exit code, stderr)."""
    try:
        code = train.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err if capsys else ""
    return code, err


def losses(save_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_tiny_run_writes_every_output_and_learns(corpus_txt, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run(["--data_path", corpus_txt, "--save_dir", out, "--max_steps", 30, *TINY], capsys)
    assert code == 0, err
    for name in ("resume.pt", "model.pt", "best.pt", "metrics.jsonl", "metrics.png", "samples.txt"):
        assert (out / name).is_file(), f"{name} missing"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_loss" in r]
    assert val[0]["step"] == 0 and val[-1]["step"] == 30
    assert val[-1]["val_loss"] < val[0]["val_loss"] - 0.5
    assert {"loss", "lr", "grad_norm", "tokens_per_sec"} <= set(records[1])
    assert {"val_loss", "val_ppl", "val_bpb"} <= set(val[-1])
    weights = torch.load(out / "model.pt", weights_only=True)
    assert weights["model_config"]["n_layer"] == 2 and weights["tokenizer"]["tokenizer"] == "char"
    assert_best_weights_are_of_the_lowest_val_loss(out)


def test_nanogpts_beta2_reaches_adamw_and_sample_tokens_0_prints_no_samples(corpus_txt, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--data_path", corpus_txt, "--save_dir", out, "--max_steps", 2, *TINY]
    code, err = run([*argv, "--beta2", 0.99, "--sample_tokens", 0], capsys)
    assert code == 0, err
    groups = torch.load(out / "resume.pt", weights_only=True)["optimizer"]["param_groups"]
    assert {tuple(g["betas"]) for g in groups} == {(0.9, 0.99)}, (
        "--beta2 sets AdamW's second beta in every group"
    )
    assert not (out / "samples.txt").exists(), "--sample_tokens 0: no text samples at the evaluations"


def assert_best_weights_are_of_the_lowest_val_loss(out: Path) -> None:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best_record = min((r for r in records if "val_loss" in r), key=lambda r: r["val_loss"])
    best = torch.load(out / "best.pt", weights_only=True)
    assert (best["step"], best["val_loss"]) == (best_record["step"], best_record["val_loss"]), (
        "best.pt must hold the weights of the lowest validation loss"
    )
    if best_record["step"] == max(r["step"] for r in records):  # then they are also the latest weights
        latest = torch.load(out / "model.pt", weights_only=True)["model"]
        assert all(torch.equal(best["model"][k], latest[k]) for k in latest)


class Crash(Exception):
    pass


def test_resume_continues_exactly_like_an_uninterrupted_run(corpus_txt, tmp_path, monkeypatch, capsys):
    args = [
        "--data_path",
        corpus_txt,
        "--max_steps",
        10,
        "--save_interval",
        4,
        "--dropout",
        0.1,
        "--accumulation_steps",
        2,
        *TINY,
    ]
    straight = tmp_path / "straight"
    assert run([*args, "--save_dir", straight], capsys)[0] == 0

    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch, pytest.raises(Crash):
        crash_after_checkpoint(patch, 4)
        train.main([str(a) for a in [*args, "--save_dir", interrupted]])
    assert run([*args, "--save_dir", interrupted, "--from_resume", 1], capsys)[0] == 0

    assert losses(interrupted) == losses(straight), "the resumed run must see the same batches and randomness"
    assert_best_weights_are_of_the_lowest_val_loss(interrupted)  # across the resume
    a = torch.load(straight / "model.pt", weights_only=True)["model"]
    b = torch.load(interrupted / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "final weights must be identical"


def test_resume_with_more_steps_continues_the_count(corpus_txt, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--data_path", corpus_txt, "--save_dir", out, *TINY]
    assert run([*args, "--max_steps", 6], capsys)[0] == 0
    assert run([*args, "--max_steps", 10, "--from_resume", 1], capsys)[0] == 0
    assert sorted(losses(out)) == list(range(1, 11)), (
        "steps 1-6 from the first run, 7-10 from the resumed one"
    )
    assert torch.load(out / "resume.pt", weights_only=True)["step"] == 10


def test_a_longer_max_steps_on_resume_continues_at_min_lr_and_says_so(corpus_txt, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--data_path", corpus_txt, "--save_dir", out, *TINY, "--learning_rate", 3e-3, "--min_lr", 3e-4]
    assert run([*args, "--max_steps", 20], capsys)[0] == 0
    code = train.main([str(a) for a in [*args, "--max_steps", 40, "--from_resume", 1]])
    printed = capsys.readouterr().out
    assert code == 0
    assert "the saved run's schedule ends at step 20; steps 21-40 continue at its min_lr 0.0003" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    assert all(lrs[step] == pytest.approx(3e-4) for step in range(21, 41)), (
        "past the saved schedule's end the LR stays at min_lr; it must not warm up and decay again"
    )


def crash_after_checkpoint(monkeypatch, step: int) -> None:
    """The run raises Crash right after saving the checkpoint of `step`, as if killed there."""
    real_save = run_folder.RunFolder.save_checkpoint

    def save_then_crash(run, model, optimizer, state, group):
        real_save(run, model, optimizer, state, group)
        if state["step"] == step:
            raise Crash(f"killed after the checkpoint at step {step}")

    monkeypatch.setattr(run_folder.RunFolder, "save_checkpoint", save_then_crash)


def test_resume_without_max_steps_continues_the_saved_plan(corpus_txt, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    args = ["--data_path", corpus_txt, "--save_dir", out, *TINY, "--batch_size", 6, "--seed", 5]
    with monkeypatch.context() as patch, pytest.raises(Crash):
        crash_after_checkpoint(patch, 3)
        run([*args, "--max_steps", 6, "--save_interval", 3], capsys)
    i = TINY_MODEL.index("--batch_size")
    model_only = TINY_MODEL[:i] + TINY_MODEL[i + 2 :]  # the model's options, but not the batch size
    assert (
        run(["--data_path", corpus_txt, "--save_dir", out, *model_only, "--from_resume", 1], capsys)[0] == 0
    )
    resumed = torch.load(out / "resume.pt", weights_only=True)
    assert resumed["step"] == 6, "without --max_steps, the resume ends where the saved run's plan ends"
    assert resumed["plan"]["batch_size"] == 6 and resumed["plan"]["seed"] == 5, (
        "left-out options: saved values"
    )


def test_resume_on_another_number_of_processes_must_keep_the_global_batch(capsys):
    """A plan of 2 processes × batch 4: on 1 process, --batch_size 4 alone would halve the
    step (refused, naming the accumulation that keeps it); with --accumulation_steps 2 the
    run goes on, with a note. A plan saved before a resume could change the split is
    refused whatever the batch: its data position counts one process's batches."""
    from course.cli import continue_plan, parse_args, run_config
    from course.distributed import ProcessGroup
    from course.errors import UsageError

    config = config_for_plan()
    names = ("learning_rate", "min_lr", "warmup_steps", "batch_size", "accumulation_steps", "seed",
             "max_train_tokens")  # fmt: skip
    old_plan = {**{name: getattr(config, name) for name in names}, "world_size": 2}
    with pytest.raises(
        UsageError, match="on 2 process.es., and was saved by an older version of this script"
    ):
        continue_plan(config, {"plan": old_plan, "step": 1}, ProcessGroup(rank=0, world_size=1))
    plan = {**old_plan, "global_batch": 8}
    with pytest.raises(
        UsageError, match="is a step of 4 windows, .* = 8: keep the global batch with --accum"
    ):
        continue_plan(config, {"plan": plan, "step": 1}, ProcessGroup(rank=0, world_size=1))
    kept = run_config(parse_args(["--accumulation_steps", "2"]), torch.device("cpu"))
    resumed, _ = continue_plan(kept, {"plan": plan, "step": 1}, ProcessGroup(rank=0, world_size=1))
    assert (resumed.batch_size, resumed.accumulation_steps) == (4, 2)
    assert "note: resumed as ddp × 1 process(es), batch 4 × 2 micro-batch(es) (saved: ddp × 2, 4 × 1)" in (
        capsys.readouterr().out
    )


def config_for_plan():
    from course.cli import parse_args, run_config

    argv = ["--learning_rate", "1e-3", "--min_lr", "1e-4", "--warmup_steps", "2", "--batch_size", "4"]
    return run_config(parse_args(argv), torch.device("cpu"))


def test_a_checkpoint_saved_before_muon_existed_resumes_with_adamw():
    from course.cli import PLAN_OPTIONS, continue_plan
    from course.distributed import ProcessGroup

    config = config_for_plan()
    old_options = [name for name in PLAN_OPTIONS if name not in ("optimizer", "muon_lr")]
    plan = {**{name: getattr(config, name) for name in old_options}, "world_size": 1}
    resumed, _ = continue_plan(config, {"plan": plan, "step": 1}, ProcessGroup())
    assert resumed.optimizer == "adamw", "an older checkpoint holds AdamW's state: the resume must keep AdamW"


def test_from_weight_starts_a_new_run_from_saved_weights(corpus_txt, tmp_path, capsys):
    first = tmp_path / "first"
    assert run(["--data_path", corpus_txt, "--save_dir", first, "--max_steps", 20, *TINY], capsys)[0] == 0
    second = tmp_path / "second"
    code, _ = run(
        [
            "--data_path",
            corpus_txt,
            "--save_dir",
            second,
            "--max_steps",
            4,
            "--from_weight",
            first / "model.pt",
            *TINY,
            "--dropout",  # fine-tuning may change dropout: it is not part of the weights
            0.1,
        ],
        capsys,
    )
    assert code == 0
    val = lambda d: [
        json.loads(x)["val_loss"] for x in (d / "metrics.jsonl").read_text().splitlines() if "val_loss" in x
    ]
    assert val(second)[0] == pytest.approx(val(first)[-1], rel=1e-5), "step 0 of the new run is the old model"


def test_epochs_sets_the_number_of_steps(corpus_txt, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--data_path", corpus_txt, "--save_dir", out, "--epochs", 1, *TINY, "--batch_size", 24]
    assert run(args, capsys)[0] == 0
    n_train = json.loads(next((tmp_path / "prepared").glob("*/meta.json")).read_text())["train_tokens"]
    windows = (n_train - 17) // 16 + 1
    assert max(losses(out)) == windows // 24, "one epoch = windows // batch_size optimizer steps"


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    for flag in (
        "--epochs",
        "--batch_size",
        "--learning_rate",
        "--accumulation_steps",
        "--grad_clip",
        "--dtype",
        "--device",
        "--save_dir",
        "--from_resume",
        "--from_weight",
        "--use_compile",
        "--max_steps",
        "--warmup_steps",
        "--min_lr",
        "--eval_interval",
        "--seed",
        "--data_path",
    ):
        assert flag in help_text


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished run (its own corpus and data folder), trained once for all bad-input cases."""
    root = tmp_path_factory.mktemp("finished")
    (root / "verse.txt").write_text(VERSE * 40)
    args = ["--data_path", root / "verse.txt", "--data_dir", root / "prepared", "--save_dir", root / "out"]
    assert run([*args, "--max_steps", 2, *TINY])[0] == 0
    return root / "out"


@pytest.fixture
def previous_run(finished_run, tmp_path):
    """A copy of the finished run, whose outputs a failed run must leave untouched."""
    out = shutil.copytree(finished_run, tmp_path / "out")
    return out, snapshot(out)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (TensorBoard's events are in a folder of their own), with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    return path


BAD_INPUTS = {
    "missing data file": (lambda t: ["--data_path", t / "nope.txt"], "does not exist"),
    "empty data file": (lambda t: ["--data_path", write(t, "empty.txt", b"")], "is empty"),
    "corpus shorter than a block": (
        lambda t: ["--data_path", write(t, "short.txt", b"hi there")],
        "fewer than one block of 16",
    ),
    "unknown tokenizer": (lambda t: ["--tokenizer", "bpe"], "invalid choice: 'bpe'"),
    "unknown device": (lambda t: ["--device", "tpu"], "unknown device 'tpu'"),
    "cuda without CUDA": (lambda t: ["--device", "cuda"], "CUDA is not available"),
    "unknown dtype": (lambda t: ["--dtype", "int8"], "unknown dtype 'int8'"),
    "float16 on CPU": (lambda t: ["--dtype", "float16"], "float16 training needs a GPU"),
    "warmup longer than training": (
        lambda t: ["--max_steps", 5, "--warmup_steps", 8],
        "--warmup_steps 8 must be smaller",
    ),
    "zero learning rate": (lambda t: ["--learning_rate", 0], "--learning_rate must be positive"),
    "negative batch size": (lambda t: ["--batch_size", -4], "--batch_size must be positive"),
    "heads do not divide width": (lambda t: ["--num_attention_heads", 3], "must be divisible"),
    "resume without checkpoint": (
        lambda t: ["--from_resume", 1, "--save_dir", t / "empty_dir"],
        "no resume.pt",
    ),
    "resume into another model": (
        lambda t: ["--from_resume", 1, "--num_hidden_layers", 3],
        "n_layer=2 in the checkpoint",
    ),
    "binary data file": (lambda t: ["--data_path", write(t, "blob.txt", bytes(range(256)) * 4)], "not UTF-8"),
    "non-UTF-8 text": (
        lambda t: ["--data_path", write(t, "latin1.txt", "café\n".encode("latin-1"))],
        "not UTF-8",
    ),
    "malformed jsonl line": (
        lambda t: ["--data_path", write(t, "bad.jsonl", b'{"text": "fine"}\n{"text": oops}\n')],
        "bad.jsonl:2: not valid JSON",
    ),
    "jsonl line without text": (
        lambda t: ["--data_path", write(t, "notext.jsonl", b'{"text": "fine"}\n{"body": "x"}\n')],
        'notext.jsonl:2: expected an object with a "text"',
    ),
    "block_size larger than the model's": (
        lambda t: ["--from_weight", t / "out" / "model.pt", "--max_seq_len", 32],
        "block_size=16 in the checkpoint, 32 now",
    ),
    "zero steps": (lambda t: ["--max_steps", 0], "--max_steps must be positive"),
    "warmup as long as training": (lambda t: ["--max_steps", 5, "--warmup_steps", 5], "must be smaller"),
    "documents mode on a .txt": (lambda t: ["--dataset_mode", "documents"], "give --data_path file.jsonl"),
    "weights file missing": (lambda t: ["--from_weight", t / "missing.pt"], "no such file"),
    "weights of another tokenizer": (
        lambda t: [
            "--from_weight",
            t / "out" / "model.pt",
            "--data_path",
            write(t, "abc.txt", b"abc\n" * 500),
        ],
        "was trained with another tokenizer (a char vocabulary of",
    ),
    "weights file not a checkpoint": (
        lambda t: ["--from_weight", write(t, "junk.pt", b"not a checkpoint")],
        "cannot read checkpoint",
    ),
    "Muon LR of 0": (lambda t: ["--muon_lr", 0], "--muon_lr must be positive, got 0.0"),
    "min_lr above learning_rate": (lambda t: ["--min_lr", 1.0], "--min_lr 1.0 is larger"),
    "not a number": (lambda t: ["--max_steps", "ten"], "invalid int value: 'ten'"),
    "resume with another batch size": (
        lambda t: ["--from_resume", 1, "--batch_size", 8],
        "--batch_size 8 × --accumulation_steps 1 × 1 process(es) is a step of 8 windows, the saved run's "
        "4 × 1 × 1 = 4: keep the global batch with --batch_size 4",
    ),
    "resume with another seed": (lambda t: ["--from_resume", 1, "--seed", 7], "(seed=1337)"),
    "resume with another accumulation": (
        lambda t: ["--from_resume", 1, "--accumulation_steps", 2],
        "--batch_size 4 × --accumulation_steps 2 × 1 process(es) is a step of 8 windows",
    ),
    "resume with another optimizer": (
        lambda t: ["--from_resume", 1, "--optimizer", "adamw"],
        "--optimizer adamw would change the saved run (optimizer='muon')",
    ),
    "resume with another Muon LR": (
        lambda t: ["--from_resume", 1, "--muon_lr", 0.05],
        "--muon_lr 0.05 would change the saved run (muon_lr=0.02)",
    ),
    "resume with another recipe": (
        lambda t: ["--from_resume", 1, "--position", "rope"],
        "position='learned' in the checkpoint",
    ),
    "resume with another data budget": (
        lambda t: ["--from_resume", 1, "--max_train_tokens", 500],
        "(max_train_tokens=0)",
    ),
    "resume with another warmup": (lambda t: ["--from_resume", 1, "--warmup_steps", 1], "(warmup_steps=0)"),
    "resume with another beta2": (lambda t: ["--from_resume", 1, "--beta2", 0.99], "(beta2=0.95)"),
    # Values that were never checked: each is refused in one line, before anything is written.
    "negative seed": (lambda t: ["--seed", -1], "--seed must be between 0 and 4294967295, got -1"),
    "seed of 2**32": (lambda t: ["--seed", 2**32], "--seed must be between 0 and 4294967295, got 4294967296"),
    "learning rate nan": (
        lambda t: ["--learning_rate", "nan"],
        "--learning_rate must be a finite number, got nan",
    ),
    "Muon LR nan": (lambda t: ["--muon_lr", "nan"], "--muon_lr must be a finite number, got nan"),
    "grad_clip nan": (lambda t: ["--grad_clip", "nan"], "--grad_clip must be a finite number, got nan"),
    "epochs nan": (lambda t: ["--epochs", "nan"], "--epochs must be a finite number, got nan"),
    "epochs inf": (lambda t: ["--epochs", "inf"], "--epochs must be a finite number, got inf"),
    "epochs 1e300": (lambda t: ["--epochs", "1e300"], "steps, more than 1,000,000,000; is it a typo?"),
    "max_steps 1e12": (lambda t: ["--max_steps", 10**12], "is more than 1,000,000,000 steps"),
    "huge accumulation": (
        lambda t: ["--accumulation_steps", 10**9],
        "one optimizer step of 1000000000 micro-batches is more than an epoch",
    ),
    "huge batch": (lambda t: ["--batch_size", 10**6], "fewer than one batch of 1000000 per process"),
    "huge sample": (lambda t: ["--sample_tokens", 10**9], "--sample_tokens must be at most 10,000"),
    "negative sample": (lambda t: ["--sample_tokens", -1], "--sample_tokens must not be negative, got -1"),
    "beta2 of 1": (lambda t: ["--beta2", 1], "--beta2 must be in [0, 1), got 1.0"),
    "beta2 nan": (lambda t: ["--beta2", "nan"], "--beta2 must be in [0, 1), got nan"),
    "prompt outside the vocabulary": (
        lambda t: ["--prompt", "€"],
        "--prompt: character '€' is not in this char vocabulary",
    ),
    "weights file that is a bare state_dict": (
        lambda t: ["--from_weight", bare_state_dict(t)],
        "is not a weights file (model.pt or best.pt) of this script: it has no model, model_config",
    ),
    "model.pt given as resume.pt": (
        lambda t: ["--from_resume", 1, "--save_dir", weights_as_resume(t)],
        "is not a resume checkpoint (resume.pt) of this script: it has no step, data_source, plan",
    ),
    "from_weight and from_resume": (
        lambda t: ["--from_resume", 1, "--from_weight", t / "out" / "model.pt"],
        "--from_resume 1 continues the saved run with its own weights, so --from_weight would be ignored",
    ),
    "overwrite and from_resume": (lambda t: ["--from_resume", 1, "--overwrite", 1], "give one"),
    "resume to fewer steps than saved": (
        lambda t: ["--from_resume", 1, "--max_steps", 1],
        "the checkpoint is at step 2, so --max_steps 1 leaves nothing to train",
    ),
    "resume of a finished run": (
        lambda t: ["--from_resume", 1, "--max_steps", 2],
        "the checkpoint is at step 2, so --max_steps 2 leaves nothing to train",
    ),
    "fsdp without torchrun": (
        lambda t: ["--parallel", "fsdp"],
        "--parallel fsdp shards the model over the processes that torchrun starts",
    ),
    "negative profile": (lambda t: ["--profile", -1], "--profile must not be negative, got -1"),
    "an abbreviated option": (lambda t: ["--max_step", 5], "unrecognized arguments: --max_step 5"),
    "another abbreviation": (lambda t: ["--learn", "0.01"], "unrecognized arguments: --learn 0.01"),
    "data path of a folder": (lambda t: ["--data_path", t], "is a folder; give a .txt or .jsonl file"),
    "another extension": (
        lambda t: ["--data_path", write(t, "notes.md", b"# hi\n" * 400)],
        "must be a .txt or .jsonl",
    ),
}


def bare_state_dict(tmp_path: Path) -> Path:
    """A weights file as plain torch.save(model.state_dict()) writes it: no config, no tokenizer."""
    weights = torch.load(tmp_path / "out" / "model.pt", weights_only=True)["model"]
    torch.save(weights, tmp_path / "bare.pt")
    return tmp_path / "bare.pt"


def weights_as_resume(tmp_path: Path) -> Path:
    """A run folder whose resume.pt is a copy of model.pt (a weights file, not a checkpoint)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(tmp_path / "out" / "model.pt", folder / "resume.pt")
    return folder


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(
    case, previous_run, corpus_txt, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on every machine
    out, before = previous_run
    make_args, message = BAD_INPUTS[case]
    case_args = make_args(tmp_path)
    length = [] if "--epochs" in case_args else ["--max_steps", 4]  # --max_steps would win over --epochs
    argv = ["--data_path", corpus_txt, "--save_dir", out, *length, *TINY, *case_args]
    if "--from_resume" not in argv:  # even a run told to replace the previous one changes nothing of it
        argv += ["--overwrite", 1]
    code, err = run(argv, capsys)
    assert code == 2, f"{case}: exit code {code}, stderr {err!r}"
    lines = [line for line in err.strip().splitlines() if not line.startswith("tokenizing")]  # progress bar
    assert len(lines) == 1 and lines[0].startswith("error: "), (
        f"{case}: expected one 'error: ...' line, got {err!r}"
    )
    assert message in lines[0]
    assert snapshot(out) == before, f"{case}: earlier outputs were modified"


# Values that once ended in a traceback (math.exp of a diverged loss, the optimizer's float32
# overflow, the allocator's, a DataLoader starting 10**30 workers, a mkdir through a link to
# nowhere, an append to a read-only file mid-run), and folders that would let preparing a
# corpus delete a run. Each is given to a real process: one line and exit 2 before anything
# is prepared or written, or, for a learning rate that trains into NaN, the divergence
# guard's line and exit 1 with nothing of the run kept. A case: (its options, given the
# case's folder and a finished run; the exit code; what the line says).
def read_only_copy(folder: Path, finished: Path) -> Path:
    """A copy of a finished run whose files are read-only (chmod 444), in a writable folder."""
    out = shutil.copytree(finished, folder / "out")
    for path in out.iterdir():
        path.chmod(0o444)
    return out


def link_to_nowhere(folder: Path) -> Path:
    link = folder / "link"
    link.symlink_to(folder / "nowhere")
    return link


DIVERGED = "this run had saved no checkpoint yet, so nothing of it was kept"
TOO_LARGE = "is more than 1e+30, too large for the optimizer to apply in float32"
READ_ONLY = "read-only: model.pt, best.pt, metrics.jsonl, metrics.png, samples.txt, resume.pt"
TYPOS = {
    "learning rate 100000": (lambda w, f: ["--learning_rate", 100000, "--max_steps", 20], 1, DIVERGED),
    "learning rate 1e300": (
        lambda w, f: ["--learning_rate", 1e300],
        2,
        f"--learning_rate 1e+300 {TOO_LARGE}",
    ),
    "Muon LR 1e300": (lambda w, f: ["--muon_lr", 1e300], 2, f"--muon_lr 1e+300 {TOO_LARGE}"),
    "hidden size 100000": (
        lambda w, f: ["--hidden_size", 100000],
        2,
        "a model of at least 2.4e+11 parameters: training it needs at least 2,880.0 GB",
    ),
    "10**30 layers": (
        lambda w, f: ["--num_hidden_layers", 10**30],
        2,
        "a model of at least 1.23e+34 parameters",
    ),
    "10**30 workers": (lambda w, f: ["--num_workers", 10**30], 2, "CPU cores this process may use"),
    "a save_dir through a link to nowhere": (
        lambda w, f: ["--save_dir", link_to_nowhere(w) / "run"],
        2,
        "link is a symbolic link to",
    ),
    "a read-only run, resumed": (
        lambda w, f: ["--save_dir", read_only_copy(w, f), "--from_resume", 1],
        2,
        f"{READ_ONLY}, and --from_resume 1 writes to them",
    ),
    "a read-only run, overwritten": (
        lambda w, f: ["--save_dir", read_only_copy(w, f), "--overwrite", 1],
        2,
        f"{READ_ONLY}, and --overwrite 1 writes to them",
    ),
    "a save_dir in a prepared corpus": (
        lambda w, f: ["--save_dir", w / "prepared" / "verse_char" / "run"],
        2,
        "prepared/verse_char/run is inside",
    ),
    "a data_dir in a run folder": (
        lambda w, f: ["--data_dir", shutil.copytree(f, w / "out") / "prepared"],
        2,
        "is inside the run folder",
    ),
}
# Root writes to read-only files: these processes run without that privilege (util-linux's setpriv).
AS_A_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"] if os.geteuid() == 0 else []


def every_entry(folder: Path) -> dict[str, str]:
    """Every file, folder and link under `folder`, hidden ones too, with what it holds."""
    return {str(p.relative_to(folder)): entry_content(p) for p in sorted(folder.rglob("*"))}


def entry_content(path: Path) -> str:
    if path.is_symlink():
        return f"a link to {os.readlink(path)}"
    return "a folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()


@background_job("typos", seconds=20)
def typo_runs(workdir: Path) -> None:
    """Each case of TYPOS in a process of its own, after one finished run to copy (about 2 s
    each, mostly importing torch), one after the other beside the rest of the suite."""
    (workdir / "verse.txt").write_text(VERSE * 40)
    train_py = [sys.executable, "train_solution.py", "--data_path", str(workdir / "verse.txt"), *TINY]
    finished = workdir / "finished"
    run_checked([*train_py, "--data_dir", str(workdir / "prepared"), "--save_dir", str(finished),
                 "--max_steps", "2"])  # fmt: skip
    for number, (make_args, _, _) in enumerate(TYPOS.values()):
        folder = workdir / f"case{number}"
        folder.mkdir()
        case_args = [str(a) for a in make_args(folder, finished)]
        before = every_entry(folder)
        done = subprocess.run(
            [*AS_A_USER, *train_py, "--data_dir", str(folder / "prepared"), "--save_dir",
             str(folder / "out"), "--max_steps", "4", *case_args],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        after = every_entry(folder)
        changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
        result = {"rc": done.returncode, "stderr": done.stderr, "changed": changed}
        (workdir / f"case{number}.json").write_text(json.dumps(result))


@pytest.mark.background("typos")
@pytest.mark.parametrize("case", TYPOS)
def test_a_value_that_ended_in_a_traceback_is_one_line_in_a_real_process(case, background):
    _, code, message = TYPOS[case]
    result = json.loads((background / f"case{list(TYPOS).index(case)}.json").read_text())
    progress = ("tokenizing", "training")
    lines = [line for line in result["stderr"].splitlines() if line.strip() and not line.startswith(progress)]
    assert result["rc"] == code and len(lines) == 1 and lines[0].startswith("error: "), f"{case}: {result}"
    assert message in lines[0], f"{case}: {lines[0]}"
    # Exit 2: found before the corpus was prepared. A divergence prepared it, and left the run's
    # folder (created to stage the run in) empty.
    written = [
        name
        for name in result["changed"]
        if not (code == 1 and (name == "out" or name.startswith("prepared")))
    ]
    assert not written, f"{case}: written: {written}"


def test_fsdp_refuses_float16_whose_overflow_check_would_see_one_shard(monkeypatch):
    from course.cli import check_parallel
    from course.distributed import ProcessGroup
    from course.errors import UsageError

    monkeypatch.setenv("RANK", "0")  # as under torchrun
    config = train.cli.run_config(train.cli.parse_args(["--parallel", "fsdp"]), torch.device("cpu"))
    with pytest.raises(UsageError, match="GradScaler would check only this process's shard"):
        check_parallel(config, ProcessGroup(0, 2), torch.float16)
    check_parallel(config, ProcessGroup(0, 2), torch.bfloat16)  # fine


def test_a_seed_plus_the_highest_rank_must_fit_in_32_bits():
    from course.cli import check_seed
    from course.errors import UsageError

    check_seed(2**32 - 2, world_size=2)
    with pytest.raises(
        UsageError, match="between 0 and 4294967294 with 2 processes .each seeds with seed . rank."
    ):
        check_seed(2**32 - 1, world_size=2)


@background_job("compile", seconds=8)
def compiled_run(workdir: Path) -> None:
    """A real `--use_compile 1` run. Its first compilation takes seconds of CPU, so it runs
    in the background while the rest of the suite goes on."""
    (workdir / "verse.txt").write_text(VERSE * 40)
    run_checked([sys.executable, "train_solution.py", "--data_path", str(workdir / "verse.txt"),
                 "--data_dir", str(workdir / "prepared"), "--save_dir", str(workdir / "out"),
                 "--max_steps", "3", "--use_compile", "1", *TINY])  # fmt: skip


@pytest.mark.background("compile")
def test_use_compile_trains_and_keeps_checkpoint_keys_plain(background):
    out = background / "out"
    keys = torch.load(out / "resume.pt", weights_only=True)["model"].keys()
    assert not any(k.startswith("_orig_mod") for k in keys), (
        "checkpoint keys must not carry torch.compile's prefix"
    )
    assert set(keys) == set(torch.load(out / "model.pt", weights_only=True)["model"].keys())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3], "three compiled training steps"


def test_documents_mode_trains_on_padded_jsonl_documents(tmp_path, capsys):
    import json

    path = tmp_path / "docs.jsonl"
    lines = [{"text": f"Document {i}: " + "to be or not to be " * (i % 5 + 1)} for i in range(60)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    args = ["--data_path", path, "--dataset_mode", "documents", "--save_dir", out, "--max_steps", 8, *TINY]
    code, err = run(args, capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) >= 2 and val[-1] < val[0]


GPT2_OPTIONS = ["--position", "learned", "--norm", "layer", "--mlp", "gelu", "--qk_norm", 0, "--zero_init", 0,
                "--tie_weights", 1, "--optimizer", "adamw"]  # fmt: skip
OTHER_OPTIONS = ["--norm", "rms", "--mlp", "relu2", "--zero_init", 1]


@pytest.mark.parametrize("recipe", [GPT2_OPTIONS, OTHER_OPTIONS], ids=["gpt2", "rms-relu2-zero_init"])
def test_every_recipe_option_trains_from_the_command_line(recipe, corpus_txt, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run(["--data_path", corpus_txt, "--save_dir", out, "--max_steps", 12, *TINY, *recipe], capsys)
    assert code == 0, err
    config = torch.load(out / "model.pt", weights_only=True)["model_config"]
    given = dict(zip(recipe[::2], recipe[1::2], strict=True))
    for option, value in given.items():
        name = option.removeprefix("--")
        if name != "optimizer":
            assert config[name] == (bool(value) if isinstance(value, int) else value), f"{name} not applied"
    plan = torch.load(out / "resume.pt", weights_only=True)["plan"]
    assert plan["optimizer"] == given.get("--optimizer", "muon")
    val = [
        json.loads(x)["val_loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in x
    ]
    assert val[-1] < val[0]


def test_use_moe_trains_on_cpu(corpus_txt, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run(
        ["--data_path", corpus_txt, "--save_dir", out, "--max_steps", 12, "--use_moe", 1, *TINY], capsys
    )
    assert code == 0, err
    weights = torch.load(out / "model.pt", weights_only=True)
    assert weights["model_config"]["use_moe"] and any(".experts.3." in k for k in weights["model"])
    val = [
        json.loads(x)["val_loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in x
    ]
    assert val[-1] < val[0]


def test_profile_writes_a_trace_and_prints_where_the_time_goes(corpus_txt, tmp_path, capsys):
    """Steps 2 and 3 are profiled; the evaluations (and samples) after steps 1 and 2 fall
    between them and are left out."""
    out = tmp_path / "out"
    args = ["--data_path", corpus_txt, "--save_dir", out, "--max_steps", 5, "--profile", 2, *TINY]
    code, _ = run([*args, "--eval_interval", 2])
    printed = capsys.readouterr().out
    assert code == 0
    trace = json.loads((out / "profile.pt.trace.json").read_text())
    steps = {e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep")}
    assert len(steps) == 2, f"the trace should hold the 2 profiled steps, has {sorted(steps)}"
    assert any(e.get("name") == "aten::mm" for e in trace["traceEvents"]), "the matmuls are in the trace"
    assert not any(e.get("name") == "aten::multinomial" for e in trace["traceEvents"]), "samples are not"
    table = printed[printed.index("where a step's CPU time goes") :].splitlines()
    rows = [line for line in table[2:] if line.startswith("  ") and "%" in line]
    assert 3 <= len(rows) <= 12, f"a one-screen table of operations, got:\n{printed}"
    assert f"trace of 2 steps in {out / 'profile.pt.trace.json'}" in printed


@pytest.mark.parametrize("steps, recorded", [(4, 3), (1, 0)])
def test_profile_counts_the_steps_it_recorded_when_the_run_is_shorter(
    steps, recorded, corpus_txt, tmp_path, capsys
):
    out = tmp_path / "out"
    code, _ = run(
        ["--data_path", corpus_txt, "--save_dir", out, "--max_steps", steps, "--profile", 20, *TINY]
    )
    printed = capsys.readouterr().out
    assert code == 0
    if recorded:  # the first step is left out: it pays one-time costs
        assert f"per step, over {recorded} steps):" in printed and f"trace of {recorded} steps in" in printed
    else:
        assert "--profile 20 recorded no step" in printed and not (out / "profile.pt.trace.json").exists()


# --- every option through a resume ---------------------------------------------------------

# Another value than the finished run's for every option a resume refuses, and what the
# one-line refusal names. The run: muon, blocks, seed 1337, batch 4, the tiny model.
REFUSED_ON_RESUME = {
    "warmup_steps": (1, "(warmup_steps=0)"),
    "batch_size": (8, "is a step of 8 windows, the saved run's 4 × 1 × 1 = 4"),
    "accumulation_steps": (2, "--batch_size 4 × --accumulation_steps 2 × 1 process(es) is a step of 8"),
    "seed": (7, "(seed=1337)"),
    "max_train_tokens": (500, "(max_train_tokens=0)"),
    "dataset_mode": ("documents", "--dataset_mode documents"),
    "optimizer": ("adamw", "(optimizer='muon')"),
    "muon_lr": (0.05, "(muon_lr=0.02)"),
    "beta2": (0.99, "(beta2=0.95)"),
    "weight_decay": (0.5, "--weight_decay 0.5 would change the saved run (weight_decay=0.1)"),
    "parallel": ("fsdp", "--parallel fsdp shards the model over the processes that torchrun starts"),
    "hidden_size": (48, "model config"),
    "num_hidden_layers": (3, "model config"),
    "num_attention_heads": (4, "model config"),
    "max_seq_len": (32, "model config"),
    "dropout": (0.1, "model config"),
    "use_moe": (1, "model config"),
    "position": ("rope", "model config"),
    "norm": ("rms", "model config"),
    "mlp": ("swiglu", "model config"),
    "qk_norm": (1, "model config"),
    "zero_init": (1, "model config"),
    "tie_weights": (0, "model config"),
    "preset": ("gpu", "model config"),  # the gpu preset's model is larger
    "tokenizer": ("gpt2", "vocab_size=32 in the checkpoint"),  # the model's vocabulary tells first
    "data_path": (None, "data"),  # another text: set in the test
}
# The options that apply from the resume on, all changed at once in one resume. Left at
# the saved value, with the reason: device (this machine has only the CPU; tested in
# test_devices.py), use_compile (20 s of compilation; its order with DDP is in
# test_ddp.py) and dtype float16 (a GPU's: its fresh GradScaler is tested below).
APPLIED_ON_RESUME = {
    "learning_rate": 1e-3, "min_lr": 1e-4, "max_steps": 4, "grad_clip": 0.5, "dtype": "float32",
    "num_workers": 1, "activation_checkpointing": 1, "profile": 1, "log_interval": 2, "eval_interval": 2,
    "eval_tokens": 64, "save_interval": 3, "prompt": "a", "sample_tokens": 3, "tensorboard": 0,
}  # fmt: skip
# epochs: max_steps wins over it; eval_iters: another way to give eval_tokens (the two
# together are refused; test_eval_iters_is_a_budget_in_batches).
NOT_CHANGED_IN_THE_WALK = {"device", "use_compile", "epochs", "eval_iters"}
# How the run starts, the graders and the tracked run: each has its own tests (the resume
# cases above, test_grading.py, test_hints.py, test_tracking.py: W&B and SwanLab are optional).
ELSEWHERE = {"save_dir", "data_dir", "from_resume", "overwrite", "from_weight", "test", "hint", "use_wandb",
             "wandb_backend", "wandb_project", "wandb_run_name"}  # fmt: skip


def test_every_option_has_a_stated_effect_on_a_resume_and_the_walk_covers_it():
    from course.cli import build_parser
    from course.config import FROM_HERE, LENGTH, NEW_LR, ON_RESUME

    options = {action.dest for action in build_parser()._actions if action.dest != "help"}
    assert set(ON_RESUME) == options, (
        f"options without a stated effect on a resume: {options ^ set(ON_RESUME)}"
    )
    walked = set(REFUSED_ON_RESUME) | set(APPLIED_ON_RESUME) | NOT_CHANGED_IN_THE_WALK | ELSEWHERE
    assert walked == options, f"options the resume walk misses: {options - walked}"
    for name in APPLIED_ON_RESUME:
        assert ON_RESUME[name] in (FROM_HERE, NEW_LR, LENGTH), f"--{name} is applied on a resume"
    for name in REFUSED_ON_RESUME:
        assert ON_RESUME[name] not in (FROM_HERE, NEW_LR, LENGTH), f"--{name} is refused on a resume"


@pytest.mark.parametrize("option", REFUSED_ON_RESUME)
def test_a_resume_refuses_an_option_that_changes_the_run(option, finished_run, tmp_path, capsys):
    out = shutil.copytree(finished_run, tmp_path / "out")
    before = snapshot(out)
    value, message = REFUSED_ON_RESUME[option]
    if option == "data_path":
        value = write(tmp_path, "other.txt", (VERSE[::-1] * 40).encode())
    data = [] if option == "data_path" else ["--data_path", finished_run.parent / "verse.txt"]
    argv = [*data, "--data_dir", finished_run.parent / "prepared", "--save_dir", out, "--max_steps", 4, *TINY]
    code, err = run([*argv, "--from_resume", 1, f"--{option}", value], capsys)
    lines = [line for line in err.strip().splitlines() if not line.startswith("tokenizing")]
    assert code == 2 and len(lines) == 1 and message in lines[0], f"--{option} {value}: {code}, {err!r}"
    assert snapshot(out) == before, "a refused resume changed the run"


def test_a_resume_applies_every_option_that_may_change(finished_run, tmp_path, capsys):
    out = shutil.copytree(finished_run, tmp_path / "out")
    argv = ["--data_path", finished_run.parent / "verse.txt", "--data_dir", finished_run.parent / "prepared",
            "--save_dir", out, *TINY, "--from_resume", 1]  # fmt: skip
    for name, value in APPLIED_ON_RESUME.items():
        argv += [f"--{name}", value]
    code, err = run(argv, capsys)
    assert code == 0, err
    checkpoint = torch.load(out / "resume.pt", weights_only=False)
    assert checkpoint["step"] == 4, "--max_steps 4: the run trains on to step 4"
    saved = checkpoint["train_args"]
    for name, value in APPLIED_ON_RESUME.items():
        assert saved[name] == value, f"--{name} {value} was not applied (the run recorded {saved[name]!r})"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r and r["step"] > 2] == [4], (
        "--log_interval 2 from step 2"
    )
    assert [r["step"] for r in records if "val_loss" in r and r["step"] > 2] == [4], "--eval_interval 2"
    assert max(r["lr"] for r in records if "lr" in r and r["step"] > 2) <= 1e-3, "the new learning rate"
    assert (out / "profile").exists() or any(out.glob("*trace*")), "--profile 1 wrote no trace"


def test_a_float16_resume_of_a_run_saved_without_it_starts_a_fresh_grad_scaler(capsys):
    """Moving a bfloat16 run to an older GPU: its checkpoint has no GradScaler state."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # enabled, as for float16
    fitted = checkpoints.fit_scaler_state({"scaler": {}, "step": 3}, scaler)
    scaler.load_state_dict(fitted["scaler"])  # would raise on the saved {}
    assert scaler.get_scale() == 2.0**10 and fitted["step"] == 3
    assert "GradScaler starts at the initial scale" in capsys.readouterr().out
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    assert checkpoints.fit_scaler_state({"scaler": {}}, disabled) == {"scaler": {}}


def test_eval_iters_is_a_budget_in_batches(corpus_txt, tmp_path, capsys):
    """nanoGPT's --eval_iters N stands for N batches of batch_size x max_seq_len tokens."""
    at = TINY.index("--eval_tokens")
    tiny = TINY[:at] + TINY[at + 2 :]
    argv = ["--data_path", corpus_txt, "--save_dir", tmp_path / "out", *tiny, "--max_steps", 1]
    code, err = run([*argv, "--eval_iters", 3], capsys)
    assert code == 0, err
    saved = torch.load(tmp_path / "out" / "resume.pt", weights_only=False)["train_args"]
    assert saved["eval_tokens"] == 3 * 4 * 16, "3 batches of 4 windows of 16 tokens"
    code, err = run([*argv, "--save_dir", tmp_path / "both", "--eval_iters", 3, "--eval_tokens", 64], capsys)
    assert code == 2 and err.strip() == (
        "error: --eval_iters and --eval_tokens both set the validation budget: give one"
    ), err
    assert not (tmp_path / "both").exists(), "refused before anything was written"


def test_the_run_config_holds_every_option_and_cannot_change():
    import dataclasses

    from course.cli import PRESETS, build_parser, continue_plan, parse_args, run_config
    from course.config import RunConfig

    options = {action.dest for action in build_parser()._actions if action.dest != "help"}
    assert set(RunConfig.field_names()) == (options - {"test", "hint"}) | {"options_given"}
    config = run_config(parse_args(["--batch_size", "8"]), torch.device("cpu"))
    assert config.preset == "cpu" and config.hidden_size == PRESETS["cpu"]["hidden_size"], "the preset's"
    assert config.batch_size == 8 and config.options_given == ("batch_size",), "the command line's"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 16
    budget = run_config(parse_args(["--eval_iters", "3"]), torch.device("cpu"))
    assert continue_plan(budget, None, None)[0].eval_tokens == 3 * 32 * 64, "--eval_iters in tokens"


def load_source(name: str, source: str, monkeypatch):
    """A module made from this source, in place of the real one for the rest of the test."""
    module = type(sys)(name)
    module.__file__ = str(ROOT / (name.replace(".", "/") + ".py"))
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def test_an_option_declared_once_is_in_the_help_the_config_the_resume_table_and_the_recipe(monkeypatch):
    """One new field in course/config.py and no other edit: --help lists it in its group, the
    config holds it and checks it, a resume refuses to change it, and it is in the recipe."""
    from course.distributed import ProcessGroup
    from course.errors import UsageError

    declaration = (ROOT / "course" / "config.py").read_text()
    seed = "    seed: int = option("
    assert seed in declaration
    dummy = '    dummy_depth: PositiveInt = option("a dummy option", PLAN, recipe=True, default=3)\n'
    config = load_source("course.config", declaration.replace(seed, dummy + seed), monkeypatch)
    cli = load_source("course.cli", (ROOT / "course" / "cli.py").read_text(), monkeypatch)
    reference = load_source("course.reference", (ROOT / "course" / "reference.py").read_text(), monkeypatch)

    help_text = cli.build_parser().format_help()
    training = help_text[help_text.index("\ntraining:") : help_text.index("\nsystem:")]
    assert "--dummy_depth DUMMY_DEPTH" in training and "a dummy option (default: 3)" in training
    given = cli.run_config(cli.parse_args(["--dummy_depth", "5"]), torch.device("cpu"))
    assert given.dummy_depth == 5 and "dummy_depth" in config.RunConfig.field_names()
    with pytest.raises(UsageError, match="^--dummy_depth must be positive, got 0$"):
        cli.check_options(cli.run_config(cli.parse_args(["--dummy_depth", "0"]), torch.device("cpu")))

    assert config.ON_RESUME["dummy_depth"] == config.PLAN and "dummy_depth" in config.PLAN_OPTIONS
    saved = cli.run_config(cli.parse_args([]), torch.device("cpu"))
    plan = cli.run_plan(saved, cli.Schedule(10, 1, 2e-4, 10), ProcessGroup())
    assert plan["dummy_depth"] == 3, "the saved plan holds it"
    with pytest.raises(UsageError, match=r"--dummy_depth 5 would change the saved run \(dummy_depth=3\)"):
        cli.continue_plan(given, {"plan": plan, "step": 1}, ProcessGroup())

    assert "dummy_depth" not in reference.NOT_IN_RECIPE
    assert (
        reference.recipe(given.to_dict(), cli.Schedule(10, 1, 2e-4, 10), "float32", 1, {})["dummy_depth"] == 5
    )
