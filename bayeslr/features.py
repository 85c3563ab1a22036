"""Model inputs from the run table: cleaned runs, configurations, standardized covariates.

A configuration is one LR sweep: all runs sharing every setting except the LR and the seed
(the table's `config_id`, or a regrouping that ignores `ModelSpec.group_ignore`). Bad data is
cleaned explicitly and every change is reported (DataWarning): duplicated runs, NaN losses on
runs not marked diverged, configurations with a single LR. Covariates the data cannot identify
(one model size, collinear columns, curvature with too few levels) are dropped with a warning
that says so; what cannot be fitted at all raises ModelError.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from bayeslr.bracketing import grid_edges, grid_notes
from bayeslr.design import Standardizer, curvature_columns, term_names
from bayeslr.errors import DataWarning, ModelError
from bayeslr.schema import ModelShape, OptimizerConfig, TrainConfig
from bayeslr.spec import SIZE_COVARIATES, ModelSpec

LABELS = {
    "n_params": ("N", "model size"), "tokens": ("D", "token horizon"),
    "batch_size": ("batch size", "batch size"), "batch_tokens": ("batch size", "batch size"),
    "d_model": ("width", "width"), "n_layers": ("depth", "depth"),
    "n_heads": ("heads", "head count"), "lambda_max": ("lambda_max", "sharpness value"),
}
"""Covariate -> (symbol, what a single value of it means) for identification messages."""

DEFAULT_FAMILY = "default"


@dataclass(frozen=True)
class Features:
    """Arrays the model is built from; P points (runs), C configurations, K covariates."""

    runs: pd.DataFrame
    """The cleaned run rows used, in point order (a copy; the input table is not modified)."""
    config_ids: tuple[str, ...]
    optimizers: tuple[str, ...]
    families: tuple[str, ...]
    log_lr: np.ndarray  # (P,) natural log of the peak LR
    loss: np.ndarray  # (P,) nats/token; NaN on diverged runs
    diverged: np.ndarray  # (P,) bool
    point_config: np.ndarray  # (P,) int index into configs
    config_optimizer: np.ndarray  # (C,) int index into optimizers
    config_family: np.ndarray  # (C,) int index into families
    covariates: tuple[str, ...]
    """Identified covariates (a subset of the spec's), the columns of z."""
    z: np.ndarray  # (C, K) standardized covariates
    terms: tuple[tuple[int, int], ...]
    """Curvature terms as pairs of covariate indices: (i, i) quadratic, (i, j) interaction."""
    standardizer: Standardizer
    rho: np.ndarray | None  # (C,) log(effective_lr / lr) per config, effective variant only
    notes: tuple[str, ...]
    """What was cleaned or dropped, and why (also issued as DataWarning)."""

    @property
    def n_points(self) -> int:
        return len(self.log_lr)

    @property
    def n_configs(self) -> int:
        return len(self.config_ids)

    @property
    def term_names(self) -> tuple[str, ...]:
        return term_names(self.covariates, self.terms)

    @property
    def q(self) -> np.ndarray:
        """(C, J) curvature columns built from z."""
        return curvature_columns(self.z, self.terms)

    def loss_floor(self) -> np.ndarray:
        """(C,) lowest observed loss per configuration; NaN where every run diverged."""
        out = np.full(self.n_configs, np.nan)
        ok = ~self.diverged
        np.fmin.at(out, self.point_config[ok], self.loss[ok])
        return out

    def data_hash(self) -> str:
        """Hash of the model inputs, to check a saved posterior against its data."""
        digest = hashlib.sha256()
        for array in (self.log_lr, np.nan_to_num(self.loss, nan=-1.0), self.diverged,
                      self.point_config, self.config_optimizer, self.config_family, self.z):
            digest.update(np.ascontiguousarray(array, dtype=float).round(12).tobytes())
        digest.update("|".join(self.config_ids + self.optimizers + self.families
                               + self.covariates).encode())
        return digest.hexdigest()[:16]


def build_features(table: pd.DataFrame, spec: ModelSpec, *, warn: bool = True) -> Features:
    """Clean the run table and turn it into model inputs for `spec`.

    Raises ModelError when nothing can be fitted; issues DataWarning (if `warn`) for every
    cleaning step and every term dropped as not identified.
    """
    notes: list[str] = []
    runs = clean_runs(table, spec, notes)
    runs, configs = _configurations(runs, spec, notes)
    log_x, configs = _config_covariates(runs, configs, spec, notes)
    if configs.empty:
        raise ModelError("no configuration has every covariate the model needs; see the "
                         "warnings above, or remove covariates from ModelSpec.covariates")
    runs = runs[runs["_config"].isin(configs.index)]
    optimizers = tuple(sorted(configs["optimizer"].unique()))
    families = tuple(sorted(configs["_family"].unique()))
    opt_idx = configs["optimizer"].map({o: i for i, o in enumerate(optimizers)}).to_numpy()
    fam_idx = configs["_family"].map({f: i for i, f in enumerate(families)}).to_numpy()
    all_log_x = log_x
    names, log_x = _identified(spec.covariates, log_x, opt_idx, fam_idx, notes)
    standardizer = _standardizer(names, log_x, spec.covariates, all_log_x)
    z = standardizer.transform(log_x) if names else np.zeros((len(configs), 0))
    terms = _curvature_terms(names, z, opt_idx, fam_idx, notes) if spec.curvature else ()
    position = {cid: i for i, cid in enumerate(configs.index)}
    runs = runs.assign(_config_index=runs["_config"].map(position)).sort_values(
        ["_config_index", "lr"], kind="stable")
    notes += _grid_notes(runs, configs, spec)
    if warn:
        for note in notes:
            warnings.warn(note, DataWarning, stacklevel=3)
    return Features(
        runs=runs.drop(columns=["_config_index"]).reset_index(drop=True),
        config_ids=tuple(str(c) for c in configs.index), optimizers=optimizers,
        families=families, log_lr=np.log(runs["lr"].to_numpy(float)),
        loss=np.where(runs["diverged"], np.nan, runs["loss"].to_numpy(float)),
        diverged=runs["diverged"].to_numpy(bool),
        point_config=runs["_config_index"].to_numpy(int), config_optimizer=opt_idx,
        config_family=fam_idx, covariates=names, z=z, terms=terms,
        standardizer=standardizer,
        rho=configs["_rho"].to_numpy(float) if spec.lr_kind == "effective" else None,
        notes=tuple(notes),
    )


def _grid_notes(runs: pd.DataFrame, configs: pd.DataFrame, spec: ModelSpec) -> list[str]:
    """Notes for the sweeps whose LR grid does not bracket their optimum, each configuration
    named by its optimizer and covariates (bayeslr.bracketing)."""
    diverged = runs["diverged"].to_numpy(bool)
    edges = grid_edges(np.log(runs["lr"].to_numpy(float)),
                       np.where(diverged, np.nan, runs["loss"].to_numpy(float)), diverged,
                       runs["_config_index"].to_numpy(int), len(configs))
    columns = [c for c in spec.covariates if c in configs]
    labels = [" ".join([str(row["optimizer"])] + [f"{c}={float(row[c]):.4g}" for c in columns])
              for _, row in configs.iterrows()]
    return grid_notes(edges, pd.Series(labels))


def clean_runs(table: pd.DataFrame, spec: ModelSpec, notes: list[str]) -> pd.DataFrame:
    """Check columns, drop duplicated and unusable runs; returns a cleaned copy."""
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise ModelError("the run table is empty: nothing to fit (import or collect a sweep "
                         "first)")
    needed = ["optimizer", "lr", "loss"] + [_source_column(c, table) for c in spec.covariates]
    if spec.lr_kind == "effective":
        needed.append("effective_lr")
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ModelError(f"the run table lacks column(s) {missing} that the model needs; add "
                         "them or change ModelSpec.covariates / lr_kind")
    runs = table.copy()
    if "diverged" not in runs:
        runs["diverged"] = ~np.isfinite(pd.to_numeric(runs["loss"], errors="coerce"))
    runs["diverged"] = runs["diverged"].fillna(False).astype(bool)
    runs["lr"] = pd.to_numeric(runs["lr"], errors="coerce")
    runs["loss"] = pd.to_numeric(runs["loss"], errors="coerce")
    key = ["run_id"] if "run_id" in runs else None
    dup = runs.duplicated(subset=key, keep="first") if key else _duplicated_rows(runs)
    _drop(dup, notes, "duplicated run(s) (same run_id: the same run listed twice); "
          "kept the first of each")
    runs = runs[~dup]
    bad_lr = ~(np.isfinite(runs["lr"]) & (runs["lr"] > 0))
    _drop(bad_lr, notes, "run(s) without a finite LR > 0")
    runs = runs[~bad_lr]
    nan_loss = ~runs["diverged"] & ~np.isfinite(runs["loss"])
    _drop(nan_loss, notes, "run(s) not marked diverged but with a NaN/infinite loss "
          "(mark them diverged in the table if they blew up)")
    runs = runs[~nan_loss]
    if not spec.divergence:
        runs = runs[~runs["diverged"]]
    if runs.empty:
        raise ModelError("no usable runs left after cleaning; see the warnings")
    if runs["diverged"].all():
        raise ModelError(f"all {len(runs)} runs diverged: there is no loss to locate an "
                         "optimum; sweep lower learning rates")
    return runs


def _configurations(runs: pd.DataFrame, spec: ModelSpec,
                    notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Assign each run its configuration; drop configurations with fewer than 2 LRs."""
    runs = runs.assign(_config=_group_key(runs, spec),
                       _family=runs["arch"].fillna(DEFAULT_FAMILY).astype(str)
                       if "arch" in runs else DEFAULT_FAMILY)
    n_lrs = runs.groupby("_config")["lr"].nunique()
    single = n_lrs.index[n_lrs < 2]
    if len(single) == len(n_lrs):
        raise ModelError(f"every configuration ({len(n_lrs)}) was run at a single LR: an "
                         "optimum cannot be located; sweep at least 2 (better 3-5) LRs per "
                         "configuration, or pool sweeps with ModelSpec.group_ignore")
    if len(single):
        notes.append(f"dropped {len(single)} of {len(n_lrs)} configurations run at a single "
                     f"LR ({runs['_config'].isin(single).sum()} runs): they carry no "
                     "information about their optimum")
        runs = runs[~runs["_config"].isin(single)]
    if runs["diverged"].all():
        raise ModelError("every configuration with >= 2 LRs diverged at all of them; sweep "
                         "lower learning rates")
    if spec.blowup_gap is not None:
        runs = _mark_blowups(runs, spec.blowup_gap, notes)
    configs = runs.groupby("_config", sort=True).first()
    return runs, configs


def _mark_blowups(runs: pd.DataFrame, gap: float, notes: list[str]) -> pd.DataFrame:
    """Count as diverged the runs above their config's best LR whose loss exceeds the config's
    best loss by more than `gap` nats/token (loss spikes without a NaN)."""
    ok = ~runs["diverged"]
    best = runs[ok].sort_values("loss").groupby("_config")[["loss", "lr"]].first()
    best_loss = runs["_config"].map(best["loss"])
    best_lr = runs["_config"].map(best["lr"])
    blown = ok & (runs["lr"] > best_lr) & (runs["loss"] > best_loss + gap)
    if blown.any():
        notes.append(f"counted {int(blown.sum())} run(s) as diverged: loss more than {gap:g} "
                     "nats above their configuration's best, at a higher LR (a loss spike; "
                     "set ModelSpec.blowup_gap=None to fit them as losses)")
        runs = runs.assign(diverged=runs["diverged"] | blown)
    return runs


def _group_key(runs: pd.DataFrame, spec: ModelSpec) -> pd.Series:
    if not spec.group_ignore and "config_id" in runs:
        return runs["config_id"].astype(str)
    protected = {"optimizer", "lr", "seed", "arch"} | {_source_column(c, runs)
                                                       for c in spec.covariates}
    clash = protected & set(spec.group_ignore)
    if clash:
        raise ModelError(f"ModelSpec.group_ignore: {sorted(clash)} cannot be ignored (a "
                         "covariate, the optimizer or the LR); remove them")
    columns = [c for c in config_columns(runs) if c not in spec.group_ignore]
    text = runs[columns].apply(lambda col: col.map(_key_text)).agg("|".join, axis=1)
    return text.map(lambda s: hashlib.sha256(s.encode()).hexdigest()[:16])


def _key_text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def config_columns(table: pd.DataFrame) -> list[str]:
    """Columns of the run table that define a configuration (everything but LR and seed)."""
    names = [f.name for f in fields(ModelShape)] + ["optimizer"]
    names += [f.name for f in fields(OptimizerConfig) if f.name not in ("name", "lr")]
    names += [f.name for f in fields(TrainConfig) if f.name != "seed"] + ["batch_tokens"]
    extra = sorted(c for c in table.columns if str(c).startswith("extra."))
    return [c for c in names if c in table.columns] + extra


def _config_covariates(runs: pd.DataFrame, configs: pd.DataFrame, spec: ModelSpec,
                       notes: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """(C, K) natural logs of the spec's covariates; configs lacking one are dropped."""
    columns = {}
    for name in spec.covariates:
        if name == "lambda_max":
            columns[name] = _sharpness_per_config(runs)
        elif name == "batch_tokens" and "batch_tokens" not in runs:
            columns[name] = configs["batch_size"] * configs["seq_len"]
        else:
            columns[name] = configs[name]
    values = pd.DataFrame(columns, index=configs.index).apply(pd.to_numeric, errors="coerce")
    bad = ~(np.isfinite(values) & (values > 0)).all(axis=1)
    lacking = [c for c in values if (~(np.isfinite(values[c]) & (values[c] > 0)))[bad].any()]
    if spec.lr_kind == "effective":
        configs = configs.assign(_rho=_effective_ratio(runs))
        no_ratio = ~np.isfinite(configs["_rho"].astype(float))
        lacking += ["effective_lr"] if no_ratio.any() else []
        bad |= no_ratio
    if bad.any():
        notes.append(f"dropped {int(bad.sum())} configurations lacking a positive value of "
                     f"{lacking}")
    configs = configs[~bad]
    return np.log(values[~bad].to_numpy(float)), configs


def _sharpness_per_config(runs: pd.DataFrame) -> pd.Series:
    """lambda_max of each config's lowest-LR non-diverged run: the least edge-of-stability bias."""
    if "lambda_max" not in runs:
        return pd.Series(np.nan, index=runs["_config"].unique())
    ok = runs[~runs["diverged"] & np.isfinite(pd.to_numeric(runs["lambda_max"], errors="coerce"))]
    return ok.sort_values("lr").groupby("_config")["lambda_max"].first().astype(float)


def _effective_ratio(runs: pd.DataFrame) -> pd.Series:
    """Median over a config's non-diverged runs of log(effective_lr / lr)."""
    eff = pd.to_numeric(runs["effective_lr"], errors="coerce")
    ok = ~runs["diverged"] & (eff > 0)
    ratio = np.log(eff[ok] / runs["lr"][ok])
    return ratio.groupby(runs["_config"][ok]).median()


MIN_LOG_SD = 0.05
"""A covariate is identified when the part of its natural log that the intercepts and earlier
covariates do not explain has at least this standard deviation (about a 5% spread): token
counts that differ by 0.5% between batch sizes, because runs end on whole steps, are one
horizon, not a horizon effect to fit (it would take the batch size's place)."""


def _identified(candidates: tuple[str, ...], log_x: np.ndarray, opt: np.ndarray,
                fam: np.ndarray, notes: list[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """Keep covariates that vary and are not collinear with earlier ones or the intercepts."""
    design = _base_design(np.zeros((len(log_x), 0)), opt, fam)
    kept: list[int] = []
    for k, name in enumerate(candidates):
        column = log_x[:, k]
        symbol, what = LABELS[name]
        if np.std(column) < MIN_LOG_SD:
            notes.append(f"exponent of {symbol} not identified: one {what} "
                         f"({np.exp(np.median(column)):.4g}); the {name} term is dropped")
            continue
        if _unexplained_sd(design, column) >= MIN_LOG_SD:
            design = np.column_stack([design, (column - column.mean()) / column.std()])
            kept.append(k)
            continue
        earlier = ", ".join(candidates[i] for i in kept) or "nothing else"
        notes.append(f"exponent of {symbol} not identified: {name} is collinear with the "
                     f"optimizer/family intercepts and {earlier} in these configurations; "
                     f"the {name} term is dropped")
    return tuple(candidates[i] for i in kept), log_x[:, kept]


def _standardizer(names: tuple[str, ...], log_x: np.ndarray, candidates: tuple[str, ...],
                  all_log_x: np.ndarray) -> Standardizer:
    unused = tuple(c for c in candidates if c not in names)
    cols = [candidates.index(c) for c in unused]
    low = tuple(all_log_x[:, cols].min(axis=0)) if cols else ()
    high = tuple(all_log_x[:, cols].max(axis=0)) if cols else ()
    if not names:
        return Standardizer((), (), (), (), (), unused, _floats(low), _floats(high))
    centre = log_x.mean(axis=0)
    scale = log_x.std(axis=0)
    z = (log_x - centre) / scale
    return Standardizer(names, _floats(centre), _floats(scale), _floats(z.min(axis=0)),
                        _floats(z.max(axis=0)), unused, _floats(low), _floats(high))


def _floats(values: np.ndarray | tuple) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


MIN_TERM_SD = 0.05
"""A curvature term is identified when the part of its column (a product of standardized
covariates) that the intercepts, covariates and earlier terms do not explain has at least this
standard deviation. Near-duplicates of a level (e.g. token counts that differ by 0.5% between
batch sizes because runs end on whole steps) do not count as distinct values."""


def _curvature_terms(names: tuple[str, ...], z: np.ndarray, opt: np.ndarray, fam: np.ndarray,
                     notes: list[str]) -> tuple[tuple[int, int], ...]:
    """Quadratic and interaction terms of the size covariates that the design identifies."""
    sizes = [i for i, n in enumerate(names) if n in SIZE_COVARIATES]
    candidates = [(i, i) for i in sizes] + [(i, j) for a, i in enumerate(sizes)
                                            for j in sizes[a + 1:]]
    design = _base_design(z, opt, fam)
    kept = []
    for i, j in candidates:
        column = z[:, i] * z[:, j]
        if _unexplained_sd(design, column) >= MIN_TERM_SD:
            design, kept = np.column_stack([design, column]), kept + [(i, j)]
        else:
            name = term_names(names, ((i, j),))[0]
            need = (f"needs >= 3 distinct values of {names[i]}" if i == j else
                    f"needs {names[i]} and {names[j]} varied jointly")
            notes.append(f"curvature term {name} not identified ({need}); dropped")
    return tuple(kept)


def _unexplained_sd(design: np.ndarray, column: np.ndarray) -> float:
    """Standard deviation of the least-squares residual of `column` on `design`."""
    coef, *_ = np.linalg.lstsq(design, column, rcond=None)
    return float(np.std(column - design @ coef))


def _base_design(z: np.ndarray, opt: np.ndarray, fam: np.ndarray) -> np.ndarray:
    onehots = [np.eye(opt.max() + 1)[opt], np.eye(fam.max() + 1)[fam][:, 1:]]
    return np.column_stack(onehots + [z])


def _drop(mask: pd.Series, notes: list[str], what: str) -> None:
    if mask.any():
        notes.append(f"dropped {int(mask.sum())} {what}")


def _duplicated_rows(runs: pd.DataFrame) -> pd.Series:
    return runs.astype(str).duplicated(keep="first")


def _source_column(covariate: str, table: pd.DataFrame) -> str:
    """Table column a covariate is read from (batch_tokens may come from batch_size*seq_len)."""
    if covariate == "batch_tokens" and "batch_tokens" not in table:
        return "seq_len"
    return covariate

