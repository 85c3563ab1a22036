"""Train K runs of one configuration that differ only in LR and/or seed in one training loop.

Small models leave a device idle when trained one at a time. Here the K members of a group
(same `RunConfig.config_id()`: same shape, optimizer settings, horizon, batch and schedule;
different peak LR or seed) are built exactly as `collectors.run.train` builds them (seeded
factory, the plan's optimizer and LR schedule) and trained by one plain loop. With strategy
'vmap' (the default on CUDA) each step's forward and backward passes of all members are one
computation: `torch.func.functional_call` on a copy of the first member's module,
`torch.func.vmap`-ed over parameters stacked along a new leading axis (K, ...) and over the
K batches (K, B, T); gradients flow back through the stack into each member's own
parameters. With strategy 'loop' (the default on CPU, where batching does not pay) the
members are trained one after another by the same loop, without Lightning's per-run
overhead. Either way each member keeps its own optimizer (and its state; on CUDA stepped
with torch's fused kernels), its own LR schedule, its own gradient clipping and its own
divergence check.

A member that diverges stops contributing: it is dropped from the stack from the next step
on and recorded as diverged at its step. Records are assembled with `collectors.run`'s own
functions (`build_record`, `evaluate`, `loss_curve` through it), and the collectors' own
Lightning callbacks (divergence, effective LR) are driven through the few Trainer attributes
they read, so a member's record equals the record of the same run trained alone by
`collectors.run.train_run` (bit for bit with 'loop' on CPU; up to float rounding with 'vmap',
whose batched kernels sum in another order), apart from its wall time (with 'vmap' the
group's training time divided by K; the group's total is in metadata 'group_wall_time_s').

Not vectorised (use `collectors.run`): WSD cool-downs branched off a trunk, runs with
sharpness measurements, user callbacks, and (with 'vmap') modules whose training step draws
random numbers (dropout) or that keep per-run buffers.
"""

from __future__ import annotations

import copy
import inspect
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from bayeslr.errors import PlanError
from bayeslr.schema import RunRecord
from collectors.callbacks import DivergenceCallback, _loss_of
from collectors.data import ByteDataModule, Corpus, WindowBatches, load_corpus
from collectors.plan import RunSpec
from collectors.run import (
    Execution,
    _attach_optimizer,
    _measurement_callbacks,
    build_record,
    evaluate,
)
from collectors.shapes import Factory, gpt_factory, resolve_factory

STRATEGIES = ("auto", "vmap", "loop")
"""How a group's forward and backward passes run; see `train_vectorized`."""

ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
"""Attention kernels allowed under vmap: with torch 2.11 on an H100 the cuDNN kernel's batched
backward gave NaN gradients and the memory-efficient one refused batched inputs, while flash
(CPU and CUDA) and math agree with unbatched runs."""


def why_not_vectorizable(spec: RunSpec) -> str | None:
    """Why `spec` cannot join a vectorised group, or None when it can."""
    if spec.config.train.trunk is not None:
        return "it is a WSD cool-down branched off a shared trunk"
    if spec.options.sharpness_every:
        return "it measures sharpness, which needs Lightning's Trainer"
    return None


def group_key(spec: RunSpec) -> str:
    """Runs with equal keys can be trained as one group: same configuration up to LR and
    seed (`config_id`), same measurement options."""
    return f"{spec.config.config_id()}|{spec.options!r}"


def group_specs(specs: Sequence[RunSpec], size: int) -> list[tuple[RunSpec, ...]]:
    """Split vectorisable specs into groups of at most `size` with equal `group_key`, in plan
    order; raises PlanError for a spec that cannot be vectorised."""
    if size < 1:
        raise PlanError(f"vectorised group size must be >= 1, got {size!r}")
    by_key: dict[str, list[RunSpec]] = {}
    for spec in specs:
        reason = why_not_vectorizable(spec)
        if reason:
            raise PlanError(f"run {spec.run_id} cannot be vectorised: {reason}; train it with "
                            "collectors.run.train_run (the local backend does this)")
        by_key.setdefault(group_key(spec), []).append(spec)
    return [tuple(members[i:i + size]) for members in by_key.values()
            for i in range(0, len(members), size)]


