"""The answers of a real small fit: eta* intervals, recommendations, penalties, transfer,
optimizer comparison, and the bad inputs (extrapolation, unknown optimizer / family)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from bayeslr.answers import lr_samples, predict_lr, transfer
from bayeslr.comparison import compare_optimizers
from bayeslr.decisions import loss_penalty, recommend
from bayeslr.errors import BayesLRError, PosteriorError
from bayeslr.targets import ExtrapolationWarning, n_params_from_shape, normalize_targets
from tests.answers_support import FAR, INSIDE, small_fit


@pytest.fixture(scope="module")
def fitted():
    return small_fit()


@pytest.fixture(scope="module")
def posterior(fitted):
    return fitted[1]


def test_predict_lr_intervals_are_nested_and_vectorised(posterior):
    targets = pd.DataFrame({"n_params": [2e5, 8e5, 3.2e6], "tokens": [1e8] * 3,
                            "batch_size": [32] * 3, "optimizer": ["adamw", "sgd", "adamw"]})
    table = predict_lr(posterior, targets, seed=1)
    assert len(table) == 3
    assert list(table["optimizer"]) == ["adamw", "sgd", "adamw"]
    order = ["eta_lo95", "eta_lo90", "eta_lo50", "eta_median", "eta_hi50", "eta_hi90",
             "eta_hi95"]
    values = table[order].to_numpy()
    assert (np.diff(values, axis=1) > 0).all()
    # the simulated law: SGD's optimum is ~30x Adam's, and eta* falls with model size
    assert table.loc[1, "eta_median"] > 10 * table.loc[0, "eta_median"]
    assert table.loc[2, "eta_median"] < table.loc[0, "eta_median"]


def test_a_targets_prediction_does_not_depend_on_the_other_targets(posterior):
    targets = pd.DataFrame({"n_params": [2e5, 8e5, 3.2e6], "tokens": [1e8] * 3,
                            "batch_size": [32] * 3, "optimizer": ["adamw", "sgd", "sgd"]})
    together = predict_lr(posterior, targets, seed=3)
    reversed_order = predict_lr(posterior, targets.iloc[::-1].reset_index(drop=True), seed=3)
    for i in range(len(targets)):
        alone = predict_lr(posterior, targets.iloc[[i]].reset_index(drop=True), seed=3)
        pd.testing.assert_frame_equal(alone, together.iloc[[i]].reset_index(drop=True))
        pd.testing.assert_frame_equal(
            alone, reversed_order.iloc[[len(targets) - 1 - i]].reset_index(drop=True))
    other_seed = predict_lr(posterior, targets, seed=4)
    assert not np.allclose(together["eta_lo90"], other_seed["eta_lo90"])


def test_predictive_intervals_cover_the_simulated_truth(fitted):
    sweep, posterior = fitted
    truth = sweep.truth.reset_index()
    targets = truth[["n_params", "tokens", "batch_size", "optimizer"]]
    table = predict_lr(posterior, targets, seed=0)
    log_true = truth["log_eta"].to_numpy()
    inside90 = (np.log(table["eta_lo90"]) <= log_true) & (log_true <= np.log(table["eta_hi90"]))
    assert inside90.mean() >= 0.75, inside90.mean()
    error = np.abs(np.log(table["eta_median"]) - log_true)
    assert np.median(error) < 0.3  # natural-log units: within ~35% of the true optimum


def test_friendly_names_and_shape_targets(posterior):
    a = predict_lr(posterior, INSIDE, seed=2)
    b = predict_lr(posterior, {"params": 8e5, "tokens": 1e8, "batch": 32,
                               "optimizer": "AdamW"}, seed=2)
    assert a["eta_median"].item() == b["eta_median"].item()
    frame = normalize_targets({"width": 64, "depth": 4, "tokens": 1e8, "batch_size": 32,
                               "optimizer": "adamw"}, optimizers=("adamw",), families=("gpt",))
    assert frame.loc[0, "n_params"] == 12 * 4 * 64**2 == n_params_from_shape(64, 4)
    assert frame.loc[0, "arch"] == "gpt"


def test_targets_merge_friendly_names_across_rows():
    known = {"optimizers": ("adamw", "sgd"), "families": ("gpt", "llama")}
    rows = [{"params": 1e6, "tokens": 1e8, "batch_size": 32, "optimizer": "sgdm"},
            {"n_params": 2e6, "tokens": 1e8, "batch_size": 32, "optimizer": "adamw",
             "family": "llama"},
            {"width": 64, "depth": 2, "tokens": 1e8, "batch_size": 32, "optimizer": "adamw",
             "arch": "LLaMA"}]
    frame = normalize_targets(rows, **known)
    assert list(frame["n_params"]) == [1e6, 2e6, n_params_from_shape(64, 2, gated=True)]
    assert list(frame["optimizer"]) == ["sgd", "adamw", "adamw"]  # alias sgdm resolved
    assert pd.isna(frame.loc[0, "arch"])  # several families: a new one drawn from them
    assert list(frame["arch"][1:]) == ["llama", "llama"]
    with pytest.raises(PosteriorError, match="given twice"):
        normalize_targets({**rows[0], "n_params": 1e6}, **known)


def test_lr_samples_match_the_summary(posterior):
    samples = lr_samples(posterior, INSIDE, seed=4)
    assert samples.dims == ("sample", "target")
    table = predict_lr(posterior, INSIDE, seed=4)
    assert np.isclose(np.exp(np.median(np.log(samples.values[:, 0]))),
                      table["eta_median"].item())


def test_far_target_warns_and_widens(posterior):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        inside = predict_lr(posterior, INSIDE, seed=0)
    with pytest.warns(ExtrapolationWarning, match="extrapolating"):
        far = predict_lr(posterior, FAR, seed=0)
    assert inside["extrapolation"].item() == 0
    assert far["extrapolation"].item() > 3
    assert far["log10_eta_sd"].item() > 2 * inside["log10_eta_sd"].item()
    assert np.isfinite(far[["eta_lo95", "eta_hi95"]].to_numpy()).all()
    with pytest.warns(ExtrapolationWarning):
        rec = recommend(posterior, FAR, seed=0)
    assert np.isfinite(rec["lr"].item())


def test_the_warning_names_a_covariate_extrapolated_without_its_quadratic_term(posterior):
    assert "tokens^2" not in posterior.features.term_names  # two horizons in the sweep
    with pytest.warns(ExtrapolationWarning) as caught:
        predict_lr(posterior, {**INSIDE, "tokens": 3.2e9}, seed=0)
    assert "Along tokens the law has no quadratic term" in str(caught[0].message)
    with pytest.warns(ExtrapolationWarning) as caught:
        predict_lr(posterior, FAR, seed=0)  # n_params has its quadratic term
    assert "quadratic" not in str(caught[0].message)
    assert posterior.straight_extrapolation(pd.DataFrame([INSIDE, FAR, {
        **FAR, "tokens": 3.2e9}])) == [(), (), ("tokens",)]


def test_the_warning_names_targets_trained_for_other_tokens_per_parameter(posterior):
    assert posterior.tokens_per_param_range() == pytest.approx((5e7 / 3.2e6, 2e8 / 2e5))
    with pytest.warns(ExtrapolationWarning) as caught:
        predict_lr(posterior, FAR, seed=0)  # 0.125 tokens per parameter
    assert "Tokens per parameter: target 0 (0.125) against 15.6-1000" in str(caught[0].message)
    with pytest.warns(ExtrapolationWarning) as caught:
        predict_lr(posterior, {**FAR, "tokens": 1.6e11}, seed=0)  # 200, inside the range
    assert "Tokens per parameter" not in str(caught[0].message)


def test_unknown_optimizer_and_family_list_the_known_ones(posterior):
    for name in ("rmsprop", "adamx"):
        with pytest.raises(PosteriorError, match=r"known: adamw, sgd"):
            predict_lr(posterior, {**INSIDE, "optimizer": name})
    with pytest.raises(PosteriorError, match=r"unknown architecture family 'llama'.*known: gpt"):
        predict_lr(posterior, {**INSIDE, "arch": "llama"})
    with pytest.raises(PosteriorError, match="'tokens' is required"):
        predict_lr(posterior, {"n_params": 1e6, "batch_size": 32, "optimizer": "adamw"})
    with pytest.raises(BayesLRError, match="model size is required"):
        predict_lr(posterior, {"tokens": 1e8, "batch_size": 32, "optimizer": "adamw"})
    with pytest.raises(PosteriorError, match="finite and > 0"):
        predict_lr(posterior, {**INSIDE, "tokens": -1})


def test_recommendation_minimises_the_expected_penalty(posterior):
    rec = recommend(posterior, INSIDE, seed=5).iloc[0]
    lrs = rec["lr"] * np.array([0.7, 0.85, 1.0, 1.2, 1.4])
    pen = loss_penalty(posterior, INSIDE, lrs, seed=5)["expected_penalty"].to_numpy()
    assert np.argmin(pen) == 2
    assert np.isclose(pen[2], rec["expected_penalty"])
    cautious = recommend(posterior, INSIDE, seed=5, divergence_cost=20.0).iloc[0]
    assert cautious["lr"] < rec["lr"]
    assert cautious["p_diverge"] < rec["p_diverge"]
    capped = recommend(posterior, INSIDE, seed=5, max_p_diverge=0.001).iloc[0]
    assert capped["p_diverge"] <= 0.001 + 1e-12


def test_loss_penalty_is_asymmetric_and_monotone(posterior):
    eta = predict_lr(posterior, INSIDE, seed=6)["eta_median"].item()
    table = loss_penalty(posterior, INSIDE, [eta / 4, eta, eta * 4], seed=6)
    assert table.loc[1, "gap_mean"] < table.loc[0, "gap_mean"]
    assert table.loc[1, "gap_mean"] < table.loc[2, "gap_mean"]
    assert (np.diff(table["p_diverge"]) > 0).all()
    assert (np.diff(table["p_too_high"]) > 0).all()
    assert table.loc[2, "p_too_high"] > 0.95 and table.loc[0, "p_too_high"] < 0.05
    assert (table["gap_lo90"] <= table["gap_median"]).all()
    assert (table["gap_median"] <= table["gap_hi90"]).all()
    assert np.isclose(table.loc[1, "lr_over_eta"], 1.0)
    # far too low: the curve's gap exceeds a lost run, and the penalty counts it as one
    slow = loss_penalty(posterior, INSIDE, eta * 1e-4, seed=6, divergence_cost=1.0).iloc[0]
    assert slow["gap_mean"] > 1.0
    assert slow["expected_penalty"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(PosteriorError, match="learning rates > 0"):
        loss_penalty(posterior, INSIDE, [-1.0])


def test_transfer_follows_the_exponents(posterior):
    same = transfer(posterior, INSIDE, seed=7)
    assert same["ratio_median"].item() == pytest.approx(1.0)
    wider = transfer(posterior, {**INSIDE, "d_model": 128, "n_layers": 4}, width=2.0, seed=7)
    alpha = posterior.exponents()["n_params"].sel(optimizer="adamw").median().item()
    # width x2 at fixed depth is N x4; the law's local slope predicts 4**alpha
    assert wider["ratio_median"].item() == pytest.approx(4**alpha, rel=0.15)
    assert wider["ratio_lo90"].item() < wider["ratio_median"].item() < wider["ratio_hi90"].item()
    assert wider["p_decrease"].item() > 0.95
    with pytest.raises(PosteriorError, match="either params or width"):
        transfer(posterior, INSIDE, params=2.0, width=2.0)


def test_compare_optimizers_contrasts(posterior):
    result = compare_optimizers(posterior, {k: v for k, v in INSIDE.items() if k != "optimizer"},
                                seed=8)
    exps = result.exponents
    assert set(exps["optimizer"]) == {"adamw", "sgd"}
    assert set(exps["covariate"]) == set(posterior.covariates)
    row = result.contrasts.query("covariate == 'n_params'").iloc[0]
    assert (row["a"], row["b"]) == ("adamw", "sgd")
    draws = posterior.exponents()["n_params"]
    expected = float((draws.sel(optimizer="adamw") > draws.sel(optimizer="sgd")).mean())
    assert row["p_a_greater"] == pytest.approx(expected)
    # the simulated truth: N exponents -0.45 (adamw) vs -0.30 (sgd), batch 0.4 vs 0.8
    assert row["p_a_greater"] < 0.2
    at = result.at_target.set_index("optimizer")
    assert at.loc["sgd", "eta_median"] > 10 * at.loc["adamw", "eta_median"]
    assert result.target_contrasts["p_a_greater"].item() < 0.01
    data = result.to_dict()
    assert data["contrasts"][0]["covariate"] == result.contrasts.iloc[0]["covariate"]


class PorianLaw:
    """A user's own model (docs/byo.md): Porian et al. 2024's AdamW law
    eta* = 0.0047 (N / 108e6)^(-1/3) with a stated log-normal uncertainty of 0.3."""

    optimizers = ("adamw",)
    families = ("gpt",)

    def draw_curve_params(self, targets, *, seed=0, include_residual=True):
        import xarray as xr

        rng = np.random.default_rng(seed)
        median = np.log(0.0047) - np.log(targets["n_params"].to_numpy() / 108e6) / 3
        log_eta = median + 0.3 * rng.standard_normal((4000, len(targets)))
        ones = np.ones_like(log_eta)
        dims = ("sample", "target")
        return xr.Dataset({"log_eta": (dims, log_eta), "curv_left": (dims, 0.02 * ones),
                           "curv_right": (dims, 0.03 * ones), "div_offset": (dims, ones),
                           "div_scale": (dims, 0.2 * ones)},
                          coords={"extrapolation": ("target", np.zeros(len(targets)))})


def test_answers_work_with_your_own_model():
    model = PorianLaw()
    target = {"params": [108e6, 864e6], "tokens": 2e10, "batch_size": 256, "optimizer": "adamw"}
    table = predict_lr(model, target, seed=0)
    assert table["eta_median"].to_numpy() == pytest.approx([0.0047, 0.0047 / 2], rel=0.03)
    rec = recommend(model, target, seed=0)
    # divergence above the optimum makes the risk-aware LR lower than the median eta*
    assert (rec["lr_over_eta"] < 1).all()
    with pytest.raises(PosteriorError, match="known: adamw"):
        predict_lr(model, {**target, "optimizer": "sgd"})
