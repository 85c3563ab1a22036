"""Vectorised LR sweeps: K runs in one batched computation give the records of K runs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bayeslr.cli import main
from bayeslr.errors import PlanError
from bayeslr.store import SweepStore
from collectors.model import GPT
from collectors.plan import expand_plan
from collectors.run import Execution, train_run
from collectors.shapes import gpt_config
from collectors.vectorized import group_specs, train_vectorized
from collectors.work import collect_vectorized, plan_work

CPU = Execution(device="cpu", threads=1)


def tiny_plan(lrs=(1e-3, 1e-2, 3.0), seeds=(0, 1), widths=(16,), steps=24, precision="fp32",
              **train):
    """A real plan: byte-level GPT on the bundled corpus, a few steps per run."""
    return expand_plan({
        "seeds": list(seeds),
        "model": {"widths": list(widths), "depths": [1], "heads": [2], "context": 32},
        "train": {"steps": steps if isinstance(steps, list) else [steps], "batch_sizes": [4],
                  "schedule": "cosine", "warmup_fraction": 0.1, **train},
        "measure": {"curve_points": 6, "eval_batches": 2, "divergence_threshold": 2.0,
                    "effective_lr_every": 4},
        "optimizers": {"adamw": {"lrs": list(lrs), "max_grad_norm": 1.0}},
    }, precision=precision)


def close(a, b, rel=1e-4):
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)


def assert_same_record(alone, batched):
    """Equal identity and outcome up to float rounding (wall time aside)."""
    assert batched.run_id == alone.run_id
    a, b = alone.outcome, batched.outcome
    assert (b.diverged, b.diverged_step, b.flops, b.device) == (
        a.diverged, a.diverged_step, a.flops, a.device)
    assert close(b.final_train_loss, a.final_train_loss)
    assert close(b.final_val_loss, a.final_val_loss)
    assert b.curve.step == a.curve.step
    assert all(close(x, y) for x, y in zip(b.curve.train_loss, a.curve.train_loss, strict=True))
    assert close(batched.measurements.effective_lr, alone.measurements.effective_lr, rel=1e-3)
    assert close(batched.measurements.weight_norm, alone.measurements.weight_norm)
    series_a = alone.measurements.series.get("effective_lr", {})
    series_b = batched.measurements.series.get("effective_lr", {})
    assert series_b.get("step") == series_a.get("step")
    assert batched.metadata["steps_run"] == alone.metadata["steps_run"]


@pytest.fixture(scope="module")
def separate_runs():
    """A plan with a diverging LR, and its runs trained one by one by collectors.run."""
    plan = tiny_plan()
    torch.set_num_threads(1)
    return plan, [train_run(spec, corpus=plan.corpus, execution=CPU) for spec in plan.specs]


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_vectorised_group_reproduces_separate_runs_including_divergence(separate_runs,
                                                                        strategy):
    plan, alone = separate_runs
    batched = train_vectorized(plan.specs, corpus=plan.corpus, execution=CPU,
                               strategy=strategy)
    for one, many in zip(alone, batched, strict=True):
        assert_same_record(one, many)
        if strategy == "loop":  # the same kernels in the same order: bit for bit
            assert many.outcome.curve == one.outcome.curve
            assert many.outcome.final_val_loss == one.outcome.final_val_loss
    diverged = [r for r in batched if r.outcome.diverged]
    assert {r.config.optimizer.lr for r in diverged} == {3.0}  # and only that LR
    assert all(r.outcome.diverged_step < 24 and r.outcome.final_val_loss is None
               for r in diverged)
    assert all(r.metadata["vectorized_group"] == 6 for r in batched)
    assert {r.metadata["vectorized_strategy"] for r in batched} == {strategy}


def test_groups_hold_one_configuration_and_respect_the_size():
    plan = tiny_plan(lrs=(1e-3, 3e-3, 1e-2), seeds=(0,), widths=(16, 32))
    groups = group_specs(plan.specs, 2)
    assert sorted(len(g) for g in groups) == [1, 1, 2, 2]
    for group in groups:
        assert len({s.config.config_id() for s in group}) == 1
    assert sorted(s.run_id for g in groups for s in g) == sorted(s.run_id for s in plan.specs)
    with pytest.raises(PlanError, match="differ only in LR"):
        train_vectorized([groups[0][0], groups[-1][0]], corpus=plan.corpus, execution=CPU)


def test_wsd_branches_are_not_vectorised(tmp_path):
    plan = tiny_plan(lrs=(1e-3, 1e-2), seeds=(0,), steps=[12, 24], schedule="wsd",
                     warmup_steps=2, wsd_branching=True)
    branch = next(s for s in plan.specs if s.config.train.trunk is not None)
    with pytest.raises(PlanError, match="cannot be vectorised"):
        group_specs([branch], 4)
    items, _ = plan_work(plan, SweepStore(tmp_path), vectorize=4)
    assert len(items) == 2  # one trunk-and-branch unit per LR, as the local backend has
    assert all(len({s.config.train.steps for s in i.specs}) == 2 for i in items)


class DropoutGPT(GPT):
    """A GPT whose training step draws random numbers (dropout on the logits)."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = F.dropout(self(x), p=0.1, training=True)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