class _LoopState:
    """The Trainer attributes the collectors' callbacks read, for one member."""

    def __init__(self, optimizer: torch.optim.Optimizer, module: nn.Module, max_steps: int
                 ) -> None:
        self.global_step = 0
        self.max_steps = max_steps
        self.should_stop = False
        self.optimizers = [optimizer]
        self.loggers: list[Any] = []
        self.lightning_module = module
        self.current_epoch = 0


@dataclass
class _Member:
    """One run of the group: its module, optimizer, schedule, callbacks and batches."""

    spec: RunSpec
    module: pl.LightningModule
    optimizer: torch.optim.Optimizer
    schedulers: list[Any]
    divergence: DivergenceCallback
    measures: list[Any]
    data: ByteDataModule
    batches: WindowBatches
    state: _LoopState
    params: dict[str, nn.Parameter] = field(default_factory=dict)

    @property
    def callbacks(self) -> list[Any]:
        return [self.divergence, *self.measures]

    def hook(self, name: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, name)(self.state, self.module, *args)


def train_vectorized(specs: Sequence[RunSpec], *, corpus: Corpus | None = None,
                     execution: Execution | None = None, factory: Factory | None = None,
                     strategy: str = "auto", quiet: bool = True) -> list[RunRecord]:
    """Train the runs `specs` (one group, see `group_specs`) together and return their
    records in the same order (diverged runs included).

    `strategy`: 'vmap' (one batched forward and backward of all members per step), 'loop'
    (the members one after another, each to its end, in this loop: bit-identical to separate
    runs, without the per-run Lightning overhead) or 'auto' (vmap on CUDA; loop on CPU, where
    batching does not pay: the work is compute-bound and batched kernels were slower)."""
    specs = list(specs)
    if not specs:
        return []
    if strategy not in STRATEGIES:
        raise PlanError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    _check_group(specs)
    execution = execution or Execution()
    if strategy == "auto":
        strategy = "vmap" if execution.cuda else "loop"
    options = specs[0].options
    if corpus is None:
        corpus = load_corpus(options.corpus, val_fraction=options.val_fraction)
    threads = execution.threads or (None if execution.cuda else 1)  # as collectors.run
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if execution.cuda else "cpu")
    members = [_member(spec, corpus, execution, factory, device) for spec in specs]
    _check_alike(members)
    total = int(specs[0].config.train.steps)
    if strategy == "vmap":
        elapsed = _train_together(members, _batched_loss(members[0].module), total,
                                  execution, device, quiet)
        walls = [elapsed / len(members)] * len(members)
    else:
        walls = [_train_together([m], _looped_loss, total, execution, device, quiet)
                 for m in members]
    return [_record(m, wall, sum(walls), len(members), execution, strategy)
            for m, wall in zip(members, walls, strict=True)]


def _train_together(members: list[_Member], loss_fn: Callable[..., Tensor], total: int,
                    execution: Execution, device: torch.device, quiet: bool) -> float:
    """Train `members` step by step until each has finished or diverged; seconds taken."""
    began = time.perf_counter()
    for member in members:
        member.hook("on_train_start")
    for step in _steps(total, quiet):
        active = [m for m in members if not m.state.should_stop]
        if not active:
            break
        _train_step(active, step, loss_fn, execution, device)
    for member in members:
        member.hook("on_train_end")
    return time.perf_counter() - began


def _check_group(specs: list[RunSpec]) -> None:
    keys = {group_key(s) for s in specs}
    if len(keys) > 1:
        raise PlanError("a vectorised group must hold runs that differ only in LR and seed; "
                        "split the runs with collectors.vectorized.group_specs")
    for spec in specs:
        reason = why_not_vectorizable(spec)
        if reason:
            raise PlanError(f"run {spec.run_id} cannot be vectorised: {reason}; train it with "
                            "collectors.run.train_run")


