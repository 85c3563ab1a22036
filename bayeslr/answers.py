"""The questions a fitted posterior answers: which LR, how sure, and how LRs transfer.

Every function takes a fitted :class:`bayeslr.posterior.Posterior` and returns plain data
(pandas / xarray), so the CLI, notebooks and plots print or draw the same numbers. Learning
rates are peak LRs; eta* is the LR that minimises the final loss of a configuration. Targets
are dicts, lists of dicts or DataFrames (see :func:`bayeslr.targets.normalize_targets`).
Answers about targets outside the fitted data warn with
:class:`bayeslr.targets.ExtrapolationWarning` and carry an `extrapolation` column.

Decisions under asymmetric risk (recommend, loss_penalty) live in :mod:`bayeslr.decisions`;
the optimizer comparison in :mod:`bayeslr.comparison`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import xarray as xr

from bayeslr.errors import PosteriorError
from bayeslr.schema import DIMS
from bayeslr.targets import EXTRAPOLATION_WARN, normalize_targets, warn_extrapolation

PROBS = (0.5, 0.9, 0.95)
"""Default central credible-interval masses reported by the answers."""


class LRModel(Protocol):
    """What the answers need from a model: a fitted Posterior, or your own (docs/byo.md).

    predict_lr, lr_samples, recommend, loss_penalty and transfer use only these members
    (and `straight_extrapolation(targets)` where a model has it, for the extrapolation
    warning); compare_optimizers also calls `exponents()`, and the plots use the Posterior's
    fitted configurations.
    """

    optimizers: tuple[str, ...]
    """Optimizer names the model can answer for."""
    families: tuple[str, ...]
    """Architecture families (`arch`) the model can answer for."""

    def draw_curve_params(self, targets: pd.DataFrame, *, seed: int = 0,
                          include_residual: bool = True) -> xr.Dataset:
        """Draws with dims (sample, target): log_eta and the bayeslr.curve parameters
        (curv_left, curv_right, div_offset, div_scale; optional wall), and an
        `extrapolation` coordinate over target (0 inside the data)."""
        ...


@dataclass(frozen=True)
class Draws:
    """Posterior predictive draws of the curve parameters at normalized targets."""

    targets: pd.DataFrame
    """One row per target, canonical columns (n_params, tokens, batch_size, optimizer, arch...)."""
    params: xr.Dataset
    """Draws with dims (sample, target): log_eta (natural log of eta*) and curve shape."""
    extrapolation: np.ndarray
    """Per target: distance outside the fitted data in standardized units (0 inside)."""

    @property
    def log_eta(self) -> np.ndarray:
        """Natural log of eta*, shape (sample, target)."""
        return self.params["log_eta"].transpose(DIMS.SAMPLE, DIMS.TARGET).values

    def numpy_params(self) -> dict[str, np.ndarray]:
        """Curve parameters as arrays of shape (sample, target, 1) for broadcasting over LRs."""
        return {name: np.asarray(var.transpose(DIMS.SAMPLE, DIMS.TARGET).values)[..., None]
                for name, var in self.params.data_vars.items()
                if set(var.dims) == {DIMS.SAMPLE, DIMS.TARGET}}


def draw(posterior: LRModel, targets: Any, *, seed: int = 0, include_residual: bool = True,
         warn_beyond: float | None = EXTRAPOLATION_WARN) -> Draws:
    """Normalize `targets`, draw curve parameters there, and warn when extrapolating.

    `include_residual`: add the configuration-level deviation from the law (True for a new
    configuration's own eta*; False for the law itself, as in transfer rules).
    `warn_beyond`: warn for targets farther outside the data than this (None: never).
    """
    frame = normalize_targets(targets, optimizers=tuple(posterior.optimizers),
                              families=tuple(posterior.families))
    params = posterior.draw_curve_params(frame, seed=seed, include_residual=include_residual)
    if "log_eta" not in params:
        raise PosteriorError("posterior.draw_curve_params returned no 'log_eta'; this "
                             "posterior cannot answer LR questions (refit with this bayeslr)")
    extrapolation = _extrapolation(params, len(frame))
    if warn_beyond is not None:
        straight = getattr(posterior, "straight_extrapolation", None)
        regime = getattr(posterior, "tokens_per_param_range", None)
        warn_extrapolation(frame, extrapolation, threshold=warn_beyond, stacklevel=4,
                           straight=straight(frame) if straight is not None else None,
                           tokens_per_param=regime() if regime is not None else None)
    return Draws(targets=frame, params=params, extrapolation=extrapolation)


def _extrapolation(params: xr.Dataset, n_targets: int) -> np.ndarray:
    """The per-target extrapolation distance wherever draw_curve_params put it."""
    for source in (params.coords, params.data_vars, params.attrs):
        if "extrapolation" in source:
            values = np.asarray(getattr(source["extrapolation"], "values",
                                        source["extrapolation"]), dtype=float)
            return np.broadcast_to(values, (n_targets,)).copy()
    return np.zeros(n_targets)


def lr_samples(posterior: LRModel, targets: Any, *, seed: int = 0,
               warn_beyond: float | None = EXTRAPOLATION_WARN) -> xr.DataArray:
    """Posterior predictive draws of eta* (peak LR) at each target, dims (sample, target).

    The target's columns become coordinates along `target`.
    """
    draws = draw(posterior, targets, seed=seed, warn_beyond=warn_beyond)
    eta = xr.DataArray(np.exp(draws.log_eta), dims=(DIMS.SAMPLE, DIMS.TARGET), name="eta",
                       attrs={"units": "peak learning rate",
                              "long_name": "optimal learning rate eta*"})
    coords = {c: (DIMS.TARGET, draws.targets[c].to_numpy()) for c in draws.targets.columns}
    coords["extrapolation"] = (DIMS.TARGET, draws.extrapolation)
    return eta.assign_coords(coords)


def predict_lr(posterior: LRModel, targets: Any, *, seed: int = 0,
               probs: Sequence[float] = PROBS,
               warn_beyond: float | None = EXTRAPOLATION_WARN) -> pd.DataFrame:
    """The optimal LR eta* at each target: median and central credible intervals.

    Returns one row per target: the target's columns, `eta_median`, `eta_lo{p}` / `eta_hi{p}`
    for each mass p in `probs` (e.g. eta_lo90, eta_hi90: the 5% and 95% quantiles),
    `log10_eta_sd` (posterior sd of log10 eta*, a width in decades) and `extrapolation`.
    These are posterior predictive intervals for a new configuration: law uncertainty plus
    the configuration-level scatter around the law. With a bayeslr Posterior, a target's row
    depends on `seed` and the target alone, not on the other targets asked for with it.
    """
    draws = draw(posterior, targets, seed=seed, warn_beyond=warn_beyond)
    table = draws.targets.copy()
    table = pd.concat([table, summarize_log_eta(draws.log_eta, probs)], axis=1)
    table["extrapolation"] = draws.extrapolation
    return table


def summarize_log_eta(log_eta: np.ndarray, probs: Sequence[float] = PROBS) -> pd.DataFrame:
    """Median, central intervals and log10 sd of eta* from natural-log draws (sample, target)."""
    log_eta = np.asarray(log_eta, dtype=float)
    _check_probs(probs)
    columns = {"eta_median": np.exp(np.median(log_eta, axis=0))}
    for p in probs:
        lo, hi = np.quantile(log_eta, [(1 - p) / 2, (1 + p) / 2], axis=0)
        columns[f"eta_lo{mass_label(p)}"] = np.exp(lo)
        columns[f"eta_hi{mass_label(p)}"] = np.exp(hi)
    columns["log10_eta_sd"] = np.std(log_eta, axis=0) / np.log(10)
    return pd.DataFrame(columns)


def _check_probs(probs: Sequence[float]) -> None:
    for p in probs:
        if not 0 < p < 1:
            raise PosteriorError(f"interval mass {p!r} must be between 0 and 1 (e.g. 0.9)")


def mass_label(p: float) -> str:
    """Column suffix of an interval mass: 0.9 -> '90', 0.975 -> '97.5'."""
    value = round(100 * p, 6)
    return f"{value:g}"


def transfer(posterior: LRModel, base: Any, *, width: float = 1.0, depth: float = 1.0,
             heads: float = 1.0, params: float | None = None, tokens: float = 1.0,
             batch_size: float = 1.0, seed: int = 0, probs: Sequence[float] = PROBS,
             warn_beyond: float | None = EXTRAPOLATION_WARN) -> pd.DataFrame:
    """How eta* should change when a configuration is scaled by the given factors.

    `base`: one target. Factors multiply width (d_model), depth (n_layers), heads, tokens and
    batch size; `params` multiplies n_params directly (otherwise n_params follows width² ×
    depth). Returns one row: the factors, the base and new eta* medians, and the ratio
    eta*_new / eta*_base with its median and central intervals (`ratio_lo90`, ...). The ratio
    is that of the scaling law (configuration-level scatter left out: it is the rule to apply
    to an LR you already tuned at the base).
    """
    factors = {"width": width, "depth": depth, "heads": heads, "tokens": tokens,
               "batch_size": batch_size, "params": 1.0 if params is None else params}
    for name, factor in factors.items():
        if not np.isfinite(factor) or factor <= 0:
            raise PosteriorError(f"transfer: factor {name}={factor!r} must be finite and > 0")
    if params is not None and (width != 1.0 or depth != 1.0):
        raise PosteriorError("transfer: give either params or width/depth factors, not both")
    frame = normalize_targets(base, optimizers=tuple(posterior.optimizers),
                              families=tuple(posterior.families))
    if len(frame) != 1:
        raise PosteriorError(f"transfer: expected one base target, got {len(frame)}")
    new = scale_target(frame.iloc[0], factors)
    both = pd.DataFrame([frame.iloc[0], new]).reset_index(drop=True)
    draws = draw(posterior, both, seed=seed, include_residual=False, warn_beyond=warn_beyond)
    log_ratio = draws.log_eta[:, 1] - draws.log_eta[:, 0]
    row = {f"{k}_factor": v for k, v in factors.items()}
    row["eta_base_median"] = float(np.exp(np.median(draws.log_eta[:, 0])))
    row["eta_new_median"] = float(np.exp(np.median(draws.log_eta[:, 1])))
    row["ratio_median"] = float(np.exp(np.median(log_ratio)))
    for p in probs:
        lo, hi = np.quantile(log_ratio, [(1 - p) / 2, (1 + p) / 2])
        row[f"ratio_lo{mass_label(p)}"] = float(np.exp(lo))
        row[f"ratio_hi{mass_label(p)}"] = float(np.exp(hi))
    row["p_decrease"] = float(np.mean(log_ratio < 0))
    row["extrapolation"] = float(draws.extrapolation[1])
    return pd.DataFrame([row])


def scale_target(base: pd.Series, factors: dict[str, float]) -> pd.Series:
    """A copy of target `base` with width/depth/heads/params/tokens/batch_size scaled."""
    new = base.copy()
    size = factors["params"] * factors["width"] ** 2 * factors["depth"]
    new["n_params"] = float(base["n_params"]) * size
    for column, factor in (("d_model", factors["width"]), ("n_layers", factors["depth"]),
                           ("n_heads", factors["heads"])):
        if column in new.index and pd.notna(new[column]):
            new[column] = float(new[column]) * factor
    if "d_ff" in new.index and pd.notna(new["d_ff"]):
        new["d_ff"] = float(new["d_ff"]) * factors["width"]
    new["tokens"] = float(base["tokens"]) * factors["tokens"]
    new["batch_size"] = float(base["batch_size"]) * factors["batch_size"]
    return new
