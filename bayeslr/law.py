"""The scaling law for log eta*, written once for both PyTensor (the model) and numpy (the
posterior's predictions), so a prediction uses exactly the model's formula.

In standardized units z (see design.py), for a configuration with optimizer o and family f:

    mean log eta* = a_o + a_f + sum_k (b_ok + b_fk) z_k + sum_j c_j q_j

where q_j are the curvature columns (z_N^2, z_D^2, z_N z_D), and c_j becomes c_j + c_oj with
per-optimizer curvature. Arrays may carry leading sample dimensions (...); only indexing with
[..., idx], products and sums over the last axis are used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

INTERCEPT = "intercept"
"""(optimizer,) log eta* at the data's centre, per optimizer."""
SLOPE = "slope"
"""(optimizer, covariate) d log eta* / d z per optimizer (standardized units)."""
FAMILY_INTERCEPT = "family_intercept"
"""(family,) offset of log eta* per architecture family (present with >= 2 families)."""
FAMILY_SLOPE = "family_slope"
"""(family, covariate) slope offsets per architecture family."""
CURVATURE = "curvature"
"""(term,) coefficients of the curvature columns (standardized units)."""
CURVATURE_OPTIMIZER = "curvature_optimizer"
"""(optimizer, term) departures of each optimizer's curvature coefficients from the shared
ones (present with ModelSpec.optimizer_curvature and >= 2 optimizers)."""
RESID_SD = "resid_sd"
"""Scatter of a configuration's log eta* around the law (natural-log units)."""


def config_intercept(theta: Mapping[str, Any], opt: Any, fam: Any) -> Any:
    """(..., n) intercept of each configuration: optimizer plus family offset."""
    out = theta[INTERCEPT][..., opt]
    if FAMILY_INTERCEPT in theta:
        out = out + theta[FAMILY_INTERCEPT][..., fam]
    return out


def config_slope(theta: Mapping[str, Any], opt: Any, fam: Any) -> Any:
    """(..., n, K) slopes of each configuration: optimizer plus family offsets."""
    out = theta[SLOPE][..., opt, :]
    if FAMILY_SLOPE in theta:
        out = out + theta[FAMILY_SLOPE][..., fam, :]
    return out


def law_mean(theta: Mapping[str, Any], z: Any, q: Any, opt: Any, fam: Any) -> Any:
    """(..., n) mean log eta* of n configurations with design z (n, K), q (n, J); slope and
    curvature terms are used when theta has them (no covariates / no curvature: omitted)."""
    out = config_intercept(theta, opt, fam)
    if SLOPE in theta:
        out = out + (config_slope(theta, opt, fam) * z).sum(axis=-1)
    if CURVATURE in theta:
        coefficients = theta[CURVATURE][..., None, :]
        if CURVATURE_OPTIMIZER in theta:
            coefficients = coefficients + theta[CURVATURE_OPTIMIZER][..., opt, :]
        out = out + (coefficients * q).sum(axis=-1)
    return out
