"""tools/ablation.py: the plan of runs, warmups given as a share, the summary table,
and the score on every validation window (the training runs themselves are the CLI's)."""

import argparse
import sys

import pytest
import torch
from conftest import ROOT, tiny_gpt

sys.path.insert(0, str(ROOT / "tools"))
import ablation  # noqa: E402


def test_cumulative_plan_adds_each_variant_on_top_of_the_previous_ones():
    args = argparse.Namespace(cumulative=["rope", "relu2"], only=None)
    assert ablation.plan(args) == [
        ("baseline", []),
        ("baseline + rope", ["--position", "rope"]),
        ("baseline + rope + relu2", ["--position", "rope", "--mlp", "relu2"]),
    ]


def test_a_warmup_share_becomes_steps_once_the_steps_are_known():
    options = ["--optimizer", "muon", "--warmup_steps", "25%"]
    assert ablation.with_warmup(options, None) == ["--optimizer", "muon"], "left out for the calibration run"
    assert ablation.with_warmup(options, 1210) == ["--optimizer", "muon", "--warmup_steps", "302"]
    assert ablation.with_warmup(["--warmup_steps", "50"], 1000) == ["--warmup_steps", "50"]


def test_summary_averages_seeds_and_measures_the_gain_over_the_baseline():
    runs = [
        {"variant": name, "steps": steps, "ms_per_step": 10.0, "wall_s": 60.0, "val_bpb": bpb}
        for name, steps, bpb in [
            ("baseline", 100, 3.0),
            ("baseline", 110, 3.2),
            ("muon", 90, 2.5),
            ("muon", 90, 2.7),
        ]
    ]
    baseline, muon = ablation.summarise(runs)
    assert baseline["val_bpb"] == pytest.approx(3.1) and baseline["spread"] == pytest.approx(0.1)
    assert baseline["steps"] == 105 and baseline["seeds"] == 2
    assert muon["gain"] == pytest.approx(0.5), "the gain is the baseline's bits per byte minus the variant's"


def test_score_is_the_mean_loss_over_every_non_overlapping_window(tmp_path, monkeypatch):
    tokens = torch.randint(0, 32, (1000,))
    monkeypatch.setattr(ablation, "load_tokens", lambda prepared, split: tokens.numpy().astype("uint16"))
    monkeypatch.setattr(ablation, "SCORE_WINDOW", 16)
    model = tiny_gpt()
    torch.save({"model_config": model.config.to_dict(), "model": model.state_dict()}, tmp_path / "model.pt")
    n = 999 // 16
    x, y = tokens[: n * 16].view(n, 16), tokens[1 : n * 16 + 1].view(n, 16)
    with torch.no_grad():
        expected = model.eval()(x, targets=y)[1].item()
    assert ablation.score(tmp_path, tmp_path) == pytest.approx(expected, rel=1e-5)
