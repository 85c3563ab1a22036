import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bayeslr.errors import SchemaError, StoreError
from bayeslr.schema import RunRecord
from bayeslr.store import SweepStore, read_run_file
from tests.conftest import make_record


def test_put_writes_one_file_named_by_the_hash(tmp_path, record):
    store = SweepStore(tmp_path / "sweep")
    path = store.put(record)
    assert path.name == f"{record.run_id}.json"
    assert store.ids() == [record.run_id] and record.config in store
    assert store.get(record.run_id) == record


def test_identical_rewrite_is_a_no_op_and_a_conflict_is_refused(tmp_path, record):
    store = SweepStore(tmp_path)
    store.put(record)
    mtime = store.path_for(record.run_id).stat().st_mtime_ns
    store.put(record)
    assert store.path_for(record.run_id).stat().st_mtime_ns == mtime
    changed = RunRecord(config=record.config, outcome=make_record(loss=9.0).outcome)
    with pytest.raises(StoreError, match="already stored"):
        store.put(changed)
    assert store.get(record.run_id) == record


def test_put_many_writes_nothing_when_one_record_conflicts(tmp_path):
    store = SweepStore(tmp_path)
    store.put(make_record(lr=1e-3))
    clash = RunRecord(config=make_record(lr=1e-3).config, outcome=make_record(loss=7.0).outcome)
    with pytest.raises(StoreError):
        store.put_many([make_record(lr=2e-3), clash])
    assert len(store) == 1


def test_frame_has_one_row_per_run_with_units_as_documented(tmp_path):
    store = SweepStore(tmp_path)
    store.put_many([make_record(lr=lr) for lr in (1e-3, 3e-3)] + [make_record(lr=1e-1,
                                                                               diverged=True)])
    frame = store.to_frame()
    assert len(frame) == 3 and frame["run_id"].is_unique
    assert frame["config_id"].nunique() == 1
    assert frame["diverged"].sum() == 1
    assert frame.loc[frame.diverged, "loss"].isna().all()
    assert (frame["batch_tokens"] == 16 * 128).all()
    assert frame["meta.note"].eq("test").all()


def test_curves_have_run_and_step_dims(tmp_path):
    store = SweepStore(tmp_path)
    store.put_many([make_record(lr=1e-3), make_record(lr=2e-3, curve_points=3)])
    curves = store.curves()
    assert curves["train_loss"].dims == ("run", "step")
    assert curves.sizes == {"run": 2, "step": 5}
    assert int(curves["train_loss"].isnull().sum()) == 2


def test_malformed_file_error_names_the_file(tmp_path, record):
    store = SweepStore(tmp_path)
    bad = tmp_path / f"{record.run_id}.json"
    bad.write_text('{"schema_version": 1, "config": ')
    with pytest.raises(SchemaError, match=f"{bad.name}: malformed JSON"):
        list(store.records())


def test_store_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        SweepStore(path)


WRITER = """
import builtins, io, sys, time
from tests.conftest import make_record
from bayeslr.store import SweepStore


class SlowDisk:
    \"\"\"A file opened for writing whose writes land in two halves 50 ms apart, so that a kill
    at a random moment most likely falls in the middle of writing a run.\"\"\"

    def __init__(self, handle):
        self._handle = handle

    def write(self, text):
        half = len(text) // 2
        self._handle.write(text[:half])
        self._handle.flush()
        time.sleep(0.05)
        return half + self._handle.write(text[half:])

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)


def open_slowly(file, mode="r", *args, real_open=io.open, **kwargs):
    handle = real_open(file, mode, *args, **kwargs)
    return SlowDisk(handle) if any(flag in mode for flag in "wax") else handle


builtins.open = io.open = open_slowly
store = SweepStore(sys.argv[1])
for i in range(10_000):
    store.put(make_record(lr=1e-4 * (1 + i), curve_points=400))
"""


def _wait_for_a_new_run_file(root, proc, timeout_s=120.0):
    """Poll until the writer has stored a new run, so a kill lands mid-stream however slow
    the interpreter's start-up is."""
    before = len(list(root.glob("*.json")))
    deadline = time.monotonic() + timeout_s
    while len(list(root.glob("*.json"))) <= before:
        assert proc.poll() is None, "the writer exited before writing a run"
        assert time.monotonic() < deadline, f"the writer wrote no run within {timeout_s} s"
        time.sleep(0.02)


def test_killing_a_writer_mid_way_leaves_no_partial_run_file(tmp_path):
    root = tmp_path / "sweep"
    for delay in (0.01, 0.03, 0.08, 0.12, 0.2):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)],
                                cwd=os.path.dirname(os.path.dirname(__file__)))
        try:
            _wait_for_a_new_run_file(root, proc)
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    files = list(root.glob("*.json"))
    assert files
    for path in files:
        record = read_run_file(path)
        assert json.loads(path.read_text())["run_id"] == record.run_id
    assert len(SweepStore(root)) == len(files)


def test_export_and_reimport_as_json_lines(tmp_path):
    from bayeslr.cli import main
    from bayeslr.store import read_jsonl

    store = SweepStore(tmp_path / "a")
    store.put_many([make_record(lr=lr) for lr in (1e-3, 2e-3, 4e-3)])
    path = store.export(tmp_path / "sweep.jsonl.gz")
    assert sorted(r.run_id for r in read_jsonl(path)) == store.ids()
    assert main(["import", str(path), "--into", str(tmp_path / "b")]) == 0
    assert SweepStore(tmp_path / "b").ids() == store.ids()


def test_corrupt_json_lines_name_the_line(tmp_path, record):
    from bayeslr.store import read_jsonl

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record.to_dict()) + "\n{oops\n")
    with pytest.raises(SchemaError, match="bad.jsonl, line 2: malformed JSON"):
        read_jsonl(path)
