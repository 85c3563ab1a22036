"""Simulation-based calibration: do the model's intervals at held-out larger targets cover?

One `calibration_dataset(seed)` draws a ground-truth law from the model's default priors
(`TrueLaw.from_prior`), simulates a sweep like real ones (coarse x2 LR grids centred on a noisy
guess, Student-t loss noise about as large as the seed-to-seed noise of our sweeps, divergences
above the optimum; 2 optimizers x 3 model sizes x 3 horizons x 2 batch sizes x 5 LRs = 180
runs), fits it, and scores the posterior predictive intervals of
ln eta* at 8 held-out targets (4x and 16x the largest model, 1x and 4x the longest horizon, a
batch size in between, both optimizers; the truth there includes a fresh configuration
residual, as the prediction does), the exponents d ln eta* / d ln x at the data centre, the
law's curvature coefficients and the curve-shape and scatter parameters (where the truth
falls in each marginal posterior: a parameter whose 90% intervals miss far more than 10% of
the time shows where the posterior is overconfident), and the optima of the fitted
configurations themselves.
`summarize` pools many datasets, with bootstrap intervals that resample whole datasets (the
targets of one dataset share its posterior, so they are not independent).
Each target is also scored against the exact posterior given the true optima
(bayeslr.oracle), whose coverage is nominal in expectation over the prior: on a finite set
of datasets it shows how lucky their drawn truths are, and over many it checks the simulated
data themselves (`oracle_scores`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslr.fit import CompiledModels, fit
from bayeslr.oracle import oracle_pit
from bayeslr.schema import DIMS
from bayeslr.simulate import COVARIATES, NOISE_MEDIAN, SimulatedSweep, TrueLaw, simulate_sweep
from bayeslr.spec import ModelSpec

OPTIMIZERS = ("adamw", "sgd")
N_PARAMS = (2e5, 8e5, 3.2e6)
TOKENS = (5e7, 1e8, 2e8)
BATCHES = (16, 64)
CURVATURE_TERMS = {"n_params^2": 0, "tokens^2": 1, "n_params*tokens": 2}
"""The model's curvature term names -> index into TrueLaw.curvature (others are truly 0)."""


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


def true_parameters(law: TrueLaw) -> dict[str, float]:
    """The simulator's values of the model's scatter and curve-shape parameters, under the
    model's variable names (natural units; the simulator gives every optimizer one shape)."""
    return {"resid_sd": law.resid_sd, "curv_sd": law.curv_sd, "noise_sd": law.noise_sd,
            "div_scale": law.div_scale, "div_offset": law.div_offset,
            "curv_asym": law.curv_asym,
            "log_curv_mean": float(np.log(law.curv_left) + 0.5 * law.curv_asym)}


def parameter_scores(posterior: object, law: TrueLaw) -> pd.DataFrame:
    """One row per scalar parameter (per optimizer where the model has one per optimizer):
    the truth, posterior mean and sd, z = (mean - truth) / sd, and whether the truth lies
    in the central 50% / 90% intervals."""
    natural = posterior.natural_parameters()
    truth = true_parameters(law)
    rows = []
    for name, value in truth.items():
        draws = natural[name]
        labels = draws[DIMS.OPTIMIZER].values if DIMS.OPTIMIZER in draws.dims else [None]
        for label in labels:
            one = draws if label is None else draws.sel({DIMS.OPTIMIZER: label})
            rows.append(_score(name, label, one.values.ravel(), value))
    for term in natural["curvature"][DIMS.TERM].values if "curvature" in natural else []:
        index = CURVATURE_TERMS.get(str(term))
        value = 0.0 if index is None else law.curvature[index]
        draws = natural["curvature"].sel({DIMS.TERM: term}).values.ravel()
        rows.append(_score(f"curvature[{term}]", None, draws, value))
    return pd.DataFrame(rows)


def optimum_scores(posterior: object, truth: pd.DataFrame) -> pd.DataFrame:
    """One row per fitted configuration: its true optimum ln eta*_c (`truth`: the simulated
    sweep's truth table), the posterior mean and sd, z, whether the truth lies in the central
    50% / 90% intervals, and how many of its runs the fit saw diverge. These are the optima
    the law is fitted to: when they are calibrated and the targets are not, the law's
    extrapolation is what is overconfident."""
    features = posterior.features
    ids = list(features.config_ids)
    draws = posterior.idata.posterior.dataset["log_eta"].transpose(..., DIMS.CONFIG)
    draws = draws.values.reshape(-1, len(ids))
    true = truth.loc[ids, "log_eta"].to_numpy(float)
    diverged = np.bincount(features.point_config[features.diverged], minlength=len(ids))
    return pd.DataFrame({"config_id": ids, "true": true, **interval_scores(draws, true),
                         "n_diverged": diverged})


