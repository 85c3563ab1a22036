"""The exact posterior predictive of a simulated law given its configurations' true optima.

The calibration benchmark's oracle: it sees every configuration's true ln eta*_c, as if each
sweep had been measured perfectly, and knows the prior the law was drawn from
(`TrueLaw.from_prior`). Given the exponents' spread across optimizers and the scatter around
the law, ln eta* is linear and Gaussian in the law's intercepts, exponents and curvature
coefficients, so those are integrated in closed form; the four scale parameters (the
spreads and the scatter) by importance sampling. Its intervals therefore cover the truth
at exactly the nominal rate in expectation over the prior. On a finite set of drawn laws
they do not, by the luck of the draws: the oracle's coverage of the benchmark's own targets
shows how lucky those are, and over many datasets it checks the simulated data themselves
(docs/model.md, Calibration).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm, t

from bayeslr.priors import DEFAULT_PRIORS
from bayeslr.simulate import COVARIATES, LOG_ETA_REF_PRIOR, REFERENCE

PILOTS = 2
"""Rounds of fitting the importance proposal before the final draws: one round from the prior
leaves a few datasets whose scatter is far below the prior's median with under 20 effective
draws out of 800."""
PROPOSAL_DF = 4
"""Degrees of freedom of the proposal: heavier tails than the posterior keep the weights
bounded."""
TRUNCATION = 5.0
"""Prior sds beyond which no scale parameter is drawn: the prior holds under 1e-6 of its mass
there, and a scatter far below it makes the optima's covariance numerically singular."""
CHUNK = 1000
"""Scale-parameter draws processed at once (bounds memory at about 20 MB per chunk)."""


