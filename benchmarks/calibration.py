"""Simulation-based calibration of eta* intervals at held-out larger targets.

For each of --datasets simulated sweeps: draw a ground-truth law from the model's default
priors (TrueLaw.from_prior), simulate a sweep like real ones (coarse x2 LR grids centred on a
noisy guess, Student-t noise, divergences above the optimum; 2 optimizers x 3 model sizes x 3
horizons x 2 batch sizes x 5 LRs = 180 runs), fit it (nutpie, 4 chains x 500 draws), and check
whether the nominal 50% / 90% posterior predictive intervals of log eta* cover the truth at 8
held-out targets per dataset: 4x and 16x larger models, 1x and 4x the longest horizon, a batch
size in between, both optimizers. The truth at a target includes a fresh configuration
residual, as the prediction does. Exponent recovery: coverage of the 90% intervals of
d ln eta* / d ln x at the data centre, and their mean absolute error.

Usage: python benchmarks/calibration.py [--datasets 30] [--seed 0] [--draws 500]
Last line: calibration: coverage50=<x> coverage90=<y> targets=<n>
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from tqdm import tqdm

from bayeslr.errors import ModelError
from bayeslr.fit import fit
from bayeslr.simulate import TrueLaw, simulate_sweep

OPTIMIZERS = ("adamw", "sgd")
N_PARAMS = (2e5, 8e5, 3.2e6)
TOKENS = (5e7, 1e8, 2e8)
BATCHES = (16, 64)
COVARIATES = ("n_params", "tokens", "batch_size")


def targets() -> pd.DataFrame:
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


def one_dataset(seed: int, draws: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    law = TrueLaw.from_prior(rng, OPTIMIZERS)
    sweep = simulate_sweep(law, n_params=N_PARAMS, tokens=TOKENS, batch_sizes=BATCHES,
                           n_lrs=5, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        posterior = fit(sweep, draws=draws, tune=draws, chains=4, seed=seed,
                        progressbar=False)
    tg = targets()
    log_eta = posterior.draw_curve_params(tg, seed=seed)["log_eta"].values  # (sample, target)
    truth = law.log_eta(tg["n_params"], tg["tokens"], tg["batch_size"], tg["optimizer"]) \
        + law.resid_sd * rng.standard_normal(len(tg))
    q = np.quantile(log_eta, [0.05, 0.25, 0.75, 0.95], axis=0)
    cover = tg.assign(dataset=seed, truth=truth, median=np.median(log_eta, axis=0),
                      in50=(truth >= q[1]) & (truth <= q[2]),
                      in90=(truth >= q[0]) & (truth <= q[3]))
    centre = {c: float(np.exp(np.log(sweep.truth[c].astype(float)).mean())) for c in COVARIATES}
    exps = posterior.exponents()
    rows = []
    for opt in OPTIMIZERS:
        true = true_exponents(law, centre, opt)
        for name in posterior.covariates:
            draws_ = exps[name].sel(optimizer=opt).values.ravel()
            lo, hi = np.quantile(draws_, [0.05, 0.95])
            rows.append({"dataset": seed, "optimizer": opt, "covariate": name,
                         "true": true[name], "mean": draws_.mean(),
                         "in90": lo <= true[name] <= hi})
    diag = posterior.diagnostics()
    cover["rhat_max"], cover["n_divergences"] = diag["rhat_max"], diag["n_divergences"]
    return cover, pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    covers, exps, failed = [], [], 0
    for i in tqdm(range(args.datasets), disable=args.quiet, desc="datasets"):
        try:
            cover, exp = one_dataset(args.seed * 1000 + i, args.draws)
        except ModelError as err:  # a prior draw the sweep design cannot fit
            failed += 1
            print(f"dataset {i}: skipped ({err})")
            continue
        covers.append(cover)
        exps.append(exp)
    cover, exp = pd.concat(covers), pd.concat(exps)
    print(f"datasets fitted: {len(covers)} (skipped {failed}); "
          f"{time.perf_counter() - start:.0f} s")
    print(f"fits with R-hat > 1.01: {(cover.groupby('dataset')['rhat_max'].first() > 1.01).sum()}"
          f"; with divergent transitions: "
          f"{(cover.groupby('dataset')['n_divergences'].first() > 0).sum()}")
    by_opt = cover.groupby("optimizer")[["in50", "in90"]].mean().round(3)
    print("coverage by optimizer:\n" + by_opt.to_string())
    err = (cover["median"] - cover["truth"]).abs()
    print(f"median |log eta* error| at targets: {err.median():.3f} (natural log units)")
    summary = exp.assign(abs_err=(exp["mean"] - exp["true"]).abs()).groupby("covariate").agg(
        coverage90=("in90", "mean"), mean_abs_error=("abs_err", "mean"), n=("in90", "size"))
    print("exponent recovery (90% intervals, natural units):\n" + summary.round(3).to_string())
    print(f"calibration: coverage50={cover['in50'].mean():.3f} "
          f"coverage90={cover['in90'].mean():.3f} targets={len(cover)}")


if __name__ == "__main__":
    main()