def _member(spec: RunSpec, corpus: Corpus, execution: Execution, factory: Factory | None,
            device: torch.device) -> _Member:
    """Build a run as collectors.run.train does: seed, factory, optimizer, callbacks, data."""
    config, options = spec.config, spec.options
    total = int(config.train.steps)
    pl.seed_everything(config.train.seed, workers=False, verbose=False)
    build = factory or resolve_factory(options.factory) or gpt_factory
    module = build(config)
    module.to(device)
    module.train()
    _attach_optimizer(module, spec, offset=0)
    optimizer, schedulers = _optimizer_of(module)
    if execution.cuda:
        _use_fused_kernels(optimizer)
    divergence = DivergenceCallback(options.divergence_threshold, check_every=execution.check_every
                                    or (16 if execution.cuda else 1))
    data = ByteDataModule(corpus, batch_size=config.train.batch_size,
                          seq_len=int(config.train.seq_len), steps=total,
                          seed=config.train.seed, val_batches=options.eval_batches)
    state = _LoopState(optimizer, module, total)
    return _Member(spec=spec, module=module, optimizer=optimizer, schedulers=schedulers,
                   divergence=divergence, measures=_measurement_callbacks(spec), data=data,
                   batches=data.train_dataloader().dataset, state=state,
                   params=dict(module.named_parameters()))


def _optimizer_of(module: pl.LightningModule) -> tuple[torch.optim.Optimizer, list[Any]]:
    """The optimizer and per-step LR schedulers of `configure_optimizers()` (the return forms
    Lightning accepts for one optimizer); epoch schedulers never step within one epoch."""
    result = module.configure_optimizers()
    if isinstance(result, torch.optim.Optimizer):
        return result, []
    if isinstance(result, (list, tuple)) and len(result) == 2 and isinstance(result[0], list):
        optimizers, schedulers = result
        configs = [s if isinstance(s, dict) else {"scheduler": s} for s in schedulers]
    elif isinstance(result, (list, tuple)):
        optimizers, configs = list(result), []
    elif isinstance(result, dict):
        optimizers = [result["optimizer"]]
        raw = result.get("lr_scheduler")
        configs = [] if raw is None else [raw if isinstance(raw, dict) else {"scheduler": raw}]
    else:
        raise PlanError(f"{type(module).__name__}.configure_optimizers returned "
                        f"{type(result).__name__}; a vectorised run needs one optimizer")
    if len(optimizers) != 1:
        raise PlanError(f"{type(module).__name__}.configure_optimizers gives "
                        f"{len(optimizers)} optimizers; a vectorised run needs exactly one")
    for config in configs:
        if config.get("frequency", 1) != 1:
            raise PlanError("vectorised runs support LR schedulers with frequency 1 only")
    steps = [c["scheduler"] for c in configs if c.get("interval", "epoch") == "step"]
    return optimizers[0], steps


def _use_fused_kernels(optimizer: torch.optim.Optimizer) -> None:
    """Step the optimizer with torch's fused CUDA kernels where its class has them: the same
    update (equal up to float rounding) in one kernel per parameter group instead of ~8, which
    is what bounds K tiny models per step on a GPU."""
    if "fused" not in inspect.signature(type(optimizer).__init__).parameters:
        return
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False


def _check_alike(members: list[_Member]) -> None:
    """Members must share parameter names, shapes and dtypes, and equal buffers."""
    first = members[0]
    layout = [(n, p.shape, p.dtype) for n, p in first.params.items()]
    buffers = dict(first.module.named_buffers())
    for member in members[1:]:
        if [(n, p.shape, p.dtype) for n, p in member.params.items()] != layout:
            raise PlanError(f"run {member.spec.run_id} builds a module with other parameters "
                            "than the rest of its vectorised group; group runs of one shape")
        for name, value in member.module.named_buffers():
            if name not in buffers or not torch.equal(value, buffers[name]):
                raise PlanError(f"buffer {name!r} differs between members of a vectorised "
                                "group; modules with per-run buffers need the local backend")


class _TrainingLoss(nn.Module):
    """forward(x, y, batch_idx) -> the wrapped module's training-step loss (a scalar)."""

    def __init__(self, module: pl.LightningModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor, y: Tensor, batch_idx: int) -> Tensor:
        loss = _loss_of(self.module.training_step((x, y), batch_idx))
        if loss is None:
            raise PlanError(f"{type(self.module).__name__}.training_step returned no loss; "
                            "vectorised runs need a tensor or a dict with 'loss'")
        return loss


