"""What people do without bayeslr, and how a measured sweep is read: the yardsticks.

- `sweep_optimum`: a configuration's measured optimum, the vertex of a quadratic in ln LR fitted
  to the stable points around the grid argmin (the grid argmin alone is quantised to the grid);
  seeds at one LR are averaged.
- `measured_loss`: that sweep's loss at any LR, for the regret of an off-grid choice.
- `fit_ols_law` / `OLSLaw.predict`: the usual practice — take each configuration's grid argmin
  and fit a power law log eta* = a + sum_k b_k log x_k by least squares, per optimizer.

Units: LRs as given (peak LR), losses in nats/token, logs natural.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bayeslr.errors import ModelError

WINDOW = 2
"""Grid points on each side of the argmin used for the local quadratic (5 points in all)."""


@dataclass(frozen=True)
class SweepOptimum:
    """A measured loss-vs-LR sweep of one configuration, summarised."""

    lr_argmin: float
    """Grid LR with the lowest final loss."""
    lr_opt: float
    """Vertex of the local quadratic in ln LR, kept inside the fitted window (the grid argmin
    when the points around it are not convex)."""
    loss_opt: float
    """Loss at lr_opt on that quadratic (nats/token)."""
    log_lr: np.ndarray
    """ln LR of the stable runs below the first divergence, ascending."""
    loss: np.ndarray
    """Their final losses (nats/token)."""
    first_diverged_log_lr: float
    """ln LR of the smallest diverged run (inf when none diverged)."""
    coef: np.ndarray
    """Quadratic coefficients (c2, c1, c0) in ln LR; c2 = 0 when the window is a line."""
    window: tuple[float, float]
    """ln LR range of the points the quadratic was fitted to."""


def sweep_optimum(lr: Sequence[float], loss: Sequence[float], diverged: Sequence[bool], *,
                  window: int = WINDOW) -> SweepOptimum:
    """Summarise one configuration's sweep, its quadratic fitted to `window` stable points on
    each side of the argmin; raises ModelError without 2 stable points below its first
    divergence (see `stable_points`)."""
    points = stable_points(np.log(np.asarray(lr, float)), loss, diverged)
    x, y, best = points.log_lr, points.loss, points.best
    if len(x) < 2:
        raise ModelError(f"a sweep needs >= 2 stable runs below its first divergence to locate "
                         f"its optimum; got {len(x)} of {points.n_lrs} LRs")
    if window < 1:
        raise ModelError(f"sweep_optimum: window must be >= 1 point on each side of the "
                         f"argmin, got {window}")
    around = points.around_best(window)
    lo, hi = around.start, around.stop
    coef = _local_quadratic(x[lo:hi], y[lo:hi])
    if coef[0] <= 0:  # no convex curve around the argmin: read the grid as measured
        coef, lo, hi = np.array([0.0, 0.0, y[best]]), best, best + 1
    span = (float(x[lo]), float(x[hi - 1]))
    vertex = float(np.clip(-coef[1] / (2 * coef[0]), *span)) if coef[0] > 0 else x[best]
    return SweepOptimum(lr_argmin=float(np.exp(x[best])), lr_opt=float(np.exp(vertex)),
                        loss_opt=float(np.polyval(coef, vertex)), log_lr=x, loss=y,
                        first_diverged_log_lr=points.first_diverged_log_lr, coef=coef,
                        window=span)


@dataclass(frozen=True)
class StablePoints:
    """A sweep's stable LRs below its first divergence, one point per LR, ascending."""

    log_lr: np.ndarray
    loss: np.ndarray
    """Mean final loss over the LR's runs (nats/token)."""
    count: np.ndarray
    """Runs (seeds) averaged at each LR."""
    first_diverged_log_lr: float
    """ln LR of the smallest LR where a run failed (inf when none failed)."""
    n_lrs: int
    """Distinct LRs of the sweep, stable or not."""

    @property
    def best(self) -> int:
        """Index of the lowest loss (0 when there are no points)."""
        return int(np.argmin(self.loss)) if len(self.loss) else 0

    def around_best(self, width: int) -> slice:
        """The best point and up to `width` points on each side of it."""
        return slice(max(0, self.best - width), min(len(self.loss), self.best + width + 1))


