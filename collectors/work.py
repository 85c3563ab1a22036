"""Work items of a collect, beyond the local backend's units: vectorised groups.

`plan_work` turns a plan's pending runs into items: a `collectors.backends.Unit` (one run,
or a WSD trunk with its cool-downs) or, with vectorisation on, a `VectorGroup` of up to K
runs that differ only in LR and seed (trained by `collectors.vectorized`). `run_item` trains
an item and stores each record as soon as it exists, skipping runs already stored, so an
item may be run again after a crash (a retried Ray task does exactly that) without training
or writing anything twice. `collect_vectorized` is the local backend with vectorisation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from tqdm.auto import tqdm

from bayeslr.schema import RunRecord
from bayeslr.store import SweepStore
from collectors.backends import (
    CollectSummary,
    Unit,
    _describe,
    _limited,
    remove_stale_temps,
    run_cost,
    store_record,
    train_unit,
    units_of,
)
from collectors.data import Corpus
from collectors.plan import Plan, RunSpec
from collectors.run import Execution
from collectors.shapes import Factory, resolve_factory
from collectors.vectorized import group_specs, train_vectorized, why_not_vectorizable


@dataclass(frozen=True)
class VectorGroup:
    """Runs trained as one batched computation (same configuration up to LR and seed)."""

    specs: tuple[RunSpec, ...]
    pending: frozenset[str]
    """Ids of the runs still to store."""

    @property
    def cost(self) -> float:
        """Rough compute: one run's x the runs still to train."""
        return run_cost(self.specs[0]) * len(self.pending)


Item = Unit | VectorGroup
"""One schedulable piece of a collect."""


def plan_work(plan: Plan, store: SweepStore, *, vectorize: int | None = None,
              limit: int | None = None) -> tuple[list[Item], int]:
    """Pending work as items (runs of equal configuration grouped by up to `vectorize`), and
    the number of runs already stored; `limit` caps the runs (whole items) planned."""
    units, skipped = units_of(plan, store)
    if vectorize and vectorize > 1:
        units = _grouped(units, vectorize)
    return _limited(units, limit), skipped


def _grouped(units: list[Unit], size: int) -> list[Item]:
    singles = [u.specs[0] for u in units if len(u.specs) == 1
               and why_not_vectorizable(u.specs[0]) is None]
    rest: list[Item] = [u for u in units if len(u.specs) > 1
                        or why_not_vectorizable(u.specs[0]) is not None]
    groups: list[Item] = [VectorGroup(g, frozenset(s.run_id for s in g)) if len(g) > 1
                          else Unit(g, frozenset({g[0].run_id}))
                          for g in group_specs(singles, size)]
    return groups + rest


def refresh(item: Item, store: SweepStore) -> Item | None:
    """The item with the runs stored meanwhile removed from its pending set (None if none
    is left): what a retried task trains."""
    present = set(store.ids())
    pending = item.pending - present
    if not pending:
        return None
    return replace(item, pending=frozenset(pending))


def train_item(item: Item, corpus: Corpus, execution: Execution, factory: Factory | None
               ) -> Iterator[RunRecord]:
    """Records of the item's pending runs, each yielded as soon as it is trained."""
    factory = factory or resolve_factory(item.specs[0].options.factory)
    if isinstance(item, VectorGroup):
        specs = [s for s in item.specs if s.run_id in item.pending]
        yield from train_vectorized(specs, corpus=corpus, execution=execution, factory=factory)
    else:
        yield from train_unit(item, corpus, execution, factory)


def run_item(item: Item, corpus: Corpus, store: SweepStore, execution: Execution,
             factory: Factory | None) -> Iterator[tuple[str, str]]:
    """Train an item and store each record at once; yields (run id, status)."""
    for record in train_item(item, corpus, execution, factory):
        yield record.run_id, store_record(store, record)


def collect_vectorized(plan: Plan, store: SweepStore | str | os.PathLike[str], *,
                       vectorize: int = 8, execution: Execution | None = None,
                       limit: int | None = None, quiet: bool = False,
                       factory: Factory | None = None) -> CollectSummary:
    """The local backend, training runs that differ only in LR/seed in batched groups of up
    to `vectorize` (other runs one by one); resumable like `collectors.backends.collect`."""
    store = store if isinstance(store, SweepStore) else SweepStore(store)
    execution = execution or Execution()
    began = time.perf_counter()
    remove_stale_temps(store)
    items, skipped = plan_work(plan, store, vectorize=vectorize, limit=limit)
    errors: list[str] = []

    def results() -> Iterator[tuple[str, str]]:
        for item in items:
            produced: set[str] = set()
            try:
                for run_id, status in run_item(item, plan.corpus, store, execution, factory):
                    produced.add(run_id)
                    yield run_id, status
            except Exception as err:  # one broken group must not lose the rest of the sweep
                errors.append(_describe(item, err))
                yield from ((run_id, "failed") for run_id in sorted(item.pending - produced))

    tally = drive(results(), total=sum(len(i.pending) for i in items),
                  desc=f"collect {plan.name}", quiet=quiet)
    tally["skipped"] += skipped
    remove_stale_temps(store)
    return CollectSummary(planned=len(plan.specs),
                          wall_time_s=time.perf_counter() - began, store=str(store.root),
                          errors=tuple(errors), **tally)


def drive(results: Iterable[tuple[str, str]], *, total: int, desc: str, quiet: bool
          ) -> dict[str, int]:
    """Consume (run id, status) pairs under a progress bar; returns the done, diverged,
    failed and skipped (stored meanwhile by another writer) counts."""
    tally = {"done": 0, "diverged": 0, "failed": 0, "skipped": 0}
    bar = tqdm(total=total, unit="run", desc=desc, disable=quiet or not total,
               dynamic_ncols=True)
    try:
        for run_id, status in results:
            if status in ("done", "diverged"):
                tally["done"] += 1
            tally["diverged"] += status == "diverged"
            tally["failed"] += status == "failed"
            tally["skipped"] += status == "skipped"
            bar.update(1)
            bar.set_postfix(diverged=tally["diverged"], failed=tally["failed"],
                            last=run_id[:8])
    finally:
        bar.close()
    return tally
