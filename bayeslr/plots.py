"""Figures of a fitted posterior: computing returns data, plotting takes data and an `ax`.

Each figure has a `*_data(posterior, ...)` function returning plain pandas/xarray data (test
it, save it, plot it your way) and a `plot_*(data, ax)` function that draws it on a matplotlib
Axes and returns the Axes:

- loss vs LR per configuration, with the fitted curve and the eta* band (`lr_curve_data`);
- eta* vs model size or tokens, with each fitted sweep's eta*, the law, its credible band and
  the extrapolation region and target marked (`scaling_data`);
- the optimizers' exponents as a forest plot (`forest_data`);
- measured sharpness vs LR with the edge-of-stability lines 2/LR and 38/LR
  (`sharpness_vs_lr_data`); sharpness over training is in :mod:`bayeslr.sharpness_plot`.

matplotlib is imported lazily, inside the plotting functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bayeslr.answers import draw, mass_label, summarize_log_eta
from bayeslr.comparison import exponent_table
from bayeslr.errors import PosteriorError
from bayeslr.schema import DIMS

AXIS_LABELS = {"n_params": "non-embedding parameters N", "tokens": "training tokens D",
               "batch_size": "batch size (sequences)"}


# ---------------------------------------------------------------- loss vs LR per config
@dataclass(frozen=True)
class LRCurveData:
    """What `plot_lr_curve` draws, for a few fitted configurations."""

    configs: pd.DataFrame
    """One row per configuration shown (index config_id): optimizer, sizes, eta* median and
    interval (eta_median, eta_lo, eta_hi), n_runs, n_diverged."""
    points: pd.DataFrame
    """The runs: config_id, lr, loss (NaN when diverged), diverged."""
    curves: pd.DataFrame
    """Fitted mean loss per config and LR: config_id, lr, median, lo, hi (nats/token)."""
    prob: float


def lr_curve_data(posterior: Any, *, configs: Sequence[str] | None = None,
                  max_configs: int = 9, n_grid: int = 80, prob: float = 0.9) -> LRCurveData:
    """Observed loss vs LR of fitted configurations, with the model's curve and eta* band.

    `configs`: config ids to show (default: up to `max_configs` spread over optimizers and
    sizes). The curve is loss_min_c + loss_gap(log lr) over the posterior draws of that
    configuration (its own fitted optimum, not the law's prediction).
    """
    from bayeslr import curve

    table = posterior.configs()
    chosen = list(configs) if configs is not None else _spread(table, max_configs)
    unknown = [c for c in chosen if c not in table.index]
    if unknown:
        raise PosteriorError(f"lr_curve_data: unknown config id(s) {unknown[:3]}; see "
                             "posterior.configs() for the fitted ones")
    f = posterior.features
    runs = f.runs[f.runs["_config"].isin(chosen)]
    points = pd.DataFrame({"config_id": runs["_config"].to_numpy(), "lr": runs["lr"].to_numpy(),
                           "loss": np.where(runs["diverged"], np.nan, runs["loss"]),
                           "diverged": runs["diverged"].to_numpy(bool)})
    rows, curves = [], []
    for cid in chosen:
        params = _config_draws(posterior, cid)
        lr = points.loc[points["config_id"] == cid, "lr"]
        grid = np.linspace(np.log(lr.min()) - 0.7, np.log(lr.max()) + 0.3, n_grid)
        loss = params["loss_min"][:, None] + curve.loss_gap(grid[None, :], {
            k: (v[:, None] if np.ndim(v) else v) for k, v in params.items()})
        lo, med, hi = np.quantile(loss, [(1 - prob) / 2, 0.5, (1 + prob) / 2], axis=0)
        curves.append(pd.DataFrame({"config_id": cid, "lr": np.exp(grid), "median": med,
                                    "lo": lo, "hi": hi}))
        q = np.quantile(params[curve.LOG_ETA], [(1 - prob) / 2, 0.5, (1 + prob) / 2])
        rows.append({"config_id": cid, "eta_lo": np.exp(q[0]), "eta_median": np.exp(q[1]),
                     "eta_hi": np.exp(q[2])})
    shown = table.loc[chosen].join(pd.DataFrame(rows).set_index("config_id"))
    return LRCurveData(shown, points, pd.concat(curves, ignore_index=True), prob)


def _config_draws(posterior: Any, config_id: str) -> dict[str, np.ndarray]:
    """Posterior draws (flattened chain x draw) of one fitted configuration's curve."""
    from bayeslr import curve

    post = posterior.idata.posterior.dataset
    f = posterior.features
    c = f.config_ids.index(config_id)
    opt = f.optimizers[f.config_optimizer[c]]
    out = {}
    for name in (curve.LOG_ETA, curve.CURV_LEFT, curve.CURV_RIGHT, "loss_min"):
        out[name] = post[name].sel({DIMS.CONFIG: config_id}).values.reshape(-1)
    if curve.WALL in post:
        out[curve.WALL] = post[curve.WALL].sel({DIMS.OPTIMIZER: opt}).values.reshape(-1)
    for name in (curve.CEIL_LOW, curve.CEIL_HIGH):
        if name in post:
            out[name] = post[name].values.reshape(-1)
    return out


def _spread(table: pd.DataFrame, n: int) -> list[str]:
    """Up to n config ids spread evenly over optimizers, sizes and horizons."""
    keys = [c for c in ("optimizer", "n_params", "tokens", "batch_size") if c in table.columns]
    ordered = table.sort_values(keys).index.to_list()
    if len(ordered) <= n:
        return ordered
    per = max(1, n // table["optimizer"].nunique())
    chosen = []
    for _, part in table.sort_values(keys).groupby("optimizer", sort=False):
        ids = part.index.to_list()
        take = np.unique(np.linspace(0, len(ids) - 1, min(per, len(ids))).round().astype(int))
        chosen += [ids[i] for i in take]
    return chosen[:n]


def plot_lr_curve(data: LRCurveData, config_id: str, ax: Any) -> Any:
    """Loss vs LR of one configuration: runs, fitted curve and band, eta* band; returns ax."""
    from matplotlib.ticker import NullFormatter

    row = data.configs.loc[config_id]
    pts = data.points[data.points["config_id"] == config_id]
    cur = data.curves[data.curves["config_id"] == config_id]
    ax.axvspan(row["eta_lo"], row["eta_hi"], color="tab:green", alpha=0.15, lw=0,
               label=f"eta* {mass_label(data.prob)}% interval")
    ax.axvline(row["eta_median"], color="tab:green", lw=1)
    ax.fill_between(cur["lr"], cur["lo"], cur["hi"], color="tab:blue", alpha=0.2, lw=0)
    ax.plot(cur["lr"], cur["median"], color="tab:blue", lw=1.5, label="fitted curve")
    ok = pts[~pts["diverged"]]
    ax.plot(ok["lr"], ok["loss"], "o", color="k", ms=4, label="runs")
    top = max(cur["hi"].max(), ok["loss"].max() if len(ok) else cur["hi"].max())
    bad = pts[pts["diverged"]]
    if len(bad):
        ax.plot(bad["lr"], np.full(len(bad), top), "x", color="tab:red", ms=6, mew=1.5,
                label="diverged")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("peak LR")
    ax.set_ylabel("final loss (nats/token)")
    sizes = " ".join(f"{symbol}={row[k]:.3g}" for k, symbol in
                     (("n_params", "N"), ("tokens", "D"), ("batch_size", "B"))
                     if k in row.index and pd.notna(row[k]))
    ax.set_title(f"{row['optimizer']}  {sizes}", fontsize=8)
    return ax


def plot_lr_curves(data: LRCurveData, axes: Any) -> Any:
    """`plot_lr_curve` for each shown configuration on the flat `axes`; returns axes."""
    flat = np.ravel(axes)
    if len(flat) < len(data.configs):
        raise PosteriorError(f"plot_lr_curves: {len(data.configs)} configurations but only "
                             f"{len(flat)} axes; pass more axes or a smaller max_configs")
    for ax, cid in zip(flat, data.configs.index, strict=False):
        plot_lr_curve(data, cid, ax)
    for ax in flat[len(data.configs):]:
        ax.set_axis_off()
    flat[0].legend(fontsize=7)
    return axes


# ---------------------------------------------------------------- eta* vs size / tokens
@dataclass(frozen=True)
class ScalingData:
    """What `plot_scaling` draws."""

    along: str
    """Covariate on the x axis: n_params, tokens or batch_size."""
    points: pd.DataFrame
    """Per fitted sweep: x, its eta* (median, interval) moved onto the slice; see
    :func:`sweep_optima`."""
    curve: pd.DataFrame
    """Per optimizer and x: law median/band (law_*) and predictive band (pred_*) of eta*."""
    held: dict[str, float]
    """Values the other covariates are held at along the curve."""
    data_range: tuple[float, float]
    """Range of `along` in the fitted data; beyond it the law is extrapolated."""
    target: pd.DataFrame | None
    """The target's prediction row(s) (predict_lr columns) with its x, or None."""
    prob: float
    """Mass of the bands and of the target's interval."""


def scaling_data(posterior: Any, *, along: str = "n_params", target: Any = None,
                 optimizers: Sequence[str] | None = None, n_grid: int = 40, seed: int = 0,
                 prob: float = 0.9) -> ScalingData:
    """eta* along one covariate, other covariates held at the target's (or the data's median).

    The curve spans the data and the target; `law_*` columns are the scaling law's
    uncertainty, `pred_*` add the configuration-level scatter (what a new run sees). The
    points are the fitted sweeps' own optima (see :func:`sweep_optima`).
    """
    from bayeslr.answers import predict_lr

    if along not in AXIS_LABELS or along not in posterior.covariates:
        raise PosteriorError(f"scaling_data: along={along!r}; use one of the law's covariates "
                             f"{[a for a in AXIS_LABELS if a in posterior.covariates]}")
    names = list(optimizers or posterior.optimizers)
    target_row = None
    if target is not None:
        target_row = predict_lr(posterior, target, seed=seed, probs=(prob,), warn_beyond=None)
        names = sorted(set(target_row["optimizer"]))
    sweeps = _sweeps(posterior)
    held = _held_values(sweeps, along, target_row)
    points = sweep_optima(posterior, along=along, held=held, optimizers=names, prob=prob)
    lo, hi = float(sweeps[along].min()), float(sweeps[along].max())
    x_lo, x_hi = lo / 2, hi * 2
    if target_row is not None:
        x_lo, x_hi = min(x_lo, target_row[along].min() / 2), max(x_hi, target_row[along].max() * 2)
    grid = np.geomspace(x_lo, x_hi, n_grid)
    curve = pd.concat([_law_curve(posterior, along, grid, held, name, seed, prob)
                       for name in names], ignore_index=True)
    return ScalingData(along, points, curve, held, (lo, hi), target_row, prob)


def _sweeps(posterior: Any) -> pd.DataFrame:
    """One row per fitted configuration (index config_id) with its target columns."""
    f = posterior.features
    columns = [c for c in ("n_params", "tokens", "batch_size", "seq_len", "d_model", "n_layers",
                           "n_heads", "optimizer", "arch") if c in f.runs.columns]
    first = f.runs.groupby("_config", sort=False)[columns].first()
    return first.loc[list(f.config_ids)]


def sweep_optima(posterior: Any, *, along: str, held: dict[str, float],
                 optimizers: Sequence[str], prob: float = 0.9) -> pd.DataFrame:
    """Each fitted sweep's own eta* (posterior median and interval), moved onto a slice.

    A sweep at other values of the held covariates sits off the plotted slice; its optimum is
    multiplied by the law's ratio (median, no scatter) between the slice and the sweep's own
    covariates — a partial-residual plot. Columns: config_id, optimizer, x, eta_median,
    eta_lo, eta_hi, adjustment (that ratio; 1 for sweeps on the slice).
    """
    sweeps = _sweeps(posterior)
    sweeps = sweeps[sweeps["optimizer"].isin(optimizers)]
    if sweeps.empty:
        return pd.DataFrame(columns=["config_id", "optimizer", "x", "eta_median", "eta_lo",
                                     "eta_hi", "adjustment"])
    own = draw(posterior, sweeps, include_residual=False, warn_beyond=None)
    moved = sweeps.assign(**held)
    on_slice = draw(posterior, moved, include_residual=False, warn_beyond=None)
    shift = np.median(on_slice.log_eta, axis=0) - np.median(own.log_eta, axis=0)
    log_eta = posterior.idata.posterior.dataset["log_eta"].sel(
        {DIMS.CONFIG: list(sweeps.index)}).values.reshape(-1, len(sweeps))
    lo, med, hi = np.quantile(log_eta, [(1 - prob) / 2, 0.5, (1 + prob) / 2], axis=0)
    return pd.DataFrame({"config_id": sweeps.index, "optimizer": sweeps["optimizer"].to_numpy(),
                         "x": sweeps[along].to_numpy(float), "eta_median": np.exp(med + shift),
                         "eta_lo": np.exp(lo + shift), "eta_hi": np.exp(hi + shift),
                         "adjustment": np.exp(shift)})


def _held_values(sweeps: pd.DataFrame, along: str, target: pd.DataFrame | None
                 ) -> dict[str, float]:
    """The other covariates: the target's values, else the geometric median of the sweeps."""
    held = {}
    for column in ("n_params", "tokens", "batch_size"):
        if column == along:
            continue
        if target is not None:
            held[column] = float(target[column].iloc[0])
        else:
            held[column] = float(np.exp(np.median(np.log(sweeps[column].astype(float)))))
    return held


RESIDUAL_REPLICAS = 8
"""Residual draws per posterior draw behind the predictive band. Its edges are quantiles of
the law's draws each shifted by a configuration residual; with one residual per draw they
carry Monte Carlo noise of a few percent (measured on a 1,000-draw posterior: the 5% quantile
3% off the mixture's), enough to put the predictive band inside the law's own."""


def _law_curve(posterior: Any, along: str, grid: np.ndarray, held: dict[str, float],
               optimizer: str, seed: int, prob: float) -> pd.DataFrame:
    frame = pd.DataFrame({along: grid, **held, "optimizer": optimizer})
    frame["batch_size"] = frame["batch_size"].round().clip(lower=1)
    law = draw(posterior, frame, seed=seed, include_residual=False, warn_beyond=None)
    pred = np.concatenate([draw(posterior, frame, seed=seed + k, include_residual=True,
                                warn_beyond=None).log_eta for k in range(RESIDUAL_REPLICAS)])
    out = pd.DataFrame({"optimizer": optimizer, "x": grid,
                        "extrapolation": law.extrapolation})
    for prefix, log_eta in (("law", law.log_eta), ("pred", pred)):
        summary = summarize_log_eta(log_eta, (prob,))
        out[f"{prefix}_median"] = summary["eta_median"].to_numpy()
        out[f"{prefix}_lo"] = summary[f"eta_lo{mass_label(prob)}"].to_numpy()
        out[f"{prefix}_hi"] = summary[f"eta_hi{mass_label(prob)}"].to_numpy()
    return out


def plot_scaling(data: ScalingData, ax: Any) -> Any:
    """eta* vs `data.along` on log-log axes; returns `ax`."""
    colors = _colors([*data.curve["optimizer"].unique()])
    for name, part in data.curve.groupby("optimizer", sort=False):
        c = colors[name]
        ax.fill_between(part["x"], part["pred_lo"], part["pred_hi"], color=c, alpha=0.12, lw=0)
        ax.fill_between(part["x"], part["law_lo"], part["law_hi"], color=c, alpha=0.3, lw=0)
        ax.plot(part["x"], part["law_median"], color=c, lw=1.8, label=f"{name}: law")
        pts = data.points[data.points["optimizer"] == name]
        ax.errorbar(pts["x"], pts["eta_median"], yerr=[pts["eta_median"] - pts["eta_lo"],
                    pts["eta_hi"] - pts["eta_median"]], fmt="o", ms=4, color=c, mec="k",
                    mew=0.4, elinewidth=0.8, zorder=3, label=f"{name}: sweeps' eta*")
    if data.target is not None:
        t, pct = data.target, mass_label(data.prob)
        ax.errorbar(t[data.along], t["eta_median"],
                    yerr=[t["eta_median"] - t[f"eta_lo{pct}"], t[f"eta_hi{pct}"] - t["eta_median"]],
                    fmt="*", ms=13, color="k", capsize=4, zorder=4,
                    label=f"target ({pct}% interval)")
    x_min, x_max = data.curve["x"].min(), data.curve["x"].max()
    lo, hi = data.data_range
    ax.axvspan(hi, x_max, color="0.85", alpha=0.6, lw=0, zorder=0,
               label="outside the data (extrapolation)")
    if x_min < lo:
        ax.axvspan(x_min, lo, color="0.85", alpha=0.6, lw=0, zorder=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_min, x_max)
    ax.set_xlabel(AXIS_LABELS[data.along])
    ax.set_ylabel("optimal peak LR eta*")
    held = ", ".join(f"{k}={v:.3g}" for k, v in data.held.items())
    where = "; this slice lies outside the data" if data.curve["extrapolation"].min() > 0 else ""
    ax.set_title(f"eta* vs {data.along} at {held}{where}\n(sweeps moved onto the slice by the "
                 "law)", fontsize=8)
    ax.legend(fontsize=7, loc="best")
    return ax


# ---------------------------------------------------------------- forest plot
def forest_data(posterior: Any) -> pd.DataFrame:
    """Exponents d ln eta*/d ln x per optimizer (and family): median, 50% and 90% intervals."""
    exps = posterior.exponents()
    wide = exponent_table(exps, 0.9)
    inner = exponent_table(exps, 0.5)
    wide["lo50"], wide["hi50"] = inner["lo50"].to_numpy(), inner["hi50"].to_numpy()
    return wide


def plot_forest(table: pd.DataFrame, ax: Any) -> Any:
    """Forest plot of `forest_data`: one row per (covariate, optimizer); returns `ax`."""
    colors = _colors(list(dict.fromkeys(table["optimizer"])))
    labels, positions, y = [], [], 0.0
    for covariate, part in table.groupby("covariate", sort=False):
        for _, row in part.iterrows():
            c = colors[row["optimizer"]]
            ax.plot([row["lo90"], row["hi90"]], [y, y], color=c, lw=1.2)
            ax.plot([row["lo50"], row["hi50"]], [y, y], color=c, lw=3.5)
            ax.plot(row["median"], y, "o", color="white", mec=c, ms=5)
            family = row.get("family")
            suffix = f" [{family}]" if isinstance(family, str) else ""
            labels.append(f"{covariate}: {row['optimizer']}{suffix}")
            positions.append(y)
            y += 1
        y += 0.6
    ax.axvline(0, color="0.6", lw=0.8, ls="--")
    ax.set_yticks(positions, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("exponent d ln eta* / d ln x (median, 50% and 90% intervals)")
    ax.set_title("scaling exponents by optimizer", fontsize=9)
    return ax


# ---------------------------------------------------------------- sharpness vs LR
def sharpness_vs_lr_data(source: Any) -> pd.DataFrame:
    """Runs with measured sharpness: lr, optimizer, diverged, lambda_max and/or
    preconditioned_lambda_max. `source`: a posterior (its run table) or a run table."""
    data = source.data if hasattr(source, "data") else source
    columns = [c for c in ("lambda_max", "preconditioned_lambda_max") if c in data.columns]
    if not columns:
        return pd.DataFrame(columns=["lr", "optimizer", "diverged", "lambda_max"])
    values = data[columns].apply(pd.to_numeric, errors="coerce")
    columns = [c for c in columns if values[c].notna().any()]
    measured = values[columns].notna().any(axis=1)
    keep = [c for c in ("config_id", "lr", "optimizer", "diverged", "n_params")
            if c in data.columns]
    table = data.loc[measured, keep].assign(**{c: values.loc[measured, c] for c in columns})
    return table.reset_index(drop=True)


def plot_sharpness_vs_lr(table: pd.DataFrame, ax: Any) -> Any:
    """lambda_max vs LR (log-log) with the edge-of-stability lines; returns `ax`."""
    if table.empty:
        ax.text(0.5, 0.5, "no sharpness measured in these runs", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return ax
    colors = _colors(list(dict.fromkeys(table["optimizer"])))
    for name, part in table.groupby("optimizer", sort=False):
        for column, marker in (("lambda_max", "o"), ("preconditioned_lambda_max", "^")):
            if column in part and part[column].notna().any():
                kind = "raw" if column == "lambda_max" else "preconditioned"
                ax.scatter(part["lr"], part[column], color=colors[name], marker=marker, s=20,
                           edgecolor="k", lw=0.3, label=f"{name} ({kind})")
    lr = np.geomspace(table["lr"].min() / 1.5, table["lr"].max() * 1.5, 50)
    ax.plot(lr, 2 / lr, "k--", lw=0.9, label="2 / LR (GD edge of stability)")
    ax.plot(lr, 38 / lr, "k:", lw=0.9, label="38 / LR (Adam, beta1=0.9, preconditioned)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("peak LR")
    ax.set_ylabel("sharpness lambda_max at end of training")
    ax.legend(fontsize=7)
    return ax


def _colors(names: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}
