"""How tightly a sweep pins each configuration's optimum and loss curvature, against how much
they scatter between configurations: the choice between centred and non-centred sampling.

A hierarchy whose members the likelihood pins more tightly than they scatter around the
group is sampled best centred; one whose members are pinned more loosely, non-centred
(Papaspiliopoulos, Roberts and Sköld 2007; Betancourt and Girolami 2015). Counting runs
per configuration gets this wrong when the scatter is small: two seeds per LR double the
runs of the reference sweep, but its optima, pinned to ~0.3 in ln LR, scatter around the law
by only ~0.1 (the estimates below), and the centred model then mixes poorly
(bayeslr.model.parameterization).

Per configuration, a weighted least-squares quadratic in ln LR through the stable points
around the best one (the window of `bayeslr.baselines.sweep_optimum`; repeated LRs are
averaged, weighted by their count) gives the vertex and the curvature, and, with the
residual noise pooled over all configurations, their standard errors. The vertices' scatter
around a per-optimizer law in z (with the curvature columns), with those errors taken out
(a random-effects meta-regression), estimates the model's resid_sd; the log curvatures'
scatter around per-optimizer means, the model's curv_sd.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bayeslr.baselines import WINDOW, stable_points
from bayeslr.features import Features

MIN_FITS = 6
"""Configurations with a usable quadratic below which the counts rule is used instead."""


@dataclass(frozen=True)
class Pinning:
    """Typical (median) per-configuration standard errors and the between-configuration
    scatters, natural-log units (ln LR for optima, ln curvature for curvatures)."""

    optimum_se: float
    optimum_scatter: float
    curvature_se: float
    curvature_scatter: float
    n_fits: int

    @property
    def optima_pinned(self) -> bool:
        return self.optimum_se < self.optimum_scatter

    @property
    def curvatures_pinned(self) -> bool:
        return self.curvature_se < self.curvature_scatter


@dataclass(frozen=True)
class _Fit:
    """One configuration's quadratic: vertex (ln LR), log curvature, the factors that times
    the noise variance give their variances, and the residual sum of squares."""

    vertex: float
    log_curv: float
    vertex_factor: float
    log_curv_factor: float
    rss: float
    dof: int


def pinning(features: Features) -> Pinning | None:
    """Standard errors and scatters of the configurations' optima and curvatures, or None
    when fewer than MIN_FITS configurations have a convex quadratic with its vertex inside
    its window, the fits leave no residual noise to pool, or too few remain to measure the
    scatter around the law."""
    fits = {c: f for c in range(features.n_configs) if (f := _config_fit(features, c))}
    dof = sum(f.dof for f in fits.values())
    noise_var = sum(f.rss for f in fits.values()) / max(dof, 1)
    if len(fits) < MIN_FITS or dof == 0 or not noise_var > 0:
        return None
    configs = np.array(list(fits))
    opt = features.config_optimizer[configs]
    vertex = np.array([f.vertex for f in fits.values()])
    log_curv = np.array([f.log_curv for f in fits.values()])
    vertex_var = noise_var * np.array([f.vertex_factor for f in fits.values()])
    log_curv_var = noise_var * np.array([f.log_curv_factor for f in fits.values()])
    law_design = _law_design(opt, features.z[configs], features.q[configs])
    scatters = [_scatter(vertex, law_design, vertex_var),
                _scatter(log_curv, _law_design(opt), log_curv_var)]
    if any(s is None for s in scatters):
        return None
    return Pinning(optimum_se=float(np.sqrt(np.median(vertex_var))),
                   optimum_scatter=scatters[0],
                   curvature_se=float(np.sqrt(np.median(log_curv_var))),
                   curvature_scatter=scatters[1], n_fits=len(fits))


def _config_fit(features: Features, config: int) -> _Fit | None:
    """Weighted quadratic through the stable LRs around the best one (below the first
    diverged LR, repeated LRs averaged); None without a convex fit whose vertex lies in
    its window."""
    runs = features.point_config == config
    points = stable_points(features.log_lr[runs], features.loss[runs], features.diverged[runs])
    window = points.around_best(WINDOW)
    x, y, count = points.log_lr[window], points.loss[window], points.count[window]
    if len(x) < 3:
        return None
    centre = x.mean()
    design = np.stack([(x - centre) ** 2, x - centre, np.ones_like(x)], axis=1)
    weighted = design * count[:, None]
    inverse = np.linalg.pinv(design.T @ weighted)
    a, b, c = inverse @ (weighted.T @ y)
    vertex = centre - b / (2 * a) if a > 0 else np.nan
    if not x[0] <= vertex <= x[-1]:
        return None
    grad = np.array([b / (2 * a**2), -1 / (2 * a), 0.0])
    rss = float((count * (y - design @ np.array([a, b, c])) ** 2).sum())
    return _Fit(vertex=float(vertex), log_curv=float(np.log(a)),
                vertex_factor=float(grad @ inverse @ grad),
                log_curv_factor=float(inverse[0, 0] / a**2), rss=rss, dof=len(x) - 3)


def _law_design(opt: np.ndarray, z: np.ndarray | None = None,
                q: np.ndarray | None = None) -> np.ndarray:
    """Columns: one intercept per optimizer, its slopes in z, the shared curvature columns."""
    columns = [(opt == o).astype(float) for o in np.unique(opt)]
    if z is not None:
        columns += [(opt == o) * z[:, k] for o in np.unique(opt) for k in range(z.shape[1])]
        columns += [q[:, j] for j in range(q.shape[1])]
    return np.stack(columns, axis=1)


def _scatter(values: np.ndarray, design: np.ndarray, error_var: np.ndarray) -> float | None:
    """Between-configuration sd of `values` around a linear fit on `design`, their own
    errors (variances `error_var`) taken out: the DerSimonian-Laird moment estimator of
    meta-regression, which weighs each value by its precision, so that a few poorly fitted
    configurations do not pass for scatter; None with fewer than 3 residual degrees of
    freedom."""
    weight = 1.0 / error_var
    weighted = design * weight[:, None]
    inverse = np.linalg.pinv(design.T @ weighted)
    rank = np.linalg.matrix_rank(design)
    dof = len(values) - rank
    if dof < 3:
        return None
    residual = values - design @ (inverse @ (weighted.T @ values))
    q = float((weight * residual**2).sum())
    trace = float(weight.sum() - np.trace(inverse @ (weighted.T @ weighted)))
    return float(np.sqrt(max(0.0, (q - dof) / trace)))
