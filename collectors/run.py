"""Train one run of a plan with Lightning and return its `bayeslr.schema.RunRecord`.

CPU by default: deterministic, seeded (model init by `seed_everything(seed)`, data order by
the data module's own generator), with the torch thread count as a setting. On a CUDA device
(`device='auto'` picks it when present) training runs in bf16 autocast, or in fp32 when asked
(`Execution(bf16=False)`), which keeps GPU runs comparable with CPU ones.

A run whose loss turns NaN/inf or exceeds `divergence_threshold` x its initial loss is stopped
and stored with `diverged=True` and the step. Callbacks that define `measurements()` (see
`collectors.callbacks`) have their results merged into the record's Measurements.
"""

from __future__ import annotations

import logging
import math
import time
import types
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from bayeslr.errors import PlanError
from bayeslr.schema import LossCurve, Measurements, RunOutcome, RunRecord
from collectors.callbacks import DivergenceCallback, EffectiveLRCallback
from collectors.data import ByteDataModule, Corpus, load_corpus
from collectors.model import GPT
from collectors.optim import configure_optimizers, schedule_of
from collectors.plan import RunSpec
from collectors.shapes import Factory, flops_per_token, gpt_factory, resolve_factory

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Execution:
    """How runs are executed (not part of any run's identity)."""

    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu' or 'cuda'."""
    threads: int | None = None
    """torch intra-op threads; None: 1 on CPU (deterministic, and robust on a shared machine,
    where multi-threaded torch can slow down tenfold), torch's default with CUDA."""
    steps_progress: bool = False
    """Show Lightning's progress bar over the steps of each run."""
    check_every: int | None = None
    """Steps between divergence checks (host syncs); None: 1 on CPU, 16 on CUDA."""
    bf16: bool | None = None
    """bf16 autocast. None: on CUDA, not on CPU; False: fp32 on CUDA too (the same precision
    as CPU runs, so a sweep can mix devices); True is refused on CPU."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise PlanError(f"device: expected one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise PlanError(f"threads: expected >= 1, got {self.threads!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise PlanError("device 'cuda' was asked for but torch sees no CUDA device; use "
                            "--device auto or cpu")
        if self.bf16 and not self.cuda:
            raise PlanError("precision bf16 needs a CUDA device; on CPU runs train in fp32")

    @property
    def cuda(self) -> bool:
        return self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available())

    @property
    def mixed(self) -> bool:
        """Whether training runs in bf16 autocast."""
        return self.cuda and self.bf16 is not False

    def autocast(self) -> Any:
        """The context to run forward passes in: bf16 autocast when `mixed`, else none."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.mixed else nullcontext()

    @property
    def precision(self) -> str:
        """Recorded in TrainConfig.precision: 'bf16' (CUDA by default) or 'fp32'."""
        return "bf16" if self.mixed else "fp32"

    @property
    def label(self) -> str:
        """Device as recorded in the run's outcome, e.g. 'cpu' or 'cuda:NVIDIA H100 ...'."""
        return f"cuda:{torch.cuda.get_device_name(0)}" if self.cuda else "cpu"


@dataclass
class Snapshot:
    """Training state after `step` optimizer steps (for WSD branches off a shared trunk)."""

    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    divergence_state: dict[str, Any]
    wall_time_s: float


def train_run(spec: RunSpec, *, corpus: Corpus | None = None,
              execution: Execution = Execution(), factory: Factory | None = None,
              callbacks: Sequence[Callback] = ()) -> RunRecord:
    """Train the run `spec` describes and return its record (diverged runs included)."""
    record, _ = train(spec, corpus=corpus, execution=execution, factory=factory,
                      callbacks=callbacks)
    return record


