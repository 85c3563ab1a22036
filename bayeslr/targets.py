"""Targets: the configurations a user asks about, checked against what a posterior knows.

A target is a model not trained yet: its size (non-embedding parameters, or width / depth /
heads), token horizon, batch size, optimizer and architecture family. Users write targets as a
dict, a list of dicts or a DataFrame with friendly names (`params`, `width`, `depth`, `heads`,
`family`); :func:`normalize_targets` turns them into the table the posterior's
``draw_curve_params`` expects (columns named as in the run table: `n_params`, `d_model`,
`n_layers`, `n_heads`, `arch`, ...), and names the fix when something is missing or unknown.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bayeslr.errors import PosteriorError, SchemaError
from bayeslr.schema import normalize_optimizer

ALIASES = {
    "params": "n_params", "model_params": "n_params", "n": "n_params",
    "width": "d_model", "hidden_size": "d_model",
    "depth": "n_layers", "layers": "n_layers",
    "heads": "n_heads",
    "family": "arch", "architecture": "arch",
    "ffn_hidden_size": "d_ff",
    "batch": "batch_size",
}
"""Friendly column names accepted in targets -> the run table's names."""

NUMERIC = ("n_params", "tokens", "batch_size", "d_model", "n_layers", "n_heads", "d_ff",
           "seq_len", "lambda_max")
"""Target columns that must be finite positive numbers when given."""

EXTRAPOLATION_WARN = 1.0
"""Default distance outside the data (standardized units of the model's covariates) beyond
which an answer warns that it extrapolates."""


class ExtrapolationWarning(UserWarning):
    """An answer concerns a target outside the range of the fitted data.

    The answer is still given, with the model's (wider) intervals, but the law is being
    extrapolated; check the `extrapolation` column and consider sweeping closer to the target.
    """


def n_params_from_shape(d_model: float, n_layers: float, d_ff: float | None = None, *,
                        gated: bool = False) -> float:
    """Non-embedding parameters of a transformer from its shape.

    Per block: 4·d² for attention (Q, K, V, output) plus 2·d·d_ff for the MLP (3·d·d_ff when
    `gated`, i.e. SwiGLU as in Llama). `d_ff` defaults to 4·d (GPT) or 8/3·d (gated), which
    gives the usual 12·L·d² for GPT. Biases and norms are ignored (< 0.1%).
    """
    if d_ff is None:
        d_ff = (8.0 / 3.0) * d_model if gated else 4.0 * d_model
    mlp = (3.0 if gated else 2.0) * d_model * d_ff
    return float(n_layers * (4.0 * d_model**2 + mlp))


def normalize_targets(targets: Any, *, optimizers: Sequence[str],
                      families: Sequence[str]) -> pd.DataFrame:
    """One row per target with canonical column names, validated against a posterior.

    `targets`: a mapping (scalars, or equal-length lists for several targets), a sequence of
    mappings, or a DataFrame. Required: `n_params` (or `d_model` and `n_layers`), `tokens`,
    `batch_size`, `optimizer`; `arch` defaults to the posterior's only family (with several,
    a missing `arch` means a new family drawn from their population). Raises
    PosteriorError naming the missing column or listing the known optimizers / families.
    """
    frame = _canonical_columns(_as_frame(targets))
    frame = _fill_family(frame, families)
    frame = _fill_n_params(frame)
    for column in ("tokens", "batch_size", "optimizer"):
        if column not in frame.columns or frame[column].isna().any():
            raise PosteriorError(f"target: {column!r} is required (give e.g. "
                                 f"{_EXAMPLE[column]})")
    for column in NUMERIC:
        if column in frame.columns:
            frame[column] = _positive_numbers(frame[column], column)
    frame["optimizer"] = [_known_optimizer(o, optimizers) for o in frame["optimizer"]]
    frame["arch"] = [_known_family(f, families) for f in frame["arch"]]
    return frame.reset_index(drop=True)


