"""How tightly sweeps pin their optima against how much they scatter: the estimates, and the
centred / non-centred choice they drive (simulated sweeps with a known scatter, and the
shipped reference sweep)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from bayeslr.datasets import reference_jsonl
from bayeslr.features import build_features
from bayeslr.fit import as_table
from bayeslr.model import STRONG_CONFIG_POINTS, parameterization
from bayeslr.pinning import pinning
from bayeslr.simulate import TrueLaw, simulate_sweep
from bayeslr.spec import ModelSpec


def features(table, spec=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_features(table, spec or ModelSpec(), warn=False)


def simulated(resid_sd: float, seed: int = 0):
    """Two seeds x 7 LRs per config (many stable runs), 48 configs, a known scatter."""
    law = dataclasses.replace(TrueLaw.example(("adamw", "sgd")), resid_sd=resid_sd)
    sweep = simulate_sweep(law, n_params=(1e5, 4e5, 1.6e6, 6.4e6), tokens=(5e7, 1e8, 2e8),
                           batch_sizes=(16, 64), n_lrs=7, seeds=2, seed=seed)
    return features(sweep.frame())


def stable_runs_per_config(f) -> float:
    ok = ~f.diverged
    return float(np.median(np.bincount(f.point_config[ok], minlength=f.n_configs)))


@pytest.mark.parametrize("seed", [0, 1])
def test_scatter_of_optima_is_ordered_like_the_truth_and_errors_do_not_pass_for_it(seed):
    tight, loose = pinning(simulated(0.02, seed)), pinning(simulated(0.3, seed))
    assert tight.n_fits >= 40 and loose.n_fits >= 40
    assert tight.optimum_scatter < 0.05  # truth 0.02: the vertices' own errors taken out
    assert 0.15 < loose.optimum_scatter < 0.45  # truth 0.3
    for p in (tight, loose):  # the same grids and noise pin the optima alike
        assert 0.03 < p.optimum_se < 0.1
    assert not tight.optima_pinned and loose.optima_pinned


def test_many_runs_that_scatter_little_are_sampled_non_centred():
    f_tight, f_loose = simulated(0.02), simulated(0.3)
    for f in (f_tight, f_loose):
        assert stable_runs_per_config(f) >= STRONG_CONFIG_POINTS  # the counts alone: centred
    assert "log_eta" not in parameterization(f_tight)
    assert "log_eta" in parameterization(f_loose)


def test_reference_sweep_with_both_seeds_samples_optima_and_curvatures_non_centred():
    runs = as_table(reference_jsonl())
    small = runs[runs["n_params"].isin(sorted(runs["n_params"].unique())[:3])]
    spec = ModelSpec(covariates=("n_params", "tokens", "batch_size"))
    both = features(small, spec)
    assert stable_runs_per_config(both) >= STRONG_CONFIG_POINTS
    pins = pinning(both)
    assert pins.optimum_se > pins.optimum_scatter
    assert pins.curvature_se > pins.curvature_scatter
    assert parameterization(both) == {"loss_min"}


def test_too_few_usable_sweeps_fall_back_to_counting_runs():
    law = TrueLaw.example(("adamw",))
    sweep = simulate_sweep(law, n_params=(1e5, 1e6), tokens=(1e8,), n_lrs=7, seeds=2, seed=0)
    f = features(sweep.frame())
    assert pinning(f) is None  # 2 configs: no scatter to measure
    assert {"log_eta", "curv"} <= parameterization(f)
