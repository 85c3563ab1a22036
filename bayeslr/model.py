"""The hierarchical PyMC model of optimal LRs (the only module that builds PyMC graphs).

For configuration c (one LR sweep) with optimizer o and family f:
    log eta*_c ~ Normal(law(x_c), resid_sd)                      (law: bayeslr.law)
    loss_i     ~ StudentT(nu, loss_min_c + loss_gap(log lr_i), noise_sd)   non-diverged runs
    diverged_i ~ Bernoulli(logistic((log lr_i - log eta*_c - div_offset_o) / div_scale))
with loss_gap from bayeslr.curve (asymmetric quadratic, optional high-side wall). Exponents are
pooled across optimizers and families; each hierarchy is sampled centred or non-centred by
how strongly the data pin it (`parameterization`), with zero-avoiding scale priors, because
few groups (2-4 optimizers) make funnels.
The effective-LR variant writes the law for log(effective LR) and maps it back to the LR per
config with the measured ratio rho_c = log(effective_lr / lr), itself regressed on x for
prediction. See docs/model.md.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from bayeslr import curve, law
from bayeslr.features import Features
from bayeslr.pinning import pinning
from bayeslr.priors import ModelPriors, Prior
from bayeslr.schema import DIMS
from bayeslr.spec import ModelSpec

OBSERVED_VARS = ("loss", "diverged", "ratio")
"""Observed variables; each has a pointwise log-likelihood for PSIS-LOO."""


def model_coords(features: Features) -> dict[str, list]:
    """PyMC coords, with dimension names from schema.DIMS."""
    ids = features.runs["run_id"] if "run_id" in features.runs else None
    points = list(ids) if ids is not None and ids.is_unique else list(range(features.n_points))
    return {
        DIMS.OPTIMIZER: list(features.optimizers), DIMS.FAMILY: list(features.families),
        DIMS.CONFIG: list(features.config_ids), DIMS.POINT: points,
        DIMS.OBSERVED: [p for p, d in zip(points, features.diverged, strict=True) if not d],
        DIMS.COVARIATE: list(features.covariates), DIMS.TERM: list(features.term_names),
        DIMS.SIDE: ["left", "right"],
    }


CENTRED_ALWAYS = frozenset({"loss_min"})
"""The per-config loss floor has no hierarchy: its parameterization is only a rescaling."""
STRONG_CONFIG_POINTS = 8
"""Median non-diverged runs per config from which per-config optima and curvatures are
sampled centred."""
STRONG_SLOPE_CONFIGS = 20
"""Configs per optimizer above which the optimizers' exponents are sampled centred."""


def parameterization(features: Features) -> frozenset:
    """Which hierarchies to sample centred: centred where the data pin the group-level values
    (many runs per config, many configs per optimizer), non-centred where they are weak; the
    wrong choice costs 2-3x in sampling time or gives divergences (measured on simulated
    sweeps of 60 and 1,944 runs). Per-config optima and curvatures with many runs are still
    sampled non-centred when quadratic fits show them pinned more loosely than they scatter
    between configs (bayeslr.pinning): many runs of a sweep whose configs follow the law
    closely (the reference sweep with both seeds: R-hat 1.05 and 166 divergences centred,
    1.007 and none non-centred)."""
    centred = set(CENTRED_ALWAYS)
    ok = ~features.diverged
    per_config = np.bincount(features.point_config[ok], minlength=features.n_configs)
    if np.median(per_config) >= STRONG_CONFIG_POINTS:
        pins = pinning(features)
        if pins is None or pins.optima_pinned:
            centred.add("log_eta")
        if pins is None or pins.curvatures_pinned:
            centred.add("curv")
    per_optimizer = np.bincount(features.config_optimizer, minlength=len(features.optimizers))
    if per_optimizer.min() >= STRONG_SLOPE_CONFIGS:
        centred.add("slope")
    return frozenset(centred)


def _normal(name: str, mu, sigma, dims, centred: frozenset) -> pt.TensorVariable:
    """Normal(mu, sigma): sampled directly if `name` is in `centred`, else non-centred
    (mu + sigma * N(0, 1)) and recorded as a Deterministic."""
    if name in centred:
        return pm.Normal(name, mu, sigma, dims=dims)
    raw = pm.Normal(f"{name}_raw", 0.0, 1.0, dims=dims)
    return pm.Deterministic(name, mu + sigma * raw, dims=dims)