def stable_points(log_lr: Sequence[float], loss: Sequence[float],
                  diverged: Sequence[bool]) -> StablePoints:
    """Runs at LRs above a failed one (diverged or a non-finite loss) are past the stability
    edge (their losses are erratic), so they are not read as part of the curve. Repeated LRs
    (seeds) are read as one point: their mean loss, failed if any of them failed."""
    log_lr, loss = np.asarray(log_lr, float), np.asarray(loss, float)
    unique, index, count = np.unique(log_lr, return_inverse=True, return_counts=True)
    bad = np.asarray(diverged, bool) | ~np.isfinite(loss)
    failed = np.bincount(index, weights=bad, minlength=len(unique)) > 0
    total = np.bincount(index, weights=np.where(bad, 0.0, loss), minlength=len(unique))
    first_failed = float(unique[failed].min()) if failed.any() else np.inf
    keep = ~failed & (unique < first_failed)
    return StablePoints(log_lr=unique[keep], loss=total[keep] / count[keep],
                        count=count[keep], first_diverged_log_lr=first_failed,
                        n_lrs=len(unique))


def _local_quadratic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares quadratic (or line, with fewer than 3 points) in x; (c2, c1, c0)."""
    if len(x) >= 3:
        return np.polyfit(x, y, 2)
    return np.concatenate([[0.0], np.polyfit(x, y, 1)])


def measured_loss(opt: SweepOptimum, lr: float) -> float:
    """The sweep's loss at `lr`: the local quadratic inside its window, linear interpolation
    between stable grid points outside it, the nearest stable point's loss between the last
    stable and the first diverged LR, and +inf at or beyond a diverged LR."""
    x = float(np.log(lr))
    if x >= opt.first_diverged_log_lr:
        return np.inf
    if opt.window[0] <= x <= opt.window[1]:
        return float(np.polyval(opt.coef, x))
    return float(np.interp(x, opt.log_lr, opt.loss))


def regret(opt: SweepOptimum, lr: float, *, divergence_loss: float) -> float:
    """Loss of training at `lr` minus the sweep's optimal loss (nats/token), at least 0 (a
    grid point can sit below the fitted optimum by noise); a diverged choice costs
    `divergence_loss` (e.g. the loss at initialisation) minus the optimum."""
    if not (np.isfinite(lr) and lr > 0):
        raise ModelError(f"regret: expected a finite LR > 0, got {lr!r}")
    loss = measured_loss(opt, lr)
    return max(0.0, float(min(loss, divergence_loss) - opt.loss_opt))


@dataclass(frozen=True)
class OLSLaw:
    """A per-optimizer least-squares power law for the grid argmin LR."""

    covariates: tuple[str, ...]
    coefficients: dict[str, np.ndarray]
    """optimizer -> (intercept, exponent per covariate), on natural logs."""

    def predict(self, targets: pd.DataFrame) -> np.ndarray:
        """eta* at each target row (needs `optimizer` and the covariate columns)."""
        out = np.full(len(targets), np.nan)
        for i, (_, row) in enumerate(targets.iterrows()):
            beta = self.coefficients.get(row["optimizer"])
            if beta is None:
                raise ModelError(f"OLS law: optimizer {row['optimizer']!r} not fitted; known: "
                                 f"{sorted(self.coefficients)}")
            x = np.log([float(row[c]) for c in self.covariates])
            out[i] = np.exp(beta[0] + beta[1:] @ x)
        return out


def fit_ols_law(optima: pd.DataFrame, covariates: Sequence[str]) -> OLSLaw:
    """Least squares of ln(lr_argmin) on ln covariates, one fit per optimizer.

    optima: one row per configuration with `optimizer`, `lr_argmin` and the covariates.
    Covariates that do not vary within an optimizer's rows get exponent 0.
    """
    coefficients = {}
    for name, rows in optima.groupby("optimizer"):
        x = np.log(rows[list(covariates)].to_numpy(float))
        varies = x.std(axis=0) > 0
        design = np.column_stack([np.ones(len(rows)), x[:, varies]])
        solution, *_ = np.linalg.lstsq(design, np.log(rows["lr_argmin"].to_numpy(float)),
                                       rcond=None)
        beta = np.zeros(1 + len(covariates))
        beta[0] = solution[0]
        beta[1:][varies] = solution[1:]
        coefficients[str(name)] = beta
    return OLSLaw(tuple(covariates), coefficients)
