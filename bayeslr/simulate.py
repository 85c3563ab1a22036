"""Simulated LR sweeps from a known ground-truth law, shaped like real ones.

Used by the tests, the calibration benchmark and anyone who wants a sweep with a known answer.
Each configuration (optimizer x model size x token horizon x batch size) gets a true optimum
log eta*_c = law + residual, a coarse x2 LR grid centred on a noisy guess of it (as a
practitioner would place it), losses from the model's own curve (bayeslr.curve) with Student-t
noise, and divergences beyond a boundary above the optimum. Units: natural logs, nats/token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bayeslr import curve
from bayeslr.schema import (
    Measurements,
    ModelShape,
    OptimizerConfig,
    RunConfig,
    RunOutcome,
    RunRecord,
    TrainConfig,
)
from bayeslr.store import records_to_frame

REFERENCE = {"n_params": 1e6, "tokens": 1e8, "batch_size": 32.0}
"""The point where TrueLaw.log_eta_ref applies; exponents act on log(x / reference)."""
COVARIATES = ("n_params", "tokens", "batch_size")
LOG_ETA_REF_PRIOR = (math.log(3e-3), 1.0)
"""Mean and sd of TrueLaw.from_prior's ln eta* at REFERENCE, drawn per optimizer."""
NOISE_MEDIAN = 0.03
"""Median loss noise (nats/token) of TrueLaw.from_prior. The seed-to-seed sd of the final
validation loss in the shipped reference and dense sweeps is 0.040 (0.023-0.070 by sweep and
optimizer or size; `python benchmarks/loss_noise.py`): the simulated sweeps sit a little on
the precise side of our own."""


