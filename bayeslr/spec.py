"""ModelSpec: the frozen description of which LR scaling model to fit.

A spec is everything that defines the model apart from the data and the sampler settings; it is
saved inside every posterior file so that a posterior can answer questions later with exactly
the model it was fitted with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from bayeslr.errors import ModelError

COVARIATES = ("n_params", "tokens", "batch_size", "batch_tokens", "d_model", "n_layers",
              "n_heads", "lambda_max")
"""Configuration-level covariates the law can use; each enters as its natural log."""

SIZE_COVARIATES = ("n_params", "tokens")
"""Covariates that get the switchable quadratic and interaction (curvature) terms."""

CURVES = ("quadratic", "wall", "saturating")
LR_KINDS = ("lr", "effective")


@dataclass(frozen=True)
class ModelSpec:
    """Which hierarchical LR scaling model to build (see docs/model.md for the math)."""

    covariates: tuple[str, ...] = ("n_params", "tokens", "batch_size")
    """Covariates of the law for log eta*, each as its natural log, centred and scaled:
    n_params (N), tokens (D), batch_size (sequences) or batch_tokens, d_model / n_layers /
    n_heads (shape instead of N), lambda_max (measured sharpness: tests eta* ~ c/lambda_max)."""
    curvature: bool = True
    """Add quadratic terms in log N and log D and their interaction (log eta* curving with
    scale); terms the data cannot identify are dropped with a warning."""
    optimizer_curvature: bool = False
    """Let each optimizer's curvature coefficients depart from the shared ones (zero-sum
    departures with a fitted spread, as the optimizers' exponents): an optimizer whose
    optimum bends with scale differently from the others."""
    curve: str = "quadratic"
    """Shape of the loss in log LR around the optimum: 'quadratic' (asymmetric quadratic),
    'wall' (asymmetric quadratic plus a cubic wall on the high-LR side) or 'saturating'
    (asymmetric quadratic whose sides level off at two fitted ceilings: the loss of a run that
    barely trains and of one that stalls; for sweeps spanning decades of LR)."""
    divergence: bool = True
    """Use diverged runs through a divergence likelihood (logistic boundary above the optimum);
    False drops them."""
    lr_kind: str = "lr"
    """'lr': the law is for the peak LR; 'effective': the law is for the effective LR (update
    size relative to weight norm, column effective_lr), mapped back to the LR per config."""
    group_ignore: tuple[str, ...] = ()
    """Table columns ignored when grouping runs into configurations (an LR sweep is every run
    sharing all other settings); e.g. ('warmup_steps',) to pool sweeps that differ only there."""
    prior_law: str | None = None
    """Published law used as the prior mean of the intercept and exponents of Adam-type
    optimizers: one of bayeslr.priors.PUBLISHED_LAWS ('step_law', 'porian', 'deepseek'), or
    None for the default weakly informative priors centred on the data's LR grid."""
    priors: tuple[tuple[str, tuple[float, float]], ...] = ()
    """User priors, (name, (mu, sigma)) in natural units, overriding data-driven and default
    ones; names as in bayeslr.priors.DEFAULT_PRIORS (a mapping is accepted and normalised)."""
    noise_nu: float = 4.0
    """Degrees of freedom of the Student-t loss noise (robust to outlying runs)."""
    blowup_gap: float | None = 1.0
    """A run above its configuration's best LR whose loss exceeds the configuration's best
    loss by more than this (nats/token) is counted as diverged: a loss spike far outside the
    quadratic neighbourhood of the optimum says "LR too high", as a divergence does, and
    fitting it as a loss makes the posterior bimodal (curvature vs outlier). None: keep every
    finite loss as a loss."""

    def __post_init__(self) -> None:
        covariates = _as_tuple(self.covariates, "covariates")
        unknown = [c for c in covariates if c not in COVARIATES]
        if unknown:
            raise ModelError(f"ModelSpec.covariates: unknown {unknown}; known: "
                             f"{', '.join(COVARIATES)}")
        if len(set(covariates)) != len(covariates):
            raise ModelError(f"ModelSpec.covariates: repeated entries in {covariates}")
        if "batch_size" in covariates and "batch_tokens" in covariates:
            raise ModelError("ModelSpec.covariates: use batch_size or batch_tokens, not both")
        object.__setattr__(self, "covariates", covariates)
        object.__setattr__(self, "group_ignore", _as_tuple(self.group_ignore, "group_ignore"))
        if self.curve not in CURVES:
            raise ModelError(f"ModelSpec.curve: {self.curve!r}; known: {', '.join(CURVES)}")
        if self.lr_kind not in LR_KINDS:
            raise ModelError(f"ModelSpec.lr_kind: {self.lr_kind!r}; known: {', '.join(LR_KINDS)}")
        if not self.noise_nu > 1:
            raise ModelError(f"ModelSpec.noise_nu: expected > 1, got {self.noise_nu!r}")
        if self.blowup_gap is not None and not self.blowup_gap > 0:
            raise ModelError(f"ModelSpec.blowup_gap: expected > 0 nats/token or None, got "
                             f"{self.blowup_gap!r}")
        object.__setattr__(self, "priors", _normalise_priors(self.priors))
        if self.prior_law is not None:
            from bayeslr.priors import PUBLISHED_LAWS

            if self.prior_law not in PUBLISHED_LAWS:
                raise ModelError(f"ModelSpec.prior_law: unknown law {self.prior_law!r}; known: "
                                 f"{', '.join(PUBLISHED_LAWS)}")

    @property
    def sharpness(self) -> bool:
        """Whether measured sharpness (log lambda_max) is a covariate."""
        return "lambda_max" in self.covariates

    @property
    def user_priors(self) -> dict[str, tuple[float, float]]:
        return dict(self.priors)

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with some fields changed (validated again)."""
        data = asdict(self)
        data.update(changes)
        return ModelSpec(**data)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as err:
            raise ModelError(f"ModelSpec: cannot read spec JSON ({err})") from None
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelError(f"ModelSpec: unknown field(s) {sorted(unknown)} (written by a newer "
                             "bayeslr?)")
        data["covariates"] = tuple(data.get("covariates", ()))
        data["group_ignore"] = tuple(data.get("group_ignore", ()))
        data["priors"] = tuple((k, tuple(v)) for k, v in data.get("priors", ()))
        return cls(**data)


def _as_tuple(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ModelError(f"ModelSpec.{name}: expected a sequence of names, got {value!r}") from None
    if not all(isinstance(v, str) for v in items):
        raise ModelError(f"ModelSpec.{name}: expected names (strings), got {items!r}")
    return items


def _normalise_priors(priors: Any) -> tuple[tuple[str, tuple[float, float]], ...]:
    items = priors.items() if isinstance(priors, Mapping) else priors
    out = []
    for item in items:
        try:
            name, (mu, sigma) = item
            mu, sigma = float(mu), float(sigma)
        except (TypeError, ValueError):
            raise ModelError(f"ModelSpec.priors: expected name -> (mu, sigma), got {item!r}"
                             ) from None
        if not sigma > 0:
            raise ModelError(f"ModelSpec.priors[{name!r}]: sigma must be > 0, got {sigma}")
        out.append((str(name), (mu, sigma)))
    return tuple(sorted(out))
