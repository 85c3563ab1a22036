"""Saved posteriors describe themselves: draws, run table and spec round-trip through netCDF,
and a corrupt, edited or foreign file is refused with a message that says what to do."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayeslr.errors import PosteriorError
from bayeslr.posterior import Posterior
from tests.model_support import small_fit

TARGET = pd.DataFrame({"n_params": [8e5, 5e7], "tokens": [1e8, 1e9], "batch_size": [32, 64],
                       "optimizer": ["adamw", "sgd"]})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    _, posterior = small_fit()
    path = tmp_path_factory.mktemp("posterior") / "fit.nc"
    posterior.save(path)
    return posterior, path


def test_round_trip_keeps_draws_data_spec_and_answers(saved):
    posterior, path = saved
    loaded = Posterior.load(path)
    assert loaded.spec == posterior.spec
    assert loaded.features.data_hash() == posterior.features.data_hash()
    assert loaded.notes == posterior.notes and loaded.info["sampler"] == posterior.info["sampler"]
    xr.testing.assert_allclose(loaded.idata.posterior.dataset, posterior.idata.posterior.dataset)
    np.testing.assert_array_equal(loaded.idata["log_likelihood"].dataset["run"].values,
                                  posterior.idata["log_likelihood"].dataset["run"].values)
    pd.testing.assert_frame_equal(loaded.data, posterior.data, check_dtype=False)
    ours = posterior.draw_curve_params(TARGET, seed=4)
    theirs = loaded.draw_curve_params(TARGET, seed=4)
    xr.testing.assert_allclose(ours, theirs)
    assert loaded.diagnostics() == posterior.diagnostics()


def test_an_edited_run_table_is_detected(saved, tmp_path):
    _, path = saved
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        tree = tree.load()
    runs = tree["bayeslr_runs"].to_dataset()
    columns = json.loads(runs.attrs["columns"])
    col = f"col_{columns.index('loss')}"
    runs[col] = runs[col] + 0.5
    tree["bayeslr_runs"] = xr.DataTree(runs)
    edited = tmp_path / "edited.nc"
    tree.to_netcdf(edited, engine="h5netcdf")
    with pytest.raises(PosteriorError, match="data hash mismatch.*refit"):
        Posterior.load(edited)


def test_corrupt_missing_and_foreign_files_are_refused(saved, tmp_path):
    _, path = saved
    corrupt = tmp_path / "corrupt.nc"
    corrupt.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(PosteriorError, match="not a readable posterior file"):
        Posterior.load(corrupt)
    with pytest.raises(PosteriorError, match="no such posterior file"):
        Posterior.load(tmp_path / "absent.nc")
    foreign = tmp_path / "foreign.nc"
    xr.DataTree.from_dict({"posterior": xr.Dataset({"x": ("draw", np.zeros(3))})}).to_netcdf(
        foreign, engine="h5netcdf")
    with pytest.raises(PosteriorError, match="not a bayeslr posterior"):
        Posterior.load(foreign)
