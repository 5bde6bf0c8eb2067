"""The reference runs (course/reference.py): a run finds the reference of its own
command and number type and no other, says at the end whether it is on track, and
draws the reference's curves in metrics.png on a log axis."""

import sys

import pytest
import torch
from conftest import ROOT, TINY_MODEL

import train_solution as train
from course import cli, reference
from course.corpus import SHAKESPEARE_SHA256
from course.logbook import draw_metrics

sys.path.insert(0, str(ROOT / "tools"))
import reference_runs  # noqa: E402

TINY = [*TINY_MODEL, "--eval_interval", "8", "--max_steps", "16", "--sample_tokens", "0"]


def tiny_reference(corpus_txt, tmp_path, capsys, monkeypatch) -> dict:
    """A tiny run made into the only reference run there is, as tools/reference_runs.py does."""
    save_dir = tmp_path / "reference"
    assert train.main([*TINY, "--data_path", str(corpus_txt), "--save_dir", str(save_dir)]) == 0
    output = capsys.readouterr().out
    ref = reference_runs.reference_of("tiny", TINY, output, 1.0, save_dir, "a test machine")
    monkeypatch.setattr(reference, "REFERENCE_FILE", tmp_path / "reference_runs.json")
    reference_runs.merge(reference.REFERENCE_FILE, [ref])
    return ref


def test_a_run_of_the_same_command_is_compared_with_its_reference(corpus_txt, tmp_path, capsys, monkeypatch):
    ref = tiny_reference(corpus_txt, tmp_path, capsys, monkeypatch)
    again = ["--data_path", str(corpus_txt), "--save_dir", str(tmp_path / "mine"), "--eval_interval", "4"]
    assert train.main([*TINY, *again]) == 0, "eval_interval and save_dir are not part of the recipe"
    out = capsys.readouterr().out
    final = ref["final"]["val_loss"]
    assert f"reference: the course's run of this command reached val {final:.3f} in bfloat16" in out or (
        f"reference: the course's run of this command reached val {final:.3f} in float32" in out
    )
    last_line = out.strip().splitlines()[-1]
    assert last_line.startswith(f"val {final:.3f} (") and last_line.endswith("on a test machine: on track"), (
        f"the same recipe and seed reach the same loss, so the run is on track: {last_line!r}"
    )


def test_another_learning_rate_has_no_reference(corpus_txt, tmp_path, capsys, monkeypatch):
    tiny_reference(corpus_txt, tmp_path, capsys, monkeypatch)
    other = ["--data_path", str(corpus_txt), "--save_dir", str(tmp_path / "other"), "--learning_rate", "1e-2"]
    assert train.main([*TINY, *other]) == 0
    out = capsys.readouterr().out
    assert "reference:" not in out
    last = out.strip().splitlines()[-1]
    assert "the course has no reference run of this command and number type: the nearest is `" in last
    assert "which differs in learning_rate (0.002 there)" in last, (
        f"the end-of-run line names the option that differs from the nearest reference: {last!r}"
    )


def test_a_run_on_other_text_is_compared_with_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "REFERENCE_FILE", tmp_path / "refs.json")
    reference_runs.merge(reference.REFERENCE_FILE, [{"name": "x", "machine": "m", "recipe": recipe_of()}])
    other_data = {**recipe_of(), "data_source": {"tokenizer": "char", "source_sha256": "cd"}}
    assert reference.nearest_reference(other_data) is None


def test_without_a_reference_the_nearest_one_is_named():
    """Another number type: the line says which --dtype has a reference; other options:
    the nearest reference's command and how this run differs from it, nearest first."""
    here = recipe_of()
    float32 = {"command": "python train_solution.py", "machine": "a 2-core AVX2 CPU",
               "recipe": {**here, "dtype": "float32"}}  # fmt: skip
    wide = {"command": "python train_solution.py --wide", "machine": "m",
            "recipe": {**here, "dtype": "float32", "hidden_size": 256}}  # fmt: skip
    nearest = reference.nearest_reference(here, references=[wide, float32])
    assert nearest == (float32, ["dtype"])
    line = reference.verdict(1.5, 2.1, None, nearest)
    assert line.endswith(
        "no reference run of this command and number type: add --dtype float32 to compare with the "
        "reference of `python train_solution.py` (float32, a 2-core AVX2 CPU)"
    ), line
    nearest = reference.nearest_reference({**here, "learning_rate": 3e-3}, references=[wide, float32])
    assert nearest == (float32, ["dtype", "learning_rate"])
    assert reference.verdict(1.5, 2.1, None, nearest).endswith(
        "the nearest is `python train_solution.py` (float32, a 2-core AVX2 CPU), which differs in "
        "dtype (float32 there), learning_rate (0.002 there)"
    )


def recipe_of(**changes):
    options = {"hidden_size": 128, "learning_rate": 2e-3, "save_dir": "out", "eval_interval": 300, **changes}
    schedule = cli.Schedule(1200, 120, 2e-4, 1200)
    return reference.recipe(options, schedule, "bfloat16", 1, {"tokenizer": "char", "source_sha256": "ab"})


