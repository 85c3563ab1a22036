"""Priors as data: weakly informative defaults grounded in published LR laws.

Every prior is a named `Prior` in natural units (exponents are d ln eta* / d ln x). Three
layers are merged in one visible line (see `merged_priors`): user > published law (if chosen)
> data-driven > default. The model works in standardized units, so `model_priors` rescales the
merged priors by each covariate's scale.

Sources (see docs/model.md):
- Step Law, Li et al. 2025 (arXiv:2503.04715): eta* = 1.79 N^-0.713 D^0.307 (joint LR-batch
  optimum, AdamW).
- Porian et al. 2024 (arXiv:2406.19146): eta* = 0.0047 (N / 108e6)^(-1/3).
- DeepSeek LLM, Bi et al. 2024: eta* = 0.3118 C^-0.125 with C ~ 6 N D.
- Bjorck et al. 2024 (arXiv:2409.19913): eta* = C N^-alpha D^-beta, beta > 0 (longer training
  needs a smaller LR at a fixed batch).
- Yang et al. 2026 (arXiv:2606.29158): log eta* curves upward at scale (curvature terms).
- muP, Yang et al. 2022 (arXiv:2203.03466): Adam LR of hidden weights ~ 1/width under SP.
- Edge of stability, Cohen et al. 2021/2022: eta* ~ c / lambda_max.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bayeslr.errors import ModelError
from bayeslr.features import Features
from bayeslr.spec import ModelSpec

ADAM_LIKE = ("adamw", "adam", "nadamw")
"""Optimizers a published (AdamW) law is used for as the prior mean."""


@dataclass(frozen=True)
class Prior:
    """One prior: 'normal' (mu, sigma), 'halfnormal' (sigma; mu unused) or 'lognormal'
    (median exp(mu), log-sd sigma); natural units; `source` says where it comes from."""

    dist: str
    mu: float
    sigma: float
    source: str = "default"

    def __post_init__(self) -> None:
        if self.dist not in ("normal", "halfnormal", "lognormal"):
            raise ModelError(f"Prior.dist: unknown {self.dist!r}; known: normal, halfnormal, "
                             "lognormal")
        if not (math.isfinite(self.mu) and math.isfinite(self.sigma) and self.sigma > 0):
            raise ModelError(f"Prior: expected finite mu and sigma > 0, got {self.mu}, "
                             f"{self.sigma}")

    def with_values(self, mu: float, sigma: float, source: str) -> Prior:
        return Prior(self.dist, float(mu), float(sigma), source)


_EXP = "exponent"
DEFAULT_PRIORS: dict[str, Prior] = {
    f"{_EXP}.n_params": Prior("normal", -0.5, 0.5, "default: spans Porian (-1/3) and Step Law "
                              "(-0.713)"),
    f"{_EXP}.tokens": Prior("normal", -0.1, 0.4, "default: Bjorck (negative at fixed batch), "
                            "DeepSeek (-0.125), Step Law (+0.307, joint LR-batch optimum)"),
    f"{_EXP}.batch_size": Prior("normal", 0.5, 0.5, "default: square-root (Adam) to linear "
                                "(SGD) batch scaling"),
    f"{_EXP}.batch_tokens": Prior("normal", 0.5, 0.5, "default: as batch_size"),
    f"{_EXP}.d_model": Prior("normal", -1.0, 0.6, "default: muP, Adam LR ~ 1/width under SP"),
    f"{_EXP}.n_layers": Prior("normal", -0.3, 0.5, "default: weak depth dependence"),
    f"{_EXP}.n_heads": Prior("normal", 0.0, 0.3, "default: no head-count dependence"),
    f"{_EXP}.lambda_max": Prior("normal", -0.5, 0.75, "default: halfway between no effect and "
                                "eta* ~ c/lambda_max (-1), leaving the test to the data"),
    "exponent_spread": Prior("lognormal", math.log(0.1), 0.8, "default: optimizers' exponents "
                             "differ by 0.03-0.4 (Adam vs SGD batch scaling); zero-avoiding"),
    "family_intercept_spread": Prior("lognormal", math.log(0.2), 0.8, "default; zero-avoiding"),
    "family_spread": Prior("lognormal", math.log(0.05), 0.8, "default; zero-avoiding"),
    "intercept": Prior("normal", math.log(1e-3), 3.0, "default: log eta* at the data centre"),
    "curvature": Prior("normal", 0.0, 0.05, "default: Yang et al. 2026 curvature, ~0.3 nats "
                       "over a 100x range"),
    "curvature_spread": Prior("lognormal", math.log(0.02), 0.8, "default: optimizers' "
                              "curvature coefficients differ by a fraction of the curvature "
                              "prior's sd; zero-avoiding"),
    "resid_sd": Prior("lognormal", math.log(0.12), 0.7, "default: configs scatter 4-40% around "
                      "any law (seeds, untuned settings); zero-avoiding"),
    "curv": Prior("lognormal", math.log(0.05), 1.5, "default: geometric mean of the loss "
                  "curvatures below and above the optimum (nats per squared log-LR unit)"),
    "curv_asym": Prior("normal", 0.3, 0.7, "default: high side a little steeper"),
    "curv_sd": Prior("lognormal", math.log(0.2), 0.7, "default; zero-avoiding"),
    "wall": Prior("lognormal", math.log(0.5), 1.0, "default"),
    "ceiling_low": Prior("normal", 5.0, 2.0, "default: loss of a run that barely trains "
                         "(near the loss at initialisation, ln vocab for a uniform start)"),
    "ceiling_high": Prior("normal", 4.0, 2.0, "default: loss of a run that stalls above the "
                          "optimum"),
    "loss_min_sd": Prior("halfnormal", 0.0, 0.5, "default: spread of a config's minimum loss "
                         "around its lowest observed loss"),
    "noise_sd": Prior("halfnormal", 0.0, 0.1, "default"),
    "div_offset": Prior("lognormal", 0.0, 0.5, "default: divergence ~e (1.4x-7x) above eta*"),
    "div_scale": Prior("lognormal", math.log(0.25), 0.6, "default"),
    "ratio_intercept": Prior("normal", 0.0, 3.0, "default"),
    "ratio_slope": Prior("normal", 0.0, 1.0, "default"),
    "ratio_sd": Prior("halfnormal", 0.0, 0.5, "default"),
}
"""Default priors by name, natural units. Per-optimizer names: 'intercept.<optimizer>'."""


@dataclass(frozen=True)
class PublishedLaw:
    """eta* = coefficient * N^a * D^b (a, b in `exponents`), for Adam-type optimizers."""

    name: str
    citation: str
    coefficient: float
    exponents: tuple[tuple[str, float], ...]

    def log_eta(self, n_params: float, tokens: float) -> float:
        values = {"n_params": n_params, "tokens": tokens}
        return math.log(self.coefficient) + sum(e * math.log(values[k])
                                                for k, e in self.exponents)


PUBLISHED_LAWS = {
    "step_law": PublishedLaw("step_law", "Li et al. 2025, arXiv:2503.04715", 1.79,
                             (("n_params", -0.713), ("tokens", 0.307))),
    "porian": PublishedLaw("porian", "Porian et al. 2024, arXiv:2406.19146",
                           0.0047 * 108e6 ** (1 / 3), (("n_params", -1 / 3),)),
    "deepseek": PublishedLaw("deepseek", "Bi et al. 2024 (DeepSeek LLM), C = 6ND",
                             0.3118 * 6 ** -0.125, (("n_params", -0.125), ("tokens", -0.125))),
}


def merged_priors(features: Features, spec: ModelSpec) -> dict[str, Prior]:
    """All priors by name after merging user > published > data-driven > default."""
    defaults = _expand(DEFAULT_PRIORS, features.optimizers)
    data = data_driven_priors(features)
    if spec.curve == "saturating":
        data.update(_ceiling_priors(features))
    published = published_priors(spec.prior_law, features) if spec.prior_law else {}
    user = _user_priors(spec.user_priors, defaults, features.optimizers)
    return {**defaults, **data, **published, **user}


def data_driven_priors(features: Features) -> dict[str, Prior]:
    """Priors centred on what the sweep design reveals: each optimizer's LR grid centre (the
    user bracketed their guess of eta*) and the typical loss curvature of the sweeps."""
    out = {}
    for o, name in enumerate(features.optimizers):
        runs = np.isin(features.point_config, np.flatnonzero(features.config_optimizer == o))
        out[f"intercept.{name}"] = DEFAULT_PRIORS["intercept"].with_values(
            features.log_lr[runs].mean(), 1.5, "data: centre of this optimizer's LR grid")
    curv = _typical_curvature(features)
    if curv is not None:
        out["curv"] = DEFAULT_PRIORS["curv"].with_values(
            math.log(curv), 1.0, "data: median curvature of quadratic fits to the sweeps")
    if features.rho is not None:
        out["ratio_intercept"] = DEFAULT_PRIORS["ratio_intercept"].with_values(
            float(np.mean(features.rho)), 2.0, "data: mean log(effective_lr / lr)")
    return out


def published_priors(law_name: str, features: Features) -> dict[str, Prior]:
    """A published law as the prior mean of the exponents and the Adam-type intercepts."""
    law = PUBLISHED_LAWS[law_name]
    source = f"published: {law.name} ({law.citation})"
    out = {f"{_EXP}.{k}": DEFAULT_PRIORS[f"{_EXP}.{k}"].with_values(e, 0.3, source)
           for k, e in law.exponents if k in features.covariates}
    if not {"n_params", "tokens"} <= set(features.runs.columns):
        raise ModelError(f"ModelSpec.prior_law={law_name!r} needs n_params and tokens columns "
                         "in the run table; add them or set prior_law=None")
    configs = features.runs.groupby("_config").first()
    n_params = float(np.exp(np.log(configs["n_params"].astype(float)).mean()))
    tokens = float(np.exp(np.log(configs["tokens"].astype(float)).mean()))
    for name in features.optimizers:
        if name in ADAM_LIKE:
            out[f"intercept.{name}"] = DEFAULT_PRIORS["intercept"].with_values(
                law.log_eta(n_params, tokens), 1.0, source)
    return out


@dataclass(frozen=True)
class ModelPriors:
    """Merged priors (natural units, by name) and their standardized-unit versions."""

    table: dict[str, Prior]
    intercept_mu: np.ndarray  # (O,) log eta* at the data centre
    intercept_sd: np.ndarray  # (O,)
    slope_mu: np.ndarray  # (K,) population slopes, standardized units
    slope_sd: np.ndarray  # (K,)
    slope_spread: np.ndarray  # (K,) log-median of the optimizer spread (lognormal)
    family_spread: np.ndarray  # (K,) log-median of the family spread (lognormal)
    curvature_sd: np.ndarray  # (J,)
    curvature_spread: np.ndarray  # (J,) log-median of the optimizer spread (lognormal)

    def __getitem__(self, name: str) -> Prior:
        return self.table[name]


def model_priors(features: Features, spec: ModelSpec) -> ModelPriors:
    """Merged priors, rescaled from natural to standardized units (z = log x / scale)."""
    table = merged_priors(features, spec)
    scale = np.array(features.standardizer.scale, float)
    exps = [table[f"{_EXP}.{c}"] for c in features.covariates]
    intercepts = [table[f"intercept.{o}"] for o in features.optimizers]
    return ModelPriors(
        table=table,
        intercept_mu=np.array([p.mu for p in intercepts]),
        intercept_sd=np.array([p.sigma for p in intercepts]),
        slope_mu=np.array([p.mu for p in exps]) * scale,
        slope_sd=np.array([p.sigma for p in exps]) * scale,
        slope_spread=table["exponent_spread"].mu + np.log(scale),
        family_spread=table["family_spread"].mu + np.log(scale),
        curvature_sd=np.array([table["curvature"].sigma * scale[i] * scale[j]
                               for i, j in features.terms]),
        curvature_spread=np.array([table["curvature_spread"].mu + math.log(scale[i] * scale[j])
                                   for i, j in features.terms]),
    )


def priors_frame(table: Mapping[str, Prior]) -> pd.DataFrame:
    """The merged priors as a table (name, dist, mu, sigma, source) for display and saving."""
    return pd.DataFrame([{"name": k, "dist": p.dist, "mu": p.mu, "sigma": p.sigma,
                          "source": p.source} for k, p in sorted(table.items())])


def _expand(priors: Mapping[str, Prior], optimizers: tuple[str, ...]) -> dict[str, Prior]:
    out = dict(priors)
    for name in optimizers:
        out.setdefault(f"intercept.{name}", priors["intercept"])
    return out


def _user_priors(user: Mapping[str, tuple[float, float]], defaults: Mapping[str, Prior],
                 optimizers: tuple[str, ...]) -> dict[str, Prior]:
    out = {}
    for name, (mu, sigma) in user.items():
        if name == "intercept":
            for opt in optimizers:
                if f"intercept.{opt}" not in user:
                    out[f"intercept.{opt}"] = defaults["intercept"].with_values(mu, sigma, "user")
            continue
        if name not in defaults:
            if name.startswith("intercept."):
                continue  # an optimizer absent from these data
            raise ModelError(f"ModelSpec.priors: unknown prior {name!r}; known: "
                             f"{', '.join(sorted(defaults))}")
        out[name] = defaults[name].with_values(mu, sigma, "user")
    return out


def _typical_curvature(features: Features) -> float | None:
    """Median positive x^2 coefficient of per-config quadratic fits (>= 3 distinct LRs)."""
    curvatures = []
    ok = ~features.diverged
    for c in range(features.n_configs):
        sel = ok & (features.point_config == c)
        x, y = features.log_lr[sel], features.loss[sel]
        if len(np.unique(x)) >= 3:
            a = np.polyfit(x - x.mean(), y, 2)[0]
            if a > 0:
                curvatures.append(a)
    return float(np.median(curvatures)) if curvatures else None


def _ceiling_priors(features: Features) -> dict[str, Prior]:
    """Ceilings centred on the median over configs of the highest loss observed below
    (ceiling_low) and above (ceiling_high) the config's best LR."""
    highest = {"ceiling_low": [], "ceiling_high": []}
    ok = ~features.diverged
    for c in range(features.n_configs):
        sel = ok & (features.point_config == c)
        if sel.sum() < 2:
            continue
        x, y = features.log_lr[sel], features.loss[sel]
        best = x[np.argmin(y)]
        for name, side in (("ceiling_low", x < best), ("ceiling_high", x > best)):
            if side.any():
                highest[name].append(y[side].max())
    return {name: DEFAULT_PRIORS[name].with_values(
                float(np.median(values)), 0.5,
                f"data: median highest loss {'below' if name == 'ceiling_low' else 'above'} "
                "a sweep's best LR")
            for name, values in highest.items() if values}