def _batched_loss(module: pl.LightningModule) -> Callable[..., Tensor]:
    """f(members, batches, step, device, autocast) -> detached losses (K,), after one
    vmapped forward over stacked parameters (K, ...) and batches (K, B, T) and one backward
    that puts each member's gradients on its own parameters."""
    skeleton = _TrainingLoss(copy.deepcopy(module))

    def one(params: dict[str, Tensor], x: Tensor, y: Tensor, batch_idx: int) -> Tensor:
        named = {f"module.{name}": value for name, value in params.items()}
        with sdpa_kernel(ATTENTION_BACKENDS):
            return functional_call(skeleton, named, (x, y, batch_idx))

    def batched(params: dict[str, Tensor], x: Tensor, y: Tensor, batch_idx: int) -> Tensor:
        try:
            with warnings.catch_warnings():  # CPU attention runs a per-member loop under vmap
                warnings.filterwarnings("ignore", message=".*not yet implemented the batching")
                return vmap(one, in_dims=(0, 0, 0, None), randomness="error")(
                    params, x, y, batch_idx)
        except RuntimeError as err:
            if "randomness" not in str(err):
                raise
            raise PlanError(f"{type(module).__name__} draws random numbers in training "
                            "(dropout?); vectorised runs need a deterministic training step: "
                            "set dropout to 0 or use the local backend") from None

    def step_all(active: list[_Member], batches: list[Any], step: int, device: torch.device,
                 autocast: Any) -> Tensor:
        x = torch.stack([b[0] for b in batches]).to(device, non_blocking=True)  # (K, B, T)
        y = torch.stack([b[1] for b in batches]).to(device, non_blocking=True)  # (K, B, T)
        names = list(active[0].params)
        stacked = {n: torch.stack([m.params[n] for m in active]) for n in names}  # (K, ...)
        with autocast:
            losses = batched(stacked, x, y, step)  # (K,)
        losses.sum().backward()
        return losses.detach()

    return step_all


def _train_step(active: list[_Member], step: int, loss_fn: Callable[..., Tensor],
                execution: Execution, device: torch.device) -> None:
    """One optimizer step of every active member (Lightning's order of hooks)."""
    batches = [m.batches[step] for m in active]
    losses = loss_fn(active, batches, step, device, execution.autocast())  # (K,)
    for member, loss, batch in zip(active, losses, batches, strict=True):
        _optimizer_step(member, loss, batch, step)


def _looped_loss(active: list[_Member], batches: list[Any], step: int, device: torch.device,
                 autocast: Any) -> Tensor:
    """Forward and backward of each member on its own batch; detached losses (K,)."""
    losses = []
    for member, (x, y) in zip(active, batches, strict=True):
        with autocast:
            loss = _TrainingLoss(member.module)(x.to(device), y.to(device), step)
        loss.backward()
        losses.append(loss.detach())
    return torch.stack(losses)


def _optimizer_step(member: _Member, loss: Tensor, batch: Any, step: int) -> None:
    """Clip, step, schedule and check one member after the shared backward pass."""
    optimizer, state = member.optimizer, member.state
    member.hook("on_before_optimizer_step", optimizer)
    max_norm = member.spec.config.optimizer.max_grad_norm
    if max_norm:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.global_step += 1
    for scheduler in member.schedulers:
        scheduler.step()
    member.hook("on_train_batch_end", {"loss": loss}, batch, step)


def _record(member: _Member, wall: float, group_wall: float, size: int, execution: Execution,
            strategy: str) -> RunRecord:
    """The member's record, as collectors.run.train assembles it."""
    divergence, module, data = member.divergence, member.module, member.data
    finals = (None, None) if divergence.diverged else (
        evaluate(module, data.train_eval_data(), execution),
        evaluate(module, data.val_data(), execution))
    record = build_record(member.spec, module, divergence, finals, wall, execution,
                          member.measures)
    metadata = {**record.metadata, "vectorized_group": size, "group_wall_time_s": group_wall,
                "vectorized_strategy": strategy}
    return replace(record, metadata=metadata)


def _steps(total: int, quiet: bool) -> Any:
    if quiet:
        return range(total)
    from tqdm.auto import tqdm

    return tqdm(range(total), unit="step", desc="vectorised group", leave=False)
