"""tools/scaling.py: the iso-FLOP step counts and the fits of the optimum and its exponent."""

import sys

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import scaling  # noqa: E402


def test_each_size_gets_the_steps_that_spend_the_budget():
    model = scaling.make_model(32, vocab_size=85)
    n = model.num_params()
    steps = scaling.steps_for(1e12, n)
    assert abs(6 * n * steps * scaling.TOKENS_PER_STEP - 1e12) <= 6 * n * scaling.TOKENS_PER_STEP, (
        "6 N D with D = steps × tokens per step should be the budget, to within one step"
    )
    assert model.config.n_head == 2 and scaling.make_model(8, 85).config.n_head == 1


def test_the_fitted_optimum_is_the_vertex_of_the_parabola_in_log_n():
    true_optimum = 3e4
    sizes = [1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6]
    points = [(n, 2.0 + 0.3 * (np.log10(n) - np.log10(true_optimum)) ** 2) for n in sizes]
    assert scaling.fit_optimum(points) == pytest.approx(true_optimum, rel=1e-6)


def test_no_optimum_when_the_best_size_is_at_an_edge():
    falling = [(1e3, 3.0), (1e4, 2.5), (1e5, 2.2)]
    assert scaling.fit_optimum(falling) is None, "the smallest loss at the largest size is not a minimum"
    assert scaling.fit_optimum([(1e3, 3.0), (1e4, 2.5)]) is None, "two points fit no parabola"


def test_the_exponent_is_the_slope_of_log_n_opt_against_log_c():
    optima = {c: 7.0 * c**0.5 for c in (1e11, 1e12, 1e13)}
    assert scaling.fit_exponent(optima) == pytest.approx(0.5)
    assert scaling.fit_exponent({1e12: 5e4}) is None
