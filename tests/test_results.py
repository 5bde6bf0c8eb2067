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


def memory_results() -> dict:
    return json.loads((RESULTS / "memory.json").read_text())


def memory_row(row: dict) -> str:
    return (f"| {row['setup']} | {row['processes']} | {row['optimizer']} | {row['peak_mb']:,.0f} | "
            f"{row['state_mb']:,.0f} |")  # fmt: skip


def memory_rows(optimizer: str) -> dict[tuple[str, int], dict]:
    """The committed measurement of each (setup, processes) with `optimizer`."""
    rows = memory_results()["setups"]
    return {(row["setup"], row["processes"]): row for row in rows if row["optimizer"] == optimizer}


def test_the_readme_shows_every_committed_memory_figure():
    for row in memory_results()["setups"]:
        assert memory_row(row) in README, (
            f"the results page lacks {row['setup']} × {row['processes']} with {row['optimizer']}"
        )


def test_fsdp_memory_falls_with_the_processes_as_the_zero_arithmetic_predicts():
    """Going from 2 to 4 FSDP processes saves 16·P/2 - 16·P/4 = 4·P bytes per process, and
    DDP → FSDP at 2 processes 16·P - 16·P/2 = 8·P; measured within 25% of that (AdamW)."""
    params = memory_results()["params"]
    peak = {setup: row["peak_mb"] * 1e6 for setup, row in memory_rows("adamw").items()}
    for (more, fewer), predicted in [((("FSDP", 2), ("FSDP", 4)), 4 * params),
                                     ((("DDP", 2), ("FSDP", 2)), 8 * params)]:  # fmt: skip
        saved = peak[more] - peak[fewer]
        assert abs(saved / predicted - 1) < 0.25, (
            f"{more} → {fewer} saved {saved / 1e6:.0f} MB a process, the arithmetic {predicted / 1e6:.0f} MB"
        )
    checkpointed = peak[("FSDP + activation checkpointing", 2)]
    assert checkpointed < peak[("FSDP", 2)] - 0.5 * (peak[("FSDP", 2)] - 16 * params / 2), (
        "activation checkpointing should save at least half of what is not the model's state"
    )


def test_muon_peaks_no_higher_than_adamw_under_fsdp():
    """Muon keeps one momentum where Adam keeps two moments, and under FSDP each process
    orthogonalises only its share of the matrices: at 2 and 4 FSDP processes the peak of
    every process is no higher with Muon than with AdamW."""
    adamw, muon = memory_rows("adamw"), memory_rows("muon")
    for setup in [("FSDP", 2), ("FSDP", 4)]:
        with_adamw, with_muon = adamw[setup]["peak_mb_each"], muon[setup]["peak_mb_each"]
        assert all(m <= a for m, a in zip(with_muon, with_adamw, strict=True)), (
            f"{setup}: peak per process with Muon {with_muon} MB, with AdamW {with_adamw} MB"
        )