def dropout_factory(config):
    return DropoutGPT(gpt_config(config))


def test_random_training_step_is_refused_with_the_fix():
    plan = tiny_plan(lrs=(1e-3, 1e-2), seeds=(0,))
    with pytest.raises(PlanError, match="dropout"):
        train_vectorized(plan.specs, corpus=plan.corpus, execution=CPU, strategy="vmap",
                         factory=dropout_factory)


def test_vectorised_collect_resumes_without_duplicates(tmp_path):
    plan = tiny_plan(lrs=(1e-3, 1e-2, 3e-2), seeds=(0,), widths=(16, 32), steps=12)
    first = collect_vectorized(plan, tmp_path, vectorize=3, limit=3, quiet=True,
                               execution=CPU)
    assert (first.done, first.failed) == (3, 0)
    stored = {p.name: p.stat().st_ino for p in tmp_path.glob("*.json")}
    second = collect_vectorized(plan, tmp_path, vectorize=3, quiet=True, execution=CPU)
    assert (second.done, second.skipped, second.failed) == (3, 3, 0)
    store = SweepStore(tmp_path)
    assert sorted(store.ids()) == sorted(s.run_id for s in plan.specs)
    assert all((tmp_path / name).stat().st_ino == ino for name, ino in stored.items())
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_vectorize_option(tmp_path, capsys):
    plan = tmp_path / "plan.toml"
    plan.write_text(
        'seeds = [0]\n[model]\nwidths = [16]\ndepths = [1]\nheads = [2]\ncontext = 32\n'
        '[train]\nsteps = [8]\nbatch_sizes = [4]\n[measure]\neval_batches = 1\n'
        'curve_points = 4\n[optimizers.adamw]\nlrs = [1e-3, 1e-2]\n')
    into = tmp_path / "sweep"
    code = main(["collect", str(plan), "--into", str(into), "--vectorize", "2", "--device",
                 "cpu", "--quiet", "--json"])
    assert code == 0
    assert '"done": 2' in capsys.readouterr().out
    records = list(SweepStore(into).records())
    assert [r.metadata["vectorized_group"] for r in records] == [2, 2]
    assert main(["collect", str(plan), "--into", str(into), "--vectorize", "0"]) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vectorised_group_on_gpu_matches_separate_bf16_runs():
    plan = tiny_plan(lrs=(1e-3, 1e-2), seeds=(0,), steps=32, precision="bf16")
    cuda = Execution(device="cuda")
    batched = train_vectorized(plan.specs, corpus=plan.corpus, execution=cuda)
    for spec, many in zip(plan.specs, batched, strict=True):
        one = train_run(spec, corpus=plan.corpus, execution=cuda)
        assert (many.run_id, many.outcome.diverged) == (one.run_id, one.outcome.diverged)
        assert many.outcome.final_val_loss == pytest.approx(one.outcome.final_val_loss,
                                                            rel=2e-2)
