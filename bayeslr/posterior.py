"""The fitted posterior: its draws, the data and spec behind them, and predictions at targets.

`Posterior` is what `bayeslr.fit` returns and what the answers (predict, recommend, penalty,
compare) are computed from. Predictions at a new configuration use bayeslr.law (the model's own
formula) on the posterior draws; the loss curve there uses bayeslr.curve. Units: natural logs
of LRs, nats/token, exponents as d ln eta* / d ln x.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayeslr import curve, law, posterior_io
from bayeslr.design import TargetDesign, target_design
from bayeslr.errors import DataWarning, PosteriorError
from bayeslr.features import Features, build_features
from bayeslr.schema import DIMS
from bayeslr.spec import SIZE_COVARIATES, ModelSpec
from bayeslr.targets import tokens_per_param

LAW_VARS = (law.INTERCEPT, law.SLOPE, law.FAMILY_INTERCEPT, law.FAMILY_SLOPE, law.CURVATURE,
            law.RESID_SD, "slope_spread", "log_curv_mean", "curv_asym", "curv_sd", curve.WALL,
            curve.DIV_OFFSET, curve.DIV_SCALE, "noise_sd", "ratio_intercept", "ratio_slope",
            "ratio_sd")
"""Posterior variables describing the law and the curve shape (not per-config ones)."""

RHAT_MAX = 1.01
ESS_MIN = 400


class Posterior:
    """A fitted LR scaling model (see module docstring)."""

    def __init__(self, idata: xr.DataTree, spec: ModelSpec, data: pd.DataFrame, *,
                 features: Features | None = None, info: dict[str, Any] | None = None) -> None:
        self.idata = idata
        self.spec = spec
        self.data = data
        if features is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataWarning)
                features = build_features(data, spec, warn=False)
        self.features = features
        self.info = dict(info or {})
        """Fit settings and merged priors (sampler, seconds, priors table...)."""

    @property
    def optimizers(self) -> tuple[str, ...]:
        return self.features.optimizers

    @property
    def families(self) -> tuple[str, ...]:
        return self.features.families

    @property
    def covariates(self) -> tuple[str, ...]:
        """Covariates the fitted law uses (after dropping unidentified ones)."""
        return self.features.covariates

    @property
    def notes(self) -> tuple[str, ...]:
        """What the data could not identify and how the table was cleaned."""
        return self.features.notes

    def __repr__(self) -> str:
        d = self.diagnostics()
        return (f"Posterior({self.features.n_points} runs, {self.features.n_configs} configs, "
                f"optimizers={list(self.optimizers)}, covariates={list(self.covariates)}, "
                f"rhat_max={d['rhat_max']:.3f}, ess_bulk_min={d['ess_bulk_min']:.0f})")

    # ---- summaries ---------------------------------------------------------------------
    def summary(self, *, ci_prob: float = 0.9) -> pd.DataFrame:
        """az.summary of the law in natural units: log eta* at the data centre per optimizer,
        exponents, curvature coefficients, residual scatter, curve and divergence shape."""
        import arviz as az

        tree = xr.DataTree.from_dict({"posterior": self.natural_parameters()})
        return az.summary(tree, ci_prob=ci_prob, ci_kind="eti")

    def natural_parameters(self) -> xr.Dataset:
        """Law parameters in natural units (dims chain, draw, ...)."""
        post = self.idata.posterior.dataset
        out = {"log_eta_centre": post[law.INTERCEPT]}
        for name, da in self.exponents().data_vars.items():
            out[f"exponent_{name}"] = da
        if law.CURVATURE in post:
            scale = np.array(self.features.standardizer.scale)
            div = [scale[i] * scale[j] for i, j in self.features.terms]
            out["curvature"] = post[law.CURVATURE] / xr.DataArray(div, dims=DIMS.TERM)
        for name in LAW_VARS[5:]:
            if name in post and name not in ("slope_spread", "ratio_slope"):
                out[name] = post[name]
        return xr.Dataset(out)

    def diagnostics(self) -> dict[str, Any]:
        """rhat_max, ess_bulk_min, n_divergences, ok (R-hat <= 1.01, ESS >= 400, none
        divergent), and the worst variables."""
        import arviz as az

        post = self.idata.posterior.dataset
        names = [v for v in post.data_vars if post[v].size > 0]
        rhat = az.rhat(post[names]) if names else xr.Dataset()
        ess = az.ess(post[names], method="bulk") if names else xr.Dataset()
        rmax = {v: float(rhat[v].max()) for v in rhat.data_vars}
        emin = {v: float(ess[v].min()) for v in ess.data_vars}
        stats = self.idata.sample_stats.dataset if "sample_stats" in self.idata.children \
            else xr.Dataset()
        n_div = int(stats["diverging"].sum()) if "diverging" in stats else 0
        worst_r = max(rmax, key=rmax.get) if rmax else None
        worst_e = min(emin, key=emin.get) if emin else None
        out = {"rhat_max": rmax.get(worst_r, float("nan")), "rhat_worst": worst_r,
               "ess_bulk_min": emin.get(worst_e, float("nan")), "ess_worst": worst_e,
               "n_divergences": n_div, "n_draws": int(post.sizes["chain"] * post.sizes["draw"])}
        out["ok"] = bool(out["rhat_max"] <= RHAT_MAX and out["ess_bulk_min"] >= ESS_MIN
                         and n_div == 0)
        return out

    def configs(self) -> pd.DataFrame:
        """One row per fitted configuration: optimizer, family, covariates (natural units),
        runs, diverged runs, and the posterior median / 90% interval of log eta*."""
        f = self.features
        first = f.runs.groupby("_config", sort=False).first().loc[list(f.config_ids)]
        log_eta = self.idata.posterior.dataset[curve.LOG_ETA]
        q = log_eta.quantile([0.05, 0.5, 0.95], dim=("chain", "draw")).values
        out = pd.DataFrame({"optimizer": [f.optimizers[i] for i in f.config_optimizer],
                            "family": [f.families[i] for i in f.config_family]},
                           index=pd.Index(f.config_ids, name="config_id"))
        for name in self.spec.covariates:
            if name in first:
                out[name] = first[name].to_numpy()
        out["n_runs"] = np.bincount(f.point_config, minlength=f.n_configs)
        out["n_diverged"] = np.bincount(f.point_config, weights=f.diverged,
                                        minlength=f.n_configs).astype(int)
        out["log_eta_q05"], out["log_eta_median"], out["log_eta_q95"] = q
        return out

    # ---- questions -----------------------------------------------------------------------
    def exponents(self) -> xr.Dataset:
        """Posterior draws of d ln eta* / d ln x at the data's centre, one variable per
        covariate, dims (chain, draw, optimizer[, family])."""
        post = self.idata.posterior.dataset
        scale = self.features.standardizer.scale
        out = {}
        for k, name in enumerate(self.covariates):
            value = post[law.SLOPE].isel({DIMS.COVARIATE: k}, drop=True)
            if law.FAMILY_SLOPE in post:
                value = value + post[law.FAMILY_SLOPE].isel({DIMS.COVARIATE: k}, drop=True)
            if "ratio_slope" in post:
                value = value - post["ratio_slope"].isel({DIMS.COVARIATE: k}, drop=True)
            out[name] = value / scale[k]
        return xr.Dataset(out)

    def straight_extrapolation(self, targets: pd.DataFrame) -> list[tuple[str, ...]]:
        """Per target, the size covariates (N, D) beyond whose data range it lies while the law
        has no quadratic term in them (not identified, or curvature off): there the law goes
        on as a straight line in logs, and its intervals do not include a bend."""
        f = self.features
        straight = [k for k, name in enumerate(f.covariates)
                    if name in SIZE_COVARIATES and (k, k) not in f.terms]
        z = target_design(targets, standardizer=f.standardizer, terms=f.terms,
                          optimizers=f.optimizers, families=f.families).z
        outside = f.standardizer.overshoot(z) > 1e-9
        return [tuple(f.covariates[k] for k in straight if row[k]) for row in outside]

    def tokens_per_param_range(self) -> tuple[float, float] | None:
        """(lowest, highest) tokens per parameter (D / N) of the fitted runs, or None when the
        law does not use both n_params and tokens."""
        if not {"n_params", "tokens"} <= set(self.covariates):
            return None
        ratio = tokens_per_param(self.features.runs)
        return float(ratio.min()), float(ratio.max())

    def draw_curve_params(self, targets: pd.DataFrame, *, seed: int = 0,
                          include_residual: bool = True) -> xr.Dataset:
        """Posterior predictive draws of log eta* and the curve shape at new configurations.

        targets: one row per target with n_params, tokens, batch_size (whatever the law uses),
        optimizer, and optionally arch. include_residual: add the scatter of a new config
        around the law (the prediction for a run you will actually do); False gives the law's
        own uncertainty. Returns dims (sample, target) with log_eta, log_eta_law and the
        parameters of bayeslr.curve; `extrapolation` (attr and coordinate) is the distance of
        each target outside the training data (standardized units, 0 inside). Each target's
        draws come from a random stream of its own (`_target_streams`). A saturating
        curve's ceilings are left out: a target's loss floor is not modelled, and the
        unbounded quadratic can only overstate a gap.
        """
        f = self.features
        design = target_design(targets, standardizer=f.standardizer, terms=f.terms,
                               optimizers=f.optimizers, families=f.families)
        post = _stacked(self.idata.posterior.dataset)
        rng = np.random.default_rng(seed)
        n_samples = len(post[law.INTERCEPT])
        theta = _with_new_family(post, rng, len(f.families))
        law_mean = law.law_mean(theta, design.z, design.q, design.optimizer, design.family)
        noise = _target_streams(seed, design, n_samples)
        residual = noise[:3] * include_residual
        log_eta = law_mean + post[law.RESID_SD][:, None] * residual[0]
        if "ratio_intercept" in post:
            ratio = {law.INTERCEPT: post["ratio_intercept"]}
            if "ratio_slope" in post:
                ratio[law.SLOPE] = post["ratio_slope"]
            shift = law.law_mean(ratio, design.z, design.q, design.optimizer, design.family)
            log_eta = log_eta - shift - post["ratio_sd"][:, None] * residual[1]
            law_mean = law_mean - shift
        opt = design.optimizer
        log_k = post["log_curv_mean"][:, opt] + post["curv_sd"][:, None] * residual[2]
        half = 0.5 * post["curv_asym"][:, opt]
        params = {curve.LOG_ETA: log_eta, "log_eta_law": law_mean,
                  curve.CURV_LEFT: np.exp(log_k - half), curve.CURV_RIGHT: np.exp(log_k + half)}
        if curve.WALL in post:
            params[curve.WALL] = post[curve.WALL][:, opt]
        params.update(self._divergence_draws(post, opt, noise[3:]))
        return _curve_dataset(params, targets, design.extrapolation)

    def _divergence_draws(self, post: dict[str, np.ndarray], opt: np.ndarray,
                          noise: np.ndarray) -> dict[str, np.ndarray]:
        """Divergence boundary per sample and target; from the prior (with `noise`, standard
        normal (2, sample, target)) when the fit did not model divergence."""
        n = len(post[law.INTERCEPT])
        if curve.DIV_OFFSET in post:
            return {curve.DIV_OFFSET: post[curve.DIV_OFFSET][:, opt],
                    curve.DIV_SCALE: np.broadcast_to(post[curve.DIV_SCALE][:, None],
                                                     (n, len(opt)))}
        from bayeslr.priors import DEFAULT_PRIORS

        out = {}  # divergence not modelled (spec.divergence=False): draws from the prior
        for name, z in zip((curve.DIV_OFFSET, curve.DIV_SCALE), noise, strict=True):
            prior = self.info.get("priors", {}).get(name) or vars(DEFAULT_PRIORS[name])
            out[name] = np.exp(prior["mu"] + prior["sigma"] * z)
        return out

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to netCDF with spec, versions, data hash and priors in the attributes."""
        attrs = {"spec": self.spec.to_json(), "data_hash": self.features.data_hash(),
                 "standardizer": self.features.standardizer.to_dict(),
                 "notes": list(self.notes), "info": self.info}
        posterior_io.save(path, self.idata, self.data, attrs)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Posterior:
        """Read a posterior saved by `save`; PosteriorError on a corrupt or foreign file."""
        idata, table, attrs = posterior_io.load(path)
        try:
            spec = ModelSpec.from_json(attrs.get("spec"))
        except Exception as err:  # a spec this version cannot build
            raise PosteriorError(f"{path}: its model spec cannot be read ({err}); refit") from None
        try:
            posterior = cls(idata, spec, table,
                            info=posterior_io.read_json_attr(attrs, "info", path))
        except Exception as err:
            raise PosteriorError(f"{path}: its run table cannot be rebuilt into model inputs "
                                 f"({err}); the file is corrupt: refit") from None
        if posterior.features.data_hash() != attrs.get("data_hash"):
            raise PosteriorError(f"{path}: data hash mismatch: the run table inside does not "
                                 "match the one the posterior was fitted on (corrupt or edited "
                                 "file); refit")
        if list(idata.posterior.dataset[curve.LOG_ETA][DIMS.CONFIG].values) != list(
                posterior.features.config_ids):
            raise PosteriorError(f"{path}: configurations in the draws do not match the run "
                                 "table; refit")
        return posterior


