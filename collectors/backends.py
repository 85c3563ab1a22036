"""Run a plan into a sweep store: every run not stored yet, each written atomically.

The local backend trains in this process (`workers=1`) or in N spawned processes
(`workers=N`, each with its own torch threads on CPU, or sharing the GPU). Each finished run
is written with `SweepStore.put` (temp file + link), so killing `collect` at any moment and
running it again completes the plan with every run stored exactly once: runs already in the
store are skipped, a run cut off mid-way is simply trained again.

Runs that branch off a shared WSD trunk (`train.trunk`) are trained together as one unit: the
trunk run once, then each pending cool-down from a snapshot of the trunk.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from bayeslr.errors import StoreError
from bayeslr.schema import RunRecord
from bayeslr.store import SweepStore
from collectors.callbacks import with_trunk_history
from collectors.data import Corpus, load_corpus
from collectors.optim import schedule_of
from collectors.plan import Plan, RunSpec
from collectors.run import Execution, train
from collectors.shapes import Factory

STALE_TEMP_S = 5.0
"""Temp files of the store older than this (seconds) are left-overs of a killed writer."""


@dataclass(frozen=True)
class Unit:
    """Runs trained together: one run, or a WSD trunk and its cool-down branches."""

    specs: tuple[RunSpec, ...]
    """The trunk (or the single run) first."""
    pending: frozenset[str]
    """Ids of the runs still to store (the trunk may be trained only to branch from)."""

    @property
    def cost(self) -> float:
        """Rough compute of the unit: that of its longest run (the trunk)."""
        return run_cost(self.specs[0])


def run_cost(spec: RunSpec) -> float:
    """Rough compute of one run, for scheduling the largest first: parameters x tokens."""
    model = spec.config.model
    return (model.n_params_total or model.n_params) * spec.config.train.tokens


@dataclass(frozen=True)
class CollectSummary:
    """What a collect did."""

    planned: int
    """Runs in the plan."""
    done: int = 0
    """Runs trained and stored now."""
    skipped: int = 0
    """Runs already in the store (not trained again)."""
    diverged: int = 0
    """Runs stored now that diverged."""
    failed: int = 0
    """Runs that raised an error (not stored; the next collect tries them again)."""
    wall_time_s: float = 0.0
    store: str = ""
    errors: tuple[str, ...] = field(default_factory=tuple)


def units_of(plan: Plan, store: SweepStore) -> tuple[list[Unit], int]:
    """Pending work as units, and the number of runs already stored."""
    present = set(store.ids())
    by_trunk: dict[str, list[RunSpec]] = {}
    for spec in plan.specs:
        if spec.config.train.trunk is not None:
            by_trunk.setdefault(spec.config.train.trunk, []).append(spec)
    units = []
    for spec in plan.specs:
        if spec.config.train.trunk is not None:
            continue
        members = [spec, *sorted(by_trunk.get(spec.run_id, []),
                                 key=lambda s: s.config.train.steps)]
        pending = frozenset(s.run_id for s in members) - present
        if pending:
            units.append(Unit(tuple(members), pending))
    skipped = sum(1 for s in plan.specs if s.run_id in present)
    return units, skipped


def collect(plan: Plan, store: SweepStore | str | os.PathLike[str], *, workers: int = 1,
            execution: Execution | None = None, limit: int | None = None,
            quiet: bool = False, factory: Factory | None = None) -> CollectSummary:
    """Train every run of `plan` missing from `store`; returns a summary. `limit` caps the
    runs trained in this call; `factory` (f(run_config) -> LightningModule) replaces the GPT
    (with workers > 1 it must be importable, e.g. a module-level function)."""
    store = store if isinstance(store, SweepStore) else SweepStore(store)
    execution = execution or Execution()
    began = time.perf_counter()
    remove_stale_temps(store)
    units, skipped = units_of(plan, store)
    units = _limited(units, limit)
    total = sum(len(u.pending) for u in units)
    tally = {"done": 0, "diverged": 0, "failed": 0, "skipped": skipped}
    errors: list[str] = []
    bar = tqdm(total=total, unit="run", desc=f"collect {plan.name}", disable=quiet or not total,
               dynamic_ncols=True)
    try:
        if workers <= 1:
            results = _sequential(units, plan.corpus, store, execution, factory, errors)
        else:
            units = sorted(units, key=lambda u: -u.cost)
            results = _parallel(units, store, execution, factory, workers, errors)
        for run_id, status in results:
            tally[status if status != "diverged" else "done"] += 1
            tally["diverged"] += status == "diverged"
            bar.update(1)
            bar.set_postfix(diverged=tally["diverged"], failed=tally["failed"], last=run_id[:8])
    finally:
        bar.close()
    remove_stale_temps(store)
    return CollectSummary(planned=len(plan.specs), wall_time_s=time.perf_counter() - began,
                          store=str(store.root), errors=tuple(errors), **tally)


def run_unit(unit: Unit, corpus: Corpus, store: SweepStore, execution: Execution,
             factory: Factory | None) -> Iterator[tuple[str, str]]:
    """Train a unit, storing each pending run as soon as it is done; yields (id, status)."""
    for record in train_unit(unit, corpus, execution, factory):
        yield record.run_id, store_record(store, record)


def train_unit(unit: Unit, corpus: Corpus, execution: Execution, factory: Factory | None
               ) -> Iterator[RunRecord]:
    """Records of a unit's pending runs; branches resume from snapshots of the trunk."""
    trunk, branches = unit.specs[0], unit.specs[1:]
    todo = [b for b in branches if b.run_id in unit.pending]
    steps = sorted({b.branch_step for b in todo})
    record, snapshots = train(trunk, corpus=corpus, execution=execution, factory=factory,
                              snapshot_steps=steps)
    if trunk.run_id in unit.pending:
        yield record
    for branch in todo:
        snapshot = snapshots.get(branch.branch_step)
        if snapshot is None:  # the trunk diverged before this branch left it
            yield replace(record, config=branch.config,
                          metadata={**record.metadata, "branched_at": branch.branch_step})
            continue
        branched = train(branch, corpus=corpus, execution=execution, factory=factory,
                         resume=snapshot)[0]
        history = with_trunk_history(branched.measurements, record.measurements,
                                     branch.branch_step, schedule_of(branch.config.train))
        yield replace(branched, measurements=history)