def interval_scores(draws: np.ndarray, truth: np.ndarray | float) -> dict[str, np.ndarray]:
    """Score truths against posterior draws along the first axis: posterior mean and sd,
    z = (mean - truth) / sd, and whether each truth lies in the central 50% / 90% intervals."""
    q = np.quantile(draws, [0.05, 0.25, 0.75, 0.95], axis=0)
    mean, sd = draws.mean(0), draws.std(0)
    return {"mean": mean, "sd": sd, "z": (mean - truth) / sd,
            "in50": (truth >= q[1]) & (truth <= q[2]), "in90": (truth >= q[0]) & (truth <= q[3])}


def _score(name: str, optimizer: str | None, draws: np.ndarray, truth: float) -> dict:
    scores = {key: value.item() for key, value in interval_scores(draws, truth).items()}
    return {"parameter": name, "optimizer": optimizer, "true": truth, **scores}


@dataclass(frozen=True)
class DatasetResult:
    """One simulated dataset's scores: `targets` (one row per held-out target: the dataset's
    loss noise noise_sd, truth, median, in50, in90, law_z: the error of the law's posterior
    mean there in posterior sds, residual left out, and oracle_in50 / oracle_in90: whether
    the intervals of the exact posterior given the true optima cover, bayeslr.oracle),
    `exponents` (one row per optimizer x covariate: true, mean, in90), `parameters` (see
    parameter_scores), `optima` (see optimum_scores) and the fit's diagnostics, with the
    oracle's effective number of importance draws (oracle_ess)."""

    targets: pd.DataFrame
    exponents: pd.DataFrame
    parameters: pd.DataFrame
    optima: pd.DataFrame
    diagnostics: dict


@dataclass(frozen=True)
class SimulatedDataset:
    """One calibration dataset before fitting: the true law, the simulated sweep, and the
    held-out targets (calibration_targets) with the law there (`true_law`) and the truth
    (`truth`: the law plus a fresh configuration residual), both ln eta*."""

    law: TrueLaw
    sweep: SimulatedSweep
    targets: pd.DataFrame


def simulated_dataset(seed: int, *, noise_median: float = NOISE_MEDIAN) -> SimulatedDataset:
    """Calibration dataset `seed` (see the module docstring). The law, the sweep and the
    targets' residuals draw from three independent streams spawned from the seed: a sweep
    seeded with the law's own seed would reuse the law's normal draws as its configurations'
    residuals, and the targets' residuals would repeat some of them. One seed gives the same
    law, optima and LR grids at any `noise_median` (nats/token; see TrueLaw.from_prior)."""
    law_stream, sweep_stream, target_stream = np.random.SeedSequence(seed).spawn(3)
    law = TrueLaw.from_prior(np.random.default_rng(law_stream), OPTIMIZERS,
                             noise_median=noise_median)
    sweep = simulate_sweep(law, n_params=N_PARAMS, tokens=TOKENS, batch_sizes=BATCHES,
                           n_lrs=5, seed=int(sweep_stream.generate_state(1)[0]))
    targets = calibration_targets()
    true_law = law.log_eta(targets["n_params"], targets["tokens"], targets["batch_size"],
                           targets["optimizer"])
    residual = law.resid_sd * np.random.default_rng(target_stream).standard_normal(len(targets))
    return SimulatedDataset(law, sweep, targets.assign(true_law=true_law,
                                                       truth=true_law + residual))


def oracle_scores(data: SimulatedDataset, seed: int) -> tuple[dict[str, np.ndarray], float]:
    """Whether the oracle's central 50% / 90% intervals (bayeslr.oracle: the exact posterior
    given the true optima) cover each target's truth, as columns oracle_in50 / oracle_in90,
    and the oracle's effective number of importance draws; `seed` seeds its draws."""
    pit, ess = oracle_pit(data.sweep.truth, data.targets,
                          data.targets["truth"].to_numpy(float), OPTIMIZERS, seed=seed)
    return {"oracle_in50": np.abs(pit - 0.5) <= 0.25,
            "oracle_in90": np.abs(pit - 0.5) <= 0.45}, ess


