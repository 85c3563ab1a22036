"""Decisions under asymmetric risk: which LR to use, and what any LR costs.

Too low an LR trains slowly (a loss gap above the optimum); too high a one diverges. For a
posterior draw theta of the target's curve, an LR x costs

    penalty(x | theta) = (1 - p_div(x | theta)) · min(gap(x | theta), C) + p_div(x | theta) · C

in nats/token of final loss, where gap and p_div are the model's own curve
(:mod:`bayeslr.curve`) and C (`divergence_cost`) is what a diverged run costs you, expressed
in nats. A surviving run is never counted worse than a lost one: the quadratic gap of the
curve grows without bound far from the optimum, a real run's loss does not. :func:`recommend`
minimises the posterior mean of that penalty over LR; :func:`loss_penalty` evaluates it, with
intervals, at given LRs (the reported gaps themselves are not capped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from bayeslr import curve
from bayeslr.answers import PROBS, Draws, LRModel, draw, mass_label
from bayeslr.errors import PosteriorError
from bayeslr.schema import DIMS
from bayeslr.targets import EXTRAPOLATION_WARN

DIVERGENCE_COST = 1.0
"""Default cost of a diverged run, in nats/token of final loss: an order of magnitude above
typical LR-mistuning gaps (0.01 to 0.1), since a diverged run must be restarted. Set it to the
loss gap you would accept to avoid losing a run."""


def penalty_draws(draws: Draws, log_lr: np.ndarray, divergence_cost: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loss gap, divergence probability and penalty per draw: arrays (sample, target, lr).

    `log_lr`: natural-log LRs, shape (lr,) shared by all targets or (target, lr).
    """
    params = draws.numpy_params()
    log_lr = np.asarray(log_lr, dtype=float)
    grid = log_lr[None, None, :] if log_lr.ndim == 1 else log_lr[None, :, :]
    gap = np.asarray(curve.loss_gap(grid, params), dtype=float)
    p_div = np.clip(np.asarray(curve.divergence_prob(grid, params), dtype=float), 0.0, 1.0)
    gap, p_div = np.broadcast_arrays(gap, p_div)
    penalty = (1.0 - p_div) * np.minimum(gap, divergence_cost) + p_div * divergence_cost
    return gap, p_div, penalty


def loss_penalty(posterior: LRModel, target: Any, lr: float | Sequence[float], *, seed: int = 0,
                 divergence_cost: float = DIVERGENCE_COST, probs: Sequence[float] = (0.9,),
                 warn_beyond: float | None = EXTRAPOLATION_WARN) -> pd.DataFrame:
    """What using `lr` at `target` costs: expected loss increase, its interval, P(diverge).

    Returns one row per (target, lr): `gap_mean` / `gap_median` / `gap_lo90` / `gap_hi90`
    (final-loss increase above the optimum if the run does not diverge, nats/token),
    `p_diverge`, `p_too_high` (posterior probability that lr > eta*), `lr_over_eta`
    (lr / median eta*) and `expected_penalty` (posterior mean of the risk-weighted penalty,
    with a diverged run costing `divergence_cost` nats).
    """
    _check_cost(divergence_cost)
    lrs = _positive_lrs(lr)
    draws = draw(posterior, target, seed=seed, warn_beyond=warn_beyond)
    gap, p_div, penalty = penalty_draws(draws, np.log(lrs), divergence_cost)
    log_eta = draws.log_eta
    rows = []
    for t in range(len(draws.targets)):
        for j, value in enumerate(lrs):
            row = {"target": t, "lr": float(value)}
            row.update(_gap_summary(gap[:, t, j], probs))
            row["p_diverge"] = float(p_div[:, t, j].mean())
            row["p_too_high"] = float(np.mean(np.log(value) > log_eta[:, t]))
            row["lr_over_eta"] = float(value / np.exp(np.median(log_eta[:, t])))
            row["expected_penalty"] = float(penalty[:, t, j].mean())
            row["extrapolation"] = float(draws.extrapolation[t])
            rows.append(row)
    return pd.DataFrame(rows)