def build_model(features: Features, priors: ModelPriors, spec: ModelSpec, *,
                centred: frozenset | None = None) -> pm.Model:
    """The PyMC model of `features` under `spec` with merged `priors` (see module docstring);
    `centred`: hierarchies to sample centred (default: `parameterization(features)`)."""
    centred = parameterization(features) if centred is None else centred
    with pm.Model(coords=model_coords(features)) as model:
        data = _data(features)
        theta = _law_parameters(features, priors, spec, centred)
        log_eta = law.law_mean(theta, data["z"], data["q"], data["opt"], data["fam"])
        resid_sd = _prior(law.RESID_SD, priors["resid_sd"])
        log_eta = _normal("log_eta_free", log_eta, resid_sd, DIMS.CONFIG, centred | (
            {"log_eta_free"} if "log_eta" in centred else set()))
        if features.rho is not None:
            log_eta = log_eta - data["rho"]
            _ratio_regression(features, priors, data)
        log_eta = pm.Deterministic(curve.LOG_ETA, log_eta, dims=DIMS.CONFIG)
        shape = _curve_parameters(features, priors, spec, data, centred)
        _likelihood(priors, spec, data, log_eta, shape)
    return model


def compile_key(features: Features, priors: ModelPriors, spec: ModelSpec, *,
                centred: frozenset | None = None) -> str:
    """Everything the model of `build_model` depends on besides its pm.Data: two models with
    one key differ only in data, so one compiled sampler serves both (see
    bayeslr.fit.CompiledModels). `centred`: as given to build_model (default:
    `parameterization(features)`)."""
    centred = parameterization(features) if centred is None else centred
    coords = {k: v for k, v in model_coords(features).items()
              if k not in (DIMS.POINT, DIMS.OBSERVED)}
    table = {name: (p.dist, p.mu, p.sigma) for name, p in sorted(priors.table.items())
             if not name.startswith("intercept.")}  # these and the means below are pm.Data
    for name in ("curv", curve.CEIL_LOW, curve.CEIL_HIGH):
        table[name] = (priors[name].dist, priors[name].sigma)
    arrays = [priors.slope_mu, priors.slope_sd, priors.slope_spread, priors.family_spread,
              priors.curvature_sd, priors.curvature_spread,
              np.asarray(features.standardizer.scale, float)]
    return repr((spec, sorted(centred), coords, features.rho is None,
                 table, [a.tolist() for a in arrays]))


def _data(features: Features) -> dict[str, pt.TensorVariable]:
    """Inputs as pm.Data, so models of the same structure share compiled code."""
    ok = np.flatnonzero(~features.diverged)
    floor = features.loss_floor()
    floor = np.where(np.isfinite(floor), floor, np.nanmedian(floor))
    arrays = {
        "log_lr": (features.log_lr, DIMS.POINT), "point_config": (features.point_config,
                                                                  DIMS.POINT),
        "diverged_obs": (features.diverged.astype("int64"), DIMS.POINT),
        "observed_config": (features.point_config[ok], DIMS.OBSERVED),
        "log_lr_observed": (features.log_lr[ok], DIMS.OBSERVED),
        "loss_obs": (features.loss[ok], DIMS.OBSERVED),
        "opt": (features.config_optimizer, DIMS.CONFIG),
        "fam": (features.config_family, DIMS.CONFIG), "loss_floor": (floor, DIMS.CONFIG),
        "z": (features.z, (DIMS.CONFIG, DIMS.COVARIATE)),
        "q": (features.q, (DIMS.CONFIG, DIMS.TERM)),
    }
    if features.rho is not None:
        arrays["rho"] = (features.rho, DIMS.CONFIG)
    return {name: pm.Data(name, value, dims=dims) for name, (value, dims) in arrays.items()}


def _prior(name: str, prior: Prior, *, dims: str | tuple | None = None,
           mu: np.ndarray | float | None = None,
           sigma: np.ndarray | float | None = None) -> pt.TensorVariable:
    """A PyMC variable from a Prior (mu / sigma override it with rescaled values)."""
    mu = prior.mu if mu is None else mu
    sigma = prior.sigma if sigma is None else sigma
    if prior.dist == "normal":
        return pm.Normal(name, mu, sigma, dims=dims)
    if prior.dist == "halfnormal":
        return pm.HalfNormal(name, sigma, dims=dims)
    return pm.LogNormal(name, mu, sigma, dims=dims)


