"""Sweep plans: a TOML file naming the grid, expanded into validated run specs.

Everything is checked while expanding — unknown keys or optimizers, non-positive LRs, widths
not divisible by heads, empty grids, an unreadable corpus — so a bad plan fails with a
PlanError before any training starts and before anything is written. The keys are listed in
docs/collectors.md; `collectors/plans/tiny.toml` is a working example.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bayeslr.errors import PlanError, SchemaError
from bayeslr.schema import (
    ModelShape,
    OptimizerConfig,
    RunConfig,
    TrainConfig,
    normalize_optimizer,
)
from collectors.data import BUNDLED, Corpus, load_corpus
from collectors.optim import DEFAULTS, SCHEDULES, SETTINGS, TRAINABLE, schedule_of
from collectors.shapes import Factory, expand_shapes, factory_name, resolve_factory

SECTIONS = {
    "": {"name", "seeds", "corpus", "val_fraction", "model", "train", "measure", "optimizers"},
    "model": {"widths", "depths", "heads", "head_dim", "shapes", "d_ff", "ff_mult", "context",
              "mlp", "tied_embeddings", "parameterization", "base_width", "init_std", "arch",
              "factory"},
    "train": {"tokens", "steps", "batch_sizes", "schedule", "warmup_steps", "warmup_fraction",
              "min_lr_ratio", "decay_fraction", "wsd_branching"},
    "measure": {"curve_points", "eval_batches", "divergence_threshold", "effective_lr_every",
                "sharpness_every", "sharpness_only", "sharpness"},
}
FILTER_KEYS = ("d_model", "n_layers", "optimizer", "batch_size", "tokens", "seed")
"""Fields `measure.sharpness_only` may filter runs on."""
EXTEND_KEYS = ("d_model", "n_layers", "n_heads", "batch_size")
"""Fields an optimizer's `lr_extend.where` may select runs on: what a whole LR sweep shares
(horizons and seeds of one sweep always get the same LRs)."""


@dataclass(frozen=True)
class RunOptions:
    """Settings of a run that do not define it (not part of its id): how it is measured."""

    corpus: str = "shakespeare"
    """Bundled corpus name, or the resolved path of a text file or directory."""
    val_fraction: float = 0.05
    """Fraction of the text held out for validation."""
    eval_batches: int = 8
    """Batches (of the run's batch size) for the final train and validation losses."""
    curve_points: int = 50
    """Points of the stored loss curve (the per-step losses are averaged between them)."""
    divergence_threshold: float = 3.0
    """A loss above this multiple of the initial loss counts as divergence (also in extra)."""
    effective_lr_every: int | None = 10
    """Steps between effective-LR / weight-norm measurements; None: off."""
    sharpness_every: int | None = None
    """Steps between sharpness measurements (collectors.sharpness); None: off."""
    sharpness: Mapping[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of SharpnessCallback."""
    factory: str | None = None
    """'module:function' building the LightningModule; None: collectors.model.GPT."""


@dataclass(frozen=True)
class RunSpec:
    """One run to train: its identity (config) and how to measure it (options)."""

    config: RunConfig
    options: RunOptions

    @property
    def run_id(self) -> str:
        return self.config.run_id()

    @property
    def branch_step(self) -> int | None:
        """For a WSD cool-down branched off a trunk: the step where it leaves the trunk."""
        if self.config.train.trunk is None:
            return None
        return schedule_of(self.config.train).decay_start


@dataclass(frozen=True)
class LrExtension:
    """More LRs for some sweeps of one optimizer: `below` / `above` further steps of its
    log-spaced grid, for the runs whose fields match `where` (field -> allowed values)."""

    below: int
    above: int
    where: Mapping[str, Any]
    """Field -> value or list of values (as measure.sharpness_only)."""

    def selects(self, shape: ModelShape, batch_size: int) -> bool:
        return _selected({"d_model": shape.d_model, "n_layers": shape.n_layers,
                          "n_heads": shape.n_heads, "batch_size": batch_size}, self.where)


@dataclass(frozen=True)
class LrGrid:
    """An optimizer's LRs: the plan's grid, extended for the sweeps an LrExtension selects."""

    values: tuple[float, ...]
    extensions: tuple[LrExtension, ...] = ()

    def for_sweep(self, shape: ModelShape, batch_size: int) -> list[float]:
        """The LRs of one sweep (one shape and batch size), ascending for an extended grid."""
        chosen = [e for e in self.extensions if e.selects(shape, batch_size)]
        if not chosen:
            return list(self.values)
        lo, hi = self.values[0], self.values[-1]
        step = math.log(hi / lo) / (len(self.values) - 1)
        below = [lo * math.exp(i * step) for i in range(-max(e.below for e in chosen), 0)]
        above = [hi * math.exp(i * step) for i in range(1, max(e.above for e in chosen) + 1)]
        return [*_rounded(below), *self.values, *_rounded(above)]


@dataclass(frozen=True)
class Plan:
    """An expanded, validated sweep plan."""

    name: str
    specs: tuple[RunSpec, ...]
    corpus: Corpus

    def __len__(self) -> int:
        return len(self.specs)


def load_plan(path: str | os.PathLike[str], *, precision: str = "fp32",
              factory: Factory | None = None) -> Plan:
    """Read a TOML plan file and expand it; relative corpus paths are relative to the file.

    `precision` ('fp32' on CPU, 'bf16' on CUDA) is part of every run's identity; `factory`
    (f(run_config) -> LightningModule) replaces the plan's model.factory and the default GPT.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as err:
        raise PlanError(f"plan {str(path)!r}: cannot read ({err.strerror}); give the path of "
                        "a .toml sweep plan") from None
    except tomllib.TOMLDecodeError as err:
        raise PlanError(f"plan {str(path)!r}: not valid TOML ({err})") from None
    return expand_plan(data, base_dir=path.parent, default_name=path.stem, precision=precision,
                       factory=factory)


def expand_plan(data: Mapping[str, Any], *, base_dir: str | os.PathLike[str] = ".",
                default_name: str = "plan", precision: str = "fp32",
                factory: Factory | None = None) -> Plan:
    """Validate a plan given as a dict and expand it into run specs (nothing is trained)."""
    _check_keys(data)
    section = {name: dict(data.get(name, {})) for name in ("model", "train", "measure")}
    corpus_name = str(data.get("corpus", "shakespeare"))
    if corpus_name.lower() not in BUNDLED:
        corpus_name = str((Path(base_dir) / Path(corpus_name).expanduser()).resolve())
    val_fraction = _number(data.get("val_fraction", 0.05), "val_fraction")
    corpus = load_corpus(corpus_name, val_fraction=val_fraction)
    options = _options(section["measure"], corpus_name, val_fraction, section["model"])
    if factory is not None:
        options = replace(options, factory=factory_name(factory))
    else:
        factory = resolve_factory(options.factory)
    shapes = expand_shapes(section["model"], factory)
    _check_windows(corpus, max(shape.context for shape, _ in shapes))
    horizons = _horizons(section["train"])
    batch_sizes = _int_list(section["train"].get("batch_sizes", [16]), "train.batch_sizes")
    seeds = _int_list(data.get("seeds", [0]), "seeds", minimum=0)
    optimizers = _optimizers(data.get("optimizers"))
    extra = {"corpus": Path(corpus_name).name if corpus_name.lower() not in BUNDLED
             else corpus_name.lower(), "corpus_sha256": corpus.sha256,
             "val_fraction": val_fraction, "divergence_threshold": options.divergence_threshold}
    if options.factory:
        extra["factory"] = options.factory
    specs = []
    for shape, extra_model in shapes:
        for batch_size, (opt_name, settings, lrs), seed in itertools.product(
                batch_sizes, optimizers, seeds):
            for lr in lrs.for_sweep(shape, batch_size):
                group = _horizon_group(section["train"], horizons, batch_size, shape.context,
                                       seed, precision)
                for train in group:
                    opt = _optimizer_config(opt_name, lr, settings)
                    config = RunConfig(model=shape, optimizer=opt, train=train,
                                       extra={**extra, **extra_model})
                    specs.append(RunSpec(config, _spec_options(options, config, section)))
    specs = _link_trunks(specs)
    _check_unique(specs)
    if not specs:
        raise PlanError("the plan expands to no runs; give at least one size, horizon, "
                        "batch size, optimizer, LR and seed")
    return Plan(name=str(data.get("name", default_name)), specs=tuple(specs), corpus=corpus)


def _check_windows(corpus: Corpus, context: int) -> None:
    for part in ("train", "val"):
        if len(getattr(corpus, part)) < context + 2:
            raise PlanError(f"corpus {corpus.name!r}: its {part} split has "
                            f"{len(getattr(corpus, part))} tokens, fewer than one window of "
                            f"context {context} + 1; use a larger corpus, a larger val_fraction "
                            "or a shorter model.context")


def _check_keys(data: Mapping[str, Any]) -> None:
    for name, known in SECTIONS.items():
        table = data if not name else data.get(name, {})
        if not isinstance(table, Mapping):
            raise PlanError(f"[{name}] must be a table, got {type(table).__name__}")
        unknown = sorted(set(table) - known)
        if unknown:
            where = f"[{name}]" if name else "the plan's top level"
            raise PlanError(f"unknown key(s) {unknown} in {where}; known: "
                            f"{', '.join(sorted(known))}")


def _options(measure: dict, corpus: str, val_fraction: float, model: dict) -> RunOptions:
    every = measure.get("sharpness_every")
    if every is not None and every != 0:
        every = _int(every, "measure.sharpness_every")
        if importlib.util.find_spec("collectors.sharpness") is None:
            raise PlanError("measure.sharpness_every needs collectors.sharpness, which this "
                            "installation lacks; remove sharpness_every or update bayeslr")
    eff = measure.get("effective_lr_every", 10)
    threshold = _number(measure.get("divergence_threshold", 3.0), "measure.divergence_threshold")
    if threshold <= 1:
        raise PlanError(f"measure.divergence_threshold: expected a multiple of the initial "
                        f"loss > 1, got {threshold!r}")
    sharpness = measure.get("sharpness", {})
    if not isinstance(sharpness, Mapping):
        raise PlanError("measure.sharpness: expected a table of SharpnessCallback settings")
    factory = model.get("factory")
    if factory is not None and not isinstance(factory, str):
        raise PlanError("model.factory: expected 'module:function'")
    return RunOptions(
        corpus=corpus, val_fraction=val_fraction,
        eval_batches=_int(measure.get("eval_batches", 8), "measure.eval_batches"),
        curve_points=_int(measure.get("curve_points", 50), "measure.curve_points", minimum=2),
        divergence_threshold=threshold,
        effective_lr_every=_int(eff, "measure.effective_lr_every") if eff else None,
        sharpness_every=every or None, sharpness=dict(sharpness), factory=factory)


def _spec_options(options: RunOptions, config: RunConfig, section: dict) -> RunOptions:
    """Options of one run: sharpness only on the runs `measure.sharpness_only` selects."""
    where = section["measure"].get("sharpness_only")
    if options.sharpness_every is None or not where:
        return options
    values = {"d_model": config.model.d_model, "n_layers": config.model.n_layers,
              "optimizer": config.optimizer.name, "batch_size": config.train.batch_size,
              "tokens": config.train.tokens, "seed": config.train.seed}
    if not isinstance(where, Mapping) or set(where) - set(FILTER_KEYS):
        raise PlanError(f"measure.sharpness_only: expected a table with keys among "
                        f"{', '.join(FILTER_KEYS)}, each a list of values")
    return options if _selected(values, where) else replace(options, sharpness_every=None)


def _selected(values: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    """Whether a run's fields (`values`) match a plan filter: field -> value or list of values."""
    return all(values[k] in (v if isinstance(v, (list, tuple)) else [v]) for k, v in where.items())


def _horizons(train: dict) -> list[tuple[str, float]]:
    if "tokens" in train and "steps" in train:
        raise PlanError("[train]: give either tokens or steps, not both")
    key = "steps" if "steps" in train else "tokens"
    values = train.get(key, [1_000_000])
    values = values if isinstance(values, list) else [values]
    out = [(key, _number(v, f"train.{key}")) for v in values]
    if any(v <= 0 for _, v in out):
        raise PlanError(f"train.{key}: horizons must be > 0, got {values}")
    return sorted(set(out), key=lambda kv: kv[1])


def _horizon_group(train: dict, horizons: list, batch_size: int, context: int, seed: int,
                   precision: str) -> list[TrainConfig]:
    """TrainConfigs of every horizon for one (size, batch, optimizer, LR, seed)."""
    schedule = train.get("schedule", "cosine")
    if schedule not in SCHEDULES:
        raise PlanError(f"train.schedule: unknown schedule {schedule!r}; known: "
                        f"{', '.join(SCHEDULES)}")
    branching = bool(train.get("wsd_branching", False))
    if branching and (schedule != "wsd" or "warmup_steps" not in train):
        raise PlanError("train.wsd_branching needs schedule = 'wsd' and an absolute "
                        "warmup_steps (shared by every horizon of the trunk)")
    out = []
    for key, value in horizons:
        steps = round(value) if key == "steps" else round(value / (batch_size * context))
        if steps < 1:
            raise PlanError(f"train.tokens={value:g} is less than one step of batch {batch_size}"
                            f" x context {context}; raise the horizon")
        warmup = train.get("warmup_steps")
        if warmup is None:
            warmup = round(_number(train.get("warmup_fraction", 0.1), "train.warmup_fraction")
                           * steps)
        try:
            config = TrainConfig(
                tokens=float(steps * batch_size * context), batch_size=batch_size,
                seq_len=context, steps=steps, schedule=schedule, warmup_steps=int(warmup),
                min_lr_ratio=_number(train.get("min_lr_ratio", 0.1), "train.min_lr_ratio"),
                decay_fraction=(_number(train.get("decay_fraction", 0.2), "train.decay_fraction")
                                if schedule == "wsd" else None),
                seed=seed, precision=precision, trunk="?" if branching else None)
            schedule_of(config)  # validates warmup vs steps, ratios
        except SchemaError as err:
            raise PlanError(f"[train]: {err}") from None
        out.append(config)
    return out


def _link_trunks(specs: list[RunSpec]) -> list[RunSpec]:
    """WSD branching: the longest horizon of each group is the trunk (trunk=None); the others
    record its run id in train.trunk."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        if spec.config.train.trunk is None:
            continue
        probe = replace(spec.config, train=replace(spec.config.train, tokens=1.0, steps=1))
        groups.setdefault(probe.run_id(), []).append(spec)
    if not groups:
        return specs
    linked: dict[int, RunSpec] = {}
    for members in groups.values():
        members = sorted(members, key=lambda s: s.config.train.steps)
        trunk = _with_trunk(members[-1], None)
        linked[id(members[-1])] = trunk
        for spec in members[:-1]:
            linked[id(spec)] = _with_trunk(spec, trunk.run_id)
    return [linked.get(id(s), s) for s in specs]


def _with_trunk(spec: RunSpec, trunk: str | None) -> RunSpec:
    config = replace(spec.config, train=replace(spec.config.train, trunk=trunk))
    return replace(spec, config=config)


def _optimizers(table: Any) -> list[tuple[str, dict, LrGrid]]:
    if not table or not isinstance(table, Mapping):
        raise PlanError("[optimizers]: give at least one optimizer table, e.g. "
                        "[optimizers.adamw] with lr = {min = 1e-4, max = 1e-1, num = 8}")
    out = []
    for raw_name, settings in table.items():
        try:
            name = normalize_optimizer(raw_name, where="optimizers")
        except SchemaError:
            name = None
        if name not in TRAINABLE:
            raise PlanError(f"unknown optimizer {raw_name!r}; known: {', '.join(TRAINABLE)}")
        if not isinstance(settings, Mapping):
            raise PlanError(f"[optimizers.{raw_name}] must be a table of settings")
        settings = dict(settings)
        grid = settings.pop("lr", None)
        lrs = _lr_grid(grid, settings.pop("lrs", None), raw_name)
        extensions = _lr_extensions(settings.pop("lr_extend", None), grid, raw_name)
        unknown = sorted(set(settings) - set(SETTINGS[name]))
        if unknown:
            raise PlanError(f"[optimizers.{raw_name}]: unknown setting(s) {unknown}; known: lr, "
                            f"lrs, lr_extend, {', '.join(SETTINGS[name])}")
        if name == "sgd" and settings.get("nesterov") and not settings.get("momentum", 0.9):
            raise PlanError(f"[optimizers.{raw_name}]: nesterov needs momentum > 0")
        out.append((name, {**DEFAULTS[name], **settings}, LrGrid(tuple(lrs), extensions)))
    return out


def _lr_grid(grid: Any, explicit: Any, name: str) -> list[float]:
    """Learning rates: lrs = [...] explicitly, or lr = {min, max, num} log-spaced inclusive."""
    where = f"optimizers.{name}"
    if (grid is None) == (explicit is None):
        raise PlanError(f"[{where}]: give exactly one of lr = {{min = ..., max = ..., num = ...}}"
                        " (log-spaced) or lrs = [...]")
    if explicit is not None:
        values = [_number(v, f"{where}.lrs") for v in (explicit if isinstance(explicit, list)
                                                        else [explicit])]
    elif isinstance(grid, Mapping):
        lo, hi = _number(grid.get("min"), f"{where}.lr.min"), _number(grid.get("max"),
                                                                       f"{where}.lr.max")
        num = _int(grid.get("num", 8), f"{where}.lr.num", minimum=0)
        if lo <= 0 or hi <= 0:
            raise PlanError(f"{where}.lr: learning rates must be > 0, got min={lo}, max={hi}")
        if num == 1 or hi == lo:
            values = [lo] * min(num, 1)
        else:
            values = [math.exp(math.log(lo) + i * (math.log(hi) - math.log(lo)) / (num - 1))
                      for i in range(num)]
    else:
        values = [_number(grid, f"{where}.lr")]
    bad = [v for v in values if not v > 0]
    if bad:
        raise PlanError(f"{where}: learning rates must be > 0, got {bad[0]!r}; use a positive "
                        "LR (the grid is log-spaced)")
    if not values:
        raise PlanError(f"{where}: the LR grid is empty; give num >= 1 or a non-empty lrs")
    return _rounded(values)


def _rounded(values: list[float]) -> list[float]:
    """LRs to 6 significant digits, so that a run's LR (part of its id) prints as planned."""
    return [float(f"{v:.6g}") for v in values]


def _lr_extensions(raw: Any, grid: Any, name: str) -> tuple[LrExtension, ...]:
    """`lr_extend = {below = 2, above = 0, where = {d_model = [192]}}` (or a list of such
    tables): further steps of the log-spaced grid for the sweeps `where` selects."""
    if raw is None:
        return ()
    key = f"optimizers.{name}.lr_extend"
    if not isinstance(grid, Mapping) or grid.get("num", 8) < 2 or not grid["min"] < grid["max"]:
        raise PlanError(f"{key}: extends a log-spaced grid, so it needs lr = {{min = ..., "
                        "max = ..., num = ...}} with min < max and num >= 2 (its step is the "
                        "grid's)")
    out = []
    for table in raw if isinstance(raw, list) else [raw]:
        if not isinstance(table, Mapping) or set(table) - {"below", "above", "where"}:
            raise PlanError(f"{key}: expected a table {{below = N, above = N, where = "
                            "{...}}} or a list of them")
        selector = table.get("where", {})
        if not isinstance(selector, Mapping) or set(selector) - set(EXTEND_KEYS):
            raise PlanError(f"{key}.where: expected a table with keys among "
                            f"{', '.join(EXTEND_KEYS)}, each a list of values")
        below = _int(table.get("below", 0), f"{key}.below", minimum=0)
        above = _int(table.get("above", 0), f"{key}.above", minimum=0)
        if below + above == 0:
            raise PlanError(f"{key}: give below and/or above >= 1 (steps to add)")
        out.append(LrExtension(below, above, dict(selector)))
    return tuple(out)


def _optimizer_config(name: str, lr: float, settings: dict) -> OptimizerConfig:
    try:
        return OptimizerConfig(name=name, lr=lr, **settings)
    except (SchemaError, TypeError) as err:
        raise PlanError(f"[optimizers.{name}]: {err}") from None


def _check_unique(specs: list[RunSpec]) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.run_id in seen:
            raise PlanError("the plan names the same run twice (duplicate values in a list?); "
                            f"check sizes, LRs and seeds (run {spec.run_id})")
        seen.add(spec.run_id)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlanError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _int(value: Any, where: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlanError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _int_list(values: Any, where: str, *, minimum: int = 1) -> list[int]:
    values = values if isinstance(values, list) else [values]
    if not values:
        raise PlanError(f"{where}: the list is empty; give at least one value")
    return [_int(v, where, minimum=minimum) for v in values]
