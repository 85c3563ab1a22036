"""Figures: the data functions return the right numbers; the plot functions draw real PNGs."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from bayeslr import plots  # noqa: E402
from bayeslr.errors import PosteriorError  # noqa: E402
from bayeslr.targets import ExtrapolationWarning  # noqa: E402
from tests.answers_support import FAR, small_fit  # noqa: E402


@pytest.fixture(scope="module")
def posterior():
    return small_fit()[1]


def _png(fig, path):
    fig.savefig(path)
    plt.close(fig)
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    return path.stat().st_size


def test_lr_curves_minimum_sits_in_the_eta_band(posterior, tmp_path):
    data = plots.lr_curve_data(posterior, max_configs=4, n_grid=200)
    assert 1 <= len(data.configs) <= 4
    assert set(data.configs["optimizer"]) == {"adamw", "sgd"}
    for cid, row in data.configs.iterrows():
        cur = data.curves[data.curves["config_id"] == cid]
        best = cur["lr"].to_numpy()[np.argmin(cur["median"].to_numpy())]
        assert row["eta_lo"] <= best <= row["eta_hi"]
        assert (cur["lo"] <= cur["median"]).all() and (cur["median"] <= cur["hi"]).all()
        runs = data.points[data.points["config_id"] == cid]
        assert len(runs) == row["n_runs"]
    fig, axes = plt.subplots(2, 2)
    assert plots.plot_lr_curves(data, axes) is axes
    assert _png(fig, tmp_path / "curves.png") > 10_000
    with pytest.raises(PosteriorError, match="unknown config id"):
        plots.lr_curve_data(posterior, configs=["nope"])


def test_scaling_data_marks_extrapolation_and_the_target(posterior, tmp_path):
    with warnings.catch_warnings():  # the figure shows the extrapolation instead of warning
        warnings.simplefilter("error", ExtrapolationWarning)
        data = plots.scaling_data(posterior, along="n_params", target=FAR, n_grid=30)
    lo, hi = data.data_range
    assert (lo, hi) == (2e5, 3.2e6)
    inside = data.curve[(data.curve["x"] > lo) & (data.curve["x"] < hi)]
    outside = data.curve[data.curve["x"] > 10 * hi]
    assert (inside["extrapolation"] == 0).all()
    assert (outside["extrapolation"] > 0).all()
    # wider bands away from the data; the predictive band contains the law's
    width = np.log(data.curve["law_hi"] / data.curve["law_lo"])
    assert width[data.curve["x"] > 10 * hi].min() > width[inside.index].max()
    assert (data.curve["pred_lo"] <= data.curve["law_lo"] * 1.05).all()
    assert data.target["n_params"].item() == FAR["n_params"]
    assert data.held == {"tokens": FAR["tokens"], "batch_size": FAR["batch_size"]}
    assert set(data.points["optimizer"]) == {"adamw"}
    pts = data.points
    assert len(pts) == (posterior.configs()["optimizer"] == "adamw").sum()
    assert ((pts["eta_lo"] < pts["eta_median"]) & (pts["eta_median"] < pts["eta_hi"])).all()
    # moving a sweep onto the slice multiplies its eta* by the law's ratio, nothing else
    own = posterior.configs().loc[pts["config_id"], "log_eta_median"].to_numpy()
    assert np.allclose(np.log(pts["eta_median"] / pts["adjustment"]), own, atol=1e-6)
    fig, ax = plt.subplots()
    assert plots.plot_scaling(data, ax) is ax
    assert _png(fig, tmp_path / "scaling.png") > 10_000
    with pytest.raises(PosteriorError, match="along="):
        plots.scaling_data(posterior, along="lr")


def test_forest_data_matches_the_exponent_draws(posterior, tmp_path):
    table = plots.forest_data(posterior)
    assert len(table) == len(posterior.covariates) * len(posterior.optimizers)
    row = table.query("covariate == 'n_params' and optimizer == 'sgd'").iloc[0]
    draws = posterior.exponents()["n_params"].sel(optimizer="sgd").values.ravel()
    assert row["median"] == pytest.approx(np.median(draws))
    assert row["lo90"] < row["lo50"] < row["median"] < row["hi50"] < row["hi90"]
    fig, ax = plt.subplots()
    assert plots.plot_forest(table, ax) is ax
    assert len(ax.get_yticklabels()) == len(table)
    _png(fig, tmp_path / "forest.png")


def test_sharpness_data_from_measured_runs(posterior, tmp_path):
    table = plots.sharpness_vs_lr_data(posterior)
    measured = pd.to_numeric(posterior.data["lambda_max"], errors="coerce").notna()
    assert len(table) == measured.sum() > 0
    assert "preconditioned_lambda_max" not in table  # not measured in this sweep
    fig, ax = plt.subplots()
    assert plots.plot_sharpness_vs_lr(table, ax) is ax
    _png(fig, tmp_path / "sharp.png")
    empty = plots.sharpness_vs_lr_data(posterior.data.drop(columns=["lambda_max"]))
    assert empty.empty
    fig, ax = plt.subplots()
    plots.plot_sharpness_vs_lr(empty, ax)
    assert "no sharpness" in ax.texts[0].get_text()
    plt.close(fig)
