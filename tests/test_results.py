"""The committed measurements (tools/results/*.json) and the results page (tools/results/README.md)
agree: a rerun of tools/ablation.py or tools/scaling.py that changes a figure must change the page too."""

import json

import pytest
from conftest import ROOT

RESULTS = ROOT / "tools" / "results"
README = (ROOT / "tools" / "results" / "README.md").read_text()


@pytest.mark.parametrize("name", ["ablation.json", "ablation_supplement.json"])
def test_the_readme_shows_every_ablation_row_as_committed(name):
    ablation = json.loads((RESULTS / name).read_text())
    assert ablation["rows"][0]["variant"] == "baseline", "each run is measured against its own baseline"
    for row in ablation["rows"]:
        bpb = f"{row['val_bpb']:.3f} ± {row['spread']:.3f}"
        figure = f"| {row['steps']:.0f} | {row['ms_per_step']:.0f} | {bpb} |"
        assert figure in README, f"the README's ablation table lacks {row['variant']}: {figure}"


def test_the_readme_shows_the_committed_scaling_fit():
    scaling = json.loads((RESULTS / "scaling.json").read_text())
    assert len(scaling["optimal_n"]) == len(scaling["budgets"]), "every budget should have a fitted optimum"
    assert f"C^{scaling['exponent']:.2f}" in README
    for n_opt in scaling["optimal_n"].values():
        assert f"{n_opt / 1000:.1f}K" in README, f"the README's scaling table lacks N_opt = {n_opt:,}"
