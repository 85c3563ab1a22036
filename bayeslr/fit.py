"""Fit the LR scaling model: table in, checked Posterior out.

`fit` cleans the data (features.py), merges the priors (priors.py), builds the PyMC model
(model.py), samples with NUTS (nutpie when installed, else PyMC's own sampler; numpyro on
request), adds the pointwise log-likelihood for PSIS-LOO, and checks R-hat, ESS and
divergences, warning with the remedy. `compare` ranks fitted variants by PSIS-LOO.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from bayeslr.errors import ModelError, SamplingWarning
from bayeslr.features import build_features
from bayeslr.loglik import RUN, run_loglik
from bayeslr.posterior import ESS_MIN, RHAT_MAX, Posterior
from bayeslr.posterior_io import normalize_table
from bayeslr.schema import DIMS, RunRecord
from bayeslr.spec import ModelSpec
from bayeslr.store import SweepStore, read_jsonl, records_to_frame

SAMPLERS = ("auto", "nutpie", "pymc", "numpyro")


def fit(data: Any, spec: ModelSpec | None = None, *, draws: int = 1000, tune: int = 1000,
        chains: int = 4, seed: int = 0, sampler: str = "auto", target_accept: float = 0.9,
        cores: int | None = None, progressbar: bool = True,
        compiled: CompiledModels | None = None) -> Posterior:
    """Fit the hierarchical LR model to a sweep and return a checked Posterior.

    data: a run table (SweepStore.to_frame() rows), a SweepStore, a sweep directory, a CSV
    or .jsonl[.gz] path, a list of RunRecord, or a SimulatedSweep. spec: the model (default
    ModelSpec()). sampler: 'auto' (nutpie if installed, else 'pymc'), 'nutpie', 'pymc' or 'numpyro'.
    compiled: a CompiledModels the caller keeps across many fits, so that a model of an
    already compiled structure is sampled without compiling it again (nutpie; other samplers
    ignore it).
    Raises ModelError when the data cannot identify anything; warns (DataWarning) about what
    was dropped and (SamplingWarning) when diagnostics fail.
    """
    from bayeslr.model import build_model, compile_key, model_coords, parameterization
    from bayeslr.priors import model_priors, priors_frame

    spec = spec or ModelSpec()
    _check_settings(draws, tune, chains, sampler, target_accept)
    table = normalize_table(as_table(data))
    features = build_features(table, spec)
    priors = model_priors(features, spec)
    centred = parameterization(features)  # pinning fits every sweep: computed once
    model = build_model(features, priors, spec, centred=centred)
    sampler = resolve_sampler(sampler)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    idata = sample(model, sampler=sampler, draws=draws, tune=tune, chains=chains, seed=seed,
                   target_accept=target_accept, cores=cores, progressbar=progressbar,
                   timings=timings, compiled=compiled,
                   key=(compile_key(features, priors, spec, centred=centred)
                        if compiled is not None else ""))
    seconds = time.perf_counter() - start
    coords = model_coords(features)[DIMS.POINT]
    idata["log_likelihood"] = xr.DataTree(run_loglik(idata.posterior.dataset, features, spec,
                                                     coords))
    info = {"sampler": sampler, "draws": draws, "tune": tune, "chains": chains, "seed": seed,
            "target_accept": target_accept, "seconds": round(seconds, 2), **timings,
            "priors": {r["name"]: {k: r[k] for k in ("dist", "mu", "sigma", "source")}
                       for r in priors_frame(priors.table).to_dict("records")}}
    posterior = Posterior(idata, spec, table, features=features, info=info)
    warn_diagnostics(posterior.diagnostics())
    return posterior


def as_table(data: Any) -> pd.DataFrame:
    """The run table from any supported input (see `fit`)."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, SweepStore):
        return data.to_frame()
    if hasattr(data, "records") and hasattr(data, "truth"):  # SimulatedSweep
        return records_to_frame(data.records)
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            return SweepStore(path, create=False).to_frame()
        if path.suffix.lower() == ".csv" and path.is_file():
            from bayeslr.importers import read_sweep_csv

            return records_to_frame(read_sweep_csv(path))
        if path.name.lower().endswith((".jsonl", ".jsonl.gz")) and path.is_file():
            return records_to_frame(read_jsonl(path))
        raise ModelError(f"{path}: not a sweep directory, a .csv file or a .jsonl[.gz] export")
    if isinstance(data, Iterable):
        records = list(data)
        if records and all(isinstance(r, RunRecord) for r in records):
            return records_to_frame(records)
    raise ModelError(f"cannot fit {type(data).__name__}: pass a run table (DataFrame), a "
                     "SweepStore, a sweep directory, a CSV or .jsonl[.gz] path or a list of "
                     "RunRecord")


def resolve_sampler(sampler: str) -> str:
    """'auto' -> 'nutpie' when installed, else 'pymc'; missing backends raise ModelError."""
    if sampler == "auto":
        return "nutpie" if importlib.util.find_spec("nutpie") else "pymc"
    module = {"nutpie": "nutpie", "numpyro": "numpyro", "pymc": "pymc"}[sampler]
    if importlib.util.find_spec(module) is None:
        raise ModelError(f"sampler {sampler!r} is not installed; pip install {module} "
                         "(or use sampler='pymc')")
    return sampler


def reproducible_numba() -> Any:
    """PyTensor flags under which compiled numba code gives the same draws whether it was
    compiled now or loaded from PyTensor's on-disk cache. With fast-math, LLVM may reorder
    floating-point operations differently when a function is compiled inlined into the whole
    graph (a first compilation) than when it is loaded as a separate cached piece, and the
    sampler's chains drift apart from that last-bit difference (measured: a fit's draws
    differed between the first run on an install and every later one)."""
    import pytensor

    return pytensor.config.change_flags(numba__fastmath=False)


