"""Shipping a sweep: derived effective-LR summaries are refreshed from the stored series."""

from dataclasses import replace

import pytest
import torch

from bayeslr.errors import StoreError
from bayeslr.store import SweepStore, read_jsonl
from collectors.backends import collect
from collectors.export import export_sweep, refreshed
from collectors.plan import expand_plan
from collectors.run import Execution
from tests.collect_helpers import tiny_plan

CPU = Execution(device="cpu", threads=1)


@pytest.fixture(scope="module")
def wsd_sweep(tmp_path_factory):
    torch.set_num_threads(1)
    train = {"steps": [12, 24], "schedule": "wsd", "decay_fraction": 0.25, "warmup_steps": 3,
             "wsd_branching": True}
    plan = expand_plan(tiny_plan(lrs=[1e-3, 1e-2], train=train))
    root = tmp_path_factory.mktemp("sweep")
    assert collect(plan, root, execution=CPU, quiet=True).done == 4
    return root


def without_lr_scale(record):
    """The record as an older collector wrote it: no lr_scale column, a tail-mean summary."""
    series = dict(record.measurements.series)
    series["effective_lr"] = {k: v for k, v in series["effective_lr"].items() if k != "lr_scale"}
    return replace(record, measurements=replace(record.measurements, series=series,
                                                effective_lr=0.0))


def test_refresh_is_idempotent_and_recovers_older_records(wsd_sweep):
    records = sorted(SweepStore(wsd_sweep).records(), key=lambda r: r.run_id)
    again = refreshed(records)
    for old, new in zip(records, again, strict=True):
        assert new.measurements.series == old.measurements.series
        assert new.measurements.effective_lr == pytest.approx(old.measurements.effective_lr)
    recovered = refreshed([without_lr_scale(r) for r in records])
    for old, new in zip(records, recovered, strict=True):
        assert new.measurements.effective_lr == pytest.approx(old.measurements.effective_lr,
                                                              rel=1e-9)
        assert new.measurements.effective_lr > 0


def test_export_writes_json_lines_and_never_overwrites(wsd_sweep, tmp_path):
    out = export_sweep(wsd_sweep, tmp_path / "sweep.jsonl.gz")
    back = read_jsonl(out)
    assert sorted(r.run_id for r in back) == sorted(SweepStore(wsd_sweep).ids())
    with pytest.raises(StoreError, match="never overwrite"):
        export_sweep(wsd_sweep, out)
