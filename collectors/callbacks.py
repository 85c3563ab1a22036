"""Lightning callbacks the sweeps use; each works in anyone's Trainer.

- `DivergenceCallback`: records the training loss of every step and stops the run when the
  loss is NaN/inf or exceeds `threshold` x its initial loss.
- `EffectiveLRCallback` (alias `WeightNormCallback`): every `every_n_steps` optimizer steps,
  the L2 norm of the weights and the relative update ||dW|| / ||W|| of each optimizer
  parameter group and of all weights together.

Measurement contract: a callback with a method `measurements() -> dict` returns keyword
arguments of `bayeslr.schema.Measurements` (scalars such as `effective_lr`, and a `series`
dict of named time series, each with a 'step' list); `collectors.run` merges them into the run
record. Steps are optimizer steps (trainer.global_step); for a cool-down branched off a
shared trunk, `collectors.run` shifts them by the branch step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from bayeslr.schema import Measurements


def _loss_of(outputs: Any) -> torch.Tensor | None:
    """The loss tensor of a training_step's return value (a tensor or a dict with 'loss')."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and isinstance(outputs.get("loss"), torch.Tensor):
        return outputs["loss"]
    return None


class DivergenceCallback(Callback):
    """Stop a run whose loss is non-finite or above `threshold` x the initial loss.

    `losses[i]` is the training loss (nats/token) of the batch at step i (0-based; the state
    can be preloaded with `load_state_dict` to continue a run).
    Losses are moved to the host every `check_every` steps (one device sync per check), so on
    a GPU the run may go on for up to `check_every - 1` steps past the divergence; the step
    recorded in `diverged_step` is exact.
    """

    def __init__(self, threshold: float = 3.0, *, check_every: int = 1,
                 initial_loss: float | None = None) -> None:
        if not threshold > 1:
            raise ValueError(f"threshold must be > 1 (a multiple of the initial loss), "
                             f"got {threshold!r}")
        self.threshold, self.check_every = threshold, max(1, int(check_every))
        self.initial_loss = initial_loss
        self.losses: list[float] = []
        self.diverged_step: int | None = None
        self._pending: list[torch.Tensor] = []

    @property
    def diverged(self) -> bool:
        return self.diverged_step is not None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = _loss_of(outputs)
        if loss is None or self.diverged:
            return
        self._pending.append(loss.detach().float())
        last = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        if len(self._pending) >= self.check_every or last:
            self.flush(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush(trainer)

    def flush(self, trainer: pl.Trainer) -> None:
        """Move pending losses to the host and check them (one device sync)."""
        if not self._pending or self.diverged:
            self._pending = []
            return
        values = torch.stack(self._pending).tolist()
        self._pending = []
        for value in values:
            step = len(self.losses)
            self.losses.append(value)
            if self.initial_loss is None:
                self.initial_loss = value
            if not math.isfinite(value) or value > self.threshold * abs(self.initial_loss):
                self.diverged_step = step
                trainer.should_stop = True
                return

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "diverged_step": self.diverged_step,
                "initial_loss": self.initial_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.losses = list(state_dict["losses"])
        self.diverged_step = state_dict["diverged_step"]
        self.initial_loss = state_dict["initial_loss"]


class EffectiveLRCallback(Callback):
    """Weight norms and relative update sizes per optimizer parameter group.

    Every `every_n_steps` optimizer steps the weights are copied before the step and compared
    after it: effective LR = ||W_after - W_before|| / ||W_before|| (dimensionless, per step);
    the weight norm recorded is ||W_after||.
    Groups are named by the param group's 'name' key, else 'group<i>'; 'global' covers all.
    Values go to the Trainer's loggers (if any) as `effective_lr/<group>` and
    `weight_norm/<group>`, and to `measurements()`: `effective_lr` = `peak_effective_lr` of
    the global series (the update size while the LR schedule is near its peak, so warmup and
    cool-down do not dilute it), `weight_norm` = final global norm. The schedule multiplier of
    each logged step (LR / initial LR of the first group; 1 without a scheduler) is kept in
    the series as `lr_scale`. `phase` = steps trained before this Trainer started (a resumed
    WSD branch), so measurements fall on the same steps as in an uninterrupted run.
    """

    def __init__(self, every_n_steps: int = 10, *, phase: int = 0) -> None:
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.every_n_steps, self.phase = every_n_steps, phase
        self.steps: list[int] = []
        self.lr_scale: list[float] = []
        self.effective_lr: dict[str, list[float]] = {}
        self.weight_norm: dict[str, list[float]] = {}
        self._before: list[list[torch.Tensor]] | None = None
        self._scale = 1.0

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if (self.phase + trainer.global_step + 1) % self.every_n_steps == 0:
            self._before = [[p.detach().clone() for p in g["params"]]
                            for g in optimizer.param_groups]
            first = optimizer.param_groups[0]
            initial = first.get("initial_lr")
            self._scale = first["lr"] / initial if initial else 1.0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._before is None or not trainer.optimizers:
            return
        before, self._before = self._before, None
        groups = trainer.optimizers[0].param_groups
        names = [g.get("name") or f"group{i}" for i, g in enumerate(groups)]
        rows = []
        with torch.no_grad():
            for group, old in zip(groups, before, strict=True):
                params = group["params"]
                rows.append(torch.stack([
                    sum(o.float().pow(2).sum() for o in old),
                    sum((p.float() - o.float()).pow(2).sum()
                        for p, o in zip(params, old, strict=True)),
                    sum(p.float().pow(2).sum() for p in params)]))
            stats = torch.stack(rows).cpu().double()  # (groups, 3): |W_before|², |dW|², |W|²
        self._record(trainer, names, stats)

    def _record(self, trainer: pl.Trainer, names: list[str], stats: torch.Tensor) -> None:
        step = trainer.global_step
        self.steps.append(step)
        self.lr_scale.append(self._scale)
        rows = dict(zip(names, stats.tolist(), strict=True))
        rows["global"] = stats.sum(0).tolist()
        metrics = {}
        for name, (sq_before, sq_delta, sq_after) in rows.items():
            norm = math.sqrt(sq_after)
            ratio = math.sqrt(sq_delta / sq_before) if sq_before > 0 else float("nan")
            self.weight_norm.setdefault(name, []).append(norm)
            self.effective_lr.setdefault(name, []).append(ratio)
            metrics[f"weight_norm/{name}"] = norm
            metrics[f"effective_lr/{name}"] = ratio
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def measurements(self) -> dict[str, Any]:
        """Keyword arguments for bayeslr.schema.Measurements (empty before any step)."""
        if not self.steps:
            return {}
        final_norm = self.weight_norm["global"][-1]
        return {
            "effective_lr": peak_effective_lr(self.effective_lr["global"], self.lr_scale),
            "weight_norm": final_norm if math.isfinite(final_norm) else None,
            "series": {
                "effective_lr": {"step": list(self.steps), "lr_scale": list(self.lr_scale),
                                 **self.effective_lr},
                "weight_norm": {"step": list(self.steps), **self.weight_norm},
            },
        }


PEAK_SCALE = 0.9
"""Logged steps whose schedule multiplier is at least this fraction of the highest logged
multiplier count as 'near the peak'."""


def peak_effective_lr(ratios: Sequence[float], lr_scale: Sequence[float]) -> float | None:
    """Mean relative update size ||dW|| / ||W|| (per step, dimensionless) over the logged
    steps whose LR schedule multiplier is >= PEAK_SCALE x the highest logged one (1 under a
    stable peak); None when no logged step has a finite value.

    This is the effective LR of the peak LR the run was configured with, comparable across
    schedules and horizons (a cool-down's shrinking updates would otherwise dominate it)."""
    pairs = [(r, s) for r, s in zip(ratios, lr_scale, strict=True) if math.isfinite(r)]
    if not pairs:
        return None
    top = max(s for _, s in pairs)
    near = [r for r, s in pairs if s >= PEAK_SCALE * top]
    return sum(near) / len(near)


WeightNormCallback = EffectiveLRCallback
"""Same callback under the name of what it also logs."""


def with_trunk_history(branch: Measurements, trunk: Measurements, branch_step: int,
                       schedule: Callable[[int], float]) -> Measurements:
    """A WSD branch's measurements with the trunk's series up to `branch_step` prepended
    (the branch *is* the trunk up to there) and `effective_lr` recomputed over the whole run.
    Idempotent: points of the branch at or before `branch_step` are replaced, not repeated.

    `schedule(step)` is the run's LR multiplier at 0-based step; it fills `lr_scale` where a
    series lacks it (records written before that column existed)."""
    series = dict(branch.series)
    for name in ("effective_lr", "weight_norm"):
        head, tail = trunk.series.get(name), branch.series.get(name)
        if head is None:
            continue
        tail = tail or {key: () for key in head}
        before = [i for i, s in enumerate(head["step"]) if s <= branch_step]
        after = [i for i, s in enumerate(tail["step"]) if s > branch_step]
        series[name] = {key: tuple(head[key][i] for i in before)
                        + tuple(tail[key][i] for i in after) for key in tail if key in head}
    return replace(branch, series=series, effective_lr=effective_lr_of(series, schedule))


def effective_lr_of(series: Mapping[str, Mapping[str, Sequence[float]]],
                    schedule: Callable[[int], float]) -> float | None:
    """`peak_effective_lr` of a stored `effective_lr` series (global group); steps count
    optimizer steps done, so the update logged at step s used multiplier schedule(s - 1)."""
    table = series.get("effective_lr")
    if not table or "global" not in table:
        return None
    scales = table.get("lr_scale") or [schedule(s - 1) for s in table["step"]]
    return peak_effective_lr(table["global"], scales)
