"""Sweep plans: expansion and validation (every bad input fails before anything is written)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import collectors
from bayeslr.cli import main
from bayeslr.datasets import dense_jsonl
from bayeslr.errors import PlanError
from bayeslr.fit import as_table
from collectors.optim import Schedule
from collectors.plan import expand_plan, load_plan
from tests.collect_helpers import tiny_plan, write_plan


def test_grid_expands_to_the_product_with_log_spaced_lrs():
    plan = expand_plan(tiny_plan(model={"widths": [16, 32]}, seeds=[0, 1],
                                 optimizers={"adamw": {"lr": {"min": 1e-3, "max": 1e-1,
                                                              "num": 5}},
                                             "sgd": {"lrs": [0.1], "nesterov": True}}))
    assert len(plan) == 2 * 2 * (5 + 1)
    adam = sorted({s.config.optimizer.lr for s in plan.specs
                   if s.config.optimizer.name == "adamw"})
    ratios = [math.log10(b / a) for a, b in zip(adam, adam[1:], strict=False)]
    assert adam[0] == pytest.approx(1e-3) and adam[-1] == pytest.approx(1e-1)
    assert ratios == pytest.approx([0.5] * 4, rel=1e-4)
    sgd = next(s for s in plan.specs if s.config.optimizer.name == "sgd").config.optimizer
    assert sgd.momentum == 0.9 and sgd.nesterov is True
    widths = {s.config.model.d_model: s.config.model.n_params for s in plan.specs}
    assert widths[32] > 3 * widths[16]
    # one LR sweep (config_id: everything but LR and seed) per (size, optimizer)
    assert len({s.config.config_id() for s in plan.specs}) == 2 * 2


def test_tokens_become_whole_steps_and_are_recorded():
    plan = expand_plan(tiny_plan() | {"train": {"tokens": [10_000, 20_000],
                                                "batch_sizes": [8, 16]}})
    got = {(s.config.train.batch_size, s.config.train.steps, s.config.train.tokens)
           for s in plan.specs}
    assert got == {(8, 39, 39 * 256.0), (8, 78, 78 * 256.0), (16, 20, 20 * 512.0),
                   (16, 39, 39 * 512.0)}


def test_wsd_branching_links_short_horizons_to_the_longest_run():
    plan = expand_plan(tiny_plan(train={"steps": [20, 40, 80], "schedule": "wsd",
                                        "decay_fraction": 0.25, "wsd_branching": True},
                                 optimizers={"adamw": {"lrs": [1e-2, 3e-2]}}))
    for lr in (1e-2, 3e-2):
        group = sorted((s for s in plan.specs if s.config.optimizer.lr == lr),
                       key=lambda s: s.config.train.steps)
        trunk = group[-1]
        assert trunk.config.train.trunk is None
        assert [s.config.train.trunk for s in group[:-1]] == [trunk.run_id] * 2
        assert [s.branch_step for s in group[:-1]] == [15, 30]


def test_sharpness_only_selects_a_subset(monkeypatch):
    import importlib.util

    if importlib.util.find_spec("collectors.sharpness") is None:
        with pytest.raises(PlanError, match="collectors.sharpness"):
            expand_plan(tiny_plan(measure={"sharpness_every": 5}))
        return
    plan = expand_plan(tiny_plan(model={"widths": [16, 32]},
                                 measure={"sharpness_every": 5,
                                          "sharpness_only": {"d_model": [32]}}))
    chosen = {s.config.model.d_model: s.options.sharpness_every for s in plan.specs}
    assert chosen == {16: None, 32: 5}


def test_lr_extend_adds_grid_steps_to_the_selected_sweeps_only():
    grid = {"min": 1e-3, "max": 1e-1, "num": 5}
    plan = expand_plan(tiny_plan(
        model={"widths": [16, 32]}, seeds=[0, 1],
        train={"steps": [20, 40], "schedule": "wsd", "wsd_branching": True},
        optimizers={"adamw": {"lr": grid, "lr_extend": [
            {"below": 2, "where": {"d_model": [32]}},
            {"below": 1, "above": 1, "where": {"d_model": [32], "batch_size": [8]}}]}}))
    lrs = {width: sorted({s.config.optimizer.lr for s in plan.specs
                          if s.config.model.d_model == width}) for width in (16, 32)}
    assert lrs[16] == pytest.approx([1e-3, 10**-2.5, 1e-2, 10**-1.5, 1e-1], rel=1e-5)
    # the larger of two matching extensions below, and the step of the plan's grid
    assert lrs[32] == pytest.approx([10**-4, 10**-3.5, *lrs[16], 10**-0.5], rel=1e-5)
    for width, n_lrs in ((16, 5), (32, 8)):
        runs = [s for s in plan.specs if s.config.model.d_model == width]
        assert len(runs) == n_lrs * 2 * 2  # every LR: both seeds, both horizons
        branches = [s for s in runs if s.config.train.trunk is not None]
        assert len(branches) == n_lrs * 2
    # the plan's own grid keeps its runs (and ids) whatever is added
    base = expand_plan(tiny_plan(
        model={"widths": [16, 32]}, seeds=[0, 1],
        train={"steps": [20, 40], "schedule": "wsd", "wsd_branching": True},
        optimizers={"adamw": {"lr": grid}}))
    assert {s.run_id for s in base.specs} < {s.run_id for s in plan.specs}


@pytest.mark.parametrize(("change", "message"), [
    ({"optimizers": {"adamx": {"lrs": [1e-3]}}},
     "unknown optimizer 'adamx'; known: adamw, adam, sgd, rmsprop"),
    ({"optimizers": {"adamw": {"lrs": [-1e-3]}}}, "learning rates must be > 0"),
    ({"optimizers": {"adamw": {"lr": {"min": -1e-3, "max": 1e-1, "num": 4}}}}, "must be > 0"),
    ({"model": {"widths": [30], "heads": [4]}}, "not divisible by n_heads=4"),
    ({"model": {"widths": []}}, "empty"),
    ({"optimizers": {"adamw": {"lr": {"min": 1e-3, "max": 1e-1, "num": 0}}}}, "empty"),
    ({"optimizers": {}}, "at least one optimizer"),
    ({"seeds": []}, "empty"),
    ({"corpus": "no/such/corpus.txt"}, "cannot read"),
    ({"optimizers": {"adamw": {"lrs": [1e-3], "betas": 0.9}}}, "unknown setting"),
    ({"train": {"steps": [30], "schedule": "cosine", "wsd_branching": True}}, "wsd"),
    ({"model": {"widths": [16], "typo": 1}}, "unknown key"),
    ({"optimizers": {"adamw": {"lrs": [1e-3, 1e-2], "lr_extend": {"below": 1}}}},
     "needs lr = {min = ..., max = ..., num = ...}"),
    ({"optimizers": {"adamw": {"lr": {"min": 1e-3, "max": 1e-1, "num": 3},
                               "lr_extend": {"below": 1, "where": {"seed": [0]}}}}},
     "lr_extend.where: expected a table with keys among d_model, n_layers, n_heads, "
     "batch_size"),
    ({"optimizers": {"adamw": {"lr": {"min": 1e-3, "max": 1e-1, "num": 3},
                               "lr_extend": {"where": {"d_model": [16]}}}}},
     "give below and/or above >= 1"),
])
def test_bad_plans_fail_before_training_and_write_nothing(tmp_path, change, message):
    plan = tiny_plan(**change)
    if "optimizers" in change:
        plan["optimizers"] = change["optimizers"]
    with pytest.raises(PlanError, match=message.replace("(", r"\(")):
        expand_plan(plan, base_dir=tmp_path)
    path = write_plan(tmp_path / "bad.toml", plan)
    sweep = tmp_path / "sweep"
    assert main(["collect", str(path), "--into", str(sweep), "--quiet"]) == 1
    assert not sweep.exists()


def test_unreadable_plan_and_corpus_name_the_input(tmp_path):
    with pytest.raises(PlanError, match="missing.toml"):
        load_plan(tmp_path / "missing.toml")
    (tmp_path / "broken.toml").write_text("name = [")
    with pytest.raises(PlanError, match="not valid TOML"):
        load_plan(tmp_path / "broken.toml")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(PlanError, match="holds no files"):
        expand_plan(tiny_plan(corpus="empty_dir"), base_dir=tmp_path)


def test_corpus_path_is_relative_to_the_plan_file(tmp_path):
    (tmp_path / "text.txt").write_text("To be, or not to be: that is the question. " * 400)
    plan = load_plan(write_plan(tmp_path / "p.toml", tiny_plan(corpus="text.txt")))
    extra = plan.specs[0].config.extra
    assert extra["corpus"] == "text.txt" and len(extra["corpus_sha256"]) == 16
    assert len(plan.corpus.train) + len(plan.corpus.val) == 43 * 400


def test_schedules_warm_up_then_decay_to_the_floor():
    cosine = Schedule("cosine", total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(99) == pytest.approx(0.1) and cosine(54) == pytest.approx(0.55, abs=0.01)
    linear = Schedule("linear", total_steps=100, warmup_steps=0, min_lr_ratio=0.0)
    assert linear(49) == pytest.approx(0.5)
    wsd = Schedule("wsd", total_steps=100, warmup_steps=10, decay_fraction=0.2)
    assert wsd.decay_start == 80
    assert [wsd(s) for s in (10, 79)] == [1.0, 1.0] and wsd(99) == pytest.approx(0.0)
    assert Schedule("constant", total_steps=5)(4) == 1.0
    with pytest.raises(PlanError, match="unknown schedule"):
        Schedule("step", total_steps=5)


SHIPPED_PLANS = Path(collectors.__file__).parent / "plans"


@pytest.mark.parametrize("name", sorted(p.name for p in SHIPPED_PLANS.glob("*.toml")))
def test_shipped_plans_load_with_unique_runs(name):
    plan = load_plan(SHIPPED_PLANS / name)
    assert len(plan) > 0
    assert len({spec.run_id for spec in plan.specs}) == len(plan)


def test_shipped_dense_sweep_is_exactly_its_plans_runs():
    plans = sorted(SHIPPED_PLANS.glob("*dense*.toml"))
    assert len(plans) == 8
    planned = {spec.run_id for path in plans for spec in load_plan(path).specs}
    runs = as_table(dense_jsonl())
    assert len(planned) == 2940
    assert set(runs["run_id"]) == planned and runs["run_id"].is_unique