def store_record(store: SweepStore, record: RunRecord) -> str:
    """Write a record; 'skipped' if another writer stored this run meanwhile."""
    if record.run_id in store:
        return "skipped"
    try:
        store.put(record)
    except StoreError:
        if record.run_id in store:
            return "skipped"
        raise
    return "diverged" if record.outcome.diverged else "done"


def remove_stale_temps(store: SweepStore, *, older_than_s: float = STALE_TEMP_S) -> int:
    """Delete temp files a killed writer left in the store; returns how many."""
    now, removed = time.time(), 0
    for path in store.root.glob(".*.tmp"):
        try:
            if now - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def _limited(units: list[Unit], limit: int | None) -> list[Unit]:
    if limit is None:
        return units
    out, count = [], 0
    for unit in units:
        if count >= limit:
            break
        out.append(unit)
        count += len(unit.pending)
    return out


def _sequential(units: Sequence[Unit], corpus: Corpus, store: SweepStore,
                execution: Execution, factory: Factory | None, errors: list[str]
                ) -> Iterator[tuple[str, str]]:
    for unit in units:
        produced: set[str] = set()
        try:
            for run_id, status in run_unit(unit, corpus, store, execution, factory):
                produced.add(run_id)
                yield run_id, status
        except Exception as err:  # one broken run must not lose the rest of the sweep
            errors.append(_describe(unit, err))
            for run_id in sorted(unit.pending - produced):
                yield run_id, "failed"


def _parallel(units: Sequence[Unit], store: SweepStore, execution: Execution,
              factory: Factory | None, workers: int, errors: list[str]
              ) -> Iterator[tuple[str, str]]:
    context = multiprocessing.get_context("spawn")
    # one torch thread per worker: N processes x default threads would oversubscribe the
    # cores (on a GPU the host side of tiny models is single-threaded launch work anyway)
    worker_execution = replace(execution, threads=execution.threads or 1, steps_progress=False)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                               initializer=_init_worker)
    futures = {pool.submit(_worker_unit, unit, str(store.root), worker_execution, factory):
               unit for unit in units}
    try:
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                unit = futures.pop(future)
                try:
                    yield from future.result()
                except Exception as err:
                    errors.append(_describe(unit, err))
                    yield from ((run_id, "failed") for run_id in sorted(unit.pending))
    finally:  # on Ctrl-C: cancel queued units; workers die with this process (_init_worker)
        pool.shutdown(wait=not futures, cancel_futures=True)


def _worker_unit(unit: Unit, store_root: str, execution: Execution, factory: Factory | None
                 ) -> list[tuple[str, str]]:
    """Worker process: train a unit, store its records, report (id, status) pairs."""
    options = unit.specs[0].options
    corpus = _cached_corpus(options.corpus, options.val_fraction)
    store = SweepStore(store_root)
    return list(run_unit(unit, corpus, store, execution, factory))


@functools.lru_cache(maxsize=2)
def _cached_corpus(source: str, val_fraction: float) -> Corpus:
    return load_corpus(source, val_fraction=val_fraction)


def _init_worker() -> None:
    """Make a worker die with its parent (Linux), so a killed collect leaves no orphans."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _describe(unit: Unit, err: BaseException) -> str:
    spec = unit.specs[0].config
    where = (f"d_model={spec.model.d_model} n_layers={spec.model.n_layers} "
             f"{spec.optimizer.name} lr={spec.optimizer.lr:g} seed={spec.train.seed}")
    last = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    at = f" at {Path(last[0].filename).name}:{last[0].lineno}" if last else ""
    return f"{where}: {type(err).__name__}: {err}{at}"
