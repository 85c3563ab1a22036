"""SIGKILL `bayeslr collect` mid-sweep, run it again: every run stored exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bayeslr.store import SweepStore
from collectors.plan import load_plan
from tests.collect_helpers import tiny_plan, write_plan

REPO = Path(__file__).resolve().parents[1]


def _collect(plan: Path, sweep: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "bayeslr.cli", "collect", str(plan),
                             "--into", str(sweep), "--quiet", "--threads", "1", "--json"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_kill_minus_nine_then_rerun_completes_every_run_once(tmp_path):
    plan_path = write_plan(tmp_path / "plan.toml",
                           tiny_plan(lrs=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1], steps=40))
    sweep = tmp_path / "sweep"
    first = _collect(plan_path, sweep)
    deadline = time.monotonic() + 240
    try:
        while not list(sweep.glob("*.json")):
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "no run finished in time"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    done_before = len(list(sweep.glob("*.json")))
    assert 1 <= done_before < 5, "the kill must land mid-sweep"

    second = _collect(plan_path, sweep)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["skipped"] == done_before and summary["done"] == 5 - done_before

    expected = {spec.run_id for spec in load_plan(plan_path).specs}
    store = SweepStore(sweep)
    assert set(store.ids()) == expected and len(store) == 5
    assert sorted(p.name for p in sweep.iterdir()) == sorted(f"{i}.json" for i in expected)
    assert all(store.get(i).run_id == i for i in expected)  # each file valid
