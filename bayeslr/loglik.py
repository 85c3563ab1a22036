"""Pointwise log-likelihood of every run from posterior draws (for PSIS-LOO), in numpy.

Computed from the model's own formulas (bayeslr.curve and the per-config parameters the
model records), so it needs no compilation; tests check it against PyMC's
compute_log_likelihood. Only the per-run total is kept (memory: draws x runs floats).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr
from scipy.special import log_expit
from scipy.stats import t as student_t

from bayeslr import curve
from bayeslr.features import Features
from bayeslr.schema import DIMS
from bayeslr.spec import ModelSpec

RUN = "run"
"""Name of the per-run log-likelihood variable: log p(loss) + log p(diverged)."""


def run_loglik(post: xr.Dataset, features: Features, spec: ModelSpec,
               points: list) -> xr.Dataset:
    """log p(run_i | draw), dims (chain, draw, point): Student-t loss of a non-diverged run
    plus the Bernoulli divergence term (when the spec models divergence)."""
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    flat = {name: post[name].values.reshape((n_chain * n_draw,) + post[name].shape[2:])
            for name in post.data_vars}
    opt = features.config_optimizer[features.point_config]
    params = run_curve_params(flat, features)
    total = np.zeros((n_chain * n_draw, features.n_points))
    ok = ~features.diverged
    mean = params[curve.LOSS_MIN] + curve.loss_gap(features.log_lr, params)
    total[:, ok] = student_t.logpdf(features.loss[ok], df=spec.noise_nu, loc=mean[:, ok],
                                    scale=flat["noise_sd"][:, None])
    if spec.divergence:
        params[curve.DIV_OFFSET] = flat[curve.DIV_OFFSET][:, opt]
        params[curve.DIV_SCALE] = flat[curve.DIV_SCALE][:, None]
        logit = curve.divergence_logit(features.log_lr, params)
        total += log_expit(np.where(features.diverged, logit, -logit))
    values = total.reshape(n_chain, n_draw, features.n_points)
    return xr.Dataset({RUN: (("chain", "draw", DIMS.POINT), values)},
                      coords={"chain": post["chain"], "draw": post["draw"], DIMS.POINT: points})


def run_curve_params(values: Mapping[str, np.ndarray],
                     features: Features) -> dict[str, np.ndarray]:
    """Each run's curve parameters (..., point) from the model's per-configuration values
    (..., config: log eta*, curvatures, loss floor), per-optimizer wall (..., optimizer) and
    scalar ceilings (...), as the likelihood indexes them; `values` may hold posterior draws
    or a summary of them."""
    cfg = features.point_config
    params = {name: values[name][..., cfg] for name in (curve.LOG_ETA, curve.CURV_LEFT,
                                                        curve.CURV_RIGHT, curve.LOSS_MIN)}
    if curve.WALL in values:
        params[curve.WALL] = values[curve.WALL][..., features.config_optimizer[cfg]]
    if curve.CEIL_LOW in values:
        for name in (curve.CEIL_LOW, curve.CEIL_HIGH):
            params[name] = np.asarray(values[name])[..., None]
    return params
