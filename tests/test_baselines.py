"""The yardsticks: a measured sweep's optimum and off-grid loss, and the OLS argmin law."""

import numpy as np
import pandas as pd
import pytest

from bayeslr.baselines import fit_ols_law, measured_loss, regret, sweep_optimum
from bayeslr.errors import ModelError

GRID = np.geomspace(1e-4, 1.0, 9)


def parabola_sweep(log_opt: float, *, diverge_above: float = np.inf):
    """Loss = 2 + 0.1 (ln lr - log_opt)^2 on GRID; runs above `diverge_above` diverge."""
    lr = GRID
    loss = 2.0 + 0.1 * (np.log(lr) - log_opt) ** 2
    diverged = lr > diverge_above
    return lr, np.where(diverged, np.nan, loss), diverged


def test_optimum_between_grid_points_is_recovered_from_the_local_quadratic():
    lr, loss, div = parabola_sweep(np.log(2e-3))
    opt = sweep_optimum(lr, loss, div)
    assert opt.lr_opt == pytest.approx(2e-3, rel=1e-6)
    assert opt.loss_opt == pytest.approx(2.0, abs=1e-9)
    assert opt.lr_argmin == pytest.approx(lr[np.argmin(loss)])
    assert opt.lr_argmin != pytest.approx(2e-3, rel=0.1)


def test_measured_loss_follows_the_curve_and_counts_divergence():
    lr, loss, div = parabola_sweep(np.log(1e-2), diverge_above=0.05)
    opt = sweep_optimum(lr, loss, div)
    assert measured_loss(opt, 1e-2) == pytest.approx(2.0, abs=1e-9)
    assert measured_loss(opt, 5e-3) == pytest.approx(2.0 + 0.1 * np.log(2) ** 2, abs=1e-9)
    assert measured_loss(opt, 0.2) == np.inf
    assert regret(opt, 0.2, divergence_loss=5.5) == pytest.approx(3.5, abs=1e-9)
    assert regret(opt, 1e-2, divergence_loss=5.5) == pytest.approx(0.0, abs=1e-9)
    far = measured_loss(opt, 1e-4 * 1.5)
    assert np.interp(np.log(1.5e-4), np.log(GRID[:2]), loss[:2]) == pytest.approx(far)


@pytest.mark.parametrize("lr", [np.nan, 0.0, -1e-3, np.inf])
def test_regret_of_a_missing_or_invalid_lr_is_refused_not_zero(lr):
    opt = sweep_optimum(*parabola_sweep(np.log(1e-2)))
    with pytest.raises(ModelError, match="finite LR > 0"):
        regret(opt, lr, divergence_loss=5.5)


def test_a_sweep_with_fewer_than_two_stable_runs_is_refused():
    lr, loss, _ = parabola_sweep(0.0)
    with pytest.raises(ModelError, match="2 stable runs below"):
        sweep_optimum(lr, loss, lr > 2e-4)


def test_runs_past_a_divergence_are_not_read_as_the_curve():
    lr, loss, div = parabola_sweep(np.log(1e-2), diverge_above=0.05)
    clean = sweep_optimum(lr, loss, div)
    erratic = loss.copy()
    erratic[-1] = 2.0  # a lucky run above the stability edge
    opt = sweep_optimum(lr, erratic, div)
    assert opt.lr_opt == pytest.approx(clean.lr_opt) and opt.lr_argmin == clean.lr_argmin
    assert measured_loss(opt, lr[-1]) == np.inf


def test_seeds_at_one_lr_are_averaged_and_any_divergence_counts():
    lr, loss, div = parabola_sweep(np.log(2e-3), diverge_above=0.05)
    shift = 0.01 * np.cos(np.arange(9))  # seed noise, opposite in the two seeds
    both = sweep_optimum(np.r_[lr, lr], np.r_[loss + shift, loss - shift], np.r_[div, div])
    assert both.lr_opt == pytest.approx(2e-3, rel=1e-6)
    assert len(both.log_lr) == 6  # 6 stable LRs, not 12 runs
    one_diverged = np.r_[div, lr > 0.01]  # the second seed diverges one LR earlier
    edge = sweep_optimum(np.r_[lr, lr], np.r_[loss, np.where(lr > 0.01, np.nan, loss)],
                         one_diverged)
    assert edge.first_diverged_log_lr == pytest.approx(np.log(lr[lr > 0.01][0]))
    assert measured_loss(edge, lr[lr > 0.01][0]) == np.inf


def test_a_narrower_window_reads_an_asymmetric_curve_closer_to_its_optimum():
    """Quadratic near the optimum, flat from a factor e below it (a long run's loss
    barely rising at small LRs): points two grid steps away pull a 5-point quadratic's
    vertex towards the flat side; the 3-point one is exact. Grid step: a factor 3.16."""
    u = np.log(GRID) - np.log(2e-3)
    loss = 2.0 + 0.1 * np.minimum(u, 0.0).clip(-1.0) ** 2 + 0.1 * np.maximum(u, 0.0) ** 2
    wide = sweep_optimum(GRID, loss, np.zeros(9, bool))
    narrow = sweep_optimum(GRID, loss, np.zeros(9, bool), window=1)
    assert narrow.lr_opt == pytest.approx(2e-3, rel=1e-6)
    assert wide.lr_opt < 0.8 * 2e-3
    assert narrow.window[1] - narrow.window[0] == pytest.approx(np.log(10))  # two steps
    with pytest.raises(ModelError, match="window must be >= 1"):
        sweep_optimum(GRID, loss, np.zeros(9, bool), window=0)


def test_a_non_convex_neighbourhood_falls_back_to_the_grid():
    loss = np.array([2.40, 2.45, 2.46, 2.47, 2.48, 2.49, 2.5, 2.6, 2.7])  # flattening: concave
    opt = sweep_optimum(GRID, loss, np.zeros(9, bool))
    assert opt.lr_opt == opt.lr_argmin == pytest.approx(GRID[0]) and opt.loss_opt == 2.4
    assert regret(opt, GRID[0], divergence_loss=5.5) == 0.0
    assert regret(opt, GRID[2], divergence_loss=5.5) == pytest.approx(0.06)


def test_ols_law_recovers_a_power_law_and_ignores_constant_covariates():
    n = np.array([1e4, 3e4, 1e5, 3e5])
    optima = pd.DataFrame({"optimizer": "adamw", "n_params": n, "tokens": 1e6,
                           "lr_argmin": 0.5 * n ** -0.3})
    law = fit_ols_law(optima, ("n_params", "tokens"))
    assert law.coefficients["adamw"][1] == pytest.approx(-0.3)
    assert law.coefficients["adamw"][2] == 0.0
    target = pd.DataFrame({"optimizer": ["adamw"], "n_params": [1e7], "tokens": [1e9]})
    assert law.predict(target)[0] == pytest.approx(0.5 * 1e7 ** -0.3)
    with pytest.raises(ModelError, match="not fitted"):
        law.predict(target.assign(optimizer="sgd"))
