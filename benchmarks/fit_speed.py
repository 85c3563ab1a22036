"""Fit speed on a sweep of ~2,000 loss points over ~170 configurations and 3 optimizers.

A simulated sweep (bayeslr.simulate, TrueLaw.example: AdamW, SGD, RMSprop x 6 model sizes x
3 horizons x 3 batch sizes = 162 configurations x 6 LRs x 2 seeds = 1,944 runs, ~15%
diverged) is fitted with bayeslr.fit's default sampler (nutpie) and, in the same run, with
PyMC's own NUTS sampler (`sampler="pymc"`) at identical settings. Wall time counts the whole
`fit` call (data cleaning, model building, compilation, sampling, log-likelihood,
diagnostics). Goal: <= 60 s with max R-hat <= 1.01 and min bulk ESS >= 400.

Usage: python benchmarks/fit_speed.py [--draws 1000] [--tune 600] [--skip-default]
Last line: fit: seconds=<s> rhat_max=<r> ess_min=<e> speedup_vs_default=<x>
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from bayeslr.fit import fit
from bayeslr.simulate import TrueLaw, simulate_sweep


def sweep():
    return simulate_sweep(TrueLaw.example(("adamw", "sgd", "rmsprop")),
                          n_params=(1e5, 2e5, 4e5, 8e5, 1.6e6, 3.2e6), tokens=(5e7, 1e8, 2e8),
                          batch_sizes=(16, 32, 64), n_lrs=6, seeds=2, seed=0)


def timed_fit(data, sampler: str, args: argparse.Namespace):
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        posterior = fit(data, draws=args.draws, tune=args.tune, chains=4, seed=args.seed,
                        sampler=sampler, progressbar=not args.quiet)
    seconds = time.perf_counter() - start
    for w in caught:
        if w.category.__name__ == "SamplingWarning":
            print(f"  [{sampler}] {w.message}")
    return posterior, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-default", action="store_true",
                        help="do not time PyMC's own sampler (no speedup figure)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    sim = sweep()
    table = sim.frame()
    print(f"sweep: {len(table)} runs, {table['config_id'].nunique()} configurations, "
          f"{table['optimizer'].nunique()} optimizers, {table['diverged'].mean():.0%} diverged")
    posterior, seconds = timed_fit(table, "auto", args)
    diag = posterior.diagnostics()
    configs = posterior.configs().join(sim.truth["log_eta"])
    rmse = float(np.sqrt(((configs["log_eta_median"] - configs["log_eta"]) ** 2).mean()))
    print(f"{posterior.info['sampler']}: {seconds:.1f} s (sampling alone "
          f"{posterior.info['seconds']:.1f} s), max R-hat {diag['rhat_max']:.4f} "
          f"({diag['rhat_worst']}), min bulk ESS {diag['ess_bulk_min']:.0f} "
          f"({diag['ess_worst']}), divergences {diag['n_divergences']}, per-config log eta* "
          f"RMSE {rmse:.3f}")
    speedup = float("nan")
    if not args.skip_default:
        other, other_seconds = timed_fit(table, "pymc", args)
        d = other.diagnostics()
        print(f"pymc: {other_seconds:.1f} s (sampling alone {other.info['seconds']:.1f} s), "
              f"max R-hat {d['rhat_max']:.4f}, min bulk ESS {d['ess_bulk_min']:.0f}, "
              f"divergences {d['n_divergences']}")
        speedup = other_seconds / seconds
    print(f"fit: seconds={seconds:.1f} rhat_max={diag['rhat_max']:.4f} "
          f"ess_min={diag['ess_bulk_min']:.0f} speedup_vs_default={speedup:.2f}")


if __name__ == "__main__":
    main()