def recommend(posterior: LRModel, targets: Any, *, seed: int = 0,
              divergence_cost: float = DIVERGENCE_COST, max_p_diverge: float | None = None,
              probs: Sequence[float] = (0.9,), grid_points: int = 241,
              warn_beyond: float | None = EXTRAPOLATION_WARN) -> pd.DataFrame:
    """The LR minimising the posterior expected penalty at each target, with that penalty.

    Searches a log-LR grid spanning the predictive distribution of eta* (plus margins), then
    refines the minimum. `max_p_diverge`: only consider LRs whose divergence probability is at
    most this (None: no constraint). Returns one row per target: `lr` (recommended),
    `expected_penalty` (nats/token), the gap summary at that LR (`gap_mean`, `gap_lo90`,
    `gap_hi90`), `p_diverge`, `p_too_high`, `eta_median`, `lr_over_eta`, `divergence_cost`,
    `extrapolation`.
    """
    _check_cost(divergence_cost)
    if max_p_diverge is not None and not 0 < max_p_diverge <= 1:
        raise PosteriorError(f"max_p_diverge={max_p_diverge!r} must be in (0, 1]")
    if grid_points < 11:
        raise PosteriorError(f"grid_points={grid_points} is too coarse; use at least 11")
    draws = draw(posterior, targets, seed=seed, warn_beyond=warn_beyond)
    log_eta = draws.log_eta
    lo = np.quantile(log_eta, 0.001, axis=0) - 2.0   # (target,)
    hi = np.quantile(log_eta, 0.999, axis=0) + 0.5
    grid = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, grid_points)[None, :]
    _, p_div, penalty = penalty_draws(draws, grid, divergence_cost)
    expected = penalty.mean(axis=0)                              # (target, grid)
    if max_p_diverge is not None:
        allowed = p_div.mean(axis=0) <= max_p_diverge
        expected = np.where(allowed, expected, np.inf)
    rows = []
    for t in range(len(draws.targets)):
        if not np.isfinite(expected[t]).any():
            raise PosteriorError(f"recommend: no LR in the searched range keeps P(diverge) <= "
                                 f"{max_p_diverge} at target {t}; raise max_p_diverge")
        best = _refine(draws, t, grid[t], expected[t], divergence_cost, max_p_diverge)
        rows.append(_recommend_row(draws, t, best, divergence_cost, probs))
    return pd.DataFrame(rows)


def _refine(draws: Draws, t: int, grid: np.ndarray, expected: np.ndarray,
            divergence_cost: float, max_p_diverge: float | None) -> float:
    """Refine the grid minimum of the expected penalty between its grid neighbours."""
    i = int(np.argmin(expected))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    if hi <= lo:
        return float(grid[i])
    one = _one_target(draws, t)

    def objective(x: float) -> float:
        _, p_div, penalty = penalty_draws(one, np.array([x]), divergence_cost)
        if max_p_diverge is not None and p_div.mean() > max_p_diverge:
            return np.inf
        return float(penalty.mean())

    result = minimize_scalar(objective, bounds=(lo, hi), method="bounded",
                             options={"xatol": 1e-4})
    return float(result.x) if result.fun <= expected[i] else float(grid[i])


def _one_target(draws: Draws, t: int) -> Draws:
    return Draws(targets=draws.targets.iloc[[t]].reset_index(drop=True),
                 params=draws.params.isel({DIMS.TARGET: [t]}),
                 extrapolation=draws.extrapolation[[t]])


def _recommend_row(draws: Draws, t: int, log_lr: float, divergence_cost: float,
                   probs: Sequence[float]) -> dict[str, float]:
    one = _one_target(draws, t)
    gap, p_div, penalty = penalty_draws(one, np.array([log_lr]), divergence_cost)
    log_eta = draws.log_eta[:, t]
    row = {"target": t, "lr": float(np.exp(log_lr)),
           "expected_penalty": float(penalty.mean())}
    row.update(_gap_summary(gap[:, 0, 0], probs))
    row["p_diverge"] = float(p_div.mean())
    row["p_too_high"] = float(np.mean(log_lr > log_eta))
    row["eta_median"] = float(np.exp(np.median(log_eta)))
    row["lr_over_eta"] = row["lr"] / row["eta_median"]
    row["divergence_cost"] = float(divergence_cost)
    row["extrapolation"] = float(draws.extrapolation[t])
    return row


def _gap_summary(gap: np.ndarray, probs: Sequence[float]) -> dict[str, float]:
    row = {"gap_mean": float(gap.mean()), "gap_median": float(np.median(gap))}
    for p in probs:
        lo, hi = np.quantile(gap, [(1 - p) / 2, (1 + p) / 2])
        row[f"gap_lo{mass_label(p)}"] = float(lo)
        row[f"gap_hi{mass_label(p)}"] = float(hi)
    return row


def _check_cost(divergence_cost: float) -> None:
    if not np.isfinite(divergence_cost) or divergence_cost < 0:
        raise PosteriorError(f"divergence_cost={divergence_cost!r} must be a finite number of "
                             "nats >= 0 (e.g. 1.0)")


def _positive_lrs(lr: float | Sequence[float]) -> np.ndarray:
    values = np.atleast_1d(np.asarray(lr, dtype=float))
    if values.ndim != 1 or not len(values) or not np.all(np.isfinite(values) & (values > 0)):
        raise PosteriorError(f"lr must be one or more finite learning rates > 0, got {lr!r}")
    return values


__all__ = ["DIVERGENCE_COST", "PROBS", "loss_penalty", "penalty_draws", "recommend"]