def _stacked(post: xr.Dataset) -> dict[str, np.ndarray]:
    """Each variable as an array with one leading sample axis (chain x draw)."""
    out = {}
    for name, da in post.data_vars.items():
        values = da.values
        out[name] = values.reshape((-1,) + values.shape[2:])
    return out


TARGET_STREAMS = 5
"""Standard normal draws per sample that each target gets from its own random stream: its
scatter around the law, its LR-ratio scatter, its curvature, and two for a divergence
boundary drawn from the prior."""


def _target_streams(seed: int, design: TargetDesign, n_samples: int) -> np.ndarray:
    """(TARGET_STREAMS, sample, target) standard normals, each target's from a stream keyed by
    `seed` and its design row (covariates, curvature columns, optimizer, family), so a target's
    prediction does not depend on which other targets are asked for with it, or in what
    order."""
    columns = []
    for j in range(len(design.optimizer)):
        row = np.concatenate([np.round(design.z[j], 10), np.round(design.q[j], 10),
                              [design.optimizer[j], design.family[j]]]).astype(float) + 0.0
        key = int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
        columns.append(np.random.default_rng([seed, key]).standard_normal(
            (TARGET_STREAMS, n_samples)))
    return np.stack(columns, axis=-1)


def _with_new_family(post: dict[str, np.ndarray], rng: np.random.Generator,
                     n_families: int) -> dict[str, np.ndarray]:
    """Law parameters; with several families, a drawn 'new family' is appended last, so
    family index -1 (a family not in the data) picks it."""
    theta = {k: post[k] for k in (law.INTERCEPT, law.SLOPE, law.CURVATURE,
                                  law.CURVATURE_OPTIMIZER) if k in post}
    if n_families < 2 or law.FAMILY_INTERCEPT not in post:
        return theta
    n = len(post[law.INTERCEPT])
    new = post["family_intercept_spread"][:, None] * rng.standard_normal((n, 1))
    theta[law.FAMILY_INTERCEPT] = np.concatenate([post[law.FAMILY_INTERCEPT], new], axis=1)
    if law.FAMILY_SLOPE in post:
        k = post[law.FAMILY_SLOPE].shape[-1]
        new = post["family_spread"][:, None, :] * rng.standard_normal((n, 1, k))
        theta[law.FAMILY_SLOPE] = np.concatenate([post[law.FAMILY_SLOPE], new], axis=1)
    return theta


def _curve_dataset(params: dict[str, np.ndarray], targets: pd.DataFrame,
                   extrapolation: np.ndarray) -> xr.Dataset:
    dims = (DIMS.SAMPLE, DIMS.TARGET)
    index = targets.index if targets.index.is_unique else pd.RangeIndex(len(targets))
    extra = xr.DataArray(extrapolation, dims=DIMS.TARGET, coords={DIMS.TARGET: list(index)})
    ds = xr.Dataset({k: (dims, np.asarray(v, float)) for k, v in params.items()},
                    coords={DIMS.TARGET: list(index), "extrapolation": extra})
    ds.attrs["extrapolation"] = extra
    ds.attrs["units"] = json.dumps({"log_eta": "natural log of the peak LR",
                                    "curv_left": "nats/token per squared log-LR unit"})
    return ds