_EXAMPLE = {"tokens": "tokens=2.6e10 or --tokens 2.6e10",
            "batch_size": "batch_size=512 or --batch-size 512",
            "optimizer": "optimizer='adamw' or --optimizer adamw"}


def _as_frame(targets: Any) -> pd.DataFrame:
    if isinstance(targets, pd.DataFrame):
        frame = targets.copy()
    elif isinstance(targets, Mapping):
        values = dict(targets)
        if any(_is_list(v) for v in values.values()):
            frame = pd.DataFrame(values)
        else:
            frame = pd.DataFrame([values])
    elif isinstance(targets, Sequence) and not isinstance(targets, str) and targets and all(
            isinstance(t, Mapping) for t in targets):
        frame = pd.DataFrame([dict(t) for t in targets])
    else:
        raise PosteriorError(f"target: expected a dict, a list of dicts or a DataFrame, got "
                             f"{type(targets).__name__}")
    if frame.empty:
        raise PosteriorError("target: no targets given")
    return frame


def _canonical_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Rename friendly names (ALIASES); merge a name given both ways across rows."""
    out: dict[str, pd.Series] = {}
    for column in frame.columns:
        name = ALIASES.get(column, column)
        values = frame[column]
        if name in out:
            both = out[name].notna() & values.notna()
            if both.any():
                raise PosteriorError(f"target: {name!r} given twice (as {column!r} and under "
                                     "another name) for the same target; give it once")
            values = out[name].where(out[name].notna(), values)
        out[name] = values
    return pd.DataFrame(out, index=frame.index)


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray, pd.Series))


def _fill_family(frame: pd.DataFrame, families: Sequence[str]) -> pd.DataFrame:
    """Default `arch` to the posterior's only family; with several, a missing `arch` is a new
    family drawn from the population of families (wider intervals)."""
    if len(families) == 1:
        frame["arch"] = frame["arch"].fillna(families[0]) if "arch" in frame else families[0]
    elif "arch" not in frame:
        frame["arch"] = None
    return frame


def _fill_n_params(frame: pd.DataFrame) -> pd.DataFrame:
    """Compute n_params from width and depth where it is not given."""
    has = "n_params" in frame.columns
    missing = ~frame["n_params"].notna() if has else pd.Series(True, index=frame.index)
    if not missing.any():
        return frame
    if not {"d_model", "n_layers"} <= set(frame.columns) or frame.loc[
            missing, ["d_model", "n_layers"]].isna().any().any():
        raise PosteriorError("target: the model size is required: n_params (--params; "
                             "non-embedding parameters, e.g. 1.3e9) or width and depth "
                             "(--width/--depth; d_model=2048, n_layers=24)")
    values = frame["n_params"].astype(float).copy() if has else pd.Series(np.nan, frame.index)
    for i in frame.index[missing]:
        row = frame.loc[i]
        d_ff = row.get("d_ff")
        d_ff = None if d_ff is None or pd.isna(d_ff) else float(d_ff)
        gated = str(row.get("arch", "")).lower().startswith("llama")
        values[i] = n_params_from_shape(float(row["d_model"]), float(row["n_layers"]), d_ff,
                                        gated=gated)
    frame["n_params"] = values
    return frame


def _positive_numbers(column: pd.Series, name: str) -> pd.Series:
    try:
        values = pd.to_numeric(column, errors="raise").astype(float)
    except (TypeError, ValueError):
        raise PosteriorError(f"target: {name!r} must be a number, got "
                             f"{list(column)!r}") from None
    bad = values[~(np.isfinite(values) & (values > 0)) & values.notna()]
    if len(bad):
        raise PosteriorError(f"target: {name!r} must be finite and > 0, got {bad.iloc[0]!r}")
    return values


def _known_optimizer(name: Any, known: Sequence[str]) -> str:
    try:
        key = normalize_optimizer(name, where="target optimizer")
    except SchemaError:
        key = str(name)
    if key not in known:
        raise PosteriorError(f"target: unknown optimizer {name!r} for this posterior; known: "
                             f"{', '.join(known)} (fit on sweeps of {name!r} to ask about it)")
    return key


def _known_family(name: Any, known: Sequence[str]) -> str | None:
    if name is None or (isinstance(name, float) and math.isnan(name)):
        return None
    key = str(name).strip()
    lowered = {f.lower(): f for f in known}
    if key.lower() not in lowered:
        raise PosteriorError(f"target: unknown architecture family {name!r} for this "
                             f"posterior; known: {', '.join(known)}")
    return lowered[key.lower()]


def warn_extrapolation(frame: pd.DataFrame, extrapolation: Sequence[float], *,
                       threshold: float = EXTRAPOLATION_WARN, stacklevel: int = 3,
                       straight: Sequence[tuple[str, ...]] | None = None,
                       tokens_per_param: tuple[float, float] | None = None) -> None:
    """Warn (ExtrapolationWarning) about targets farther than `threshold` outside the data.
    `straight`: per target, the covariates along which the law extrapolates without a
    quadratic term (Posterior.straight_extrapolation); named in the warning.
    `tokens_per_param`: the fitted runs' (lowest, highest) D / N; targets trained for fewer
    or more tokens per parameter are named, since the horizon and batch trends of the
    optimum can change between such regimes (docs/transfer.md)."""
    far = [(i, d) for i, d in enumerate(extrapolation) if math.isfinite(d) and d > threshold]
    if not far:
        return
    parts = [f"target {i} ({_describe(frame.iloc[i])}): {d:.1f} standardized units outside"
             for i, d in far[:5]]
    more = f" and {len(far) - 5} more" if len(far) > 5 else ""
    lines = sorted({name for i, _ in far for name in (straight[i] if straight else ())})
    caveat = (f" Along {', '.join(lines)} the law has no quadratic term (these sweeps cannot "
              "identify one: it needs 3 or more distinct values, or curvature is off), so it "
              "extrapolates as a straight line in logs and the intervals do not allow for a "
              "bend." if lines else "")
    warnings.warn(
        "extrapolating beyond the fitted sweeps — " + "; ".join(parts) + more
        + ". The intervals include the law's uncertainty there but rest on its functional "
        "form; sweep closer to the target to confirm." + caveat
        + _regime_caveat(frame, [i for i, _ in far], tokens_per_param),
        ExtrapolationWarning, stacklevel=stacklevel)


def _regime_caveat(frame: pd.DataFrame, far: list[int],
                   fitted: tuple[float, float] | None) -> str:
    """A sentence naming the far targets trained for more or fewer tokens per parameter than
    any fitted run ('' when none is, or the range is unknown)."""
    if fitted is None or not {"tokens", "n_params"} <= set(frame):
        return ""
    ratio = tokens_per_param(frame)
    outside = [i for i in far if not fitted[0] <= ratio[i] <= fitted[1]]
    if not outside:
        return ""
    named = ", ".join(f"target {i} ({_short(ratio[i])})" for i in outside[:5])
    return (f" Tokens per parameter: {named} against {_short(fitted[0])}-{_short(fitted[1])} "
            "in the fitted sweeps. The horizon and batch trends of the optimum learned there "
            "can change in another regime: on the shipped reference sweep AdamW's and "
            "RMSprop's optima fell with the horizon at 4-16 tokens per parameter and not at "
            "1.2 or fewer (docs/transfer.md).")


def tokens_per_param(frame: pd.DataFrame) -> np.ndarray:
    """Training tokens per parameter (D / N) of each row."""
    return frame["tokens"].to_numpy(float) / frame["n_params"].to_numpy(float)


def _short(value: float) -> str:
    """Three significant digits, without an exponent below 1e6."""
    return f"{value:.3g}" if value < 1000 or value >= 1e6 else f"{value:.0f}"


def _describe(row: pd.Series) -> str:
    return (f"N={row['n_params']:.3g}, D={row['tokens']:.3g}, B={row['batch_size']:.0f}, "
            f"{row['optimizer']}")
