"""Real tiny training through the plan machinery: records, divergence, determinism, WSD."""

from __future__ import annotations

import math

import pytest
import torch

from bayeslr.cli import main
from bayeslr.errors import PlanError
from bayeslr.store import SweepStore
from collectors.backends import collect
from collectors.plan import expand_plan
from collectors.run import Execution, train_run
from tests.collect_helpers import tiny_plan, to_toml

CPU = Execution(device="cpu", threads=1)


def test_tiny_sweep_writes_records_that_load_as_a_table(tmp_path):
    plan = expand_plan(tiny_plan(lrs=[3e-3, 3e-2, 30.0], steps=30))
    summary = collect(plan, tmp_path / "sweep", execution=CPU, quiet=True)
    assert (summary.done, summary.skipped, summary.failed) == (3, 0, 0)
    frame = SweepStore(tmp_path / "sweep").to_frame().sort_values("lr")
    assert list(frame["lr"]) == pytest.approx([3e-3, 3e-2, 30.0])
    good = frame[~frame["diverged"]]
    assert len(good) == 2 and (good["final_val_loss"] < math.log(256)).all()
    assert (good["final_train_loss"] > 0).all() and (good["flops"] > 0).all()
    assert (good["device"] == "cpu").all() and (good["steps"] == 30).all()
    assert good["effective_lr"].notna().all() and good["weight_norm"].notna().all()
    assert frame["extra.corpus"].eq("shakespeare").all()
    record = SweepStore(tmp_path / "sweep").get(good.iloc[0]["run_id"])
    curve = record.outcome.curve
    assert curve.step[0] == 0 and curve.step[-1] == 29 and len(curve.step) == 10
    assert curve.train_loss[-1] < curve.train_loss[0]
    series = record.measurements.series["effective_lr"]
    assert list(series["step"]) == [5, 10, 15, 20, 25, 30]
    assert {"global", "attention", "mlp", "embedding", "norm"} <= set(series)
    # running again trains nothing
    again = collect(plan, tmp_path / "sweep", execution=CPU, quiet=True)
    assert (again.done, again.skipped) == (0, 3)


def test_divergence_stops_early_and_is_stored_with_its_step():
    plan = expand_plan(tiny_plan(lrs=[30.0], steps=40,
                                 measure={"divergence_threshold": 1.5}))
    record = train_run(plan.specs[0], corpus=plan.corpus, execution=CPU)
    outcome = record.outcome
    assert outcome.diverged and outcome.final_val_loss is None
    assert 0 < outcome.diverged_step < 39
    assert record.metadata["steps_run"] == outcome.diverged_step + 1
    assert outcome.curve.step[-1] == outcome.diverged_step  # the curve ends where it blew up


def test_same_seed_same_losses_other_seed_differs():
    plan = expand_plan(tiny_plan(lrs=[1e-2], steps=15, seeds=[0, 1]))
    first, other = plan.specs
    a = train_run(first, corpus=plan.corpus, execution=CPU)
    b = train_run(first, corpus=plan.corpus, execution=CPU)
    c = train_run(other, corpus=plan.corpus, execution=CPU)
    assert a.outcome.curve == b.outcome.curve
    assert a.outcome.final_val_loss == b.outcome.final_val_loss
    assert c.outcome.final_val_loss != a.outcome.final_val_loss


def test_wsd_branch_matches_an_independent_run(tmp_path):
    """A cool-down branched off the trunk equals the same WSD run trained on its own."""
    train = {"steps": [12, 24], "schedule": "wsd", "decay_fraction": 0.25, "warmup_steps": 3}
    branched = expand_plan(tiny_plan(lrs=[1e-2], train={**train, "wsd_branching": True}))
    alone = expand_plan(tiny_plan(lrs=[1e-2], train={**train, "steps": [12]}))
    summary = collect(branched, tmp_path / "sweep", execution=CPU, quiet=True)
    assert summary.done == 2
    store = SweepStore(tmp_path / "sweep")
    short = next(r for r in store.records() if r.config.train.steps == 12)
    trunk = next(r for r in store.records() if r.config.train.steps == 24)
    assert short.config.train.trunk == trunk.run_id and trunk.config.train.trunk is None
    assert short.metadata["branched_at"] == 9
    reference = train_run(alone.specs[0], corpus=alone.corpus, execution=CPU)
    assert short.outcome.curve.train_loss == pytest.approx(reference.outcome.curve.train_loss,
                                                           rel=1e-5)
    assert short.outcome.final_val_loss == pytest.approx(reference.outcome.final_val_loss,
                                                         rel=1e-5)
    got, want = (r.measurements.series["effective_lr"] for r in (short, reference))
    assert got["step"] == want["step"] == (5, 10)  # the trunk's step 5 precedes the branch
    for key in ("global", "lr_scale"):
        assert got[key] == pytest.approx(want[key], rel=1e-4)
    assert short.measurements.effective_lr == pytest.approx(reference.measurements.effective_lr,
                                                            rel=1e-4)


def test_plan_sharpness_setting_adds_the_sharpness_callback():
    plan = expand_plan(tiny_plan(lrs=[1e-2], steps=10,
                                 measure={"sharpness_every": 5,
                                          "sharpness": {"num_iters": 8}}))
    record = train_run(plan.specs[0], corpus=plan.corpus, execution=CPU)
    measured = record.measurements
    assert measured.lambda_max is not None and measured.lambda_max > 0
    assert list(measured.series["sharpness"]["step"]) == [0, 5, 10]
    assert measured.effective_lr is not None  # both measurement callbacks merged


def test_precision_follows_the_device_and_bf16_is_refused_on_cpu(tmp_path, capsys):
    assert (CPU.precision, Execution(device="cpu", bf16=False).precision) == ("fp32", "fp32")
    with pytest.raises(PlanError, match="bf16 needs a CUDA device"):
        Execution(device="cpu", bf16=True)
    plan = tmp_path / "plan.toml"
    plan.write_text(to_toml(tiny_plan()))
    assert main(["collect", str(plan), "--into", str(tmp_path / "s"), "--device", "cpu",
                 "--precision", "fp32", "--dry-run"]) == 0
    assert "1 runs, 1 not yet in" in capsys.readouterr().out
    assert main(["collect", str(plan), "--into", str(tmp_path / "s"), "--device", "cpu",
                 "--precision", "bf16"]) == 1
    assert "bf16 needs a CUDA device" in capsys.readouterr().err
    assert main(["collect", str(plan), "--into", str(tmp_path / "s"), "--backend", "ray",
                 "--precision", "fp32"]) == 1
    assert "--precision is not supported with --backend ray" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp32_run_on_cuda_is_the_cpu_run_on_another_device():
    plan = expand_plan(tiny_plan(lrs=[1e-2], steps=30))
    spec = plan.specs[0]
    cpu = train_run(spec, corpus=plan.corpus, execution=CPU)
    gpu = train_run(spec, corpus=plan.corpus, execution=Execution(device="cuda", bf16=False))
    assert gpu.run_id == cpu.run_id and gpu.config.train.precision == "fp32"
    assert gpu.outcome.device.startswith("cuda:") and cpu.outcome.device == "cpu"
    assert gpu.outcome.final_val_loss == pytest.approx(cpu.outcome.final_val_loss, rel=1e-3)