@dataclass(frozen=True)
class TrueLaw:
    """A ground-truth LR law and loss-curve shape, natural units, per optimizer."""

    log_eta_ref: dict[str, float]
    """Natural log of eta* at REFERENCE, per optimizer."""
    exponents: dict[str, tuple[float, float, float]]
    """d ln eta* / d ln (n_params, tokens, batch_size), per optimizer."""
    curvature: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Coefficients of ln(N/N0)^2, ln(D/D0)^2, ln(N/N0) ln(D/D0)."""
    resid_sd: float = 0.1
    """Scatter of each configuration's log eta* around the law."""
    curv_left: float = 0.08
    """Loss curvature below the optimum (nats per squared natural-log unit)."""
    curv_asym: float = 0.3
    """log(curv_right / curv_left)."""
    curv_sd: float = 0.2
    """Scatter of log curvature across configurations."""
    div_offset: float = 1.2
    """Divergence boundary above the optimum (natural-log units)."""
    div_scale: float = 0.2
    """Width of the logistic divergence transition."""
    noise_sd: float = 0.01
    """Scale of the Student-t loss noise (nats/token)."""
    noise_nu: float = 4.0
    ratio_ref: float = -8.0
    """log(effective_lr / lr) at REFERENCE (for the effective-LR variant)."""
    ratio_exponent: float = -0.3
    """d log(effective_lr / lr) / d ln N."""

    @property
    def optimizers(self) -> tuple[str, ...]:
        return tuple(self.log_eta_ref)

    def log_eta(self, n_params: np.ndarray, tokens: np.ndarray, batch_size: np.ndarray,
                optimizer: Sequence[str]) -> np.ndarray:
        """Mean log eta* of the law (no residual) at each configuration."""
        x = [np.log(np.asarray(v, float) / REFERENCE[k])
             for k, v in zip(COVARIATES, (n_params, tokens, batch_size), strict=True)]
        opt = list(optimizer)
        out = np.array([self.log_eta_ref[o] for o in opt])
        exps = np.array([self.exponents[o] for o in opt])  # (n, 3)
        out = out + sum(exps[:, k] * x[k] for k in range(3))
        c_nn, c_dd, c_nd = self.curvature
        return out + c_nn * x[0] ** 2 + c_dd * x[1] ** 2 + c_nd * x[0] * x[1]

    @classmethod
    def example(cls, optimizers: Sequence[str] = ("adamw", "sgd", "rmsprop")) -> TrueLaw:
        """A fixed, plausible law: Adam-like LRs ~3e-3, SGD ~0.1, exponents near published."""
        base = {"adamw": math.log(3e-3), "adam": math.log(3e-3), "sgd": math.log(0.1),
                "rmsprop": math.log(1e-3), "lion": math.log(3e-4), "muon": math.log(0.02)}
        exps = {"adamw": (-0.45, -0.15, 0.4), "adam": (-0.45, -0.15, 0.4),
                "sgd": (-0.3, -0.1, 0.8), "rmsprop": (-0.5, -0.2, 0.4),
                "lion": (-0.5, -0.1, 0.4), "muon": (-0.3, -0.1, 0.4)}
        return cls(log_eta_ref={o: base.get(o, math.log(1e-3)) for o in optimizers},
                   exponents={o: exps.get(o, (-0.4, -0.1, 0.4)) for o in optimizers},
                   curvature=(0.03, 0.0, 0.0))

    @classmethod
    def from_prior(cls, rng: np.random.Generator,
                   optimizers: Sequence[str] = ("adamw", "sgd"), *,
                   noise_median: float = NOISE_MEDIAN) -> TrueLaw:
        """A law drawn from the model's default priors (bayeslr.priors.DEFAULT_PRIORS), for
        simulation-based calibration; curve-shape settings vary around TrueLaw's defaults and
        the loss noise is log-normal around `noise_median` (nats/token; sd 0.6 in logs, so 90%
        of draws lie within 0.37-2.7 times it). The draws do not depend on `noise_median`
        other than through noise_sd, so two medians give the same laws for one `rng` seed.
        Seed simulate_sweep from another stream (bayeslr.calibration.simulated_dataset
        spawns one): seeded with the integer that seeded `rng`, the sweep's configuration
        residuals would be copies of this law's normal draws."""
        if not noise_median > 0:
            raise ValueError(f"noise_median: expected a positive loss noise (nats/token), "
                             f"got {noise_median!r}")
        from bayeslr.priors import DEFAULT_PRIORS as P

        mu = np.array([_draw(P[f"exponent.{k}"], rng) for k in COVARIATES])
        spread = np.array([_draw(P["exponent_spread"], rng) for _ in COVARIATES])
        c = [_draw(P["curvature"], rng) for _ in range(3)]
        return cls(
            log_eta_ref={o: float(rng.normal(*LOG_ETA_REF_PRIOR)) for o in optimizers},
            exponents={o: tuple(float(v) for v in mu + spread * rng.normal(size=3))
                       for o in optimizers},
            curvature=(c[0], c[1], c[2]), resid_sd=_draw(P["resid_sd"], rng),
            curv_left=float(np.exp(rng.normal(math.log(0.08), 0.5))),
            curv_asym=float(rng.normal(0.3, 0.3)),
            curv_sd=float(np.exp(rng.normal(math.log(0.15), 0.5))),
            div_offset=float(np.exp(rng.normal(0.0, 0.3))),
            div_scale=float(np.exp(rng.normal(math.log(0.2), 0.3))),
            noise_sd=float(np.exp(rng.normal(math.log(noise_median), 0.6))))


def _draw(prior: object, rng: np.random.Generator) -> float:
    """One draw from a bayeslr.priors.Prior."""
    if prior.dist == "normal":
        return float(rng.normal(prior.mu, prior.sigma))
    if prior.dist == "halfnormal":
        return float(abs(rng.normal(0.0, prior.sigma)))
    return float(np.exp(rng.normal(prior.mu, prior.sigma)))


@dataclass(frozen=True)
class SimulatedSweep:
    """Simulated runs and the truth behind them."""

    records: list[RunRecord]
    truth: pd.DataFrame
    """One row per configuration (index config_id): optimizer, n_params, tokens, batch_size,
    log_eta (true optimum), loss_min, curv_left, curv_right."""
    law: TrueLaw
    seed: int
    notes: dict = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        """The run table (as SweepStore.to_frame would give)."""
        return records_to_frame(self.records)


