"""Model inputs from run tables: grouping, standardization, cleaning of bad data, and the
identification checks (what a sweep cannot tell is dropped with a warning, or refused)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from bayeslr.datasets import marin_csv
from bayeslr.design import target_design
from bayeslr.errors import DataWarning, ModelError
from bayeslr.features import build_features
from bayeslr.importers import read_sweep_csv
from bayeslr.simulate import TrueLaw, simulate_sweep
from bayeslr.spec import ModelSpec
from bayeslr.store import records_to_frame


def sweep_table(**kwargs) -> pd.DataFrame:
    options = dict(n_params=(2e5, 8e5, 3.2e6), tokens=(5e7, 2e8), batch_sizes=(16, 64), seed=0)
    options.update(kwargs)
    return simulate_sweep(TrueLaw.example(("adamw", "sgd")), **options).frame()


def quiet(table: pd.DataFrame, spec: ModelSpec | None = None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features = build_features(table, spec or ModelSpec())
    return features, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


def test_configurations_points_and_standardized_covariates():
    table = sweep_table()
    features, notes = quiet(table)
    assert notes[0] == ("curvature term tokens^2 not identified (needs >= 3 distinct values "
                        "of tokens); dropped")
    assert notes[1].startswith("1 of 24 configurations have their lowest loss at the lowest LR")
    assert notes[2].startswith("3 of 24 configurations have their lowest loss at the largest LR")
    assert len(notes) == 3
    assert features.n_points == len(table) and features.n_configs == 24
    assert features.optimizers == ("adamw", "sgd") and features.families == ("gpt",)
    assert features.covariates == ("n_params", "tokens", "batch_size")
    np.testing.assert_allclose(features.z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(features.z.std(axis=0), 1)
    assert features.term_names == ("n_params^2", "n_params*tokens")  # 2 horizons: no tokens^2
    # every config's points share its optimizer, and the log LR is the table's
    runs = features.runs
    np.testing.assert_allclose(np.exp(features.log_lr), runs["lr"])
    assert (runs["optimizer"].to_numpy() == np.array(features.optimizers)[
        features.config_optimizer[features.point_config]]).all()
    assert np.isnan(features.loss[features.diverged]).all()


def test_sweeps_whose_grid_misses_the_optimum_are_named():
    """A sweep bracketed by worse losses, or by a failure above its best LR, gets no note; a
    sweep best at its lowest LR, or at its highest with nothing above, is named with advice."""
    curves = {1e5: [3.0, 2.8, 2.9, None],  # bracketed by a worse loss
              2e5: [2.7, 2.8, 2.9, 3.1],  # best at the lowest LR
              4e5: [3.2, 3.0, 2.9, 2.85],  # best at the highest LR, nothing above
              8e5: [3.3, 3.1, 2.9, None]}  # best at the last stable LR, a divergence above
    rows = [{"optimizer": "adamw", "n_params": n, "lr": 1e-3 * 2.0**i, "loss": loss,
             "diverged": loss is None}
            for n, losses in curves.items() for i, loss in enumerate(losses)]
    _, notes = quiet(pd.DataFrame(rows), ModelSpec(covariates=("n_params",)))
    low = [n for n in notes if "at the lowest LR they tried" in n]
    high = [n for n in notes if "at the largest LR they tried" in n]
    assert len(low) == len(high) == 1
    assert low[0].startswith("1 of 4 configurations") and "adamw n_params=2e+05)" in low[0]
    assert low[0].endswith("sweep them to lower LRs")
    assert high[0].startswith("1 of 4 configurations") and "adamw n_params=4e+05)" in high[0]
    assert high[0].endswith("sweep them to higher LRs")
    assert not any("1e+05" in n or "8e+05" in n for n in low + high)


def test_one_model_size_drops_the_n_exponent_with_a_clear_warning():
    features, notes = quiet(sweep_table(n_params=(8e5,)))
    assert "n_params" not in features.covariates
    assert any("exponent of N not identified: one model size" in n for n in notes)
    assert features.standardizer.unused == ("n_params",)
    design = target_design(pd.DataFrame({"n_params": [8e7], "tokens": [1e8], "batch_size": [16],
                                         "optimizer": ["adamw"]}),
                           standardizer=features.standardizer, terms=features.terms,
                           optimizers=features.optimizers, families=features.families)
    assert design.extrapolation[0] == pytest.approx(np.log(100))  # a new size is extrapolation


def test_collinear_horizon_is_dropped():
    table = sweep_table(tokens=(1e8,))
    table["tokens"] = 100 * table["n_params"]  # a Chinchilla-style fixed ratio
    table = table.drop(columns="config_id")  # regroup from the edited columns
    features, notes = quiet(table)
    assert "tokens" not in features.covariates
    assert any("exponent of D not identified" in n and "collinear" in n for n in notes)


def test_curvature_needs_three_levels():
    features, notes = quiet(sweep_table(n_params=(2e5, 8e5)))
    assert features.terms == ((0, 1),)  # only the interaction survives
    assert any("n_params^2 not identified" in n for n in notes)
    features, _ = quiet(sweep_table(), ModelSpec(curvature=False))
    assert features.terms == ()


def whole_step_tokens(table: pd.DataFrame) -> pd.DataFrame:
    """The table with the small batch's runs 0.5% short of the horizon, as runs that end on
    whole steps are."""
    small_batch = table["batch_size"] == table["batch_size"].min()
    table.loc[small_batch, "tokens"] *= 0.995
    return table


def test_a_horizon_that_differs_slightly_between_batch_sizes_is_still_one_level():
    features, notes = quiet(whole_step_tokens(sweep_table()))  # 2 horizons: no tokens^2
    assert features.term_names == ("n_params^2", "n_params*tokens")
    assert any("tokens^2 not identified" in n for n in notes)


def test_one_horizon_that_differs_slightly_between_batch_sizes_leaves_the_batch_exponent():
    features, notes = quiet(whole_step_tokens(sweep_table(tokens=(1e8,))))
    assert features.covariates == ("n_params", "batch_size")
    assert any("exponent of D not identified: one token horizon" in n for n in notes)


def test_one_lr_per_configuration_is_refused():
    table = sweep_table(n_lrs=1)
    with pytest.raises(ModelError, match="single LR"):
        build_features(table, ModelSpec())


def test_configurations_with_one_lr_are_dropped_with_a_warning():
    table = sweep_table()
    first = table["config_id"].iloc[0]
    table = table[(table["config_id"] != first) | (table.index == table.index[0])]
    features, notes = quiet(table)
    assert features.n_configs == 23
    assert any("dropped 1 of 24 configurations run at a single LR" in n for n in notes)


def test_all_diverged_is_refused():
    table = sweep_table()
    table["diverged"] = True
    table["loss"] = np.nan
    with pytest.raises(ModelError, match="all .* runs diverged"):
        build_features(table, ModelSpec())


def test_duplicated_runs_and_nan_losses_are_cleaned_explicitly():
    table = sweep_table()
    ok = table.index[~table["diverged"]]
    table.loc[ok[:3], "loss"] = np.nan
    doubled = pd.concat([table, table.iloc[:5]], ignore_index=True)
    features, notes = quiet(doubled)
    assert features.n_points == len(table) - 3
    assert any("dropped 5 duplicated run(s)" in n for n in notes)
    assert any("dropped 3 run(s) not marked diverged but with a NaN" in n for n in notes)


def test_missing_column_and_unknown_target_inputs_name_the_fix():
    table = sweep_table()
    with pytest.raises(ModelError, match=r"lacks column\(s\) \['tokens'\]"):
        build_features(table.drop(columns="tokens"), ModelSpec())
    features, _ = quiet(table)
    kwargs = dict(standardizer=features.standardizer, terms=features.terms,
                  optimizers=features.optimizers, families=features.families)
    good = {"n_params": [8e5], "tokens": [1e8], "batch_size": [32], "optimizer": ["adamw"]}
    assert target_design(pd.DataFrame(good), **kwargs).extrapolation[0] == 0
    with pytest.raises(ModelError, match="unknown optimizer 'lion'.*known: adamw, sgd"):
        target_design(pd.DataFrame({**good, "optimizer": ["lion"]}), **kwargs)
    with pytest.raises(ModelError, match="missing column 'batch_size'"):
        target_design(pd.DataFrame(good).drop(columns="batch_size"), **kwargs)
    with pytest.raises(ModelError, match="unknown architecture family 'rwkv'"):
        target_design(pd.DataFrame({**good, "arch": ["rwkv"]}), **kwargs)


def test_group_ignore_pools_sweeps_and_protects_covariates():
    table = sweep_table()
    table.loc[table.index % 2 == 0, "warmup_steps"] = 10  # half the runs differ in warmup
    split, _ = quiet(table.drop(columns="config_id"))
    pooled, _ = quiet(table, ModelSpec(group_ignore=("warmup_steps",)))
    assert split.n_configs > pooled.n_configs == 24
    with pytest.raises(ModelError, match="cannot be ignored"):
        build_features(table, ModelSpec(group_ignore=("tokens",)))


def test_effective_and_sharpness_variants_read_their_columns():
    table = sweep_table()
    features, _ = quiet(table, ModelSpec(lr_kind="effective"))
    assert features.rho is not None and np.isfinite(features.rho).all()
    features, _ = quiet(table, ModelSpec(covariates=("n_params", "tokens", "lambda_max")))
    assert "lambda_max" in features.covariates


def test_the_real_marin_sweep():
    table = records_to_frame(read_sweep_csv(marin_csv()))
    features, notes = quiet(table)
    assert features.optimizers == ("adamw", "lion", "muon", "nadamw")
    assert features.n_configs == 52 and features.diverged.sum() > 0
    assert any("configurations run at a single LR" in n for n in notes)
    assert features.data_hash() == quiet(table)[0].data_hash()


def test_loss_spikes_above_the_best_lr_count_as_diverged():
    table = sweep_table()
    ok = table[~table["diverged"]]
    cfg = ok["config_id"].iloc[0]
    runs = ok[ok["config_id"] == cfg].sort_values("lr")
    top, bottom = runs.index[-1], runs.index[0]
    table.loc[top, "loss"] += 3.0  # a spike at the highest finite-loss LR
    table.loc[bottom, "loss"] += 3.0  # far too low an LR: a loss, not a divergence
    features, notes = quiet(table)
    diverged = features.runs.set_index("run_id")["diverged"]
    assert diverged[table.loc[top, "run_id"]] and not diverged[table.loc[bottom, "run_id"]]
    assert any("counted 1 run(s) as diverged" in n for n in notes)
    kept, notes = quiet(table, ModelSpec(blowup_gap=None))
    assert not kept.runs.set_index("run_id")["diverged"][table.loc[top, "run_id"]]
    assert not any("counted" in n for n in notes)
