"""Export a collected sweep for shipping, with derived summaries refreshed from its series.

    python -m collectors.export SWEEPDIR OUT.jsonl.gz

Every record's `effective_lr` is recomputed from its stored effective-LR series by the current
rule (collectors.callbacks.peak_effective_lr), and each WSD branch gets its trunk's series up
to the branch point, so a sweep collected over several versions of the collectors ships with
one definition. Losses, curves and configurations are copied unchanged; the run ids stay.
The output is JSON lines (bayeslr.store.write_jsonl); an existing file is never overwritten.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from bayeslr.errors import StoreError
from bayeslr.schema import RunRecord
from bayeslr.store import SweepStore, write_jsonl
from collectors.callbacks import effective_lr_of, with_trunk_history
from collectors.optim import schedule_of


def refreshed(records: list[RunRecord]) -> list[RunRecord]:
    """The records with `effective_lr` (and branch series) recomputed; see module docstring."""
    by_id = {r.run_id: r for r in records}
    out = []
    for record in records:
        schedule = schedule_of(record.config.train)
        trunk = by_id.get(record.config.train.trunk or "")
        branch_step = record.metadata.get("branched_at")
        if trunk is not None and branch_step is not None:
            measured = with_trunk_history(record.measurements, trunk.measurements,
                                          int(branch_step), schedule)
        else:
            measured = replace(record.measurements,
                               effective_lr=effective_lr_of(record.measurements.series,
                                                            schedule))
        out.append(replace(record, measurements=measured))
    return out


def export_sweep(store: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write the refreshed records of a sweep directory to `out` (.jsonl or .jsonl.gz)."""
    out = Path(out)
    if out.exists():
        raise StoreError(f"{out}: exists; choose a new file name (exports never overwrite)")
    records = sorted(SweepStore(store, create=False).records(), key=lambda r: r.run_id)
    return write_jsonl(refreshed(records), out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="sweep directory")
    parser.add_argument("out", help="output file (.jsonl or .jsonl.gz)")
    args = parser.parse_args(argv)
    path = export_sweep(args.sweep, args.out)
    print(f"exported {args.sweep} -> {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
