"""Simulation-based calibration: do the model's intervals at held-out larger targets cover?

One `calibration_dataset(seed)` draws a ground-truth law from the model's default priors
(`TrueLaw.from_prior`), simulates a sweep like real ones (coarse x2 LR grids centred on a noisy
guess, Student-t noise, divergences above the optimum; 2 optimizers x 3 model sizes x 3 horizons
x 2 batch sizes x 5 LRs = 180 runs), fits it, and scores the posterior predictive intervals of
ln eta* at 8 held-out targets (4x and 16x the largest model, 1x and 4x the longest horizon, a
batch size in between, both optimizers; the truth there includes a fresh configuration
residual, as the prediction does) and the exponents d ln eta* / d ln x at the data centre.
`summarize` pools many datasets, with bootstrap intervals that resample whole datasets (the
targets of one dataset share its posterior, so they are not independent).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bayeslr.fit import fit
from bayeslr.simulate import COVARIATES, TrueLaw, simulate_sweep

OPTIMIZERS = ("adamw", "sgd")
N_PARAMS = (2e5, 8e5, 3.2e6)
TOKENS = (5e7, 1e8, 2e8)
BATCHES = (16, 64)


def calibration_targets() -> pd.DataFrame:
    """The 8 held-out targets: 4x and 16x the largest size, 1x and 4x the longest horizon."""
    rows = [{"n_params": n, "tokens": d, "batch_size": 32, "optimizer": o}
            for n in (4 * N_PARAMS[-1], 16 * N_PARAMS[-1]) for d in (TOKENS[-1], 4 * TOKENS[-1])
            for o in OPTIMIZERS]
    return pd.DataFrame(rows)


def true_exponents(law: TrueLaw, centre: dict[str, float], optimizer: str) -> dict[str, float]:
    """d ln eta* / d ln x of the true law at the data centre (central differences)."""
    out = {}
    for name in COVARIATES:
        values = []
        for step in (-1e-4, 1e-4):
            point = {k: np.array([v * (np.exp(step) if k == name else 1.0)])
                     for k, v in centre.items()}
            values.append(law.log_eta(point["n_params"], point["tokens"], point["batch_size"],
                                      [optimizer])[0])
        out[name] = (values[1] - values[0]) / 2e-4
    return out


@dataclass(frozen=True)
class DatasetResult:
    """One simulated dataset's scores: `targets` (one row per held-out target: truth, median,
    in50, in90), `exponents` (one row per optimizer x covariate: true, mean, in90) and the
    fit's diagnostics."""

    targets: pd.DataFrame
    exponents: pd.DataFrame
    diagnostics: dict


def calibration_dataset(seed: int, *, draws: int = 500, cores: int | None = None
                        ) -> DatasetResult:
    """Simulate, fit (nutpie when installed; 4 chains x `draws` after as many tuning steps) and
    score one dataset; the seed fixes the law, the sweep, the fit and the predictions."""
    rng = np.random.default_rng(seed)
    law = TrueLaw.from_prior(rng, OPTIMIZERS)
    sweep = simulate_sweep(law, n_params=N_PARAMS, tokens=TOKENS, batch_sizes=BATCHES,
                           n_lrs=5, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        posterior = fit(sweep, draws=draws, tune=draws, chains=4, seed=seed, cores=cores,
                        progressbar=False)
    tg = calibration_targets()
    log_eta = posterior.draw_curve_params(tg, seed=seed)["log_eta"].values  # (sample, target)
    truth = law.log_eta(tg["n_params"], tg["tokens"], tg["batch_size"], tg["optimizer"]) \
        + law.resid_sd * rng.standard_normal(len(tg))
    q = np.quantile(log_eta, [0.05, 0.25, 0.75, 0.95], axis=0)
    targets = tg.assign(dataset=seed, truth=truth, median=np.median(log_eta, axis=0),
                        in50=(truth >= q[1]) & (truth <= q[2]),
                        in90=(truth >= q[0]) & (truth <= q[3]))
    centre = {c: float(np.exp(np.log(sweep.truth[c].astype(float)).mean())) for c in COVARIATES}
    exps = posterior.exponents()
    rows = []
    for opt in OPTIMIZERS:
        true = true_exponents(law, centre, opt)
        for name in posterior.covariates:
            values = exps[name].sel(optimizer=opt).values.ravel()
            lo, hi = np.quantile(values, [0.05, 0.95])
            rows.append({"dataset": seed, "optimizer": opt, "covariate": name,
                         "true": true[name], "mean": values.mean(),
                         "in90": lo <= true[name] <= hi})
    return DatasetResult(targets, pd.DataFrame(rows), posterior.diagnostics())


def dataset_bootstrap(values: pd.Series, groups: pd.Series, *, n_boot: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """5% and 95% quantiles of the mean of `values` over bootstrap resamples of whole groups
    (datasets): the uncertainty of a coverage estimate whose targets share posteriors."""
    per_group = values.groupby(groups).agg(["sum", "size"])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(per_group), size=(n_boot, len(per_group)))
    means = per_group["sum"].to_numpy()[pick].sum(1) / per_group["size"].to_numpy()[pick].sum(1)
    lo, hi = np.quantile(means, [0.05, 0.95])
    return float(lo), float(hi)


def summarize(results: list[DatasetResult]) -> dict:
    """Pooled coverage of the target intervals (with dataset-bootstrap 90% intervals), per
    optimizer, exponent recovery, and how many fits failed their diagnostics."""
    cover = pd.concat([r.targets for r in results], ignore_index=True)
    exps = pd.concat([r.exponents for r in results], ignore_index=True)
    diag = pd.DataFrame([r.diagnostics for r in results])
    recovery = exps.assign(abs_err=(exps["mean"] - exps["true"]).abs()).groupby(
        "covariate").agg(coverage90=("in90", "mean"), mean_abs_error=("abs_err", "mean"),
                         n=("in90", "size"))
    return {
        "coverage50": float(cover["in50"].mean()), "coverage90": float(cover["in90"].mean()),
        "coverage50_ci": dataset_bootstrap(cover["in50"], cover["dataset"]),
        "coverage90_ci": dataset_bootstrap(cover["in90"], cover["dataset"]),
        "targets": len(cover), "datasets": len(results),
        "by_optimizer": cover.groupby("optimizer")[["in50", "in90"]].mean(),
        "median_abs_error": float((cover["median"] - cover["truth"]).abs().median()),
        "exponents": recovery,
        "rhat_over": int((diag["rhat_max"] > 1.01).sum()),
        "with_divergences": int((diag["n_divergences"] > 0).sum()),
    }


__all__ = ["DatasetResult", "calibration_dataset", "calibration_targets", "dataset_bootstrap",
           "summarize", "true_exponents"]
