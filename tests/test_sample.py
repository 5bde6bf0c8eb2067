"""The sampling command (course/sample.py): a trained run's weights, a prompt in, its
continuation out, from any folder, one prompt or many; every bad input one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_MODEL, VERSE

import train_solution as train
from course import sample
from course.run_folder import save_atomic

SCRIPT = ROOT / "course" / "sample.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny trained run: model.pt, best.pt and resume.pt in its folder."""
    root = tmp_path_factory.mktemp("sample")
    (root / "verse.txt").write_text(VERSE * 40, encoding="utf-8")
    argv = ["--data_path", root / "verse.txt", "--data_dir", root / "prepared", "--save_dir", root / "run",
            "--max_steps", 30, "--eval_interval", 30, "--learning_rate", 3e-3, *TINY_MODEL]  # fmt: skip
    assert train.main([str(a) for a in argv]) == 0
    return root / "run"


def sample_in(folder: Path, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    """The command as a learner types it, from `folder` (not the repository)."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=folder, input=stdin,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_a_prompt_and_its_continuation_from_another_folder(run, tmp_path):
    done = sample_in(tmp_path, [str(run / "best.pt"), "--prompt", "To be", "--max_new_tokens", "40"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("To be"), "the prompt is printed, then its continuation"
    continuation = done.stdout.removeprefix("To be").removesuffix("\n")
    assert len(continuation) >= 40, f"40 new tokens (characters here), got {continuation!r}"


def test_interactive_mode_answers_each_prompt_until_an_empty_line(run, tmp_path):
    done = sample_in(tmp_path, [str(run / "model.pt"), "--interactive", "--max_new_tokens", "10"],
                     stdin="To be\nWhether\n€\nThe\n\nnever read\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers = [part for part in done.stdout.split("> ") if part.strip()]  # "> " asks for each prompt
    assert len(answers) == 3, "three prompts answered; the bad one got its reason; the empty line ended it"
    for answer, prompt in zip(answers, ["To be", "Whether", "The"], strict=True):
        assert answer.startswith(prompt) and len(answer.rstrip("\n")) >= len(prompt) + 10, answer
    assert "character '€' is not in this char vocabulary" in done.stderr, (
        "a bad prompt is told why and skipped"
    )
    assert "never read" not in done.stdout


def test_the_same_seed_gives_the_same_samples_and_each_has_the_requested_length(run, capsys):
    args = [str(run / "resume.pt"), "--prompt", "The", "--num_samples", "3", "--max_new_tokens", "25"]
    assert sample.main(args) == 0
    first = capsys.readouterr().out
    assert first.count("--- sample ") == 3
    assert sample.main(args) == 0
    assert capsys.readouterr().out == first, "--seed makes sampling repeatable"
    model, tokenizer = sample.load_model(run / "best.pt", torch.device("cpu"))
    options = sample.build_parser().parse_args(
        [str(run / "best.pt"), "--num_samples", "2", "--max_new_tokens", "25"]
    )
    new = sample.continuations(model, tokenizer.encode("The"), options, torch.device("cpu"))
    assert [len(ids) for ids in new] == [25, 25]


def test_greedy_decoding_is_the_argmax_at_every_step(run):
    model, tokenizer = sample.load_model(run / "best.pt", torch.device("cpu"))
    options = sample.build_parser().parse_args(
        [str(run / "best.pt"), "--temperature", "0", "--max_new_tokens", "5"]
    )
    ids = tokenizer.encode("To be")
    (new,) = sample.continuations(model, ids, options, torch.device("cpu"))
    context = list(ids)
    for token in new:
        logits = model(torch.tensor([context])).logits
        assert token == logits[0, -1].argmax().item()
        context.append(token)


def without_model_weights(folder: Path) -> Path:
    """A resume.pt as an unfinished TODO 8 may write it: the run's keys, but no weights."""
    checkpoint = torch.load(folder / "resume.pt", weights_only=True)
    del checkpoint["model"]
    save_atomic(checkpoint, folder / "unfinished.pt")
    return folder / "unfinished.pt"


BAD_INPUTS = {
    "missing file": (lambda r: [r / "nope.pt"], "no such file"),
    "not a checkpoint": (lambda r: [r / "metrics.jsonl"], "cannot read checkpoint"),
    "a resume.pt without weights": (
        lambda r: [without_model_weights(r)],
        "unfinished.pt has no model: sample from",
    ),
    "accented character": (lambda r: [r / "best.pt", "--prompt", "Tó be"], "write 'o' for 'ó'"),
    "character never seen": (lambda r: [r / "best.pt", "--prompt", "To €"], "leave out '€'"),
    "prompt longer than the context": (
        lambda r: [r / "best.pt", "--prompt", "To be, or not to be"],
        "--prompt is 19 tokens, longer than the model's context of 16",
    ),
    "negative temperature": (
        lambda r: [r / "best.pt", "--temperature", -1],
        "--temperature must be between 0",
    ),
    "top_p 0": (lambda r: [r / "best.pt", "--top_p", 0], "--top_p must be in (0, 1]"),
    "no new tokens": (lambda r: [r / "best.pt", "--max_new_tokens", 0], "--max_new_tokens must be between 1"),
    "unknown option": (lambda r: [r / "best.pt", "--temp", 1], "unrecognized arguments: --temp"),
    "no GPU": (lambda r: [r / "best.pt", "--device", "cuda"], "CUDA is not available"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(case, run, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on every machine
    make_args, message = BAD_INPUTS[case]
    try:
        code = sample.main([str(a) for a in make_args(run)])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, f"{case}: exit {code}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}: {captured.err!r}"
    assert message in lines[0], f"{case}: {lines[0]!r}"
    assert captured.out == "", f"{case}: nothing is sampled"