def calibration_dataset(seed: int, *, draws: int = 500, cores: int | None = None,
                        compiled: CompiledModels | None = None,
                        noise_median: float = NOISE_MEDIAN,
                        spec: ModelSpec | None = None) -> DatasetResult:
    """Simulate (simulated_dataset), fit (nutpie when installed; 4 chains x `draws` after as
    many tuning steps) and score one dataset; the seed fixes the data, the fit and the
    predictions. Pass one `compiled` to many calls to compile the model once (the datasets
    share its structure). `noise_median`: median loss noise of the simulated sweeps
    (nats/token). `spec`: the model fitted (default: ModelSpec())."""
    data = simulated_dataset(seed, noise_median=noise_median)
    law, sweep = data.law, data.sweep
    tg = data.targets.drop(columns=["true_law", "truth"])
    true_law, truth = (data.targets[c].to_numpy(float) for c in ("true_law", "truth"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        posterior = fit(sweep, spec, draws=draws, tune=draws, chains=4, seed=seed,
                        cores=cores, progressbar=False, compiled=compiled)
    curve_draws = posterior.draw_curve_params(tg, seed=seed)
    log_eta = curve_draws["log_eta"].values  # (sample, target)
    law_draws = curve_draws["log_eta_law"].values
    scores = interval_scores(log_eta, truth)
    oracle, oracle_ess = oracle_scores(data, seed)
    targets = tg.assign(dataset=seed, noise_sd=law.noise_sd, truth=truth,
                        median=np.median(log_eta, axis=0),
                        in50=scores["in50"], in90=scores["in90"],
                        law_z=interval_scores(law_draws, true_law)["z"], **oracle)
    centre = {c: float(np.exp(np.log(sweep.truth[c].astype(float)).mean())) for c in COVARIATES}
    exps = posterior.exponents()
    rows = []
    for opt in OPTIMIZERS:
        true = true_exponents(law, centre, opt)
        for name in posterior.covariates:
            scores = interval_scores(exps[name].sel(optimizer=opt).values.ravel(), true[name])
            rows.append({"dataset": seed, "optimizer": opt, "covariate": name,
                         "true": true[name], "mean": scores["mean"].item(),
                         "in90": scores["in90"].item()})
    parameters = parameter_scores(posterior, law).assign(dataset=seed)
    optima = optimum_scores(posterior, sweep.truth).assign(dataset=seed)
    return DatasetResult(targets, pd.DataFrame(rows), parameters, optima,
                         {**posterior.diagnostics(), "oracle_ess": oracle_ess})


RESULT_TABLES = ("targets", "exponents", "parameters", "optima", "diagnostics")
"""The CSV files `save_results` writes, one row per target / exponent / parameter / fitted
configuration / dataset."""


def result_tables(results: list[DatasetResult]) -> dict[str, pd.DataFrame]:
    """The datasets' scores as one tidy table per kind (see RESULT_TABLES), each with a
    `dataset` column (the dataset's seed), so that runs can be compared dataset by dataset."""
    seeds = [int(r.targets["dataset"].iloc[0]) for r in results]
    tables = {name: pd.concat([getattr(r, name) for r in results], ignore_index=True)
              for name in RESULT_TABLES[:-1]}
    tables["diagnostics"] = pd.DataFrame([r.diagnostics for r in results]).assign(
        dataset=seeds)
    return tables


def saved_results(directory: str | Path) -> list[str]:
    """The result files of `save_results` that already exist in `directory`."""
    return [str(p) for name in RESULT_TABLES if (p := Path(directory) / f"{name}.csv").exists()]


def save_results(results: list[DatasetResult], directory: str | Path) -> list[Path]:
    """Write `result_tables(results)` as CSV files into `directory` (created if missing) and
    return their paths. Refuses, before writing anything, when one of them already exists:
    an earlier run's scores are never overwritten."""
    existing = saved_results(directory)
    if existing:
        raise FileExistsError(f"calibration results already saved: {', '.join(existing)}; "
                              "choose another directory or move them away")
    directory = Path(directory)
    paths = [directory / f"{name}.csv" for name in RESULT_TABLES]
    directory.mkdir(parents=True, exist_ok=True)
    for path, table in zip(paths, result_tables(results).values(), strict=True):
        table.to_csv(path, index=False)
    return paths


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


NOISE_GROUPS = {1: ["all"], 2: ["low", "high"], 3: ["low", "middle", "high"]}


def coverage_by_noise(targets: pd.DataFrame) -> pd.DataFrame:
    """Target coverage, the oracle's (see oracle_scores) and the law's z sd in thirds of
    the datasets by their loss noise (nats/token; halves or one group for fewer than 3
    datasets): how the calibration depends on how precisely the loss points measure each
    sweep (docs/model.md, Loss noise)."""
    noise = targets.groupby("dataset")["noise_sd"].first()
    labels = NOISE_GROUPS[min(3, len(noise))]
    third = pd.qcut(noise.rank(method="first"), len(labels), labels=labels)
    return targets.assign(noise_third=targets["dataset"].map(third)).groupby(
        "noise_third", observed=True).agg(
        noise_from=("noise_sd", "min"), noise_to=("noise_sd", "max"),
        coverage50=("in50", "mean"), coverage90=("in90", "mean"),
        oracle50=("oracle_in50", "mean"), oracle90=("oracle_in90", "mean"),
        law_z_sd=("law_z", "std"), datasets=("dataset", "nunique"))


def summarize(results: list[DatasetResult]) -> dict:
    """Pooled coverage of the target intervals (with dataset-bootstrap 90% intervals) and the
    oracle's on the same targets, per optimizer, per target size x horizon and per third of
    the datasets by loss noise, exponent recovery, the parameters' interval coverage and mean
    z, the fitted configurations' optima (coverage and z, by number of diverged runs), the
    law's z-scores at the targets (mean 0 and sd 1 for a calibrated law), and how many fits
    failed their diagnostics."""
    tables = result_tables(results)
    cover, optima, exps = tables["targets"], tables["optima"], tables["exponents"]
    params, diag = tables["parameters"], tables["diagnostics"]
    recovery = exps.assign(abs_err=(exps["mean"] - exps["true"]).abs()).groupby(
        "covariate").agg(coverage90=("in90", "mean"), mean_abs_error=("abs_err", "mean"),
                         n=("in90", "size"))
    return {
        "coverage50": float(cover["in50"].mean()), "coverage90": float(cover["in90"].mean()),
        "coverage50_ci": dataset_bootstrap(cover["in50"], cover["dataset"]),
        "coverage90_ci": dataset_bootstrap(cover["in90"], cover["dataset"]),
        "oracle_coverage50": float(cover["oracle_in50"].mean()),
        "oracle_coverage90": float(cover["oracle_in90"].mean()),
        "targets": len(cover), "datasets": len(results),
        "by_optimizer": cover.groupby("optimizer")[["in50", "in90"]].mean(),
        "by_target": cover.groupby(["n_params", "tokens"]).agg(
            coverage50=("in50", "mean"), coverage90=("in90", "mean"),
            law_z_sd=("law_z", "std"), n=("in90", "size")),
        "by_noise": coverage_by_noise(cover),
        "median_abs_error": float((cover["median"] - cover["truth"]).abs().median()),
        "exponents": recovery,
        "parameters": params.groupby("parameter", sort=False).agg(
            coverage50=("in50", "mean"), coverage90=("in90", "mean"), mean_z=("z", "mean"),
            n=("in90", "size")),
        "optima": optima.groupby("n_diverged").agg(
            coverage50=("in50", "mean"), coverage90=("in90", "mean"), mean_z=("z", "mean"),
            sd_z=("z", "std"), n=("z", "size")),
        "optima_coverage50": float(optima["in50"].mean()),
        "optima_coverage90": float(optima["in90"].mean()),
        "optima_z_sd": float(optima["z"].std()),
        "law_z_mean": float(cover["law_z"].mean()), "law_z_sd": float(cover["law_z"].std()),
        "rhat_over": int((diag["rhat_max"] > 1.01).sum()),
        "with_divergences": int((diag["n_divergences"] > 0).sum()),
    }


__all__ = ["RESULT_TABLES", "DatasetResult", "SimulatedDataset", "calibration_dataset",
           "calibration_targets", "coverage_by_noise", "dataset_bootstrap", "interval_scores",
           "optimum_scores", "oracle_scores", "parameter_scores", "result_tables",
           "save_results", "saved_results", "simulated_dataset", "summarize",
           "true_exponents", "true_parameters"]
