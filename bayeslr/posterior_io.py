"""Saving and loading posteriors: one netCDF file that describes itself.

The file holds the ArviZ groups (posterior, sample_stats, log_likelihood), a `bayeslr_runs`
group with the run table the model was fitted on, and root attributes: the file format,
package and schema versions, the ModelSpec (JSON), the data hash of the model inputs, the
standardization and the merged priors. Loading checks all of them; any mismatch or a corrupt
file raises PosteriorError naming the file and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayeslr.errors import BayesLRError, PosteriorError

FORMAT = "bayeslr-posterior"
FORMAT_VERSION = 1
"""Version of the saved-posterior layout and model semantics; bump when either changes."""
RUNS_GROUP = "bayeslr_runs"

BOOL_COLUMNS = ("diverged",)
NUMERIC_COLUMNS = ("lr", "loss", "n_params", "tokens", "batch_size", "seq_len", "batch_tokens",
                   "d_model", "n_layers", "n_heads", "lambda_max", "effective_lr",
                   "final_train_loss", "final_val_loss")


def normalize_table(table: pd.DataFrame) -> pd.DataFrame:
    """A copy whose columns survive netCDF exactly: known numeric columns as float,
    `diverged` as bool, other text/mixed columns as strings ('' for missing)."""
    out = pd.DataFrame(index=pd.RangeIndex(len(table)))
    for column in table.columns:
        values = table[column].reset_index(drop=True)
        if column in BOOL_COLUMNS:
            out[column] = _as_bool(values)
        elif column in NUMERIC_COLUMNS:
            out[column] = pd.to_numeric(values, errors="coerce").astype(float)
        elif pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            out[column] = values
        else:
            out[column] = [("" if _missing(v) else str(v)) for v in values]
            out[column] = out[column].astype(object)
    return out


def save(path: str | os.PathLike[str], idata: xr.DataTree, table: pd.DataFrame,
         attrs: dict[str, Any]) -> Path:
    """Write posterior groups, the run table and self-description to a netCDF file."""
    from bayeslr import __version__
    from bayeslr.schema import SCHEMA_VERSION

    path = Path(path)
    groups = {name.strip("/"): idata[name].to_dataset() for name in idata.groups
              if name not in ("/",) and "warmup" not in name}
    groups[RUNS_GROUP] = _table_dataset(table)
    root = xr.Dataset(attrs={
        "bayeslr_format": FORMAT, "bayeslr_format_version": FORMAT_VERSION,
        "bayeslr_version": __version__, "schema_version": SCHEMA_VERSION,
        **{k: (json.dumps(v) if not isinstance(v, str) else v) for k, v in attrs.items()}})
    tree = xr.DataTree.from_dict({"/": root, **groups})
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tree.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, path)
    except OSError as err:
        raise PosteriorError(f"{path}: cannot write ({err})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load(path: str | os.PathLike[str]) -> tuple[xr.DataTree, pd.DataFrame, dict[str, Any]]:
    """Read a saved posterior; returns (ArviZ tree, run table, root attrs)."""
    from bayeslr.schema import SCHEMA_VERSION

    path = Path(path)
    if not path.is_file():
        raise PosteriorError(f"{path}: no such posterior file (fit one with `bayeslr fit`)")
    try:
        with xr.open_datatree(path, engine="h5netcdf") as tree:
            tree = tree.load()
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise PosteriorError(f"{path}: not a readable posterior file (corrupt or not netCDF: "
                             f"{type(err).__name__}); fit it again with `bayeslr fit`") from None
    attrs = dict(tree.attrs)
    if attrs.get("bayeslr_format") != FORMAT:
        raise PosteriorError(f"{path}: not a bayeslr posterior (no bayeslr_format attribute)")
    version = attrs.get("bayeslr_format_version")
    if version != FORMAT_VERSION or attrs.get("schema_version") != SCHEMA_VERSION:
        raise PosteriorError(
            f"{path}: written by bayeslr {attrs.get('bayeslr_version')} (posterior format "
            f"{version}, schema {attrs.get('schema_version')}); this bayeslr reads format "
            f"{FORMAT_VERSION}, schema {SCHEMA_VERSION}: refit with `bayeslr fit`, or use the "
            "bayeslr version that wrote it")
    if RUNS_GROUP not in tree.children or "posterior" not in tree.children:
        raise PosteriorError(f"{path}: incomplete posterior file (missing the posterior or the "
                             "run table); fit it again")
    table = _table_frame(tree[RUNS_GROUP].to_dataset())
    groups = {f"/{name}": tree[name].to_dataset() for name in tree.children
              if name != RUNS_GROUP}
    return xr.DataTree.from_dict(groups), table, attrs


def read_json_attr(attrs: dict[str, Any], name: str, path: Any) -> Any:
    try:
        return json.loads(attrs[name])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise PosteriorError(f"{path}: attribute {name!r} missing or corrupt; fit again"
                             ) from None


def _table_dataset(table: pd.DataFrame) -> xr.Dataset:
    data = {}
    for i, column in enumerate(table.columns):
        values = table[column]
        if values.dtype == object or pd.api.types.is_string_dtype(values):
            array = np.array([str(v) for v in values], dtype=str)
        else:
            array = values.to_numpy()
        data[f"col_{i}"] = ("run", array)
    return xr.Dataset(data, attrs={"columns": json.dumps([str(c) for c in table.columns])})


def _table_frame(ds: xr.Dataset) -> pd.DataFrame:
    try:
        columns = json.loads(ds.attrs["columns"])
        data = {name: ds[f"col_{i}"].values for i, name in enumerate(columns)}
    except (KeyError, json.JSONDecodeError, BayesLRError):
        raise PosteriorError("the run table inside the posterior file is corrupt; fit again"
                             ) from None
    frame = pd.DataFrame(data)
    for column in frame.columns:
        if frame[column].dtype.kind == "U" or pd.api.types.is_string_dtype(frame[column]):
            frame[column] = frame[column].astype(object)
    return frame


def _as_bool(values: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(values):
        return values.astype(bool)
    if pd.api.types.is_numeric_dtype(values):
        return values.fillna(0).astype(float) != 0
    text = values.astype(object).map(lambda v: "" if _missing(v) else str(v).strip().lower())
    return text.isin(("1", "1.0", "true", "t", "yes", "y"))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))
