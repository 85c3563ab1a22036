"""Sharpness over training against the edge-of-stability thresholds (matplotlib only).

Gradient descent with heavy-ball momentum beta is stable on a quadratic only while the
Hessian's top eigenvalue stays below (2 + 2 beta) / lr (2 / lr without momentum), and full-batch
training drives it there (Cohen et al. 2021). Adam's preconditioned sharpness
lambda_max(P^-1 H) settles near (2 + 2 beta1) / ((1 - beta1) lr), i.e. 38 / lr at beta1 = 0.9
(Cohen et al. 2022, arXiv:2207.14484). The series come from the collectors' sharpness
callback (Measurements.series['sharpness']).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bayeslr.errors import SchemaError
from bayeslr.schema import Measurements, RunRecord

ADAM_LIKE = ("adam", "adamw", "nadamw")


def gd_threshold(lr: float, *, momentum: float = 0.0) -> float:
    """Stability edge of (heavy-ball) gradient descent: (2 + 2 momentum) / lr."""
    return (2.0 + 2.0 * momentum) / lr


def adam_threshold(lr: float, *, beta1: float) -> float:
    """Stability edge of Adam's preconditioned sharpness: (2 + 2 beta1) / ((1 - beta1) lr)."""
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


def plot_sharpness(record_or_series: RunRecord | Measurements | Mapping[str, Any], *,
                   lr: float | None = None, optimizer: str | None = None,
                   beta1: float | None = None, momentum: float | None = None,
                   ax: Any = None, label: str | None = None) -> Any:
    """Plot lambda_max (and the preconditioned one, if measured) over steps, with thresholds.

    `record_or_series` is a RunRecord, a Measurements, the dict a sharpness callback's
    `measurements()` returns, or the series itself ({'step': [...], 'lambda_max': [...]}).
    Settings missing from it (lr, optimizer name, beta1, momentum) are given as keywords; a
    RunRecord supplies its own. Missing measurements (None/NaN) are gaps. Returns the axes.
    """
    series, settings = _resolve(record_or_series)
    lr = lr if lr is not None else settings.get("lr")
    optimizer = (optimizer or settings.get("optimizer") or "sgd").lower()
    beta1 = beta1 if beta1 is not None else settings.get("beta1")
    momentum = momentum if momentum is not None else settings.get("momentum") or 0.0
    if lr is None or not lr > 0:
        raise SchemaError("plot_sharpness: give the peak learning rate, lr=..., (> 0) to draw "
                          "the stability thresholds")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4))
    steps = list(series["step"])
    prefix = f"{label}: " if label else ""
    ax.plot(steps, _floats(series["lambda_max"]), "o-", ms=3, label=f"{prefix}lambda_max(H)")
    adam = optimizer in ADAM_LIKE
    if not adam:
        edge = gd_threshold(lr, momentum=momentum)
        name = "2/lr" if not momentum else f"(2+2*{momentum:g})/lr"
        ax.axhline(edge, ls="--", color="k", lw=1, label=f"{name} = {edge:.3g}")
    pre = series.get("preconditioned_lambda_max")
    if pre is not None:
        ax.plot(steps, _floats(pre), "s-", ms=3, label=f"{prefix}lambda_max(P^-1 H)")
    if adam and beta1 is not None:
        edge = adam_threshold(lr, beta1=beta1)
        ax.axhline(edge, ls=":", color="C3", lw=1.2,
                   label=f"(2+2b1)/((1-b1)lr) = {edge:.3g}")
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("sharpness (top Hessian eigenvalue)")
    ax.set_title(f"sharpness over training ({optimizer}, lr={lr:g})")
    ax.legend(fontsize="small")
    return ax


def has_sharpness(record: RunRecord) -> bool:
    """Whether the run recorded a sharpness series (collectors' measure.sharpness_every)."""
    series = record.measurements.series.get("sharpness")
    return bool(series) and bool(series.get("step"))


def write_run_plots(records: Iterable[RunRecord], out: str | Path, *,
                    dpi: int = 100) -> list[Path]:
    """One PNG per run with a sharpness series, `<out>/sharpness_<run_id>.png`; returns the
    paths. Each plots the run's sharpness against the thresholds of its own optimizer and
    peak LR (see `plot_sharpness`). Runs without a series are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for record in records:
        if not has_sharpness(record):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        try:
            model = record.config.model
            plot_sharpness(record, ax=ax)
            ax.set_title(f"{record.run_id[:8]}: d_model={model.d_model}, "
                         f"{record.config.optimizer.name}, lr={record.config.optimizer.lr:g}"
                         + (" (diverged)" if record.outcome.diverged else ""), fontsize=10)
            fig.tight_layout()
            path = out / f"sharpness_{record.run_id}.png"
            fig.savefig(path, dpi=dpi)
            written.append(path)
        finally:
            plt.close(fig)
    return written


def _resolve(source: Any) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """The sharpness series and whatever optimizer settings the source carries."""
    settings: dict[str, Any] = {}
    if isinstance(source, RunRecord):
        opt = source.config.optimizer
        settings = {"lr": opt.lr, "optimizer": opt.name, "beta1": opt.beta1,
                    "momentum": opt.momentum}
        source = source.measurements
    if isinstance(source, Measurements):
        source = {"series": source.series}
    if isinstance(source, Mapping) and "series" in source:
        source = source["series"].get("sharpness")
    if not isinstance(source, Mapping) or "step" not in source or "lambda_max" not in source:
        raise SchemaError("plot_sharpness: no sharpness series (a mapping with 'step' and "
                          "'lambda_max'); record one with collectors.sharpness.SharpnessCallback")
    return source, settings


def _floats(values: Any) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]