def simulate_sweep(law: TrueLaw, *, n_params: Sequence[float] = (2e5, 8e5, 3.2e6),
                   tokens: Sequence[float] = (5e7, 2e8), batch_sizes: Sequence[int] = (32,),
                   n_lrs: int = 5, grid_factor: float = 2.0, guess_sd: float = 0.5,
                   seeds: int = 1, seq_len: int = 128, arch: str = "gpt",
                   seed: int = 0) -> SimulatedSweep:
    """Simulate a full-factorial sweep: every optimizer x n_params x tokens x batch size,
    `n_lrs` LRs on a x`grid_factor` grid around a guess of eta* (sd `guess_sd` in natural-log
    units), `seeds` seeds per LR."""
    rng = np.random.default_rng(seed)
    grid = pd.MultiIndex.from_product([law.optimizers, n_params, tokens, batch_sizes],
                                      names=["optimizer", "n_params", "tokens", "batch_size"])
    configs = grid.to_frame(index=False)
    configs["log_eta"] = law.log_eta(configs["n_params"], configs["tokens"],
                                     configs["batch_size"], configs["optimizer"]) \
        + law.resid_sd * rng.standard_normal(len(configs))
    log_k = np.log(law.curv_left) + law.curv_sd * rng.standard_normal(len(configs))
    configs["curv_left"] = np.exp(log_k)
    configs["curv_right"] = np.exp(log_k + law.curv_asym)
    configs["loss_min"] = _loss_floor(configs["n_params"], configs["tokens"])
    configs["ratio"] = law.ratio_ref + law.ratio_exponent * np.log(
        configs["n_params"] / REFERENCE["n_params"]) + 0.05 * rng.standard_normal(len(configs))
    records, ids = [], []
    for row in configs.itertuples(index=False):
        cfg_records = _config_runs(row, law, rng, n_lrs=n_lrs, grid_factor=grid_factor,
                                   guess_sd=guess_sd, seeds=seeds, seq_len=seq_len, arch=arch)
        records += cfg_records
        ids.append(cfg_records[0].config.config_id())
    truth = configs.assign(config_id=ids).set_index("config_id")
    return SimulatedSweep(records=records, truth=truth, law=law, seed=seed)


def _config_runs(row: object, law: TrueLaw, rng: np.random.Generator, *, n_lrs: int,
                 grid_factor: float, guess_sd: float, seeds: int, seq_len: int,
                 arch: str) -> list[RunRecord]:
    step = math.log(grid_factor)
    guess = row.log_eta + guess_sd * rng.standard_normal()
    centre = round(guess / step) * step  # grids sit on powers of grid_factor, like real ones
    offsets = np.arange(n_lrs) - (n_lrs - 1) / 2
    log_lrs = centre + step * np.floor(offsets) if n_lrs % 2 == 0 else centre + step * offsets
    params = {curve.LOG_ETA: row.log_eta, curve.CURV_LEFT: row.curv_left,
              curve.CURV_RIGHT: row.curv_right, curve.DIV_OFFSET: law.div_offset,
              curve.DIV_SCALE: law.div_scale}
    out = []
    for log_lr in np.unique(log_lrs):
        for run_seed in range(seeds):
            diverged = rng.random() < curve.divergence_prob(log_lr, params)
            noise = law.noise_sd * rng.standard_t(law.noise_nu)
            loss = None if diverged else float(row.loss_min + curve.loss_gap(log_lr, params)
                                               + noise)
            lr = float(np.exp(log_lr))
            out.append(_record(row, lr, loss, run_seed, seq_len, arch, rng, law))
    return out


def _record(row: object, lr: float, loss: float | None, run_seed: int, seq_len: int,
            arch: str, rng: np.random.Generator, law: TrueLaw) -> RunRecord:
    batch = int(row.batch_size)
    config = RunConfig(
        model=ModelShape(n_params=float(row.n_params), arch=arch),
        optimizer=OptimizerConfig(name=row.optimizer, lr=lr),
        train=TrainConfig(tokens=float(row.tokens), batch_size=batch, seq_len=seq_len,
                          steps=max(1, int(row.tokens // (batch * seq_len))),
                          schedule="cosine", seed=run_seed))
    diverged = loss is None
    measurements = Measurements(
        lambda_max=None if diverged else float(2.0 / math.exp(row.log_eta)
                                               * math.exp(0.1 * rng.standard_normal())),
        effective_lr=None if diverged else float(lr * math.exp(row.ratio)))
    outcome = RunOutcome(diverged=diverged, final_val_loss=loss,
                         diverged_step=0 if diverged else None)
    return RunRecord(config=config, outcome=outcome, measurements=measurements,
                     metadata={"source": "bayeslr.simulate"})


def _loss_floor(n_params: pd.Series, tokens: pd.Series) -> np.ndarray:
    """Chinchilla-shaped loss at the optimum LR, scaled to small byte-level models."""
    return 1.2 + 40.0 * np.asarray(n_params, float) ** -0.3 + 60.0 * np.asarray(
        tokens, float) ** -0.25
