"""Import external sweep tables (CSV) as run records.

The column contract (docs/data.md): required columns `model_params`, `tokens`, `batch_size`,
`optimizer`, `lr`, `loss`; optional columns with a known meaning are mapped onto the schema;
every other column is kept. Columns named like hyperparameters (their name has a word such as
lr, beta, eps, decay, warmup, momentum, dropout, clip, seed, schedule, hparams) distinguish
runs and go into the configuration's `extra`; the rest is provenance kept in `metadata`.
A loss that is missing, not a number, infinite or written like ">10" marks the run diverged.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bayeslr.errors import ImportCSVError, SchemaError
from bayeslr.schema import (
    ModelShape,
    OptimizerConfig,
    RunConfig,
    RunOutcome,
    RunRecord,
    TrainConfig,
)

REQUIRED = ("model_params", "tokens", "batch_size", "optimizer", "lr", "loss")

MODEL_COLUMNS = {
    "model_params": "n_params", "arch": "arch", "total_params": "n_params_total",
    "hidden_size": "d_model", "d_model": "d_model", "width": "d_model",
    "n_layers": "n_layers", "depth": "n_layers", "n_heads": "n_heads",
    "ffn_hidden_size": "d_ff", "d_ff": "d_ff", "vocab_size": "vocab_size",
    "parameterization": "parameterization",
}
OPTIMIZER_COLUMNS = {
    "optimizer": "name", "lr": "lr", "weight_decay": "weight_decay", "beta1": "beta1",
    "beta2": "beta2", "eps": "eps", "momentum": "momentum", "nesterov": "nesterov",
    "alpha": "alpha", "max_grad_norm": "max_grad_norm",
}
TRAIN_COLUMNS = {
    "tokens": "tokens", "batch_size": "batch_size", "seq_len": "seq_len",
    "train_steps": "steps", "steps": "steps", "schedule": "schedule",
    "warmup": "warmup_steps", "warmup_steps": "warmup_steps", "min_lr_ratio": "min_lr_ratio",
    "seed": "seed", "precision": "precision",
}
OUTCOME_COLUMNS = ("loss", "diverged", "train_loss", "val_loss", "wall_time_s", "flops", "device")

HYPERPARAMETER_WORDS = {
    "lr", "beta", "beta1", "beta2", "eps", "epsilon", "decay", "warmup", "momentum",
    "dropout", "clip", "seed", "schedule", "hparams", "hparam", "hyperparameters", "init",
    "nesterov", "rho", "alpha", "lambda", "temperature",
}

INT_FIELDS = {"d_model", "n_layers", "n_heads", "d_ff", "vocab_size", "batch_size", "seq_len",
              "steps", "warmup_steps", "seed"}
TEXT_FIELDS = {"arch", "parameterization", "name", "schedule", "precision"}
BOOL_FIELDS = {"nesterov"}


def read_sweep_csv(
    path: str | os.PathLike[str],
    *,
    key_columns: Sequence[str] = (),
    meta_columns: Sequence[str] = (),
) -> list[RunRecord]:
    """Read an external sweep CSV into validated run records, one per row.

    `key_columns` / `meta_columns` override which extra columns distinguish runs and which are
    only provenance. Raises ImportCSVError naming the file, row and field.
    """
    path = Path(path)
    rows, header = _read_rows(path)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ImportCSVError(f"{path}: missing required column(s) {missing}; required: "
                             f"{', '.join(REQUIRED)} (see docs/data.md)")
    keys = _key_columns(header, key_columns, meta_columns, path)
    records = [_row_record(row, keys, path, line) for line, row in rows]
    _check_unique(records, rows, path)
    return records


def _read_rows(path: Path) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in reader.fieldnames or []]
            if not header:
                raise ImportCSVError(f"{path}: empty file or no header row")
            if len(set(header)) != len(header):
                raise ImportCSVError(f"{path}: duplicated column names in the header")
            reader.fieldnames = header
            rows = []
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise ImportCSVError(f"{path}, line {reader.line_num}: expected "
                                         f"{len(header)} fields, got a different number")
                rows.append((reader.line_num, row))
    except OSError as err:
        raise ImportCSVError(f"{path}: cannot read ({err.strerror})") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise ImportCSVError(f"{path}: not a readable CSV file ({err})") from None
    if not rows:
        raise ImportCSVError(f"{path}: no data rows")
    return rows, header


def _key_columns(header: Iterable[str], key_columns: Sequence[str],
                 meta_columns: Sequence[str], path: Path) -> set[str]:
    known = set(MODEL_COLUMNS) | set(OPTIMIZER_COLUMNS) | set(TRAIN_COLUMNS) | set(OUTCOME_COLUMNS)
    extra = [c for c in header if c not in known]
    for name in (*key_columns, *meta_columns):
        if name not in extra:
            raise ImportCSVError(f"{path}: --key/--meta column {name!r} is not an extra column "
                                 f"of this file; extra columns: {extra}")
    chosen = {c for c in extra if _looks_like_hyperparameter(c)}
    return (chosen | set(key_columns)) - set(meta_columns)


def _looks_like_hyperparameter(column: str) -> bool:
    return bool(set(re.split(r"[^a-z0-9]+", column.lower())) & HYPERPARAMETER_WORDS)


def _row_record(row: dict[str, str], keys: set[str], path: Path, line: int) -> RunRecord:
    where = f"{path}, line {line}"
    try:
        model = {MODEL_COLUMNS[c]: _cell(v, MODEL_COLUMNS[c], where, c)
                 for c, v in row.items() if c in MODEL_COLUMNS}
        optimizer = {OPTIMIZER_COLUMNS[c]: _cell(v, OPTIMIZER_COLUMNS[c], where, c)
                     for c, v in row.items() if c in OPTIMIZER_COLUMNS}
        train = {TRAIN_COLUMNS[c]: _cell(v, TRAIN_COLUMNS[c], where, c)
                 for c, v in row.items() if c in TRAIN_COLUMNS}
        if "seq_len" in train and "context" not in model:
            model["context"] = train["seq_len"]
        config = RunConfig(
            model=ModelShape(**_present(model)),
            optimizer=OptimizerConfig(**_present(optimizer)),
            train=TrainConfig(**_present(train)),
            extra={c: _json_value(row[c]) for c in sorted(keys) if row[c].strip() != ""},
        )
        outcome = _outcome(row, where)
    except SchemaError as err:
        message = str(err)
        raise ImportCSVError(message if message.startswith(str(path)) else f"{where}: {message}"
                             ) from None
    except TypeError as err:
        raise ImportCSVError(f"{where}: {err}") from None
    metadata = {c: _json_value(v) for c, v in row.items()
                if c not in keys and not _is_mapped(c) and v.strip() != ""}
    metadata["import_source"] = path.name
    return RunRecord(config=config, outcome=outcome, metadata=metadata)


def _outcome(row: dict[str, str], where: str) -> RunOutcome:
    loss = _loss(row["loss"])
    flag = row.get("diverged", "").strip().lower()
    if flag not in ("", "0", "1", "true", "false", "0.0", "1.0", "yes", "no"):
        raise ImportCSVError(f"{where}: field 'diverged': expected 0/1 or true/false, got {flag!r}")
    diverged = flag in ("1", "true", "1.0", "yes") or loss is None
    values = {"final_val_loss": loss}
    for column, name in (("train_loss", "final_train_loss"), ("val_loss", "final_val_loss"),
                         ("wall_time_s", "wall_time_s"), ("flops", "flops")):
        if row.get(column, "").strip():
            values[name] = _loss(row[column]) if "loss" in column else _number(row[column], where,
                                                                               column)
    device = row.get("device", "").strip() or None
    return RunOutcome(diverged=diverged, device=device, **values)


def _cell(text: str, name: str, where: str, column: str) -> Any:
    text = text.strip()
    if text == "":
        return None
    if name in TEXT_FIELDS:
        return text
    if name in BOOL_FIELDS:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ImportCSVError(f"{where}: field {column!r}: expected true/false, got {text!r}")
    value = _number(text, where, column)
    if name in INT_FIELDS:
        if not value.is_integer():
            raise ImportCSVError(f"{where}: field {column!r}: expected an integer, got {text!r}")
        return int(value)
    return value


def _number(text: str, where: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ImportCSVError(f"{where}: field {column!r}: expected a number, got {text!r}"
                             ) from None
    if math.isnan(value):
        raise ImportCSVError(f"{where}: field {column!r}: expected a number, got NaN")
    return value


def _loss(text: str) -> float | None:
    """A finite loss, or None for blank / NaN / inf / '>10'-style entries (diverged)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _json_value(text: str) -> Any:
    text = text.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return text
    return value


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _is_mapped(column: str) -> bool:
    return (column in MODEL_COLUMNS or column in OPTIMIZER_COLUMNS or column in TRAIN_COLUMNS
            or column in OUTCOME_COLUMNS)


def _check_unique(records: list[RunRecord], rows: list[tuple[int, dict]], path: Path) -> None:
    first_line: dict[str, int] = {}
    for record, (line, _) in zip(records, rows, strict=True):
        earlier = first_line.setdefault(record.run_id, line)
        if earlier != line:
            raise ImportCSVError(
                f"{path}: lines {earlier} and {line} describe the same configuration; add a "
                "seed column or name the distinguishing column with --key-columns")