def _law_parameters(features: Features, priors: ModelPriors, spec: ModelSpec,
                    centred: frozenset) -> dict[str, pt.TensorVariable]:
    """Intercepts per optimizer, pooled slopes and family offsets, curvature coefficients
    (with per-optimizer departures when the spec asks for them)."""
    raw = pm.Normal("intercept_raw", 0.0, 1.0, dims=DIMS.OPTIMIZER)
    mu = pm.Data("prior_intercept_mu", priors.intercept_mu, dims=DIMS.OPTIMIZER)
    sd = pm.Data("prior_intercept_sd", priors.intercept_sd, dims=DIMS.OPTIMIZER)
    theta = {law.INTERCEPT: pm.Deterministic(law.INTERCEPT, mu + sd * raw, dims=DIMS.OPTIMIZER)}
    n_opt, n_fam, n_cov = len(features.optimizers), len(features.families), len(
        features.covariates)
    if n_cov:
        mu = pm.Normal("slope_mu", priors.slope_mu, priors.slope_sd, dims=DIMS.COVARIATE)
        if n_opt > 1:
            spread = _prior("slope_spread", priors["exponent_spread"], dims=DIMS.COVARIATE,
                            mu=priors.slope_spread)
            theta[law.SLOPE] = _pooled_slopes(mu, spread, centred)
        else:
            theta[law.SLOPE] = pm.Deterministic(law.SLOPE, mu[None, :],
                                                dims=(DIMS.OPTIMIZER, DIMS.COVARIATE))
    if n_fam > 1:
        sd = _prior("family_intercept_spread", priors["family_intercept_spread"])
        raw = pm.Normal("family_intercept_raw", 0.0, 1.0, dims=DIMS.FAMILY)
        theta[law.FAMILY_INTERCEPT] = pm.Deterministic(law.FAMILY_INTERCEPT, sd * raw,
                                                       dims=DIMS.FAMILY)
        if n_cov:
            spread = _prior("family_spread", priors["family_spread"], dims=DIMS.COVARIATE,
                            mu=priors.family_spread)
            raw = pm.Normal("family_slope_raw", 0.0, 1.0, dims=(DIMS.FAMILY, DIMS.COVARIATE))
            theta[law.FAMILY_SLOPE] = pm.Deterministic(law.FAMILY_SLOPE, spread * raw,
                                                       dims=(DIMS.FAMILY, DIMS.COVARIATE))
    if features.terms:
        theta[law.CURVATURE] = pm.Normal(law.CURVATURE, 0.0, priors.curvature_sd,
                                         dims=DIMS.TERM)
        if spec.optimizer_curvature and n_opt > 1:
            spread = _prior("curvature_spread", priors["curvature_spread"], dims=DIMS.TERM,
                            mu=priors.curvature_spread)
            raw = pm.ZeroSumNormal("curvature_optimizer_raw", 1.0,
                                   dims=(DIMS.TERM, DIMS.OPTIMIZER))
            theta[law.CURVATURE_OPTIMIZER] = pm.Deterministic(
                law.CURVATURE_OPTIMIZER, spread[None, :] * raw.T,
                dims=(DIMS.OPTIMIZER, DIMS.TERM))
    return theta


def _pooled_slopes(mu: pt.TensorVariable, spread: pt.TensorVariable,
                   centred: frozenset) -> pt.TensorVariable:
    """(optimizer, covariate) slopes around the population slopes `mu`.

    Centred: Normal(mu, spread) per optimizer. Non-centred: mu + spread * d with d zero-sum
    over optimizers, so mu is exactly the optimizers' mean slope and is not traded off
    against the deviations (a ridge that otherwise slows sampling with 2-4 optimizers).
    """
    dims = (DIMS.OPTIMIZER, DIMS.COVARIATE)
    if "slope" in centred:
        return _normal(law.SLOPE, mu[None, :], spread[None, :], dims, centred)
    raw = pm.ZeroSumNormal("slope_raw", 1.0, dims=(DIMS.COVARIATE, DIMS.OPTIMIZER))
    return pm.Deterministic(law.SLOPE, mu[None, :] + spread[None, :] * raw.T, dims=dims)


def _ratio_regression(features: Features, priors: ModelPriors,
                      data: dict[str, pt.TensorVariable]) -> None:
    """rho_c = log(effective_lr / lr) regressed on x, to map a target's law back to its LR."""
    scale = np.array(features.standardizer.scale, float)
    theta = {law.INTERCEPT: _prior("ratio_intercept", priors["ratio_intercept"],
                                   dims=DIMS.OPTIMIZER)}
    if features.covariates:
        theta[law.SLOPE] = _prior("ratio_slope", priors["ratio_slope"],
                                  dims=(DIMS.OPTIMIZER, DIMS.COVARIATE),
                                  sigma=priors["ratio_slope"].sigma * scale)
    mean = law.law_mean(theta, data["z"], data["q"], data["opt"], data["fam"])
    sd = _prior("ratio_sd", priors["ratio_sd"])
    pm.Normal("ratio", mean, sd, observed=data["rho"], dims=DIMS.CONFIG)