@dataclass
class CompiledModels:
    """Compiled nutpie samplers by structure (bayeslr.model.compile_key), kept by the caller
    across fits: a simulation study fits hundreds of models that differ only in their data,
    and compiling takes most of a small fit's time (about 60%). A model whose key is here is
    sampled with its data swapped in, giving the same draws as a fresh compilation."""

    samplers: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    """key -> (the PyMC model compiled first, its compiled sampler)."""

    def get(self, model: Any, key: str) -> Any:
        """The compiled sampler of `model`: the stored one with model's data, else a new one."""
        import nutpie

        if key not in self.samplers:
            with reproducible_numba():
                compiled = nutpie.compile_pymc_model(model, freeze_model=False)
            self.samplers[key] = (model, compiled)
            return compiled
        first, compiled = self.samplers[key]
        values = {var.name: var.get_value() for var in model.data_vars}
        for var in first.data_vars:  # the initial-point function reads the first model's data
            var.set_value(values[var.name])
        known = {var.name for var in compiled.shared_var_keys}
        return compiled.with_data(**{k: v for k, v in values.items() if k in known})


def sample(model: Any, *, sampler: str, draws: int, tune: int, chains: int, seed: int,
           target_accept: float, cores: int | None, progressbar: bool,
           timings: dict[str, float] | None = None, compiled: CompiledModels | None = None,
           key: str = "") -> xr.DataTree:
    """NUTS draws (groups posterior and sample_stats; warm-up discarded); `timings` receives
    compile_seconds where the backend compiles separately; `compiled` (nutpie) reuses a
    sampler compiled for the structure `key`."""
    timings = {} if timings is None else timings
    import pymc as pm

    cores = cores or min(chains, os.cpu_count() or 1)
    if sampler == "nutpie":
        import nutpie

        start = time.perf_counter()
        models = compiled if compiled is not None else CompiledModels()
        compiled_model = models.get(model, key)
        timings["compile_seconds"] = round(time.perf_counter() - start, 2)
        idata = nutpie.sample(compiled_model, draws=draws, tune=tune, chains=chains, cores=cores,
                              seed=seed, save_warmup=False, progress_bar=progressbar,
                              target_accept=target_accept)
    else:
        with model:
            idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=cores,
                              random_seed=seed, nuts_sampler=sampler,
                              target_accept=target_accept, progressbar=progressbar,
                              compute_convergence_checks=False)
    return xr.DataTree.from_dict({name: idata[name].to_dataset() for name in idata.groups
                                  if name.strip("/") in ("posterior", "sample_stats")})


def warn_diagnostics(diag: Mapping[str, Any]) -> list[str]:
    """Issue SamplingWarning for each failed check, naming the remedy; returns the messages."""
    messages = []
    if not diag["rhat_max"] <= RHAT_MAX:
        messages.append(f"max R-hat {diag['rhat_max']:.3f} > {RHAT_MAX} (worst: "
                        f"{diag['rhat_worst']}): chains disagree; run more tuning and draws "
                        "(e.g. tune=2000, draws=2000) or simplify the model (curvature=False)")
    if not diag["ess_bulk_min"] >= ESS_MIN:
        messages.append(f"min bulk ESS {diag['ess_bulk_min']:.0f} < {ESS_MIN} (worst: "
                        f"{diag['ess_worst']}): intervals are noisy; run more draws or chains")
    if diag["n_divergences"]:
        messages.append(f"{diag['n_divergences']} divergent transitions: the posterior may be "
                        "biased; raise target_accept (e.g. 0.95 or 0.99) or simplify the "
                        "model (curvature=False, fewer covariates)")
    for message in messages:
        warnings.warn(message, SamplingWarning, stacklevel=3)
    return messages


def compare(posteriors: Mapping[str, Posterior] | Iterable[Posterior]) -> pd.DataFrame:
    """Rank fitted variants by PSIS-LOO (az.compare on the per-run log-likelihood).

    All posteriors must be fitted on the same runs (same points); names default to
    'model_0', 'model_1', ... Returns az.compare's table (elpd_loo, p_loo, elpd_diff, weight,
    se, dse, warning).
    """
    import arviz as az

    if not isinstance(posteriors, Mapping):
        posteriors = {f"model_{i}": p for i, p in enumerate(posteriors)}
    if len(posteriors) < 2:
        raise ModelError("compare: pass at least two posteriors")
    points = {name: tuple(p.idata["log_likelihood"].dataset[DIMS.POINT].values)
              for name, p in posteriors.items()}
    reference = next(iter(points.values()))
    differ = [name for name, pts in points.items() if pts != reference]
    if differ:
        raise ModelError(f"compare: {differ} were fitted on different runs than "
                         f"{next(iter(points))}; LOO can only compare models of the same data "
                         "(a variant dropped configurations: see its notes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return az.compare({name: p.idata for name, p in posteriors.items()}, var_name=RUN)


def _check_settings(draws: int, tune: int, chains: int, sampler: str,
                    target_accept: float) -> None:
    if sampler not in SAMPLERS:
        raise ModelError(f"sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if draws < 1 or tune < 0 or chains < 1:
        raise ModelError(f"draws={draws}, tune={tune}, chains={chains}: expected draws >= 1, "
                         "tune >= 0, chains >= 1")
    if not 0.5 <= target_accept < 1:
        raise ModelError(f"target_accept={target_accept}: expected a value in [0.5, 1)")


def loo(posterior: Posterior) -> Any:
    """PSIS-LOO of one posterior (per-run log-likelihood); warns on high Pareto k."""
    import arviz as az

    return az.loo(posterior.idata, var_name=RUN)


__all__ = ["CompiledModels", "compare", "fit", "loo"]
