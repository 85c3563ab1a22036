"""Simulation-based calibration of eta* intervals at held-out larger targets.

For each of --datasets simulated sweeps (bayeslr.calibration: a law drawn from the default
priors, 180 runs over 2 optimizers x 3 sizes x 3 horizons x 2 batch sizes x 5 LRs), fit with
nutpie (4 chains x --draws after as many tuning steps) and check whether the nominal 50% / 90%
posterior predictive intervals of ln eta* cover the truth at 8 held-out targets per dataset
(4x and 16x larger models, 1x and 4x the longest horizon). Exponent recovery: coverage of the
90% intervals of d ln eta* / d ln x at the data centre, and their mean absolute error. The
same for the law's curvature coefficients and the scatter and curve-shape parameters, for
the optima of the fitted configurations (by how many of their runs diverged), and the law's
error at the targets in posterior sds: these show which part of the posterior is
overconfident when the target coverage falls short.
Coverage is printed with a 90% bootstrap interval that resamples whole datasets, next to the
coverage of an oracle on the same targets (bayeslr.oracle: the exact posterior given the true
optima of the fitted configurations, nominal in expectation over the prior, so it shows how
lucky the drawn truths are).

Datasets are fitted --workers at a time in separate processes, each sampling its chains on
one core. Each process fits its datasets in chunks that share one compiled model
(bayeslr.fit.CompiledModels): compiling takes most of a single fit's time, and the datasets
differ only in their data.

The simulated loss noise is drawn around --noise-median nats (default: about the seed-to-seed
noise of the shipped sweeps, bayeslr.simulate.NOISE_MEDIAN); coverage is also printed in
thirds of the datasets by their noise. One seed draws the same laws, optima and LR grids at
any noise level.

--save DIR writes every dataset's scores as CSV files (bayeslr.calibration.save_results:
targets, exponents, parameters, optima, diagnostics, each with the dataset's seed), so that
two runs, of two builds or two designs, can be compared dataset by dataset.

--oracle-only scores only the oracle, without fitting (a fraction of a second per dataset),
to check that it covers the simulated targets at the nominal rate; its last line is
`oracle: coverage50=<x> coverage90=<y> targets=<n>`.

Usage: python benchmarks/calibration.py [--datasets 120] [--seed 0] [--draws 500] [--workers 2]
                                        [--noise-median 0.03] [--optimizer-curvature]
                                        [--save DIR] [--oracle-only]
Last line: calibration: coverage50=<x> coverage90=<y> targets=<n>
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import pandas as pd
from fixed_kernels import fix_kernels
from tqdm import tqdm

from bayeslr.calibration import (
    DatasetResult,
    calibration_dataset,
    dataset_bootstrap,
    oracle_scores,
    save_results,
    saved_results,
    simulated_dataset,
    summarize,
)
from bayeslr.errors import ModelError
from bayeslr.fit import CompiledModels
from bayeslr.simulate import NOISE_MEDIAN
from bayeslr.spec import ModelSpec


def _chunk(seeds: list[int], draws: int, cores: int, noise_median: float,
           spec: ModelSpec | None) -> list[DatasetResult | str]:
    """Fit datasets in turn with one CompiledModels: they share the model's structure, so it
    is compiled once per chunk instead of once per dataset."""
    compiled, out = CompiledModels(), []
    for seed in seeds:
        try:
            out.append(calibration_dataset(seed, draws=draws, cores=cores, compiled=compiled,
                                           noise_median=noise_median, spec=spec))
        except ModelError as err:  # a prior draw the sweep design cannot fit
            out.append(f"dataset seed {seed}: skipped ({err})")
    return out


def run(seeds: list[int], *, draws: int, workers: int, quiet: bool,
        noise_median: float = NOISE_MEDIAN, spec: ModelSpec | None = None
        ) -> list[DatasetResult]:
    """Fit every dataset, `workers` processes at a time, in chunks of about a third of each
    worker's share; results in seed order."""
    cores = 1 if workers > 1 else None
    size = max(1, math.ceil(len(seeds) / (3 * workers)))
    chunks = [seeds[i:i + size] for i in range(0, len(seeds), size)]
    context = multiprocessing.get_context("spawn")
    results = []
    with (ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool,
          tqdm(total=len(seeds), disable=quiet, desc="datasets") as bar):
        futures = [pool.submit(_chunk, c, draws, cores, noise_median, spec) for c in chunks]
        for future in as_completed(futures):
            for out in future.result():
                if isinstance(out, str):
                    print(out)
                else:
                    results.append(out)
                bar.update()
    return sorted(results, key=lambda r: int(r.targets["dataset"].iloc[0]))


