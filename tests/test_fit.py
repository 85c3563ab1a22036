"""Fitting end to end with real NUTS: diagnostics warnings that name the remedy, diverged runs
as censoring information, PSIS-LOO comparison of variants, and bad sweeps (what the data
cannot identify is said, what cannot be fitted is refused)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayeslr.errors import DataWarning, ModelError, SamplingWarning
from bayeslr.fit import compare, fit, loo, warn_diagnostics
from bayeslr.spec import ModelSpec
from tests.model_support import quiet_fit, small_fit, sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fitted():
    return small_fit()


@pytest.fixture(scope="module")
def log_linear(fitted):
    """The shared sweep fitted without curvature terms (same runs, another variant)."""
    return quiet_fit(fitted[0], ModelSpec(curvature=False))


def test_a_short_run_warns_and_names_the_remedy():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        posterior = fit(sweep(), draws=25, tune=25, chains=2, seed=0, progressbar=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, SamplingWarning)]
    assert not posterior.diagnostics()["ok"]
    assert any("min bulk ESS" in m and "run more draws" in m for m in messages), messages


def test_divergence_warning_names_target_accept():
    diag = {"rhat_max": 1.0, "rhat_worst": "x", "ess_bulk_min": 1000.0, "ess_worst": "x",
            "n_divergences": 3}
    with pytest.warns(SamplingWarning, match="3 divergent transitions.*raise target_accept"):
        warn_diagnostics(diag)
    assert warn_diagnostics({**diag, "n_divergences": 0}) == []


def test_diverged_runs_bound_the_optimum_from_above():
    """Keep, per configuration, only the non-diverged runs at or below the true optimum and
    every diverged run: the losses then say little about how far above them eta* lies, and
    the divergences must supply the upper bound (censoring), tightening it."""
    sim = sweep(seed=5)
    table = sim.frame()
    true = table["config_id"].map(sim.truth["log_eta"])
    keep = table["diverged"] | (np.log(table["lr"]) <= true + 0.1)
    table = table[keep]
    with_div = quiet_fit(table, draws=300, tune=300)
    without = quiet_fit(table[~table["diverged"]], ModelSpec(divergence=False),
                        draws=300, tune=300)
    shared = with_div.configs().index.intersection(without.configs().index)
    censored = [c for c in shared
                if with_div.configs().loc[c, "n_diverged"] > 0]
    assert len(censored) >= 5
    upper = with_div.configs().loc[censored, "log_eta_q95"]
    upper_without = without.configs().loc[censored, "log_eta_q95"]
    assert (upper < upper_without).mean() >= 0.7, (upper - upper_without).describe()
    truth = sim.truth.loc[censored, "log_eta"]
    assert (upper >= truth).mean() >= 0.8  # tighter, and still above the truth


def test_compare_ranks_variants_by_psis_loo(fitted, log_linear):
    _, curved = fitted
    table = compare({"curvature": curved, "log-linear": log_linear})
    assert set(table.index) == {"curvature", "log-linear"}
    assert {"rank", "elpd", "p", "elpd_diff", "weight", "se", "dse"} <= set(table.columns)
    best = table.index[table["rank"] == 0][0]
    assert table.loc[best, "elpd_diff"] == 0.0 and table["elpd"].idxmax() == best
    assert np.isfinite(table["elpd"]).all()
    se = max(float(table.loc["curvature", "se"]), 1.0)  # compare rounds elpd to its se
    assert loo(curved).elpd == pytest.approx(table.loc["curvature", "elpd"], abs=se)
    assert table["weight"].sum() == pytest.approx(1.0, abs=0.02)


@pytest.fixture(scope="module")
def single_size():
    """(posterior, data warnings) of a sweep with one model size."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        posterior = fit(sweep(n_params=(8e5,), seed=2), draws=200, tune=200, chains=2,
                        seed=1, progressbar=False)
    return posterior, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


def test_compare_refuses_posteriors_of_different_runs(fitted, single_size):
    with pytest.raises(ModelError, match="different runs"):
        compare([fitted[1], single_size[0]])
    with pytest.raises(ModelError, match="at least two"):
        compare([single_size[0]])


def test_a_single_model_size_fits_and_says_the_n_exponent_is_not_identified(single_size):
    posterior, notes = single_size
    assert any("exponent of N not identified: one model size" in n for n in notes)
    assert "n_params" not in posterior.covariates
    assert set(posterior.exponents().data_vars) == {"tokens", "batch_size"}
    target = pd.DataFrame({"n_params": [8e5, 8e7], "tokens": [1e8] * 2, "batch_size": [32] * 2,
                           "optimizer": ["adamw"] * 2})
    draws = posterior.draw_curve_params(target)
    assert draws["extrapolation"].values[0] == 0
    assert draws["extrapolation"].values[1] == pytest.approx(np.log(100))


@pytest.mark.parametrize("break_it, match", [
    (lambda t: t.assign(diverged=True, loss=np.nan), "all .* runs diverged"),
    (lambda t: t.groupby("config_id").head(1), "single LR"),
    (lambda t: t.iloc[0:0], "empty"),
])
def test_unfittable_sweeps_are_refused_before_sampling(break_it, match):
    with pytest.raises(ModelError, match=match):
        fit(break_it(sweep().frame()), progressbar=False)


def test_duplicates_and_nan_losses_are_cleaned_and_the_fit_runs():
    table = sweep(seed=4).frame()
    ok = table.index[~table["diverged"]]
    table.loc[ok[:2], "loss"] = np.nan
    doubled = pd.concat([table, table.iloc[:4]], ignore_index=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        posterior = fit(doubled, draws=100, tune=100, chains=2, seed=0, progressbar=False)
    notes = " | ".join(str(w.message) for w in caught if issubclass(w.category, DataWarning))
    assert "dropped 4 duplicated run(s)" in notes and "dropped 2 run(s) not marked" in notes
    assert posterior.features.n_points == len(table) - 2
    assert np.isfinite(posterior.idata["log_likelihood"].dataset["run"].values).all()


_DRAWS_DIGEST = """
import hashlib, sys, warnings
from bayeslr.fit import fit
from tests.model_support import sweep
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    posterior = fit(sweep(), draws=30, tune=30, chains=1, seed=5, progressbar=False)
values = posterior.idata.posterior.dataset["log_eta"].values
print(hashlib.sha256(values.tobytes()).hexdigest())
"""


def test_a_first_compilation_and_a_cached_one_give_the_same_draws(tmp_path):
    """Seeds fix a fit on a fresh install as on later runs: the second process loads the
    sampler's compiled pieces from the cache the first one wrote (bayeslr.fit.reproducible_numba;
    with fast-math the two gave different draws)."""
    env = {**os.environ, "PYTENSOR_FLAGS": f"base_compiledir={tmp_path}"}

    def digest() -> str:
        run = subprocess.run([sys.executable, "-c", _DRAWS_DIGEST], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=600, check=True)
        return run.stdout.strip().splitlines()[-1]

    first = digest()
    assert any((tmp_path / "numba").iterdir())  # the first process filled the cache
    assert digest() == first
