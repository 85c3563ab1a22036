"""Sharpness measured inside real collector runs: plan keys -> callback -> run record -> store."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest

from bayeslr.cli import main
from bayeslr.store import SweepStore
from collectors.backends import collect
from collectors.hessian import adam_preconditioner, hessian_operator, lanczos, preconditioned
from collectors.plan import expand_plan
from collectors.run import Execution, train_run
from collectors.sharpness import SharpnessCallback, next_token_loss
from tests.collect_helpers import tiny_plan

CPU = Execution(device="cpu", threads=1)
WSD = {"steps": [10, 20], "schedule": "wsd", "decay_fraction": 0.25, "warmup_steps": 3,
       "wsd_branching": True}


class _Keep(pl.Callback):
    """Keeps the trainer and module of a finished fit for independent checks."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.trainer, self.module = trainer, pl_module


def _plan(**settings):
    return expand_plan(tiny_plan(
        train=WSD, optimizers={"adamw": {"lrs": [1e-2, 30.0]}, "sgd": {"lrs": [0.1]}},
        measure={"sharpness_every": 5, "sharpness_only": {"optimizer": ["adamw"]},
                 "sharpness": settings}))


def test_a_plan_with_sharpness_stores_it_in_the_selected_runs(tmp_path):
    plan = _plan(num_iters=20, top_k=2, trace=True, trace_probes=4)
    summary = collect(plan, tmp_path / "sweep", execution=CPU, quiet=True)
    assert (summary.done, summary.failed) == (6, 0)
    records = list(SweepStore(tmp_path / "sweep").records())
    for record in records:
        name, lr = record.config.optimizer.name, record.config.optimizer.lr
        measured = record.measurements
        if name == "sgd":  # not selected by sharpness_only
            assert "sharpness" not in measured.series and measured.lambda_max is None
            continue
        series = measured.series["sharpness"]
        if lr > 1:  # diverged: the run is stored (not failed), with what could be measured
            assert record.outcome.diverged and series["step"]
            continue
        assert not record.outcome.diverged
        if record.config.train.trunk is None:  # the 20-step trunk
            assert series["step"] == (0, 5, 10, 15, 20)
        else:  # the 10-step cool-down branched off it at step 8
            assert series["step"] == (8, 10)
        assert all(math.isfinite(v) and v > 0 for v in series["lambda_max"])
        assert series["lambda_max"][-1] == measured.lambda_max
        assert len(measured.top_eigenvalues) == 2
        assert measured.top_eigenvalues[0] == measured.lambda_max >= measured.top_eigenvalues[1]
        assert math.isfinite(measured.hessian_trace)
        assert measured.preconditioned_lambda_max > measured.lambda_max  # Adam's P << 1
    frame = SweepStore(tmp_path / "sweep").to_frame()
    fine = frame[(frame["optimizer"] == "adamw") & ~frame["diverged"]]
    assert len(fine) == 2 and fine["lambda_max"].notna().all()
    assert frame[frame["optimizer"] == "sgd"]["lambda_max"].isna().all()
    # the per-run plots, from the command line
    assert main(["sharpness", str(tmp_path / "sweep"), "-o", str(tmp_path / "plots")]) == 0
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    adamw = sorted(f"sharpness_{r.run_id}.png" for r in records
                   if r.config.optimizer.name == "adamw")
    assert pngs == adamw and len(pngs) == 4
    assert all((tmp_path / "plots" / n).read_bytes()[:4] == b"\x89PNG" for n in pngs)
    sgd = next(r.run_id for r in records if r.config.optimizer.name == "sgd")
    assert main(["sharpness", str(tmp_path / "sweep"), "-o", str(tmp_path / "none"),
                 "--runs", sgd[:10]]) == 1  # that run has no series: a clear error


def test_recorded_sharpness_matches_an_independent_solve_of_the_final_model():
    plan = _plan(num_iters=60, tol=1e-4)
    spec = next(s for s in plan.specs if s.config.optimizer.name == "adamw"
                and s.config.optimizer.lr < 1 and s.config.train.trunk is None)
    keep = _Keep()
    record = train_run(spec, corpus=plan.corpus, execution=CPU, callbacks=[keep])
    callback = next(c for c in keep.trainer.callbacks if isinstance(c, SharpnessCallback))
    assert callback.every_n_steps == 5 and callback.tol == 1e-4
    module = keep.module
    op = hessian_operator(module, next_token_loss, callback.batch)
    exact = lanczos(op, dim=op.dim, num_iters=300, seed=11, tol=1e-7).top(1)[0]
    assert record.measurements.lambda_max == pytest.approx(exact, rel=1e-4)
    diagonal = adam_preconditioner(keep.trainer.optimizers[0],
                                   [p for p in module.parameters() if p.requires_grad])
    exact_pre = lanczos(preconditioned(op, diagonal), dim=op.dim, num_iters=300, seed=12,
                        tol=1e-7).top(1)[0]
    assert record.measurements.preconditioned_lambda_max == pytest.approx(exact_pre, rel=1e-4)
