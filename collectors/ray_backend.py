"""The Ray backend: a plan's pending runs (or vectorised groups) as Ray tasks on a cluster.

`collect_ray(plan, store, settings=RaySettings(address=...))` connects to a Ray cluster (or
starts a local one), submits one task per work item of `collectors.work.plan_work` with the
CPU and GPU resources of `RaySettings` (fractional GPUs let several tiny models share one
device), and stores each finished run in the same resumable `SweepStore` the local backend
uses. Ray is optional: it is imported only here, inside the functions.

Guarantees (the store's writes are atomic and never overwrite):
- each task writes its runs as soon as they are trained (`worker_writes=True`, the sweep
  directory on a file system all nodes share) and returns them as JSON-ready dicts, which
  the driver stores if they are still missing (`worker_writes=False`: the driver is the only
  writer, for clusters without a shared file system);
- a task whose worker process dies is retried by Ray up to `max_retries` times; a retried
  task first drops the runs already stored, so nothing is trained or written twice;
- a task that still fails leaves its runs missing: they are reported as failed and the next
  `collect` trains them. Completed runs are never lost or duplicated.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bayeslr.errors import PlanError
from bayeslr.schema import RunRecord
from bayeslr.store import SweepStore
from collectors.backends import CollectSummary, _describe, remove_stale_temps, store_record
from collectors.data import Corpus, load_corpus
from collectors.plan import Plan
from collectors.run import Execution
from collectors.shapes import Factory
from collectors.work import Item, drive, plan_work, refresh, run_item, train_item

INSTALL_HINT = "pip install 'bayeslr[ray]'"


@dataclass(frozen=True)
class RaySettings:
    """Where and with which resources the Ray tasks run."""

    address: str | None = None
    """Cluster to join ('auto', 'ray://head:10001', 'head:6379'); None starts a local Ray
    (or uses the one this process already initialised)."""
    cpus_per_run: float = 1.0
    """CPUs reserved per task; torch uses max(1, int(cpus_per_run)) threads on CPU."""
    gpus_per_run: float = 0.0
    """GPUs reserved per task; fractions (e.g. 0.25) let tiny models share one GPU. > 0
    trains on CUDA in bf16 (the plan must be expanded with precision='bf16')."""
    max_retries: int = 2
    """How often Ray re-runs a task whose worker process died (system failures only)."""
    num_cpus: int | None = None
    """Local Ray only: CPUs it may use (default: all of this machine's)."""
    worker_writes: bool = True
    """Tasks write their records into the sweep directory (it must be on a file system all
    nodes share); False: only the driver writes, from the records the tasks return."""

    def __post_init__(self) -> None:
        if not self.cpus_per_run > 0 or self.gpus_per_run < 0:
            raise PlanError(f"ray: need cpus_per_run > 0 and gpus_per_run >= 0, got "
                            f"{self.cpus_per_run!r} and {self.gpus_per_run!r}")
        if self.gpus_per_run > 1 and self.gpus_per_run != int(self.gpus_per_run):
            raise PlanError(f"ray: gpus_per_run above 1 must be whole, got {self.gpus_per_run}")
        if self.max_retries < 0:
            raise PlanError(f"ray: max_retries must be >= 0, got {self.max_retries!r}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise PlanError(f"ray: num_cpus must be >= 1, got {self.num_cpus!r}")

    @property
    def device(self) -> str:
        """Where each task trains: 'cuda' when it reserves GPUs, else 'cpu'."""
        return "cuda" if self.gpus_per_run > 0 else "cpu"

    @property
    def precision(self) -> str:
        """The precision the tasks train in (part of every run's identity)."""
        return "bf16" if self.gpus_per_run > 0 else "fp32"


def import_ray() -> Any:
    """The `ray` module, or a PlanError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise PlanError(f"the Ray backend needs Ray, which is not installed: {INSTALL_HINT} "
                        "(or use the local backend)") from None
    return ray


def collect_ray(plan: Plan, store: SweepStore | str | os.PathLike[str], *,
                settings: RaySettings | None = None, vectorize: int | None = None,
                execution: Execution | None = None, limit: int | None = None,
                quiet: bool = False, factory: Factory | None = None) -> CollectSummary:
    """Train every run of `plan` missing from `store` as Ray tasks; returns a summary.

    `vectorize` K > 1 trains runs that differ only in LR/seed in batched groups of up to K
    (one task per group). From `execution` only `threads` and `check_every` are used: the
    device follows `settings.gpus_per_run`. `factory` must be picklable (module-level)."""
    ray = import_ray()
    settings, execution = settings or RaySettings(), execution or Execution()
    _check_precision(plan, settings)
    store = store if isinstance(store, SweepStore) else SweepStore(store)
    began = time.perf_counter()
    started = _connect(ray, settings)
    try:
        _check_resources(ray, settings)
        remove_stale_temps(store)
        items, skipped = plan_work(plan, store, vectorize=vectorize, limit=limit)
        items = sorted(items, key=lambda i: -i.cost)
        errors: list[str] = []
        results = _submit_and_gather(ray, items, store, settings, execution, factory, errors)
        tally = drive(results, total=sum(len(i.pending) for i in items),
                      desc=f"collect {plan.name} (ray)", quiet=quiet)
    finally:
        if started:
            ray.shutdown()
    tally["skipped"] += skipped
    remove_stale_temps(store)
    return CollectSummary(planned=len(plan.specs), wall_time_s=time.perf_counter() - began,
                          store=str(store.root), errors=tuple(errors), **tally)


def _check_precision(plan: Plan, settings: RaySettings) -> None:
    wrong = [s for s in plan.specs if s.config.train.precision != settings.precision]
    if wrong:
        have = wrong[0].config.train.precision
        raise PlanError(f"the plan was expanded for {have} runs but the Ray tasks train in "
                        f"{settings.precision} (gpus_per_run={settings.gpus_per_run:g}); load "
                        f"the plan with precision={settings.precision!r}")


def _connect(ray: Any, settings: RaySettings) -> bool:
    """Join or start Ray unless this process already did; True if we started it here."""
    if ray.is_initialized():
        return False
    local = settings.address is None
    ray.init(address=settings.address, num_cpus=settings.num_cpus if local else None,
             include_dashboard=False if local else None, log_to_driver=False,
             logging_level=logging.WARNING)
    return True


def _check_resources(ray: Any, settings: RaySettings) -> None:
    """Fail fast instead of queueing tasks no node can ever run."""
    have = ray.cluster_resources()
    for name, need in (("CPU", settings.cpus_per_run), ("GPU", settings.gpus_per_run)):
        if need and have.get(name, 0.0) < need:
            raise PlanError(f"each task asks for {need:g} {name} but the Ray cluster has "
                            f"{have.get(name, 0.0):g}; lower --{name.lower()}s-per-run or add "
                            "nodes")


def _submit_and_gather(ray: Any, items: list[Item], store: SweepStore, settings: RaySettings,
                       execution: Execution, factory: Factory | None, errors: list[str]
                       ) -> Iterator[tuple[str, str]]:
    """Submit one task per item; yield (run id, status) as tasks finish."""
    task = ray.remote(run_task).options(
        num_cpus=settings.cpus_per_run, num_gpus=settings.gpus_per_run,
        max_retries=settings.max_retries, retry_exceptions=False)
    job = TaskJob(store_root=str(store.root.resolve()), device=settings.device,
                  threads=execution.threads or max(1, int(settings.cpus_per_run)),
                  check_every=execution.check_every, worker_writes=settings.worker_writes)
    refs = {task.remote(item, job, factory): item for item in items}
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            item = refs.pop(done[0])
            try:
                returned = ray.get(done[0])
            except ray.exceptions.RayError as err:
                errors.append(_describe(item, _cause(err)))
                yield from _after_failure(item, store)
                continue
            yield from _stored(returned, store)
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)


def _cause(err: Exception) -> Exception:
    """The user's exception inside a RayTaskError, else the Ray error itself."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, Exception) else err


def _after_failure(item: Item, store: SweepStore) -> Iterator[tuple[str, str]]:
    """Runs of a failed task: stored ones (before the failure) count, the rest failed."""
    present = set(store.ids())
    for run_id in sorted(item.pending):
        yield run_id, "done" if run_id in present else "failed"


def _stored(returned: list[tuple[str, str, dict | None]], store: SweepStore
            ) -> Iterator[tuple[str, str]]:
    """Store the records a task returned (unless it stored them); yield their statuses."""
    for run_id, status, data in returned:
        if data is not None:
            status = store_record(store, RunRecord.from_dict(data, where=f"run {run_id}"))
        yield run_id, status


@dataclass(frozen=True)
class TaskJob:
    """What every task needs besides its item (sent with each task)."""

    store_root: str
    device: str
    threads: int
    check_every: int | None
    worker_writes: bool


def run_task(item: Item, job: TaskJob, factory: Factory | None
             ) -> list[tuple[str, str, dict | None]]:
    """Body of one Ray task: train the item's runs not stored yet; returns (id, status,
    record dict or None when the task stored it itself)."""
    execution = Execution(device=job.device, threads=job.threads, check_every=job.check_every)
    store = SweepStore(job.store_root)
    left = refresh(item, store)
    if left is None:
        return []
    options = left.specs[0].options
    corpus = _corpus(options.corpus, options.val_fraction)
    if job.worker_writes:
        return [(run_id, status, None)
                for run_id, status in run_item(left, corpus, store, execution, factory)]
    return [(r.run_id, "diverged" if r.outcome.diverged else "done", r.to_dict())
            for r in train_item(left, corpus, execution, factory)]


@functools.lru_cache(maxsize=2)
def _corpus(source: str, val_fraction: float) -> Corpus:
    """The corpus, read once per worker process."""
    return load_corpus(source, val_fraction=val_fraction)