def _curve_parameters(features: Features, priors: ModelPriors, spec: ModelSpec,
                      data: dict[str, pt.TensorVariable],
                      centred: frozenset) -> dict[str, pt.TensorVariable]:
    """Per-config curvature (pooled within optimizer), loss floor, divergence boundary."""
    log_mean, asym = _curvature_levels(priors)
    curv_sd = _prior("curv_sd", priors["curv_sd"])
    log_k = _normal("log_curv", log_mean[data["opt"]], curv_sd, DIMS.CONFIG,
                    centred | ({"log_curv"} if "curv" in centred else set()))
    half = 0.5 * asym[data["opt"]]  # symmetric split: asymmetry decoupled from the level
    shape = {
        curve.CURV_LEFT: pm.Deterministic(curve.CURV_LEFT, pt.exp(log_k - half),
                                          dims=DIMS.CONFIG),
        curve.CURV_RIGHT: pm.Deterministic(curve.CURV_RIGHT, pt.exp(log_k + half),
                                           dims=DIMS.CONFIG),
    }
    if spec.curve == "wall":
        shape[curve.WALL] = _prior(curve.WALL, priors["wall"], dims=DIMS.OPTIMIZER)[data["opt"]]
    if spec.curve == "saturating":
        for name in (curve.CEIL_LOW, curve.CEIL_HIGH):
            mu = pm.Data(f"prior_{name}_mu", priors[name].mu)
            shape[name] = pm.Normal(name, mu, priors[name].sigma)
    shape["loss_min"] = _normal("loss_min", data["loss_floor"], priors["loss_min_sd"].sigma,
                                DIMS.CONFIG, centred)
    if spec.divergence:
        shape[curve.DIV_OFFSET] = _prior(curve.DIV_OFFSET, priors["div_offset"],
                                         dims=DIMS.OPTIMIZER)[data["opt"]]
        shape[curve.DIV_SCALE] = _prior(curve.DIV_SCALE, priors["div_scale"])
    return shape


def _curvature_levels(priors: ModelPriors) -> tuple[pt.TensorVariable, pt.TensorVariable]:
    """(optimizer,) log curvature level and asymmetry log(curv_right / curv_left).

    Sampled as the two sides' log curvatures (left, right) with the bivariate normal prior
    that level ~ N(curv) and asymmetry ~ N(curv_asym) imply: sweeps often inform one side much
    better than the other (many points above the optimum), which in (level, asymmetry)
    coordinates is a narrow diagonal ridge (posterior correlation -0.8 on the real Marin
    sweep) and in (left, right) coordinates is not.
    """
    level, asym = priors["curv"], priors["curv_asym"]
    var_level, var_half = level.sigma**2, (0.5 * asym.sigma) ** 2
    cov = np.array([[var_level + var_half, var_level - var_half],
                    [var_level - var_half, var_level + var_half]])
    mean = pm.Data("prior_log_curv_sides", [level.mu - 0.5 * asym.mu, level.mu + 0.5 * asym.mu],
                   dims=DIMS.SIDE)
    sides = pm.MvNormal("log_curv_sides", mu=mean, cov=cov, dims=(DIMS.OPTIMIZER, DIMS.SIDE))
    log_mean = pm.Deterministic("log_curv_mean", sides.mean(axis=-1), dims=DIMS.OPTIMIZER)
    asym = pm.Deterministic("curv_asym", sides[:, 1] - sides[:, 0], dims=DIMS.OPTIMIZER)
    return log_mean, asym


def _likelihood(priors: ModelPriors, spec: ModelSpec, data: dict[str, pt.TensorVariable],
                log_eta: pt.TensorVariable, shape: dict[str, pt.TensorVariable]) -> None:
    """Student-t losses of non-diverged runs; Bernoulli divergence of every run."""
    per_config = {curve.LOG_ETA: log_eta, **shape}

    def at(index: pt.TensorVariable, names: tuple[str, ...]) -> dict[str, pt.TensorVariable]:
        """Per-config parameters at each run of `index` (scalars stay scalars)."""
        return {n: per_config[n] if per_config[n].ndim == 0 else per_config[n][index]
                for n in names if n in per_config}

    at_ok = at(data["observed_config"], (curve.LOG_ETA, curve.CURV_LEFT, curve.CURV_RIGHT,
                                         curve.WALL, curve.CEIL_LOW, curve.CEIL_HIGH,
                                         curve.LOSS_MIN))
    mean = at_ok[curve.LOSS_MIN] + curve.loss_gap(data["log_lr_observed"], at_ok)
    noise_sd = _prior("noise_sd", priors["noise_sd"])
    pm.StudentT("loss", nu=spec.noise_nu, mu=mean, sigma=noise_sd, observed=data["loss_obs"],
                dims=DIMS.OBSERVED)
    if spec.divergence:
        at_all = at(data["point_config"], (curve.LOG_ETA, curve.DIV_OFFSET, curve.DIV_SCALE))
        logit = curve.divergence_logit(data["log_lr"], at_all)
        pm.Bernoulli("diverged", logit_p=logit, observed=data["diverged_obs"], dims=DIMS.POINT)