def train(spec: RunSpec, *, corpus: Corpus | None = None, execution: Execution = Execution(),
          factory: Factory | None = None, callbacks: Sequence[Callback] = (),
          snapshot_steps: Sequence[int] = (), resume: Snapshot | None = None
          ) -> tuple[RunRecord, dict[int, Snapshot]]:
    """Train, optionally from a snapshot and taking snapshots; returns (record, snapshots)."""
    config, options = spec.config, spec.options
    if corpus is None:
        corpus = load_corpus(options.corpus, val_fraction=options.val_fraction)
    threads = execution.threads or (None if execution.cuda else 1)
    if threads:
        torch.set_num_threads(threads)
    start = resume.step if resume else 0
    total = int(config.train.steps)
    pl.seed_everything(config.train.seed, workers=False, verbose=False)
    module = (factory or resolve_factory(options.factory) or gpt_factory)(config)
    _attach_optimizer(module, spec, offset=start)
    if resume:
        module.load_state_dict(resume.model_state)
    divergence = DivergenceCallback(options.divergence_threshold, check_every=execution.check_every
                                    or (16 if execution.cuda else 1))
    if resume:
        divergence.load_state_dict(resume.divergence_state)
    snapshots = _SnapshotCallback(snapshot_steps, divergence, offset=start)
    own = [divergence, *_measurement_callbacks(spec, offset=start), snapshots, *callbacks]
    if resume:
        own.append(_LoadOptimizerState(resume.optimizer_state))
    data = ByteDataModule(corpus, batch_size=config.train.batch_size,
                          seq_len=int(config.train.seq_len), steps=total - start,
                          seed=config.train.seed, start_step=start,
                          val_batches=options.eval_batches)
    began = time.perf_counter()
    with _quiet_lightning():
        trainer = _trainer(execution, total - start, own, config.optimizer.max_grad_norm)
        trainer.fit(module, train_dataloaders=data.train_dataloader())
    elapsed = time.perf_counter() - began + (resume.wall_time_s if resume else 0.0)
    divergence.flush(trainer)
    finals = (None, None) if divergence.diverged else (
        evaluate(module, data.train_eval_data(), execution),
        evaluate(module, data.val_data(), execution))
    record = build_record(spec, module, divergence, finals, elapsed, execution,
                          [c for c in own if c is not divergence], offset=start)
    return record, snapshots.taken


def build_record(spec: RunSpec, module: torch.nn.Module, divergence: DivergenceCallback,
                 finals: tuple[float | None, float | None], wall_time_s: float,
                 execution: Execution, callbacks: Sequence[Callback], *, offset: int = 0
                 ) -> RunRecord:
    """Assemble the record from the loss history, final losses and measurement callbacks."""
    losses = divergence.losses
    diverged = divergence.diverged or finals[1] is None and finals[0] is None
    tokens_per_step = spec.config.train.batch_size * int(spec.config.train.seq_len)
    outcome = RunOutcome(
        diverged=diverged, final_train_loss=None if diverged else finals[0],
        final_val_loss=None if diverged else finals[1],
        diverged_step=(divergence.diverged_step if divergence.diverged
                       else len(losses) if diverged else None),
        curve=loss_curve(losses, spec.options.curve_points), wall_time_s=wall_time_s,
        flops=flops_per_token(module) * tokens_per_step * len(losses), device=execution.label)
    measured, unknown = merge_measurements(callbacks, offset=offset)
    metadata = {"source": "bayeslr.collectors", "steps_run": len(losses),
                "module": f"{type(module).__module__}.{type(module).__qualname__}",
                "threads": torch.get_num_threads(), "torch": torch.__version__,
                **({"branched_at": offset} if offset else {}), **unknown}
    return RunRecord(config=spec.config, outcome=outcome, measurements=measured,
                     metadata=metadata)


def loss_curve(losses: Sequence[float], points: int) -> LossCurve | None:
    """Step 0's loss, then the mean loss of `points - 1` equal spans of the later steps,
    each labelled with its last step; non-finite means are stored as None."""
    if not losses:
        return None
    steps, values = [0], [_finite_or_none(losses[0])]
    rest = len(losses) - 1
    spans = min(points - 1, rest)
    edges = [1 + round(i * rest / spans) for i in range(spans + 1)] if spans else [1]
    for a, b in zip(edges, edges[1:], strict=False):
        chunk = losses[a:b]
        mean = sum(chunk) / len(chunk) if chunk else float("nan")
        steps.append(b - 1)
        values.append(_finite_or_none(mean))
    return LossCurve(step=tuple(steps), train_loss=tuple(values))


def evaluate(module: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
             execution: Execution) -> float | None:
    """Mean loss (nats/token) over fixed batches in eval mode; None if not finite."""
    device = torch.device("cuda" if execution.cuda else "cpu")
    module.to(device)
    was_training = module.training
    module.eval()
    total = torch.zeros((), device=device)
    with torch.no_grad(), execution.autocast():
        for x, y in batches:
            total += batch_loss(module, (x.to(device), y.to(device))).float()
    module.train(was_training)
    value = float(total) / max(1, len(batches))
    return value if math.isfinite(value) else None


def batch_loss(module: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
               ) -> torch.Tensor:
    """The module's `loss(batch)` if defined, else next-token cross-entropy of its logits."""
    if hasattr(module, "loss") and callable(module.loss):
        return module.loss(batch)
    x, y = batch
    logits = module(x)
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


