"""The PyMC model: its structure, the parameterization choice, and that the posterior's numpy
formulas (law at new targets, per-run log-likelihood) match the model's own graph."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pymc as pm
import pytest

from bayeslr import curve
from bayeslr.features import build_features
from bayeslr.loglik import RUN, run_loglik
from bayeslr.model import build_model, compile_key, parameterization
from bayeslr.priors import model_priors
from bayeslr.schema import DIMS
from bayeslr.spec import ModelSpec
from tests.model_support import small_fit, sweep


def features_of(sim, spec=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_features(sim.frame(), spec or ModelSpec())


def test_model_structure_and_finite_logp():
    spec = ModelSpec(curve="wall")
    features = features_of(sweep(), spec)
    model = build_model(features, model_priors(features, spec), spec)
    assert list(model.coords[DIMS.OPTIMIZER]) == ["adamw", "sgd"]
    assert len(model.coords[DIMS.CONFIG]) == features.n_configs
    observed = {v.name for v in model.observed_RVs}
    assert observed == {"loss", "diverged"}
    names = set(model.named_vars)
    assert {"intercept", "slope", "curvature", "log_eta", "curv_left", "curv_right", "wall",
            "div_offset", "div_scale", "noise_sd", "resid_sd"} <= names
    assert np.isfinite(model.compile_logp()(model.initial_point()))


def test_parameterization_follows_how_strongly_the_data_pin_each_level():
    weak = features_of(sweep())
    assert parameterization(weak) == {"loss_min"}  # 5 runs/config, 12 configs/optimizer
    strong = features_of(sweep(n_params=(1e5, 2e5, 4e5, 8e5, 1.6e6), tokens=(5e7, 1e8),
                               n_lrs=6, seeds=2))
    assert parameterization(strong) == {"loss_min", "log_eta", "curv", "slope"}


def test_compile_key_changes_with_structure_not_with_data():
    spec = ModelSpec()

    def key(sim, spec=spec):
        features = features_of(sim, spec)
        return compile_key(features, model_priors(features, spec), spec)

    first = key(sweep())
    assert key(sweep(seed=1)) == first  # other losses, divergences and data-driven priors
    assert key(sweep(), ModelSpec(curvature=False)) != first
    assert key(sweep(), ModelSpec(priors={"resid_sd": (-2.0, 0.5)})) != first
    assert key(sweep(n_params=(1e5, 4e5, 1.6e6, 6.4e6))) != first
    saturating = ModelSpec(curve="saturating")  # its data-driven ceilings are data too
    assert key(sweep(seed=1), saturating) == key(sweep(), saturating) != first


def test_effective_and_sharpness_variants_build():
    sim = sweep()
    for spec in (ModelSpec(lr_kind="effective"), ModelSpec(covariates=("n_params", "tokens",
                                                                       "lambda_max"))):
        features = features_of(sim, spec)
        model = build_model(features, model_priors(features, spec), spec)
        assert np.isfinite(model.compile_logp()(model.initial_point()))
    assert "ratio" in {v.name for v in model.observed_RVs} or spec.lr_kind == "lr"


def test_numpy_loglik_matches_pymc():
    _, posterior = small_fit()
    features, spec = posterior.features, posterior.spec
    model = build_model(features, model_priors(features, spec), spec)
    thinned = posterior.idata.posterior.dataset.isel(draw=slice(0, None, 30))
    ours = posterior.idata["log_likelihood"].dataset[RUN].isel(draw=slice(0, None, 30))
    np.testing.assert_allclose(ours.values, pymc_run_loglik(model, thinned, features),
                               rtol=1e-8, atol=1e-8)


def pymc_run_loglik(model, draws, features) -> np.ndarray:
    """PyMC's pointwise log-likelihood of `draws`, summed per run as bayeslr.loglik does."""
    import xarray as xr

    tree = xr.DataTree.from_dict({"posterior": draws})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pm.compute_log_likelihood(tree, model=model, progressbar=False)
    ll = tree["log_likelihood"].dataset
    expected = ll["diverged"].values.copy()
    expected[..., ~features.diverged] += ll["loss"].values
    return expected


def test_saturating_curve_model_and_its_numpy_loglik():
    spec = ModelSpec(curve="saturating")
    features = features_of(sweep(), spec)
    priors = model_priors(features, spec)
    assert priors["ceiling_low"].source.startswith("data")
    assert priors["ceiling_low"].mu > priors["ceiling_high"].mu > np.nanmin(features.loss)
    model = build_model(features, priors, spec)
    assert {"ceiling_low", "ceiling_high"} <= set(model.named_vars)
    with model:
        prior = pm.sample_prior_predictive(draws=20, random_seed=3).prior
    ours = run_loglik(prior, features, spec, list(model.coords[DIMS.POINT]))[RUN]
    np.testing.assert_allclose(ours.values, pymc_run_loglik(model, prior, features),
                               rtol=1e-8, atol=1e-8)


