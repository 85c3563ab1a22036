"""The loss curve and the scaling law: oracle values, and one formula for numpy, xarray and
PyTensor (the model and the answers must compute exactly the same thing)."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import xarray as xr

from bayeslr import curve, law

PARAMS = {"log_eta": -6.0, "curv_left": 0.05, "curv_right": 0.2, "div_offset": 1.0,
          "div_scale": 0.25}


def test_loss_gap_oracle_values():
    u = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    gap = curve.loss_gap(-6.0 + u, PARAMS)
    np.testing.assert_allclose(gap, [0.2, 0.05, 0.0, 0.2, 0.8])
    walled = curve.loss_gap(-6.0 + u, {**PARAMS, "wall": 0.5})
    np.testing.assert_allclose(walled, [0.2, 0.05, 0.0, 0.2 * 1.5, 0.8 * 2.0])


def test_saturating_curve_levels_off_at_its_ceilings():
    ceilings = {**PARAMS, "loss_min": 2.0, "ceiling_low": 3.0, "ceiling_high": 2.5}
    u = np.array([-2.0, 0.0, 2.0, 1e3, -1e3])
    gap = curve.loss_gap(-6.0 + u, ceilings)
    low, high = 0.5 * (1 + (1 + 0.05**2) ** 0.5), 0.5 * (0.5 + (0.25 + 0.05**2) ** 0.5)
    np.testing.assert_allclose(gap[:3], [0.2 * low / (low + 0.2), 0.0,
                                         0.8 * high / (high + 0.8)])
    np.testing.assert_allclose(gap[3:], [high, low], rtol=1e-3)  # far away: the ceilings
    near = curve.loss_gap(-6.0 + np.array([-0.01, 0.01]), ceilings)
    np.testing.assert_allclose(near, curve.loss_gap(-6.0 + np.array([-0.01, 0.01]), PARAMS),
                               rtol=1e-3)  # the quadratic at the optimum
    below_floor = curve.loss_gap(-4.0, {**ceilings, "ceiling_high": 1.5})
    assert 0 < below_floor < 0.025  # a ceiling under the floor leaves that side almost flat


def test_divergence_probability_is_a_logistic_boundary_above_the_optimum():
    p = curve.divergence_prob(np.array([-6.0, -5.0, -4.0]), PARAMS)
    np.testing.assert_allclose(p[1], 0.5)
    assert p[0] < 0.02 < 0.98 < p[2]


def test_curve_broadcasts_xarray_by_name_and_numpy_by_position():
    draws = {k: xr.DataArray(np.full(3, v), dims="sample") for k, v in PARAMS.items()}
    lr = xr.DataArray(np.linspace(-8, -4, 5), dims="lr")
    gap = curve.loss_gap(lr, draws)
    assert set(gap.dims) == {"sample", "lr"} and gap.sizes == {"sample": 3, "lr": 5}
    numpy = curve.loss_gap(np.linspace(-8, -4, 5)[None, :],
                           {k: np.full((3, 1), v) for k, v in PARAMS.items()})
    np.testing.assert_allclose(numpy, gap.transpose("sample", "lr").values)


def test_curve_and_law_are_the_same_formula_in_pytensor():
    rng = np.random.default_rng(0)
    n_opt, n_fam, k, j, n = 3, 2, 3, 2, 7
    theta = {law.INTERCEPT: rng.normal(size=n_opt), law.SLOPE: rng.normal(size=(n_opt, k)),
             law.FAMILY_INTERCEPT: rng.normal(size=n_fam),
             law.FAMILY_SLOPE: rng.normal(size=(n_fam, k)), law.CURVATURE: rng.normal(size=j),
             law.CURVATURE_OPTIMIZER: rng.normal(size=(n_opt, j))}
    z, q = rng.normal(size=(n, k)), rng.normal(size=(n, j))
    opt, fam = rng.integers(0, n_opt, n), rng.integers(0, n_fam, n)
    symbols = {name: pt.tensor(name, shape=(None,) * v.ndim) for name, v in theta.items()}
    fn = pytensor.function(list(symbols.values()), law.law_mean(symbols, z, q, opt, fam))
    stacked = {name: np.stack([v, 2 * v]) for name, v in theta.items()}  # leading sample axis
    expected = law.law_mean(stacked, z, q, opt, fam)
    np.testing.assert_allclose(fn(*theta.values()), expected[0])
    by_hand = theta[law.INTERCEPT][opt] + theta[law.FAMILY_INTERCEPT][fam] + (
        (theta[law.SLOPE][opt] + theta[law.FAMILY_SLOPE][fam]) * z).sum(1) + q @ theta[
        law.CURVATURE] + (q * theta[law.CURVATURE_OPTIMIZER][opt]).sum(1)
    np.testing.assert_allclose(expected[0], by_hand)

    x = pt.vector("x")
    grid = np.linspace(-9, -3, 13)
    for shape in ({"wall": 0.3}, {"loss_min": 2.0, "ceiling_low": 3.0, "ceiling_high": 2.5}):
        gap = pytensor.function([x], curve.loss_gap(x, {**PARAMS, **shape}))
        np.testing.assert_allclose(gap(grid), curve.loss_gap(grid, {**PARAMS, **shape}))