def merge_measurements(callbacks: Sequence[Any], *, offset: int = 0
                       ) -> tuple[Measurements, dict[str, Any]]:
    """Merge every callback's `measurements()` dict; keys Measurements lacks are returned
    separately (they go to the record's metadata as 'measure.<key>')."""
    known = set(Measurements.__dataclass_fields__) - {"series"}
    scalars: dict[str, Any] = {}
    series: dict[str, dict[str, tuple]] = {}
    unknown: dict[str, Any] = {}
    for callback in callbacks:
        method = getattr(callback, "measurements", None)
        if not callable(method):
            continue
        result = dict(method() or {})
        for name, table in (result.pop("series", None) or {}).items():
            table = {k: tuple(_plain(v) for v in values) for k, values in table.items()}
            if offset and "step" in table:
                table["step"] = tuple(s + offset for s in table["step"])
            series[name] = table
        for key, value in result.items():
            if value is None:
                continue
            target = scalars if key in known else unknown
            target[key if key in known else f"measure.{key}"] = (
                tuple(_plain(v) for v in value) if isinstance(value, (list, tuple))
                else _plain(value))
    return Measurements(**scalars, series=series), unknown


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    return value


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _measurement_callbacks(spec: RunSpec, *, offset: int = 0) -> list[Callback]:
    """The plan's measurement callbacks; `offset` = steps already trained (a resumed branch),
    so effective-LR measurements fall on the same steps as in an uninterrupted run."""
    options, out = spec.options, []
    if options.effective_lr_every:
        out.append(EffectiveLRCallback(options.effective_lr_every, phase=offset))
    if options.sharpness_every:
        from collectors.sharpness import SharpnessCallback

        out.append(SharpnessCallback(every_n_steps=options.sharpness_every,
                                     **dict(options.sharpness)))
    return out


def _attach_optimizer(module: pl.LightningModule, spec: RunSpec, *, offset: int) -> None:
    """Give the module the run's optimizer and schedule unless it defines its own."""
    own = type(module).configure_optimizers is not pl.LightningModule.configure_optimizers
    if own and not isinstance(module, GPT):
        if offset:
            raise PlanError(f"{type(module).__name__} defines configure_optimizers, so a WSD "
                            "branch cannot resume its schedule; drop train.wsd_branching or "
                            "let the plan build the optimizer")
        return
    config, schedule = spec.config.optimizer, schedule_of(spec.config.train)

    def configure(self: pl.LightningModule) -> Any:
        return configure_optimizers(self, config, schedule, offset=offset)

    module.configure_optimizers = types.MethodType(configure, module)


def _trainer(execution: Execution, steps: int, callbacks: list[Callback],
             max_grad_norm: float | None) -> pl.Trainer:
    return pl.Trainer(
        accelerator="gpu" if execution.cuda else "cpu", devices=1,
        precision="bf16-mixed" if execution.mixed else "32-true", max_steps=steps,
        max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=execution.steps_progress, callbacks=callbacks,
        gradient_clip_val=max_grad_norm, deterministic=not execution.cuda,
        limit_val_batches=0, num_sanity_val_steps=0)


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's banner logs and data-loader hints during one fit, and restore
    torch's deterministic-algorithms flag (which `Trainer(deterministic=True)` sets)."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    deterministic = torch.are_deterministic_algorithms_enabled()
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*lower value for log_every_n_steps.*")
            warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
            warnings.filterwarnings("ignore", message=".*treespec.*")
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class _SnapshotCallback(Callback):
    """Copy model, optimizer and loss history after the given optimizer steps."""

    def __init__(self, steps: Sequence[int], divergence: DivergenceCallback, *, offset: int
                 ) -> None:
        self.steps, self.divergence, self.offset = set(steps), divergence, offset
        self.taken: dict[int, Snapshot] = {}
        self._began = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._began = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.offset + trainer.global_step
        if step not in self.steps:
            return
        self.divergence.flush(trainer)
        if self.divergence.diverged:
            return
        self.taken[step] = Snapshot(
            step=step,
            model_state={k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            optimizer_state=_clone(trainer.optimizers[0].state_dict()),
            divergence_state=self.divergence.state_dict(),
            wall_time_s=time.perf_counter() - self._began)


class _LoadOptimizerState(Callback):
    """Restore an optimizer's state at the start of a resumed run, keeping the new LRs."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        lrs = [group["lr"] for group in optimizer.param_groups]
        initial = [group.get("initial_lr") for group in optimizer.param_groups]
        optimizer.load_state_dict(_clone(self.state))
        for group, lr, first in zip(optimizer.param_groups, lrs, initial, strict=True):
            group["lr"] = lr
            if first is not None:
                group["initial_lr"] = first


def _clone(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _clone(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_clone(v) for v in state]
    return state

