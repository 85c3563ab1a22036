"""The calibration oracle: exact posterior predictive of a simulated law given its true optima."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import multivariate_normal

from bayeslr.calibration import OPTIMIZERS, simulated_dataset
from bayeslr.oracle import _conditional, _covariates, _design, _prior_moments, oracle_pit


def _dataset(seed: int) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """The calibration benchmark's truths for one seed: configurations, targets, truth."""
    data = simulated_dataset(seed)
    return data.sweep.truth, data.targets, data.targets["truth"].to_numpy()


def test_oracle_intervals_cover_at_the_nominal_rate_over_drawn_laws():
    pits = np.concatenate([oracle_pit(*_dataset(seed), OPTIMIZERS, draws=1000, seed=seed)[0]
                           for seed in range(100)])
    assert len(pits) == 800
    # exact inference: PIT uniform. Measured 0.520 / 0.915, mean PIT 0.483; when the sweep
    # was seeded with the law's own seed (its residuals copies of the law's draws), 0.405 at 50%
    assert abs(np.mean(np.abs(pits - 0.5) <= 0.25) - 0.5) < 0.07
    assert abs(np.mean(np.abs(pits - 0.5) <= 0.45) - 0.9) < 0.04
    assert abs(pits.mean() - 0.5) < 0.04


def test_conditional_matches_the_conjugate_posterior_in_precision_form():
    configs, targets, _ = _dataset(3)
    x_fit, x_new = _covariates(configs, OPTIMIZERS), _covariates(targets, OPTIMIZERS)
    y = configs["log_eta"].to_numpy(float)
    spreads, scatter = np.array([[0.2, 0.05, 0.3]]), np.array([0.15])
    log_lik, mean, sd = _conditional(x_fit, x_new, y, spreads, scatter)
    mean0, var0 = _prior_moments(len(OPTIMIZERS))
    a, b = _design(x_fit, spreads)[0], _design(x_new, spreads)[0]
    precision = np.diag(1 / var0) + a.T @ a / scatter[0] ** 2
    cov = np.linalg.inv(precision)
    post = cov @ (mean0 / var0 + a.T @ y / scatter[0] ** 2)
    np.testing.assert_allclose(mean[0], b @ post, rtol=1e-8)
    np.testing.assert_allclose(sd[0], np.sqrt(np.diag(b @ cov @ b.T) + scatter[0] ** 2),
                               rtol=1e-8)
    marginal = multivariate_normal(a @ mean0, a @ np.diag(var0) @ a.T
                                   + scatter[0] ** 2 * np.eye(len(y)))
    assert log_lik[0] == pytest.approx(marginal.logpdf(y) + 0.5 * len(y) * np.log(2 * np.pi))


def test_the_design_reproduces_the_simulated_law_exactly():
    data = simulated_dataset(4)
    law = data.law
    exponents = np.array([law.exponents[o] for o in OPTIMIZERS])
    # the coefficients in _design's order, with unit spreads: intercepts, mean exponents
    # (zero: the deviations carry each optimizer's whole exponent), deviations, curvature
    coefficients = np.concatenate([[law.log_eta_ref[o] for o in OPTIMIZERS], np.zeros(3),
                                   exponents.ravel(), law.curvature])
    for frame in (data.sweep.truth, data.targets):
        design = _design(_covariates(frame, OPTIMIZERS), np.ones((1, 3)))[0]
        expected = law.log_eta(frame["n_params"], frame["tokens"], frame["batch_size"],
                               frame["optimizer"])
        np.testing.assert_allclose(design @ coefficients, expected, atol=1e-12)


def test_importance_draws_are_reported_and_seeded():
    data = _dataset(1)
    pit, ess = oracle_pit(*data, OPTIMIZERS, draws=800, seed=1)
    again, _ = oracle_pit(*data, OPTIMIZERS, draws=800, seed=1)
    np.testing.assert_array_equal(pit, again)
    assert 100 < ess <= 800
    assert ((pit > 0) & (pit < 1)).all()


def test_an_optimizer_the_law_does_not_have_is_refused_by_name():
    configs, targets, truth = _dataset(0)
    with pytest.raises(ValueError, match="lion"):
        oracle_pit(configs, targets.assign(optimizer="lion"), truth, OPTIMIZERS)
