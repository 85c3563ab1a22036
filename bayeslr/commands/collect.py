"""`bayeslr collect PLAN --into SWEEPDIR`: train every run of a sweep plan not yet stored.

Runs already in SWEEPDIR are skipped, so running the same command again after a crash or a
kill resumes the plan; each finished run is written atomically. The plan format is described
in docs/collectors.md. Torch and Lightning are imported only when the command runs.
"""

from __future__ import annotations

import argparse

from bayeslr.commands._scale import add_scale_arguments, collect_scaled, is_scaled, plan_precision

PRECISIONS = {"auto": None, "fp32": False, "bf16": True}
"""--precision choices and the `Execution.bf16` each stands for."""
HELP = "train the runs of a sweep plan (TOML) into a sweep dir; resumes where it stopped"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", metavar="PLAN", help="sweep plan file (.toml), e.g. "
                        "collectors/plans/tiny.toml")
    parser.add_argument("--into", required=True, metavar="SWEEPDIR",
                        help="sweep directory (created if missing); stored runs are skipped")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="parallel worker processes (default 1: train in this process)")
    parser.add_argument("--threads", type=int, default=None, metavar="T",
                        help="torch threads per process (default 1 on CPU and per worker; with "
                        "more cores use --workers first)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to train (auto: CUDA with bf16 when present, else CPU)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on CPU; fp32: also on CUDA "
                        "(the precision of CPU runs, so one sweep can mix devices)")
    parser.add_argument("--steps-progress", action="store_true",
                        help="also show Lightning's progress bar over each run's steps")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="train at most about N runs in this call (a WSD trunk and its "
                        "branches are trained together)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the plan and count pending runs; train nothing")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_scale_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from bayeslr.errors import PlanError
    from collectors.backends import collect
    from collectors.plan import load_plan
    from collectors.run import Execution

    if args.workers < 1 or (args.limit is not None and args.limit < 1):
        raise PlanError("--workers and --limit must be >= 1")
    execution = Execution(device=args.device, threads=args.threads,
                          steps_progress=args.steps_progress, bf16=PRECISIONS[args.precision])
    plan = load_plan(args.plan, precision=plan_precision(args, execution))
    if args.dry_run:
        return _dry_run(plan, args.into)
    summary = (collect_scaled(plan, args, execution) if is_scaled(args) else
               collect(plan, args.into, workers=args.workers, execution=execution,
                       limit=args.limit, quiet=args.quiet))
    if args.json:
        print(json.dumps(asdict(summary)))
    else:
        print(f"collect {plan.name}: {summary.done} runs done ({summary.diverged} diverged), "
              f"{summary.skipped} already stored, {summary.failed} failed, of "
              f"{summary.planned} planned; {summary.wall_time_s:.1f} s on {execution.label} "
              f"-> {summary.store}")
        for error in summary.errors:
            print(f"  failed: {error}")
    return 1 if summary.failed else 0


def _dry_run(plan, into: str) -> int:
    """Print what a collect would do; nothing is written (the directory is not created)."""
    from pathlib import Path

    from bayeslr.store import SweepStore

    present = set(SweepStore(into).ids()) if Path(into).is_dir() else set()
    pending = sum(1 for s in plan.specs if s.run_id not in present)
    print(f"plan {plan.name}: {len(plan.specs)} runs, {pending} not yet in {into}; corpus "
          f"{plan.corpus.name} ({len(plan.corpus.train)} train / {len(plan.corpus.val)} "
          "validation bytes)")
    return 0