def oracle_only(seeds: list[int], *, quiet: bool) -> None:
    """Score only the oracle, without fitting: whether the exact posterior given the true
    optima covers the benchmark's targets at the nominal rate (a check of the simulated
    data and of bayeslr.oracle)."""
    start = time.perf_counter()
    tables = [pd.DataFrame(oracle_scores(simulated_dataset(seed), seed)[0]).assign(
        dataset=seed) for seed in tqdm(seeds, disable=quiet, desc="datasets")]
    table = pd.concat(tables, ignore_index=True)
    print(f"datasets scored: {len(seeds)}; {time.perf_counter() - start:.0f} s")
    for level in ("50", "90"):
        column = table[f"oracle_in{level}"]
        lo, hi = dataset_bootstrap(column, table["dataset"])
        print(f"oracle's {level}% intervals: coverage {column.mean():.3f} (90% "
              f"dataset-bootstrap interval {lo:.3f}-{hi:.3f})")
    print(f"oracle: coverage50={table['oracle_in50'].mean():.3f} "
          f"coverage90={table['oracle_in90'].mean():.3f} targets={len(table)}")


def main() -> None:
    fix_kernels()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--noise-median", type=float, default=NOISE_MEDIAN,
                        help="median loss noise of the simulated sweeps, nats/token (default "
                             "%(default)s: the seed-to-seed noise of the shipped sweeps; the "
                             "same seeds give the same laws, optima and grids at any value)")
    parser.add_argument("--optimizer-curvature", action="store_true",
                        help="fit ModelSpec(optimizer_curvature=True) instead of the default")
    parser.add_argument("--oracle-only", action="store_true",
                        help="score only the oracle (no fits); last line 'oracle: ...'")
    parser.add_argument("--save", metavar="DIR",
                        help="write each dataset's scores as CSV files into DIR (refuses to "
                             "overwrite earlier ones)")
    args = parser.parse_args()
    if not args.noise_median > 0:
        parser.error(f"--noise-median: expected a positive noise, got {args.noise_median}")
    if args.oracle_only and args.save:
        parser.error("--save: the oracle-only run has no fits to save")
    if args.save:
        taken = saved_results(args.save)
        if taken:  # checked before the fits too: they take minutes
            parser.error(f"--save {args.save}: already holds {', '.join(taken)}")
    start = time.perf_counter()
    seeds = [args.seed * 1000 + i for i in range(args.datasets)]
    if args.oracle_only:
        return oracle_only(seeds, quiet=args.quiet)
    results = run(seeds, draws=args.draws, workers=args.workers, quiet=args.quiet,
                  noise_median=args.noise_median,
                  spec=ModelSpec(optimizer_curvature=args.optimizer_curvature))
    if args.save:
        print("scores saved: " + ", ".join(map(str, save_results(results, args.save))))
    s = summarize(results)
    print(f"datasets fitted: {s['datasets']} (skipped {args.datasets - s['datasets']}); "
          f"{time.perf_counter() - start:.0f} s")
    print(f"fits with R-hat > 1.01: {s['rhat_over']}; with divergent transitions: "
          f"{s['with_divergences']}")
    print("coverage by optimizer:\n" + s["by_optimizer"].round(3).to_string())
    print("coverage by target (the law's z sd with the residual left out):\n"
          + s["by_target"].round(3).to_string())
    print("coverage by loss noise (thirds of the datasets; noise in nats/token):\n"
          + s["by_noise"].round(3).to_string())
    print(f"median |log eta* error| at targets: {s['median_abs_error']:.3f} (natural log units)")
    print("exponent recovery (90% intervals, natural units):\n"
          + s["exponents"].round(3).to_string())
    print("curvature, scatter and curve-shape parameters (truth inside the 50% / 90% "
          "intervals; mean_z = (posterior mean - truth) / posterior sd):\n"
          + s["parameters"].round(3).to_string())
    print(f"optima of the fitted configurations: truth inside the 50% / 90% intervals "
          f"{s['optima_coverage50']:.3f} / {s['optima_coverage90']:.3f}, z sd "
          f"{s['optima_z_sd']:.2f}; by number of runs the fit saw diverge:\n"
          + s["optima"].round(3).to_string())
    print(f"law at the targets, residual left out: z = (mean - truth) / sd has mean "
          f"{s['law_z_mean']:.2f} and sd {s['law_z_sd']:.2f} (0 and 1 when calibrated)")
    for level in ("50", "90"):
        lo, hi = s[f"coverage{level}_ci"]
        print(f"coverage of the {level}% intervals: {s[f'coverage{level}']:.3f} "
              f"(90% dataset-bootstrap interval {lo:.3f}-{hi:.3f}); the oracle's on the same "
              f"targets {s[f'oracle_coverage{level}']:.3f}")
    print(f"calibration: coverage50={s['coverage50']:.3f} "
          f"coverage90={s['coverage90']:.3f} targets={s['targets']}")


if __name__ == "__main__":
    main()
