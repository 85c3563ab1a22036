"""`bayeslr sharpness SWEEPDIR -o DIR`: one plot per run of its sharpness over training.

Each PNG shows the run's top Hessian eigenvalue over steps against gradient descent's
stability edge 2/lr ((2 + 2 momentum)/lr with momentum) and, for Adam-like optimizers, the
preconditioned sharpness against (2 + 2 beta1)/((1 - beta1) lr), at the run's peak LR. Only
runs collected with `measure.sharpness_every` have the series (docs/hessian.md).
"""

from __future__ import annotations

import argparse

HELP = "plot each run's sharpness over training against the edge-of-stability thresholds"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", metavar="SWEEPDIR", help="sweep directory of run records")
    parser.add_argument("-o", "--out", required=True, metavar="DIR",
                        help="output directory (created if missing; files are overwritten)")
    parser.add_argument("--runs", default=None, metavar="ID,ID",
                        help="only these run ids (or unique prefixes of them)")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNGs (100)")


def run(args: argparse.Namespace) -> int:
    from bayeslr.errors import StoreError
    from bayeslr.sharpness_plot import has_sharpness, write_run_plots
    from bayeslr.store import SweepStore

    store = SweepStore(args.sweep, create=False)
    ids = store.ids()
    if args.runs:
        wanted = [w.strip() for w in args.runs.split(",") if w.strip()]
        chosen = []
        for prefix in wanted:
            matches = [i for i in ids if i.startswith(prefix)]
            if len(matches) != 1:
                raise StoreError(f"--runs: {prefix!r} matches {len(matches)} runs in "
                                 f"{args.sweep}; give a unique run id prefix")
            chosen.append(matches[0])
        ids = chosen
    records = [store.get(i) for i in ids]
    if not any(has_sharpness(r) for r in records):
        raise StoreError(f"{args.sweep}: none of the {len(records)} run(s) has a sharpness "
                         "series; collect with measure.sharpness_every in the plan")
    written = write_run_plots(records, args.out, dpi=args.dpi)
    print(f"wrote {len(written)} sharpness plot(s) to {args.out}")
    return 0
