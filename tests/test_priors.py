"""Priors as data: defaults grounded in published laws, merged user > published > data >
default, rescaled to standardized units."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from bayeslr.errors import ModelError
from bayeslr.features import build_features
from bayeslr.priors import DEFAULT_PRIORS, PUBLISHED_LAWS, merged_priors, model_priors
from bayeslr.spec import ModelSpec
from tests.model_support import sweep


@pytest.fixture(scope="module")
def features():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_features(sweep().frame(), ModelSpec())


def test_published_laws_evaluate_as_printed():
    step = PUBLISHED_LAWS["step_law"]
    assert math.exp(step.log_eta(1e9, 1e11)) == pytest.approx(1.79 * 1e9**-0.713 * 1e11**0.307)
    porian = PUBLISHED_LAWS["porian"]
    assert math.exp(porian.log_eta(108e6, 1e10)) == pytest.approx(0.0047)
    deepseek = PUBLISHED_LAWS["deepseek"]
    assert math.exp(deepseek.log_eta(1e8, 1e10)) == pytest.approx(0.3118 * (6e18) ** -0.125)


def test_merge_order_user_over_published_over_data_over_default(features):
    merged = merged_priors(features, ModelSpec())
    assert merged["exponent.tokens"] == DEFAULT_PRIORS["exponent.tokens"]
    assert merged["intercept.adamw"].source.startswith("data")
    adam_runs = features.config_optimizer[features.point_config] == 0
    assert merged["intercept.adamw"].mu == pytest.approx(features.log_lr[adam_runs].mean())
    published = merged_priors(features, ModelSpec(prior_law="step_law"))
    assert published["exponent.n_params"].mu == pytest.approx(-0.713)
    user = merged_priors(features, ModelSpec(prior_law="step_law", priors={
        "exponent.n_params": (-0.33, 0.1), "intercept": (-5.0, 0.5)}))
    assert (user["exponent.n_params"].mu, user["exponent.n_params"].source) == (-0.33, "user")
    assert user["intercept.sgd"].mu == -5.0 and user["intercept.adamw"].sigma == 0.5


def test_unknown_prior_name_is_refused(features):
    with pytest.raises(ModelError, match="unknown prior 'exponent.nparams'"):
        merged_priors(features, ModelSpec(priors={"exponent.nparams": (0, 1)}))
    with pytest.raises(ModelError, match="sigma must be > 0"):
        ModelSpec(priors={"exponent.n_params": (0, 0)})


def test_standardized_priors_scale_with_the_covariates(features):
    priors = model_priors(features, ModelSpec())
    scale = np.array(features.standardizer.scale)
    np.testing.assert_allclose(priors.slope_mu, [-0.5 * scale[0], -0.1 * scale[1],
                                                 0.5 * scale[2]])
    i, j = features.terms[0]
    assert priors.curvature_sd[0] == pytest.approx(0.05 * scale[i] * scale[j])
