"""One small real fit shared by the answers, plots and CLI tests (cached per test process).

A simulated sweep with a known law (bayeslr.simulate) over two optimizers, three model sizes,
two token horizons and two batch sizes, 5 LRs each, fitted with real NUTS sampling (2 chains
x 500 draws): about 30 s on 2 cores, most of it compiling the model.
"""

from __future__ import annotations

import functools
import warnings

from bayeslr.errors import DataWarning

OPTIMIZERS = ("adamw", "sgd")
INSIDE = {"n_params": 8e5, "tokens": 1e8, "batch_size": 32, "optimizer": "adamw"}
"""A target inside the simulated data's range."""
FAR = {"n_params": 8e8, "tokens": 1e8, "batch_size": 32, "optimizer": "adamw"}
"""A target 1000x larger than the middle model: far outside the data."""


def small_fit_sweep():
    """The simulated sweep of the shared fit (known truth in `.truth`)."""
    from bayeslr.simulate import TrueLaw, simulate_sweep

    return simulate_sweep(TrueLaw.example(OPTIMIZERS), n_params=(2e5, 8e5, 3.2e6),
                          tokens=(5e7, 2e8), batch_sizes=(16, 64), seed=3)


@functools.lru_cache(maxsize=1)
def small_fit():
    """(SimulatedSweep, Posterior) of the shared small fit."""
    from bayeslr.fit import fit

    sweep = small_fit_sweep()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        warnings.simplefilter("ignore", UserWarning)  # diagnostics of a deliberately short run
        posterior = fit(sweep, draws=500, tune=500, chains=2, seed=3, progressbar=False)
    return sweep, posterior
