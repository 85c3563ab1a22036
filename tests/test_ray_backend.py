"""The Ray backend on a local 2-CPU Ray: same records as the local backend, resumable, and a
worker killed mid-run loses and duplicates nothing."""

from __future__ import annotations

import sys

import pytest
import torch

from bayeslr.cli import main
from bayeslr.errors import PlanError
from bayeslr.store import SweepStore
from collectors.backends import collect
from collectors.plan import expand_plan
from collectors.ray_backend import RaySettings, collect_ray, import_ray
from collectors.run import Execution, train_run
from tests.ray_faults import CrashOnce

CPU = Execution(device="cpu", threads=1)
LRS = (1e-3, 3e-3, 1e-2, 3e-2)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


PLAN = {
    "seeds": [0],
    "model": {"widths": [16], "depths": [1], "heads": [2], "context": 32},
    "train": {"steps": [20], "batch_sizes": [4]},
    "measure": {"curve_points": 5, "eval_batches": 2},
    "optimizers": {"adamw": {"lrs": list(LRS)}},
}


@pytest.fixture(scope="module")
def plan():
    torch.set_num_threads(1)
    return expand_plan(PLAN)


def snapshot(root):
    """name -> (inode, bytes) of every stored run file."""
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in root.glob("*.json")}


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(PlanError, match=r"pip install 'bayeslr\[ray\]'"):
        import_ray()


def test_bad_settings_fail_before_anything_runs():
    with pytest.raises(PlanError, match="gpus_per_run"):
        RaySettings(gpus_per_run=-1)
    with pytest.raises(PlanError, match="max_retries"):
        RaySettings(max_retries=-1)


def test_ray_collect_stores_every_run_once_and_matches_a_local_run(ray_local, plan, tmp_path):
    summary = collect_ray(plan, tmp_path, vectorize=2, quiet=True)
    assert (summary.done, summary.failed, summary.errors) == (4, 0, ())
    store = SweepStore(tmp_path)
    assert sorted(store.ids()) == sorted(s.run_id for s in plan.specs)
    spec = plan.specs[0]
    alone = train_run(spec, corpus=plan.corpus, execution=CPU)
    remote = store.get(spec.run_id)
    assert remote.outcome.final_val_loss == pytest.approx(alone.outcome.final_val_loss,
                                                          rel=1e-4)
    again = collect_ray(plan, tmp_path, quiet=True)
    assert (again.done, again.skipped) == (0, 4)
    gpus = RaySettings(gpus_per_run=0.25)
    with pytest.raises(PlanError, match="precision='bf16'"):
        collect_ray(plan, tmp_path / "gpu", quiet=True, settings=gpus)
    if not ray_local.cluster_resources().get("GPU"):
        with pytest.raises(PlanError, match="asks for 0.25 GPU"):
            collect_ray(expand_plan(PLAN, precision="bf16"), tmp_path / "gpu", quiet=True,
                        settings=gpus)


def test_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(ray_local, plan,
                                                                     tmp_path):
    done_before = collect(plan, tmp_path, limit=1, quiet=True, execution=CPU)
    assert done_before.done == 1
    before = snapshot(tmp_path)
    marker = tmp_path.parent / f"{tmp_path.name}.killed"
    crash = CrashOnce(str(marker), lr=LRS[-1])
    summary = collect_ray(plan, tmp_path, quiet=True, factory=crash,
                          settings=RaySettings(max_retries=1))
    assert marker.exists()  # a worker really died mid-run
    assert (summary.done, summary.skipped, summary.failed) == (3, 1, 0)
    after = snapshot(tmp_path)
    assert sorted(n.removesuffix(".json") for n in after) == sorted(s.run_id
                                                                    for s in plan.specs)
    assert all(after[name] == value for name, value in before.items())  # untouched
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_killed_worker_without_retry_leaves_the_run_to_the_next_collect(ray_local, plan,
                                                                        tmp_path):
    marker = tmp_path.parent / f"{tmp_path.name}.killed"
    crash = CrashOnce(str(marker), lr=LRS[0])
    first = collect_ray(plan, tmp_path, quiet=True, factory=crash,
                        settings=RaySettings(max_retries=0))
    assert marker.exists()
    assert (first.done, first.failed) == (3, 1)
    assert "lr=0.001" in first.errors[0]
    kept = snapshot(tmp_path)
    assert len(kept) == 3
    second = collect_ray(plan, tmp_path, quiet=True, factory=crash)
    assert (second.done, second.skipped, second.failed) == (1, 3, 0)
    after = snapshot(tmp_path)
    assert len(after) == 4 and all(after[n] == v for n, v in kept.items())


TOML = ('seeds = [0]\n[model]\nwidths = [16]\ndepths = [1]\nheads = [2]\ncontext = 32\n'
        '[train]\nsteps = [8]\nbatch_sizes = [4]\n[measure]\neval_batches = 1\n'
        'curve_points = 4\n[optimizers.adamw]\nlrs = [1e-3, 1e-2]\n')


def test_cli_without_ray_names_the_extra(tmp_path, monkeypatch, capsys):
    (tmp_path / "plan.toml").write_text(TOML)
    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["collect", str(tmp_path / "plan.toml"), "--into", str(tmp_path / "sweep"),
                 "--backend", "ray", "--quiet"])
    assert code == 1
    assert "pip install 'bayeslr[ray]'" in capsys.readouterr().err
    assert not SweepStore(tmp_path / "sweep").ids()


def test_cli_ray_backend(ray_local, tmp_path, capsys):
    (tmp_path / "plan.toml").write_text(TOML)
    args = ["collect", str(tmp_path / "plan.toml"), "--into", str(tmp_path / "sweep"),
            "--backend", "ray", "--vectorize", "2", "--quiet", "--json"]
    assert main(args) == 0
    assert '"done": 2' in capsys.readouterr().out
    assert len(SweepStore(tmp_path / "sweep").ids()) == 2
