"""Small real fits shared by the model, fit and posterior tests (cached per test process).

A simulated sweep with a known law (2 optimizers x 3 model sizes x 2 horizons x 2 batch
sizes x 5 LRs = 120 runs) fitted with real NUTS (nutpie, 2 chains x 300 draws): ~20 s on 2
cores, most of it compiling; later fits of the same structure reuse the compiled code.
"""

from __future__ import annotations

import functools
import warnings

OPTIMIZERS = ("adamw", "sgd")


def sweep(seed: int = 11, **kwargs):
    from bayeslr.simulate import TrueLaw, simulate_sweep

    options = dict(n_params=(2e5, 8e5, 3.2e6), tokens=(5e7, 2e8), batch_sizes=(16, 64),
                   seed=seed)
    options.update(kwargs)
    return simulate_sweep(TrueLaw.example(OPTIMIZERS), **options)


def quiet_fit(data, spec=None, **kwargs):
    """bayeslr.fit with short-run diagnostics and data notes silenced."""
    from bayeslr.fit import fit

    options = dict(draws=300, tune=300, chains=2, seed=1, progressbar=False)
    options.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fit(data, spec, **options)


@functools.lru_cache(maxsize=1)
def small_fit():
    """(SimulatedSweep, Posterior) of the shared small fit."""
    sim = sweep()
    return sim, quiet_fit(sim)
