"""`bayeslr import FILE --into SWEEPDIR`: add external sweeps to a sweep store.

FILE is a CSV table (docs/data.md) or run records as JSON lines (`.jsonl`, `.jsonl.gz`, as
written by `SweepStore.export`).
"""

from __future__ import annotations

import argparse

HELP = "import external sweeps (CSV table or JSON-lines records) into a sweep dir"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", metavar="FILE",
                        help="CSV with columns model_params, tokens, batch_size, optimizer, lr, "
                        "loss (+ optional ones; see docs/data.md), or .jsonl[.gz] run records")
    parser.add_argument("--into", required=True, metavar="SWEEPDIR",
                        help="sweep directory (created if missing); existing runs are kept")
    parser.add_argument("--key-columns", default="", metavar="A,B",
                        help="extra columns that distinguish runs (default: hyperparameter-like "
                        "names)")
    parser.add_argument("--meta-columns", default="", metavar="A,B",
                        help="extra columns that are provenance only")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from bayeslr.importers import read_sweep_csv
    from bayeslr.store import SweepStore, read_jsonl

    if args.csv.endswith((".jsonl", ".jsonl.gz")):
        records = read_jsonl(args.csv)
    else:
        records = read_sweep_csv(args.csv, key_columns=_split(args.key_columns),
                                 meta_columns=_split(args.meta_columns))
    store = SweepStore(args.into)
    before = set(store.ids())
    store.put_many(records)
    summary = {
        "rows": len(records),
        "added": len({r.run_id for r in records} - before),
        "already_present": len({r.run_id for r in records} & before),
        "diverged": sum(r.outcome.diverged for r in records),
        "optimizers": sorted({r.config.optimizer.name for r in records}),
        "store": str(store.root),
        "runs_in_store": len(store),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"imported {summary['rows']} rows into {summary['store']}: {summary['added']} "
              f"new, {summary['already_present']} already present, {summary['diverged']} "
              f"diverged; optimizers {', '.join(summary['optimizers'])}; "
              f"{summary['runs_in_store']} runs in the store")
    return 0


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