def test_saturating_fit_plots_its_own_curve_and_predicts():
    from bayeslr.answers import predict_lr
    from bayeslr.plots import lr_curve_data
    from tests.model_support import quiet_fit

    sim = sweep()
    posterior = quiet_fit(sim, ModelSpec(curve="saturating"))
    post = posterior.idata.posterior.dataset
    data = lr_curve_data(posterior, max_configs=1, n_grid=50)
    cid = data.configs.index[0]
    draws = {name: post[name].sel({DIMS.CONFIG: cid}).values.reshape(-1, 1) for name in (
        "log_eta", "curv_left", "curv_right", "loss_min")}
    draws.update({name: post[name].values.reshape(-1, 1)
                  for name in ("ceiling_low", "ceiling_high")})
    shown = data.curves[data.curves["config_id"] == cid]
    loss = draws["loss_min"] + curve.loss_gap(np.log(shown["lr"].to_numpy())[None, :], draws)
    np.testing.assert_allclose(shown["median"], np.median(loss, axis=0), rtol=1e-9)
    table = predict_lr(posterior, sim.frame().drop_duplicates("config_id").head(2), seed=0)
    assert np.isfinite(table["eta_median"]).all()


def test_predictions_use_the_models_law_exactly():
    """At the training configs, the posterior's law (numpy) equals the model's law (PyTensor,
    recovered from its non-centred optimum: log_eta_free - resid_sd * raw)."""
    _, posterior = small_fit()
    post = posterior.idata.posterior.dataset
    assert "log_eta_free_raw" in post  # weak data: non-centred
    model_law = post["log_eta_free"] - post["resid_sd"] * post["log_eta_free_raw"]
    configs = posterior.configs()
    targets = pd.DataFrame(configs[["n_params", "tokens", "batch_size", "optimizer"]])
    draws = posterior.draw_curve_params(targets, include_residual=False)
    ours = draws["log_eta_law"].values  # (sample, target)
    theirs = model_law.values.reshape(-1, len(configs))
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(draws["extrapolation"].values, 0.0)


def test_per_optimizer_curvature_departs_from_the_shared_terms_and_predicts_exactly():
    from tests.model_support import quiet_fit

    posterior = quiet_fit(sweep(), ModelSpec(optimizer_curvature=True))
    post = posterior.idata.posterior.dataset
    departures = post["curvature_optimizer"]
    assert departures.dims[2:] == (DIMS.OPTIMIZER, DIMS.TERM)
    np.testing.assert_allclose(departures.sum(DIMS.OPTIMIZER), 0.0, atol=1e-9)  # zero-sum
    assert float(np.abs(departures).max()) > 0
    model_law = post["log_eta_free"] - post["resid_sd"] * post["log_eta_free_raw"]
    configs = posterior.configs()
    targets = pd.DataFrame(configs[["n_params", "tokens", "batch_size", "optimizer"]])
    draws = posterior.draw_curve_params(targets, include_residual=False)
    np.testing.assert_allclose(draws["log_eta_law"].values,
                               model_law.values.reshape(-1, len(configs)), rtol=1e-9,
                               atol=1e-9)


@pytest.mark.parametrize("name", ["step_law", "porian", "deepseek"])
def test_published_law_priors_centre_the_adam_intercept(name):
    from bayeslr.priors import PUBLISHED_LAWS

    features = features_of(sweep())
    priors = model_priors(features, ModelSpec(prior_law=name))
    assert priors["intercept.adamw"].source.startswith("published")
    assert priors["intercept.sgd"].source.startswith("data")  # an AdamW law says nothing of SGD
    law = PUBLISHED_LAWS[name]
    assert priors["exponent.n_params"].mu == pytest.approx(dict(law.exponents)["n_params"])


def test_likelihood_is_student_t_losses_and_bernoulli_divergences():
    spec = ModelSpec(noise_nu=5.0)
    features = features_of(sweep(), spec)
    model = build_model(features, model_priors(features, spec), spec)
    loss, diverged = model["loss"], model["diverged"]
    assert isinstance(loss.owner.op, pm.StudentT.rv_type)
    assert (np.asarray(loss.owner.inputs[2].eval()) == 5.0).all()  # (rng, size, nu, mu, sd)
    assert isinstance(diverged.owner.op, pm.Bernoulli.rv_type)
    assert loss.eval().shape == (int((~features.diverged).sum()),)
    assert diverged.eval().shape == (features.n_points,)  # every run, diverged or not
    spec = ModelSpec(divergence=False)
    features = features_of(sweep(), spec)
    model = build_model(features, model_priors(features, spec), spec)
    assert {v.name for v in model.observed_RVs} == {"loss"} and not features.diverged.any()


def test_switches_curvature_off_and_pools_exponents_over_optimizers_and_families():
    sim = sweep()
    other = sweep(seed=12, arch="mlp_mixer").frame()
    table = pd.concat([sim.frame(), other], ignore_index=True)
    spec = ModelSpec()
    features = build_features(table, spec, warn=False)
    model = build_model(features, model_priors(features, spec), spec)
    names = set(model.named_vars)
    assert features.families == ("gpt", "mlp_mixer")
    assert {"slope_mu", "slope_spread", "family_intercept", "family_slope", "family_spread",
            "curvature"} <= names
    assert model.named_vars_to_dims["slope"] == (DIMS.OPTIMIZER, DIMS.COVARIATE)
    assert "tokens" in features.covariates  # the horizon exponent
    flat = ModelSpec(curvature=False)
    features = build_features(table, flat, warn=False)
    model = build_model(features, model_priors(features, flat), flat)
    assert "curvature" not in model.named_vars
