"""Optimizers and learning-rate schedules for the sweeps.

Optimizers (their settings live in `bayeslr.schema.OptimizerConfig`):
- 'adamw' / 'adam': betas (beta1, beta2), eps, weight_decay (decoupled for AdamW, L2 for Adam).
- 'sgd': momentum, nesterov, weight_decay (L2).
- 'rmsprop': alpha (squared-gradient smoothing), eps, momentum, weight_decay (L2).
Gradient clipping (`max_grad_norm`) is applied by the Trainer, not here.

Weight decay applies to matrices and embeddings, never to norms or biases. Under muP the
per-group LR multipliers of Yang et al. 2022 (Tensor Programs V, table 3 in the output-
multiplier form used by `collectors.model`) are applied: adaptive optimizers (Adam, AdamW,
RMSprop) divide the LR of hidden matrices by the width multiplier m; SGD multiplies the LR of
vector-like parameters (embeddings, read-out, norms) by m.

Schedules map an optimizer step (0-based) to a multiplier of the peak LR: a linear warmup
from 1/warmup_steps to 1, then 'constant', 'cosine' or 'linear' decay to min_lr_ratio, or
'wsd' (warmup-stable-decay: constant, then a linear decay over the last decay_fraction of
the steps; Hägele et al. 2024).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bayeslr.errors import PlanError
from bayeslr.schema import OptimizerConfig, TrainConfig

TRAINABLE = ("adamw", "adam", "sgd", "rmsprop")
"""Optimizers the collectors can train."""

ADAPTIVE = ("adamw", "adam", "rmsprop")
"""Optimizers whose update is normalized per coordinate (muP treats them alike)."""

SCHEDULES = ("constant", "cosine", "linear", "wsd")

DEFAULTS: dict[str, dict[str, Any]] = {
    "adamw": {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1},
    "adam": {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.0},
    "sgd": {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
    "rmsprop": {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "weight_decay": 0.0},
}
"""Settings used when a plan leaves them out (recorded explicitly in every run)."""

SETTINGS = {name: tuple(values) + ("max_grad_norm",) for name, values in DEFAULTS.items()}
"""Settings each optimizer accepts (besides lr)."""

DEFAULT_OPTIMIZER = OptimizerConfig(name="adamw", lr=1e-3, **DEFAULTS["adamw"])


@dataclass(frozen=True)
class Schedule:
    """LR multiplier over training; `__call__(step)` is the multiplier at 0-based `step`."""

    kind: str = "cosine"
    """'constant', 'cosine', 'linear' or 'wsd'."""
    total_steps: int = 1
    """Optimizer steps of the whole run."""
    warmup_steps: int = 0
    """Linear warmup steps from 1/warmup_steps to 1 (x peak LR)."""
    min_lr_ratio: float = 0.0
    """Final multiplier of decaying schedules."""
    decay_fraction: float = 0.2
    """WSD only: fraction of the steps spent in the final linear decay."""

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise PlanError(f"schedule: unknown schedule {self.kind!r}; known: "
                            f"{', '.join(SCHEDULES)}")
        if self.total_steps < 1 or self.warmup_steps < 0:
            raise PlanError(f"schedule: need total_steps >= 1 and warmup_steps >= 0, got "
                            f"{self.total_steps} and {self.warmup_steps}")
        if self.warmup_steps >= self.total_steps and self.kind != "constant":
            raise PlanError(f"schedule: warmup_steps={self.warmup_steps} leaves no steps to "
                            f"decay in {self.total_steps}; shorten the warmup")
        if not 0 <= self.min_lr_ratio <= 1:
            raise PlanError(f"schedule.min_lr_ratio: expected a value in [0, 1], got "
                            f"{self.min_lr_ratio!r}")
        if not 0 < self.decay_fraction <= 1:
            raise PlanError(f"schedule.decay_fraction: expected a value in (0, 1], got "
                            f"{self.decay_fraction!r}")

    @property
    def decay_start(self) -> int:
        """WSD: first step of the decay phase (the end of the shared stable trunk)."""
        return max(self.warmup_steps, round(self.total_steps * (1 - self.decay_fraction)))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "wsd":
            start = self.decay_start
            if step < start:
                return 1.0
            progress = (step - start + 1) / max(1, self.total_steps - start)
        else:
            progress = (step - self.warmup_steps + 1) / (self.total_steps - self.warmup_steps)
        progress = min(1.0, progress)
        if self.kind == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:  # linear, and the decay of wsd
            shape = 1.0 - progress
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape


def schedule_of(train: TrainConfig) -> Schedule:
    """The LR schedule a run's TrainConfig describes."""
    return Schedule(kind=train.schedule, total_steps=int(train.steps or 1),
                    warmup_steps=int(train.warmup_steps or 0),
                    min_lr_ratio=float(train.min_lr_ratio or 0.0),
                    decay_fraction=float(train.decay_fraction or 0.2))


