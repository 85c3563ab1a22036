"""A small simulation-based calibration (the full one is benchmarks/calibration.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from bayeslr.calibration import (
    RESULT_TABLES,
    calibration_dataset,
    coverage_by_noise,
    dataset_bootstrap,
    interval_scores,
    save_results,
    saved_results,
    summarize,
)
from bayeslr.fit import CompiledModels
from bayeslr.simulate import NOISE_MEDIAN, TrueLaw


@pytest.fixture(scope="module")
def compiled():
    return CompiledModels()


@pytest.fixture(scope="module")
def results(compiled):
    return [calibration_dataset(seed, draws=300, compiled=compiled) for seed in range(3)]


def test_datasets_share_one_compiled_model_and_get_the_draws_of_a_fresh_one(results, compiled):
    assert len(compiled.samplers) == 1  # three datasets, one structure
    fresh = calibration_dataset(2, draws=300)
    pd.testing.assert_frame_equal(fresh.targets, results[2].targets)
    pd.testing.assert_frame_equal(fresh.parameters, results[2].parameters)
    pd.testing.assert_frame_equal(fresh.optima, results[2].optima)


def test_intervals_at_held_out_targets_cover_the_simulated_truth(results):
    summary = summarize(results)
    assert summary["targets"] == 24 and summary["datasets"] == 3
    # 24 targets in 3 datasets: at least 16 inside the 90% intervals (fewer has a chance of
    # about 1% for 24 independent targets at 90%; these are clustered, so seeds are fixed)
    assert summary["coverage90"] >= 16 / 24
    assert summary["coverage50"] >= 0.25
    assert summary["median_abs_error"] < 0.4  # natural-log units, at 4-16x extrapolation
    lo, hi = summary["coverage90_ci"]
    assert lo <= summary["coverage90"] <= hi
    by_target = summary["by_target"]
    assert len(by_target) == 4 and (by_target["n"] == 6).all()  # 2 sizes x 2 horizons
    assert by_target["coverage90"].mean() == pytest.approx(summary["coverage90"])


def test_exponents_are_recovered_at_the_data_centre(results):
    exps = pd.concat([r.exponents for r in results])
    assert set(exps["covariate"]) == {"n_params", "tokens", "batch_size"}
    assert len(exps) == 3 * 2 * 3
    assert (exps["mean"] - exps["true"]).abs().mean() < 0.1
    assert exps["in90"].mean() >= 0.7


def test_each_target_row_scores_the_truth_against_its_intervals(results):
    targets = results[0].targets
    assert len(targets) == 8 and np.isfinite(targets[["truth", "median"]]).all().all()
    assert (targets["in90"] | ~targets["in50"]).all()  # inside the 50% => inside the 90%


def test_interval_scores_use_central_quantiles_of_the_draws():
    draws = np.arange(1001.0)[:, None] + np.array([0.0, 100.0])  # two columns, uniform draws
    scores = interval_scores(draws, np.array([300.0, 300.0]))
    assert scores["mean"].tolist() == [500.0, 600.0]
    assert scores["in50"].tolist() == [True, False]  # 25-75%: [250, 750] and [350, 850]
    assert scores["in90"].tolist() == [True, True]
    assert scores["z"][0] == pytest.approx(200 / np.arange(1001.0).std())
    scalar = interval_scores(np.arange(1001.0), 990.0)
    assert not scalar["in90"] and scalar["z"] < 0


def test_dataset_bootstrap_resamples_whole_datasets():
    values = pd.Series([1, 1, 1, 1, 0, 0, 0, 0], dtype=float)
    groups = pd.Series([0, 0, 0, 0, 1, 1, 1, 1])
    lo, hi = dataset_bootstrap(values, groups, n_boot=4000)
    assert lo == 0.0 and hi == 1.0  # two datasets: a resample is all-in, all-out or half
    same = dataset_bootstrap(pd.Series([1.0] * 6), pd.Series([0, 0, 1, 1, 2, 2]))
    assert same == (1.0, 1.0)


def test_scatter_curvature_and_shape_parameters_are_scored_against_the_truth(results):
    params = pd.concat([r.parameters for r in results], ignore_index=True)
    # per dataset: 4 scalars, 3 parameters for each of the 2 optimizers, 3 curvature terms
    assert len(params) == 3 * (4 + 3 * 2 + 3)
    assert {"resid_sd", "curv_asym", "div_offset", "log_curv_mean",
            "curvature[n_params^2]"} <= set(params["parameter"])
    assert np.isfinite(params[["true", "mean", "z"]].astype(float)).all().all()
    assert (params["in90"] | ~params["in50"]).all()
    # 39 intervals at 90%: fewer than 30 inside has a chance of about 0.5% if independent
    # (measured: 36 of 39)
    assert params["in90"].mean() >= 30 / 39
    summary = summarize(results)
    assert list(summary["parameters"].index) == list(dict.fromkeys(params["parameter"]))
    # the law's error at the 24 targets in posterior sds (measured: mean -0.69, sd 0.56)
    assert abs(summary["law_z_mean"]) < 1.5 and 0.2 < summary["law_z_sd"] < 2.0


def test_fitted_configurations_optima_are_scored_against_the_simulated_truth(results):
    optima = pd.concat([r.optima for r in results], ignore_index=True)
    assert len(optima) == 3 * 36  # 2 optimizers x 3 sizes x 3 horizons x 2 batch sizes
    assert optima.groupby("dataset")["config_id"].nunique().eq(36).all()
    assert np.isfinite(optima[["true", "mean", "sd", "z"]]).all().all()
    assert (optima["in90"] | ~optima["in50"]).all()
    assert optima["n_diverged"].between(0, 5).all() and optima["n_diverged"].sum() > 0
    # 108 optima at 90%: fewer than 86 inside has a chance of 0.04% if independent; they are
    # clustered within datasets, hence the margin (measured: 99 of 108)
    assert optima["in90"].mean() >= 86 / 108
    assert (optima["mean"] - optima["true"]).abs().median() < 0.15  # natural-log units
    summary = summarize(results)
    table = summary["optima"]
    assert table["n"].sum() == len(optima)
    assert summary["optima_coverage90"] == pytest.approx(optima["in90"].mean())


def test_saved_scores_are_one_tidy_csv_per_kind_and_never_overwritten(results, tmp_path):
    paths = save_results(results, tmp_path / "run")
    assert [p.name for p in paths] == [f"{name}.csv" for name in RESULT_TABLES]
    targets = pd.read_csv(tmp_path / "run" / "targets.csv")
    assert len(targets) == 24 and sorted(set(targets["dataset"])) == [0, 1, 2]
    assert targets["in90"].mean() == pytest.approx(summarize(results)["coverage90"])
    diagnostics = pd.read_csv(tmp_path / "run" / "diagnostics.csv")
    assert diagnostics["dataset"].tolist() == [0, 1, 2] and "rhat_max" in diagnostics
    before = (tmp_path / "run" / "optima.csv").read_bytes()
    with pytest.raises(FileExistsError, match="optima.csv"):
        save_results(results[:1], tmp_path / "run")
    assert (tmp_path / "run" / "optima.csv").read_bytes() == before
    assert saved_results(tmp_path / "elsewhere") == []


def test_the_noise_median_scales_only_the_loss_noise_of_a_drawn_law():
    precise = TrueLaw.from_prior(np.random.default_rng(7), noise_median=0.01)
    default = TrueLaw.from_prior(np.random.default_rng(7))
    assert default.noise_sd / precise.noise_sd == pytest.approx(NOISE_MEDIAN / 0.01)
    assert replace(precise, noise_sd=default.noise_sd) == default  # same law, optima, grids
    noise = [TrueLaw.from_prior(np.random.default_rng(s)).noise_sd for s in range(400)]
    assert np.median(noise) == pytest.approx(NOISE_MEDIAN, rel=0.1)
    with pytest.raises(ValueError, match="noise_median"):
        TrueLaw.from_prior(np.random.default_rng(0), noise_median=0.0)


def test_coverage_is_split_by_the_datasets_loss_noise(results):
    by_noise = summarize(results)["by_noise"]
    assert list(by_noise.index) == ["low", "middle", "high"]
    assert by_noise["datasets"].tolist() == [1, 1, 1]
    noise = sorted(r.targets["noise_sd"].iloc[0] for r in results)
    assert by_noise["noise_from"].tolist() == noise == by_noise["noise_to"].tolist()
    assert by_noise["coverage90"].mean() == pytest.approx(summarize(results)["coverage90"])


def test_fewer_than_three_datasets_are_split_by_noise_into_fewer_groups(results):
    targets = pd.concat([r.targets for r in results[:2]], ignore_index=True)
    assert list(coverage_by_noise(targets).index) == ["low", "high"]
    assert list(coverage_by_noise(results[0].targets).index) == ["all"]


def test_the_oracle_scores_the_same_targets(results):
    summary = summarize(results)
    targets = pd.concat([r.targets for r in results], ignore_index=True)
    assert (targets["oracle_in90"] | ~targets["oracle_in50"]).all()
    assert all(r.diagnostics["oracle_ess"] > 100 for r in results)
    for level in (50, 90):
        assert summary[f"oracle_coverage{level}"] == pytest.approx(
            targets[f"oracle_in{level}"].mean())
    assert {"oracle50", "oracle90"} <= set(summary["by_noise"].columns)
