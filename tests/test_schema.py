import json
import math
from dataclasses import replace

import pytest

from bayeslr.errors import SchemaError
from bayeslr.schema import (
    SCHEMA_VERSION,
    ModelShape,
    OptimizerConfig,
    RunRecord,
    normalize_optimizer,
)
from tests.conftest import make_record


def test_round_trip_through_json_keeps_every_field(record):
    text = json.dumps(record.to_dict(), allow_nan=False)
    again = RunRecord.from_dict(json.loads(text))
    assert again == record
    assert again.run_id == record.run_id


def test_run_id_is_stable_and_depends_on_every_setting():
    a, b = make_record(lr=1e-3), make_record(lr=1e-3)
    assert a.run_id == b.run_id and len(a.run_id) == 16
    assert make_record(lr=2e-3).run_id != a.run_id
    assert make_record(seed=1).run_id != a.run_id


def test_config_id_groups_runs_that_differ_only_in_lr_seed_and_trunk():
    a = make_record(lr=1e-3).config
    assert a.config_id() == make_record(lr=4e-3, seed=3).config.config_id()
    assert a.config_id() != make_record(d_model=128).config.config_id()
    branched = replace(a, train=replace(a.train, trunk="0123456789abcdef"))
    assert branched.config_id() == a.config_id() and branched.run_id() != a.run_id()


def test_outcome_loss_prefers_validation(record):
    assert record.outcome.loss == record.outcome.final_val_loss


@pytest.mark.parametrize("lr", [-1e-3, 0.0, math.nan, math.inf])
def test_bad_lr_is_rejected_with_field_name(lr):
    with pytest.raises(SchemaError, match="optimizer.lr"):
        OptimizerConfig(name="adamw", lr=lr)


def test_unknown_optimizer_lists_known_ones():
    with pytest.raises(SchemaError, match="unknown optimizer 'adamx'.*adamw.*sgd.*rmsprop"):
        normalize_optimizer("adamx")
    assert normalize_optimizer("AdamW") == "adamw"
    assert normalize_optimizer("sgd_momentum") == "sgd"


def test_width_must_divide_by_heads():
    with pytest.raises(SchemaError, match="not divisible"):
        ModelShape(n_params=1e6, d_model=100, n_heads=3)


def test_future_schema_version_is_refused(record):
    data = record.to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(SchemaError, match="newer than this bayeslr.*upgrade"):
        RunRecord.from_dict(data, where="run.json")


@pytest.mark.parametrize("path, value, message", [
    (("config", "optimizer", "lr"), "fast", "config.optimizer.lr: expected a number"),
    (("config", "optimizer", "lr"), -0.1, "config.optimizer.lr: expected a finite"),
    (("config", "train", "batch_size"), 1.5, "config.train.batch_size: expected an integer"),
    (("outcome", "diverged"), "no", "outcome.diverged: expected true/false"),
    (("config", "model", "speed"), 3, "unknown field"),
])
def test_bad_fields_are_named(record, path, value, message):
    data = record.to_dict()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(SchemaError, match=message.replace(".", r"\.").replace("(", r"\(")):
        RunRecord.from_dict(data, where="f.json")


def test_missing_required_field_is_named(record):
    data = record.to_dict()
    del data["config"]["train"]["tokens"]
    with pytest.raises(SchemaError, match="config.train.tokens: required"):
        RunRecord.from_dict(data)


def test_hand_edited_run_id_is_detected(record):
    data = record.to_dict()
    data["config"]["optimizer"]["lr"] = 0.5
    with pytest.raises(SchemaError, match="does not match"):
        RunRecord.from_dict(data)


def test_undiverged_run_needs_a_loss(record):
    data = record.to_dict()
    data["outcome"]["final_train_loss"] = data["outcome"]["final_val_loss"] = None
    with pytest.raises(SchemaError, match="did not diverge needs"):
        RunRecord.from_dict(data)
