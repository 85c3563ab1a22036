"""Scale-out options of `bayeslr collect`: vectorised LR groups and the Ray backend.

`--vectorize K` trains runs that differ only in LR and seed in batched groups of up to K
(collectors.vectorized); `--backend ray` schedules runs or groups as Ray tasks
(collectors.ray_backend). Neither changes the plan file or the sweep directory's format.
Torch, Lightning and Ray are imported only when a collect runs.
"""

from __future__ import annotations

import argparse
from typing import Any

BACKENDS = ("local", "ray")


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """The scale-out options (all optional; the default is the local backend, one by one)."""
    group = parser.add_argument_group("scale-out")
    group.add_argument("--backend", choices=BACKENDS, default="local",
                       help="local (default: this machine) or ray (tasks on a Ray cluster; "
                       "needs pip install 'bayeslr[ray]')")
    group.add_argument("--vectorize", type=int, default=None, metavar="K",
                       help="train runs that differ only in LR/seed in batched groups of up "
                       "to K (one computation per step; best on a GPU)")
    group.add_argument("--address", default=None, metavar="ADDR",
                       help="ray: cluster to join ('auto', 'ray://head:10001'); default: start "
                       "a local Ray with --workers CPUs (all if not given)")
    group.add_argument("--cpus-per-run", type=float, default=1.0, metavar="C",
                       help="ray: CPUs reserved per task (torch threads = int(C)); default 1")
    group.add_argument("--gpus-per-run", type=float, default=0.0, metavar="G",
                       help="ray: GPUs reserved per task, fractions allowed (0.25: four tiny "
                       "runs share a GPU); > 0 trains on CUDA in bf16; default 0 (CPU)")
    group.add_argument("--max-retries", type=int, default=2, metavar="R",
                       help="ray: re-runs of a task whose worker died (default 2); runs still "
                       "missing are trained by the next collect")
    group.add_argument("--driver-writes", action="store_true",
                       help="ray: only this process writes the sweep dir (for clusters without "
                       "a shared file system); default: tasks write their runs themselves")


def is_scaled(args: argparse.Namespace) -> bool:
    """Whether the scale-out path handles this collect."""
    return args.backend != "local" or args.vectorize is not None


def plan_precision(args: argparse.Namespace, execution: Any) -> str:
    """The precision runs are planned with: Ray tasks with GPUs train in bf16."""
    from bayeslr.errors import PlanError

    if args.backend == "ray":
        if args.precision != "auto":
            raise PlanError("--precision is not supported with --backend ray: Ray tasks with "
                            "GPUs train in bf16, CPU tasks in fp32")
        return "bf16" if args.gpus_per_run > 0 else "fp32"
    return execution.precision


def collect_scaled(plan: Any, args: argparse.Namespace, execution: Any) -> Any:
    """Run the collect with vectorised groups and/or on Ray; returns its CollectSummary."""
    from bayeslr.errors import PlanError

    if args.vectorize is not None and args.vectorize < 1:
        raise PlanError(f"--vectorize must be >= 1, got {args.vectorize}")
    if args.backend == "local":
        if args.workers > 1:
            raise PlanError("--vectorize with --workers > 1 is not supported locally; use "
                            "--backend ray to run vectorised groups in parallel")
        from collectors.work import collect_vectorized

        return collect_vectorized(plan, args.into, vectorize=args.vectorize,
                                  execution=execution, limit=args.limit, quiet=args.quiet)
    from collectors.ray_backend import RaySettings, collect_ray

    if args.device == "cpu" and args.gpus_per_run > 0:
        raise PlanError("--device cpu contradicts --gpus-per-run > 0; drop one of them")
    if args.device == "cuda" and args.gpus_per_run == 0:
        raise PlanError("with --backend ray, say how much GPU each run gets: --gpus-per-run "
                        "(e.g. 1, or 0.25 for tiny models)")
    settings = RaySettings(address=args.address, cpus_per_run=args.cpus_per_run,
                           gpus_per_run=args.gpus_per_run, max_retries=args.max_retries,
                           num_cpus=args.workers if args.workers > 1 else None,
                           worker_writes=not args.driver_writes)
    return collect_ray(plan, args.into, settings=settings, vectorize=args.vectorize,
                       execution=execution, limit=args.limit, quiet=args.quiet)