def oracle_pit(configs: pd.DataFrame, targets: pd.DataFrame, truth: np.ndarray,
               optimizers: Sequence[str], *, draws: int = 4000,
               seed: int = 0) -> tuple[np.ndarray, float]:
    """The oracle's posterior predictive CDF at each target's true ln eta* (its PIT: uniform
    on [0, 1] in expectation over the prior; the truth is in the central 90% interval when
    |PIT - 0.5| <= 0.45), and the effective number of its importance draws.

    `configs`: one row per configuration with optimizer, n_params, tokens, batch_size and its
    true log_eta (SimulatedSweep.truth); `targets`: the same covariates; `truth`: ln eta* at
    each target, including its own fresh scatter around the law; `optimizers`: in the order
    TrueLaw.from_prior drew them. The scale parameters (logs of the three exponent spreads
    and of the scatter) are drawn `draws` times from a Student-t proposal, weighted by
    likelihood x prior / proposal; the proposal starts at the prior and is refitted to each
    of PILOTS weighted pilots of `draws // 4` draws (centre: their weighted mean; scale: 1.5
    times their weighted sd, at most the prior's)."""
    rng = np.random.default_rng(seed)
    prior_mu, prior_sd = _scale_prior()
    data = (_covariates(configs, optimizers), _covariates(targets, optimizers),
            configs["log_eta"].to_numpy(float), np.asarray(truth, float))
    centre, spread = prior_mu, prior_sd
    for _ in range(PILOTS):
        sample = _proposal(rng, centre, spread, max(1, draws // 4))
        w = _weights(sample, centre, spread, data)[0]
        centre = w @ sample
        spread = np.clip(1.5 * np.sqrt(w @ (sample - centre) ** 2), 0.05, prior_sd)
    w, cdf = _weights(_proposal(rng, centre, spread, draws), centre, spread, data)
    return w @ cdf, float(1.0 / (w**2).sum())


def _proposal(rng: np.random.Generator, centre: np.ndarray, spread: np.ndarray,
              size: int) -> np.ndarray:
    """(size, 4) draws of the log scale parameters from independent Student-t proposals,
    truncated to within TRUNCATION prior sds of the prior's centre (the truncation's constant
    cancels in the normalized weights)."""
    prior_mu, prior_sd = _scale_prior()
    low, high = prior_mu - TRUNCATION * prior_sd, prior_mu + TRUNCATION * prior_sd
    sample = np.empty((0, len(centre)))
    while len(sample) < size:
        more = centre + spread * rng.standard_t(PROPOSAL_DF, (size, len(centre)))
        sample = np.concatenate([sample, more[((more > low) & (more < high)).all(1)]])
    return sample[:size]


def _weights(sample: np.ndarray, centre: np.ndarray, spread: np.ndarray,
             data: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Normalized importance weights (likelihood x prior / proposal) of draws of the log
    scale parameters from the proposal at (centre, spread), and the predictive CDFs at the
    truths."""
    prior_mu, prior_sd = _scale_prior()
    log_lik, cdf = _log_likelihood_and_cdf(sample, *data)
    log_w = (log_lik + norm.logpdf(sample, prior_mu, prior_sd).sum(1)
             - t.logpdf(sample, PROPOSAL_DF, centre, spread).sum(1))
    w = np.exp(log_w - log_w.max())
    return w / w.sum(), cdf


def _scale_prior() -> tuple[np.ndarray, np.ndarray]:
    """Normal prior of (ln spread_N, ln spread_D, ln spread_B, ln resid_sd)."""
    priors = [DEFAULT_PRIORS["exponent_spread"]] * len(COVARIATES) + [DEFAULT_PRIORS["resid_sd"]]
    if any(p.dist != "lognormal" for p in priors):
        raise ValueError("oracle: expected lognormal priors for exponent_spread and resid_sd")
    return np.array([p.mu for p in priors]), np.array([p.sigma for p in priors])


def _log_likelihood_and_cdf(log_scales: np.ndarray, x_fit: dict, x_new: dict, y: np.ndarray,
                            truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per draw of the log scale parameters (H, 4): the log marginal likelihood of the optima
    `y` and the predictive CDF at each target's `truth` (H, T), in chunks of CHUNK draws."""
    log_lik, cdf = [], []
    for start in range(0, len(log_scales), CHUNK):
        scales = np.exp(log_scales[start:start + CHUNK])
        lw, mean, sd = _conditional(x_fit, x_new, y, scales[:, :-1], scales[:, -1])
        log_lik.append(lw)
        cdf.append(norm.cdf((truth - mean) / sd))
    return np.concatenate(log_lik), np.concatenate(cdf)


def _covariates(frame: pd.DataFrame, optimizers: Sequence[str]) -> dict[str, np.ndarray]:
    """One-hot optimizer (n, O), x = ln(value / REFERENCE) (n, 3), and the curvature columns
    in TrueLaw.curvature's order: x_N^2, x_D^2, x_N x_D (n, 3); TrueLaw.log_eta is linear in
    them (tests/test_oracle.py checks the two agree)."""
    names = list(optimizers)
    unknown = set(frame["optimizer"]) - set(names)
    if unknown:
        raise ValueError(f"oracle: optimizers {sorted(unknown)} are not among {names}")
    onehot = (frame["optimizer"].to_numpy()[:, None] == np.array(names)[None, :]).astype(float)
    x = np.column_stack([np.log(frame[k].to_numpy(float) / REFERENCE[k]) for k in COVARIATES])
    q = np.column_stack([x[:, 0] ** 2, x[:, 1] ** 2, x[:, 0] * x[:, 1]])
    return {"onehot": onehot, "x": x, "q": q}


def _prior_moments(n_optimizers: int) -> tuple[np.ndarray, np.ndarray]:
    """Prior mean and variance of the linear coefficients, in the order of _design's columns:
    intercepts at REFERENCE (O), mean exponents (3), standardized exponent deviations (O x 3),
    curvature coefficients (3)."""
    ref_mu, ref_sd = LOG_ETA_REF_PRIOR
    exps = [DEFAULT_PRIORS[f"exponent.{k}"] for k in COVARIATES]
    curvature = DEFAULT_PRIORS["curvature"]
    mean = np.concatenate([np.full(n_optimizers, ref_mu), [p.mu for p in exps],
                           np.zeros(3 * n_optimizers), np.full(3, curvature.mu)])
    var = np.concatenate([np.full(n_optimizers, ref_sd**2), [p.sigma**2 for p in exps],
                          np.ones(3 * n_optimizers), np.full(3, curvature.sigma**2)])
    return mean, var


def _design(cov: dict[str, np.ndarray], spreads: np.ndarray) -> np.ndarray:
    """(H, n, p) design of ln eta* = a_o + sum_k (mu_k + spread_k e_ok) x_k + sum_j c_j q_j,
    one per draw of the spreads (H, 3)."""
    onehot, x, q = cov["onehot"], cov["x"], cov["q"]
    h = len(spreads)
    base = np.concatenate([onehot, x], axis=1)
    deviations = (onehot[:, :, None] * x[:, None, :])[None] * spreads[:, None, None, :]
    return np.concatenate([np.broadcast_to(base, (h, *base.shape)),
                           deviations.reshape(h, len(x), -1),
                           np.broadcast_to(q, (h, *q.shape))], axis=2)


def _conditional(x_fit: dict, x_new: dict, y: np.ndarray, spreads: np.ndarray,
                 scatter: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per draw of the scale parameters: the log marginal likelihood of the optima `y`, and
    the predictive mean and sd of ln eta* at the targets (each with its own scatter)."""
    mean0, var0 = _prior_moments(x_fit["onehot"].shape[1])
    a, b = _design(x_fit, spreads), _design(x_new, spreads)
    k_fit = np.einsum("hip,p,hjp->hij", a, var0, a) + scatter[:, None, None] ** 2 * np.eye(len(y))
    k_cross = np.einsum("hip,p,hjp->hij", b, var0, a)
    k_new = np.einsum("hip,p,hip->hi", b, var0, b) + scatter[:, None] ** 2
    resid = y - a @ mean0
    chol = np.linalg.cholesky(k_fit)
    white = np.linalg.solve(chol, resid[..., None])[..., 0]
    log_w = -np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1) - 0.5 * (white**2).sum(1)
    cross = np.linalg.solve(chol, np.swapaxes(k_cross, 1, 2))  # (H, n, T)
    mean = b @ mean0 + np.einsum("hnt,hn->ht", cross, white)
    sd = np.sqrt(k_new - (cross**2).sum(1))
    return log_w, mean, sd


__all__ = ["oracle_pit"]
