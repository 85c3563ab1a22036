"""The sweep store: a directory with one JSON file per run, named by the run's config hash.

Writes are atomic (temp file, fsync, hard link into place), so a writer killed mid-way leaves
no partial run file, and an interrupted sweep resumes by skipping the ids already present.
A run is never overwritten: writing the same record again is a no-op, writing a different
record under an existing id is an error.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayeslr.errors import SchemaError, StoreError
from bayeslr.schema import DIMS, RunConfig, RunRecord

RUN_SUFFIX = ".json"


class SweepStore:
    """A directory of run records; see the module docstring for its guarantees."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root}: exists and is not a directory; "
                             "choose a sweep directory")
        if not self.root.exists():
            if not create:
                raise StoreError(f"{self.root}: no such sweep directory")
            self.root.mkdir(parents=True)

    def path_for(self, run_id: str) -> Path:
        return self.root / f"{run_id}{RUN_SUFFIX}"

    def ids(self) -> list[str]:
        """Ids of the stored runs, sorted."""
        return sorted(p.name[: -len(RUN_SUFFIX)] for p in self.root.glob(f"*{RUN_SUFFIX}")
                      if not p.name.startswith("."))

    def __len__(self) -> int:
        return len(self.ids())

    def __contains__(self, item: str | RunConfig) -> bool:
        run_id = item.run_id() if isinstance(item, RunConfig) else item
        return self.path_for(run_id).exists()

    def get(self, run_id: str) -> RunRecord:
        return read_run_file(self.path_for(run_id))

    def records(self) -> Iterator[RunRecord]:
        for run_id in self.ids():
            yield self.get(run_id)

    def put(self, record: RunRecord) -> Path:
        """Write one record atomically; identical re-writes are no-ops, conflicts raise."""
        self.check_conflicts([record])
        return self._write(record)

    def put_many(self, records: Iterable[RunRecord]) -> list[Path]:
        """Write many records, all or none: every conflict is checked before the first write."""
        records = list(records)
        self.check_conflicts(records)
        return [self._write(record) for record in records]

    def check_conflicts(self, records: list[RunRecord]) -> None:
        """Raise StoreError if any record differs from one stored (or given) under its id."""
        seen: dict[str, dict[str, Any]] = {}
        for record in records:
            data = record.to_dict()
            previous = seen.setdefault(record.run_id, data)
            if previous != data:
                raise StoreError(f"two different records share run id {record.run_id}: same "
                                 "configuration, different outcomes; distinguish them (seed or "
                                 "another setting) before storing")
            path = self.path_for(record.run_id)
            if path.exists() and _read_json(path) != data:
                raise StoreError(f"{path}: a different record with this configuration is already "
                                 "stored; nothing was written (remove the file to replace it)")

    def _write(self, record: RunRecord) -> Path:
        path = self.path_for(record.run_id)
        if path.exists():
            return path
        text = json.dumps(record.to_dict(), indent=1, sort_keys=True, allow_nan=False)
        fd, tmp = tempfile.mkstemp(prefix=f".{record.run_id}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                if _read_json(path) != record.to_dict():
                    raise StoreError(f"{path}: written concurrently with a different record"
                                     ) from None
        finally:
            os.unlink(tmp)
        return path

    def export(self, path: str | os.PathLike[str]) -> Path:
        """Write every stored run to one JSON-lines file (gzip if it ends in .gz)."""
        return write_jsonl(self.records(), path)

    def to_frame(self) -> pd.DataFrame:
        """One row per run (tidy); see :func:`records_to_frame`."""
        return records_to_frame(self.records())

    def curves(self) -> xr.Dataset:
        """Loss curves of all runs; see :func:`records_to_curves`."""
        return records_to_curves(self.records())


def write_jsonl(records: Iterable[RunRecord], path: str | os.PathLike[str]) -> Path:
    """Write records as JSON lines (gzip when the name ends in .gz), atomically.

    The compact form for shipping a sweep: one record per line, same schema as the store.
    """
    path = Path(path)
    lines = [json.dumps(r.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
             for r in records]
    payload = ("\n".join(lines) + "\n").encode()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(payload)
    os.replace(tmp, path)
    return path


def read_jsonl(path: str | os.PathLike[str]) -> list[RunRecord]:
    """Read records written by :func:`write_jsonl`; errors name the file and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise SchemaError(f"{path}: cannot read as JSON lines ({err})") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise SchemaError(f"{path}, line {number}: malformed JSON ({err.msg})") from None
        records.append(RunRecord.from_dict(data, where=f"{path}, line {number}"))
    return records


def read_run_file(path: Path) -> RunRecord:
    """Read and validate one run file; errors name the file and field."""
    return RunRecord.from_dict(_read_json(path), where=str(path))


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as err:
        raise StoreError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise SchemaError(f"{path}: not a UTF-8 text file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SchemaError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: "
                          f"{err.msg}") from None


def record_row(record: RunRecord) -> dict[str, Any]:
    """Flatten a record to one table row: config fields by name, extra.* and meta.* columns."""
    cfg, out, meas = record.config, record.outcome, record.measurements
    row: dict[str, Any] = {"run_id": record.run_id, "config_id": cfg.config_id()}
    row.update(_fields(cfg.model))
    row["optimizer"] = cfg.optimizer.name
    row.update({k: v for k, v in _fields(cfg.optimizer).items() if k != "name"})
    row.update(_fields(cfg.train))
    row["batch_tokens"] = cfg.train.batch_tokens
    row.update({k: v for k, v in _fields(out).items() if k != "curve"})
    row["loss"] = out.loss
    row.update({k: v for k, v in _fields(meas).items() if k not in ("series", "top_eigenvalues")})
    row.update({f"extra.{k}": v for k, v in cfg.extra.items()})
    row.update({f"meta.{k}": v for k, v in record.metadata.items()})
    return row


def records_to_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """Tidy table, one row per run; losses in nats/token, NaN where unknown."""
    rows = [record_row(r) for r in records]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    for column in ("lr", "n_params", "tokens", "loss", "final_train_loss", "final_val_loss"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def records_to_curves(records: Iterable[RunRecord]) -> xr.Dataset:
    """Loss curves as an xarray Dataset with dims (run, step); NaN where a run has no point."""
    records = [r for r in records if r.outcome.curve is not None]
    steps = sorted({s for r in records for s in r.outcome.curve.step})
    index = {s: i for i, s in enumerate(steps)}
    train = np.full((len(records), len(steps)), np.nan)
    val = np.full_like(train, np.nan)
    for row, record in enumerate(records):
        curve = record.outcome.curve
        cols = [index[s] for s in curve.step]
        train[row, cols] = [np.nan if v is None else v for v in curve.train_loss]
        if curve.val_loss is not None:
            val[row, cols] = [np.nan if v is None else v for v in curve.val_loss]
    dims = (DIMS.RUN, DIMS.STEP)
    coords = {
        DIMS.RUN: [r.run_id for r in records],
        DIMS.STEP: steps,
        "lr": (DIMS.RUN, [r.config.optimizer.lr for r in records]),
        "optimizer": (DIMS.RUN, [r.config.optimizer.name for r in records]),
        "config_id": (DIMS.RUN, [r.config.config_id() for r in records]),
        "diverged": (DIMS.RUN, [r.outcome.diverged for r in records]),
    }
    data = {"train_loss": (dims, train), "val_loss": (dims, val)}
    return xr.Dataset(data, coords=coords, attrs={"units": "nats/token"})


def _fields(obj: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(obj).items()}
