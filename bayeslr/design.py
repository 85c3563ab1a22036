"""The standardized design shared by the model and the posterior.

Covariates enter the law as z = (log x - centre) / scale; curvature terms are products of
z columns. The same Standardizer maps training configurations (in features.py) and new targets
(here), so a posterior predicts at a target exactly as the model saw its data.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from bayeslr.errors import ModelError
from bayeslr.schema import OPTIMIZER_ALIASES


@dataclass(frozen=True)
class Standardizer:
    """Affine map from natural-log covariates to the model's standardized units.

    z = (log x - centre) / scale, per covariate; `low`/`high` are the z range of the data, used
    to measure how far a target lies outside it.
    """

    names: tuple[str, ...]
    centre: tuple[float, ...]
    scale: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    unused: tuple[str, ...] = ()
    """Covariates dropped as not identified; a target away from their data range still counts
    as extrapolation (distance in natural-log units)."""
    unused_low: tuple[float, ...] = ()
    unused_high: tuple[float, ...] = ()

    def transform(self, log_values: np.ndarray) -> np.ndarray:
        """(n, K) natural logs -> (n, K) standardized values."""
        return (np.asarray(log_values, float) - np.array(self.centre)) / np.array(self.scale)

    def overshoot(self, z: np.ndarray) -> np.ndarray:
        """(n, K) how far each standardized value lies beyond the data's range, 0 inside."""
        return np.maximum(0.0, np.maximum(z - np.array(self.high), np.array(self.low) - z))

    def distance_outside(self, z: np.ndarray, log_unused: np.ndarray | None = None) -> np.ndarray:
        """(n,) Euclidean distance outside the data's box, 0 inside: standardized units for
        the model's covariates, natural-log units for `log_unused` (n, len(unused))."""
        total = (self.overshoot(z)**2).sum(axis=1)
        if log_unused is not None and self.unused:
            low, high = np.array(self.unused_low), np.array(self.unused_high)
            off = np.maximum(0.0, np.maximum(log_unused - high, low - log_unused))
            total = total + np.nan_to_num(off**2).sum(axis=1)
        return np.sqrt(total)

    def to_dict(self) -> dict:
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> Standardizer:
        return cls(**{k: tuple(v) for k, v in data.items()})


def term_names(covariates: tuple[str, ...], terms: tuple[tuple[int, int], ...]) -> tuple[str, ...]:
    return tuple(f"{covariates[i]}^2" if i == j else f"{covariates[i]}*{covariates[j]}"
                 for i, j in terms)


def curvature_columns(z: np.ndarray, terms: tuple[tuple[int, int], ...]) -> np.ndarray:
    """(n, J) products z_i * z_j for each curvature term."""
    z = np.asarray(z, float)
    return np.stack([z[:, i] * z[:, j] for i, j in terms], axis=1) if terms else \
        np.zeros((len(z), 0))


@dataclass(frozen=True)
class TargetDesign:
    """Model inputs for new configurations (targets); T targets."""

    z: np.ndarray  # (T, K) standardized covariates
    q: np.ndarray  # (T, J) curvature columns
    optimizer: np.ndarray  # (T,) int index into the posterior's optimizers
    family: np.ndarray  # (T,) int index into families; -1 = a family not in the data
    extrapolation: np.ndarray  # (T,) distance outside the data (see Standardizer)


def target_design(targets: pd.DataFrame, *, standardizer: Standardizer,
                  terms: tuple[tuple[int, int], ...], optimizers: tuple[str, ...],
                  families: tuple[str, ...]) -> TargetDesign:
    """Standardize target configurations exactly as the training configurations were.

    targets: one row per target with the covariate columns the model uses (n_params, tokens,
    batch_size, ...), `optimizer`, and optionally `arch` (missing: a new family drawn from the
    population when the data had several, else the data's one family).
    """
    if not isinstance(targets, pd.DataFrame) or targets.empty:
        raise ModelError("targets: expected a non-empty table with one row per target")
    log_x = _target_logs(targets, standardizer.names, required=True)
    log_unused = _target_logs(targets, standardizer.unused, required=False)
    z = standardizer.transform(log_x) if standardizer.names else np.zeros((len(targets), 0))
    return TargetDesign(
        z=z, q=curvature_columns(z, terms), optimizer=_target_optimizers(targets, optimizers),
        family=_target_families(targets, families),
        extrapolation=standardizer.distance_outside(z, log_unused))


def _target_logs(targets: pd.DataFrame, names: tuple[str, ...], *, required: bool) -> np.ndarray:
    columns = []
    for name in names:
        if name == "batch_tokens" and "batch_tokens" not in targets and {
                "batch_size", "seq_len"} <= set(targets.columns):
            values = targets["batch_size"] * targets["seq_len"]
        elif name in targets:
            values = targets[name]
        elif required:
            raise ModelError(f"targets: missing column {name!r}, which this posterior's law "
                             f"uses (needs: {', '.join(names)})")
        else:
            values = pd.Series(np.nan, index=targets.index)
        values = pd.to_numeric(values, errors="coerce").to_numpy(float)
        if required and not (np.isfinite(values) & (values > 0)).all():
            raise ModelError(f"targets: column {name!r} needs finite values > 0, got "
                             f"{values.tolist()}")
        with np.errstate(invalid="ignore", divide="ignore"):
            columns.append(np.log(values))
    return np.column_stack(columns) if columns else np.zeros((len(targets), 0))


def _target_optimizers(targets: pd.DataFrame, optimizers: tuple[str, ...]) -> np.ndarray:
    if "optimizer" not in targets:
        if len(optimizers) == 1:
            return np.zeros(len(targets), int)
        raise ModelError(f"targets: missing column 'optimizer'; known: {', '.join(optimizers)}")
    index = []
    for name in targets["optimizer"]:
        key = str(name).strip().lower().replace("-", "_")
        key = OPTIMIZER_ALIASES.get(key, key)
        if key not in optimizers:
            raise ModelError(f"targets: unknown optimizer {name!r} for this posterior; known: "
                             f"{', '.join(optimizers)}")
        index.append(optimizers.index(key))
    return np.array(index, int)


def _target_families(targets: pd.DataFrame, families: tuple[str, ...]) -> np.ndarray:
    if "arch" not in targets:
        return np.full(len(targets), 0 if len(families) == 1 else -1, int)
    index = []
    for name in targets["arch"]:
        if pd.isna(name):
            index.append(0 if len(families) == 1 else -1)
        elif str(name) in families:
            index.append(families.index(str(name)))
        else:
            raise ModelError(f"targets: unknown architecture family {name!r} for this "
                             f"posterior; known: {', '.join(families)}")
    return np.array(index, int)