def test_the_recipe_holds_what_changes_the_run_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "REFERENCE_FILE", tmp_path / "refs.json")
    reference_runs.merge(reference.REFERENCE_FILE, [{"name": "x", "machine": "m", "recipe": recipe_of()}])
    assert reference.find_reference(recipe_of(save_dir="mine", eval_interval=50)) is not None
    assert reference.find_reference(recipe_of(learning_rate=3e-3)) is None
    assert reference.find_reference(recipe_of(hidden_size=256)) is None
    other_dtype = {**recipe_of(), "dtype": "float32"}
    assert reference.find_reference(other_dtype) is None, "a reference is for one number type"
    other_data = {**recipe_of(), "data_source": {"tokenizer": "char", "source_sha256": "cd"}}
    assert reference.find_reference(other_data) is None, "and for one text"


def test_the_end_of_run_line_says_on_track_behind_or_ahead():
    ref = {
        "final": {"val_loss": 1.58, "val_bpb": 2.28},
        "recipe": {"dtype": "float32"},
        "machine": "a 2-core AVX2 CPU",
    }
    assert reference.verdict(1.583, 2.284, ref) == (
        "val 1.583 (2.284 bits/byte); the reference run of this command reached 1.580 (2.280 bits/byte) "
        "in float32 on a 2-core AVX2 CPU: on track"
    )
    assert reference.verdict(1.65, 2.38, ref).endswith(
        "behind by 0.070: metrics.png shows where this run's curve left the reference's"
    )
    assert reference.verdict(1.50, 2.16, ref).endswith("ahead by 0.080")
    assert "no reference run" in reference.verdict(1.5, 2.1, None)


def test_metrics_png_draws_the_reference_curves_behind_the_runs_on_a_log_axis():
    records = [
        {"step": 0, "val_loss": 4.4, "val_ppl": 81.0, "val_bpb": 6.3},
        {"step": 10, "loss": 3.0, "lr": 1e-3},
        {"step": 20, "loss": 2.5, "lr": 1e-3},
        {"step": 20, "val_loss": 2.6, "val_ppl": 13.5, "val_bpb": 3.7},
    ]
    ref = {
        "recipe": {"dtype": "bfloat16"},
        "machine": "a 2-core AMX CPU",
        "val_curve": [[0, 4.4], [10, 3.1], [20, 2.5]],
        "train_curve": [[10, 2.9], [20, 2.4]],
    }
    fig = draw_metrics(records, ref)
    ax_loss = fig.axes[0]
    assert ax_loss.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax_loss.get_lines()}
    ref_val = lines["reference val (bfloat16, a 2-core AMX CPU)"]
    assert list(ref_val.get_xdata()) == [0, 10, 20] and list(ref_val.get_ydata()) == [4.4, 3.1, 2.5]
    assert list(lines["reference train"].get_ydata()) == [2.9, 2.4]
    assert list(lines["validation"].get_ydata()) == [4.4, 2.6]
    assert "reference train" not in {line.get_label() for line in draw_metrics(records).axes[0].get_lines()}


@pytest.mark.parametrize(
    "ref", reference.load_references(), ids=lambda r: f"{r['name']}-{r['recipe']['dtype']}"
)
def test_the_committed_references_are_of_todays_commands(ref):
    """A changed default or preset makes the committed references stale: this fails
    until `python tools/reference_runs.py` has run them again."""
    argv = ref["command"].split()[2:]
    config = cli.continue_plan(cli.run_config(cli.parse_args(argv), torch.device(ref["device"])), None, None)[
        0
    ]
    today = {name: value for name, value in config.to_dict().items() if name not in reference.NOT_IN_RECIPE}
    saved = {name: ref["recipe"][name] for name in today if name in ref["recipe"]}
    assert saved == today, f"{ref['command']}: today's options differ from the reference's; run it again"
    assert set(ref["recipe"]) == set(recipe_of()) | set(today), f"{ref['command']}: other recipe fields"
    default_corpus = {"tokenizer": config.tokenizer, "source_sha256": SHAKESPEARE_SHA256}
    assert ref["recipe"]["data_source"] == default_corpus, "the references train on the default corpus"
    if "--epochs" not in argv:
        assert ref["recipe"]["total_steps"] == config.max_steps
    steps = [step for step, _ in ref["val_curve"]]
    assert steps[0] == 0 and steps[-1] == ref["recipe"]["total_steps"] == ref["final"]["step"]
    assert len(steps) >= 8, "enough validation points to show the curve's shape"


def test_every_number_type_auto_picks_has_a_reference_of_each_command():
    """On a CPU `--dtype auto` picks float32 or bfloat16 (AMX, AVX512_BF16): each command
    the course gives a learner has a reference in both, so every learner gets a verdict;
    on a GPU the main job has one in bfloat16 (Ampere and newer)."""
    have = {(ref["command"], ref["device"], ref["recipe"]["dtype"]) for ref in reference.load_references()}
    for args in reference_runs.COMMANDS.values():
        command = " ".join(["python train_solution.py", *args])
        for dtype in ("float32", "bfloat16"):
            assert (command, "cpu", dtype) in have, f"no reference of `{command}` in {dtype} on a CPU"
    assert ("python train_solution.py", "cuda", "bfloat16") in have, "no reference of the gpu preset"


def test_the_reference_runs_page_shows_every_reference_run():
    """docs/reference-runs.md ("Is my loss good?") holds the table of the committed runs."""
    page = (ROOT / "docs" / "reference-runs.md").read_text()
    missing = [
        ref["command"] for ref in reference.load_references() if reference_runs.table_row(ref) not in page
    ]
    assert not missing, (
        f"docs/reference-runs.md lacks the rows of {missing}: paste `python tools/reference_runs.py --table`"
    )
