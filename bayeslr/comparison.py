"""Compare optimizers: their scaling exponents and their optimal LR at a target.

The exponents are the posterior draws of d ln(eta*) / d ln(x) per optimizer at the data's
centre (x = n_params, tokens, batch_size, ...), from ``Posterior.exponents()``. For every pair
of optimizers (a, b) and every covariate the comparison reports the posterior of the
difference and P(exponent_a > exponent_b); at a target it reports eta* per optimizer, the
risk-aware recommendation and its expected penalty, and P(eta*_a > eta*_b).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayeslr.answers import draw, mass_label, summarize_log_eta
from bayeslr.decisions import DIVERGENCE_COST, recommend
from bayeslr.errors import PosteriorError
from bayeslr.schema import DIMS
from bayeslr.targets import EXTRAPOLATION_WARN


@dataclass(frozen=True)
class OptimizerComparison:
    """Tables of a comparison; `to_dict()` gives plain JSON-ready data."""

    exponents: pd.DataFrame
    """One row per (optimizer[, family], covariate): median and central interval."""
    contrasts: pd.DataFrame
    """One row per (covariate[, family], a, b): difference a - b and P(a > b)."""
    at_target: pd.DataFrame | None
    """One row per optimizer at the target: eta* median/interval, recommended LR, penalty."""
    target_contrasts: pd.DataFrame | None
    """One row per pair at the target: eta*_a / eta*_b median and P(eta*_a > eta*_b)."""

    def to_dict(self) -> dict[str, Any]:
        def records(frame: pd.DataFrame | None) -> list[dict[str, Any]] | None:
            return None if frame is None else _jsonable(frame.to_dict(orient="records"))

        return {"exponents": records(self.exponents), "contrasts": records(self.contrasts),
                "at_target": records(self.at_target),
                "target_contrasts": records(self.target_contrasts)}


def compare_optimizers(posterior: Any, target: Any = None, *, seed: int = 0,
                       prob: float = 0.9, divergence_cost: float = DIVERGENCE_COST,
                       warn_beyond: float | None = EXTRAPOLATION_WARN) -> OptimizerComparison:
    """Posterior contrasts of the optimizers this posterior knows.

    `target`: optionally one configuration (without, or with any, optimizer): eta* and the
    recommended LR are then predicted there for every optimizer.
    """
    if not 0 < prob < 1:
        raise PosteriorError(f"prob={prob!r} must be between 0 and 1 (e.g. 0.9)")
    exps = posterior.exponents()
    exponents = exponent_table(exps, prob)
    contrasts = contrast_table(exps, prob)
    if target is None:
        return OptimizerComparison(exponents, contrasts, None, None)
    at_target, target_contrasts = _at_target(posterior, target, seed=seed, prob=prob,
                                             divergence_cost=divergence_cost,
                                             warn_beyond=warn_beyond)
    return OptimizerComparison(exponents, contrasts, at_target, target_contrasts)


def _stacked(var: xr.DataArray) -> xr.DataArray:
    """Draws of one exponent with the chain/draw dims stacked into `sample`, last."""
    sample_dims = [d for d in ("chain", "draw", DIMS.SAMPLE) if d in var.dims]
    if not sample_dims:
        raise PosteriorError(f"exponent {var.name!r} has no draw dimension (dims {var.dims})")
    if sample_dims != [DIMS.SAMPLE]:
        var = var.stack({"_sample": sample_dims}).drop_vars(
            [*sample_dims, "_sample"], errors="ignore")
        var = var.rename({"_sample": DIMS.SAMPLE})
    return var.transpose(..., DIMS.SAMPLE)


def _groups(var: xr.DataArray) -> list[dict[str, Any]]:
    """Every combination of the non-optimizer, non-sample coordinates (e.g. family)."""
    dims = [d for d in var.dims if d not in (DIMS.OPTIMIZER, DIMS.SAMPLE)]
    if not dims:
        return [{}]
    index = pd.MultiIndex.from_product([var[d].values for d in dims], names=dims)
    return [dict(zip(dims, key, strict=True)) for key in index]


def exponent_table(exponents: xr.Dataset, prob: float = 0.9) -> pd.DataFrame:
    """Median and central `prob` interval of each exponent per optimizer (and family)."""
    rows = []
    for covariate, var in exponents.data_vars.items():
        var = _stacked(var)
        for group in _groups(var):
            for optimizer in var[DIMS.OPTIMIZER].values:
                values = var.sel({**group, DIMS.OPTIMIZER: optimizer}).values
                rows.append({"covariate": covariate, **group, "optimizer": str(optimizer),
                             **_summary(values, prob)})
    return pd.DataFrame(rows)


def contrast_table(exponents: xr.Dataset, prob: float = 0.9) -> pd.DataFrame:
    """For every covariate and optimizer pair (a, b): exponent_a - exponent_b and P(a > b)."""
    rows = []
    for covariate, var in exponents.data_vars.items():
        var = _stacked(var)
        names = [str(o) for o in var[DIMS.OPTIMIZER].values]
        for group in _groups(var):
            for a, b in combinations(names, 2):
                diff = (var.sel({**group, DIMS.OPTIMIZER: a}).values
                        - var.sel({**group, DIMS.OPTIMIZER: b}).values)
                rows.append({"covariate": covariate, **group, "a": a, "b": b,
                             **_summary(diff, prob), "p_a_greater": float(np.mean(diff > 0))})
    return pd.DataFrame(rows)


def _at_target(posterior: Any, target: Any, *, seed: int, prob: float,
               divergence_cost: float, warn_beyond: float | None
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    base = _single_target(target)
    rows = [{**base, "optimizer": name} for name in posterior.optimizers]
    draws = draw(posterior, rows, seed=seed, warn_beyond=warn_beyond)
    table = draws.targets[["optimizer"]].copy()
    table = pd.concat([table, summarize_log_eta(draws.log_eta, (prob,))], axis=1)
    rec = recommend(posterior, draws.targets, seed=seed, divergence_cost=divergence_cost,
                    warn_beyond=None)
    table["recommended_lr"] = rec["lr"].to_numpy()
    table["expected_penalty"] = rec["expected_penalty"].to_numpy()
    table["p_diverge"] = rec["p_diverge"].to_numpy()
    table["extrapolation"] = draws.extrapolation
    pairs = []
    names = list(table["optimizer"])
    for i, j in combinations(range(len(names)), 2):
        log_ratio = draws.log_eta[:, i] - draws.log_eta[:, j]
        lo, hi = np.quantile(log_ratio, [(1 - prob) / 2, (1 + prob) / 2])
        pairs.append({"a": names[i], "b": names[j],
                      "eta_ratio_median": float(np.exp(np.median(log_ratio))),
                      f"eta_ratio_lo{mass_label(prob)}": float(np.exp(lo)),
                      f"eta_ratio_hi{mass_label(prob)}": float(np.exp(hi)),
                      "p_a_greater": float(np.mean(log_ratio > 0))})
    return table, pd.DataFrame(pairs)


def _single_target(target: Any) -> dict[str, Any]:
    if isinstance(target, pd.DataFrame):
        if len(target) != 1:
            raise PosteriorError(f"compare: expected one target, got {len(target)} rows")
        target = target.iloc[0].to_dict()
    if not isinstance(target, dict):
        raise PosteriorError(f"compare: target must be a dict or a one-row DataFrame, got "
                             f"{type(target).__name__}")
    return {k: v for k, v in target.items() if k != "optimizer"}


def _summary(values: np.ndarray, prob: float) -> dict[str, float]:
    lo, hi = np.quantile(values, [(1 - prob) / 2, (1 + prob) / 2])
    return {"median": float(np.median(values)), f"lo{mass_label(prob)}": float(lo),
            f"hi{mass_label(prob)}": float(hi)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


__all__ = ["OptimizerComparison", "Sequence", "compare_optimizers", "contrast_table",
           "exponent_table"]