def parameter_groups(module: nn.Module) -> list[dict[str, Any]]:
    """The module's own `parameter_groups()` if it has one, else: matrices and embeddings
    (decayed) vs vectors (norms, biases; not decayed)."""
    if hasattr(module, "parameter_groups"):
        return module.parameter_groups()
    decay = {"name": "matrix", "kind": "matrix", "decay": True, "width_mult": 1.0, "params": []}
    other = {"name": "vector", "kind": "vector", "decay": False, "width_mult": 1.0, "params": []}
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else other)["params"].append(p)
    return [g for g in (decay, other) if g["params"]]


def lr_multiplier(optimizer: str, kind: str, width_mult: float) -> float:
    """muP LR multiplier of a parameter group (1.0 when width_mult is 1, i.e. under 'sp')."""
    if optimizer in ADAPTIVE:
        return 1.0 / width_mult if kind == "matrix" else 1.0
    return width_mult if kind == "vector" else 1.0


def build_optimizer(groups: Iterable[dict[str, Any]], config: OptimizerConfig
                    ) -> torch.optim.Optimizer:
    """A torch optimizer over named parameter groups (see `parameter_groups`), peak LR set."""
    name = config.name
    if name not in TRAINABLE:
        raise PlanError(f"optimizer {name!r} cannot be trained by the collectors; known: "
                        f"{', '.join(TRAINABLE)}")
    s = {**DEFAULTS[name], **{k: v for k, v in vars(config).items() if v is not None}}
    torch_groups = []
    for group in groups:
        mult = lr_multiplier(name, group["kind"], group["width_mult"])
        torch_groups.append({"params": group["params"], "name": group["name"],
                             "lr": config.lr * mult,
                             "weight_decay": s["weight_decay"] if group["decay"] else 0.0})
    if name in ("adamw", "adam"):
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return cls(torch_groups, lr=config.lr, betas=(s["beta1"], s["beta2"]), eps=s["eps"])
    if name == "sgd":
        return torch.optim.SGD(torch_groups, lr=config.lr, momentum=s["momentum"],
                               nesterov=bool(s["nesterov"]))
    return torch.optim.RMSprop(torch_groups, lr=config.lr, alpha=s["alpha"], eps=s["eps"],
                               momentum=s["momentum"])


def lambda_schedule(schedule: Schedule, *, offset: int = 0) -> Callable[[int], float]:
    """A plain function step -> multiplier for LambdaLR; `offset` shifts a resumed run."""

    def multiplier(step: int) -> float:
        return schedule(step + offset)

    return multiplier


def configure_optimizers(module: nn.Module, config: OptimizerConfig, schedule: Schedule,
                         *, offset: int = 0) -> dict[str, Any]:
    """What a LightningModule's `configure_optimizers` returns: the optimizer and a per-step
    LambdaLR scheduler. Usable from any module: `return configure_optimizers(self, cfg, s)`."""
    optimizer = build_optimizer(parameter_groups(module), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  lambda_schedule(schedule, offset=offset))
    return {"optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
