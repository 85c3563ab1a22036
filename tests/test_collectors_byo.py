"""Bring your own model: a user's LightningModule factory swept through the same plan/store."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayeslr.schema import RunConfig
from bayeslr.store import SweepStore
from collectors.backends import collect
from collectors.plan import expand_plan
from collectors.run import Execution
from tests.collect_helpers import tiny_plan

CPU = Execution(device="cpu", threads=1)


class ContextMixer(pl.LightningModule):
    """A user's model: embeddings, one causal average over the past, an MLP, a read-out.

    It knows nothing of bayeslr beyond reading its width from the run config; the harness
    supplies the data (x, y byte batches) and, since it defines no configure_optimizers,
    the plan's optimizer and schedule.
    """

    def __init__(self, width: int, context: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, width)
        self.mlp = nn.Sequential(nn.Linear(2 * width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))
        self.out = nn.Linear(width, 256)
        mask = torch.tril(torch.ones(context, context))
        self.register_buffer("average", mask / mask.sum(1, keepdim=True), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)  # (B, T, C)
        past = self.average[: x.shape[1], : x.shape[1]] @ h
        return self.out(h + self.mlp(torch.cat([h, past], dim=-1)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x).reshape(-1, 256), y.reshape(-1))


class OwnOptimizer(ContextMixer):
    """A user's model that builds its own optimizer from the run's LR."""

    def __init__(self, width: int, context: int, lr: float) -> None:
        super().__init__(width, context)
        self.lr = lr

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def make_mixer(config: RunConfig) -> ContextMixer:
    return ContextMixer(config.model.d_model, config.model.context)


def make_own_optimizer(config: RunConfig) -> OwnOptimizer:
    return OwnOptimizer(config.model.d_model, config.model.context, config.optimizer.lr)


def test_user_module_is_swept_like_the_gpt(tmp_path):
    plan = expand_plan(tiny_plan(lrs=[1e-3, 1e-2, 100.0], model={"widths": [16, 32]}),
                       factory=make_mixer)
    summary = collect(plan, tmp_path / "sweep", execution=CPU, quiet=True, factory=make_mixer)
    assert (summary.done, summary.failed) == (6, 0)
    frame = SweepStore(tmp_path / "sweep").to_frame()
    assert set(frame["extra.factory"]) == {"tests.test_collectors_byo:make_mixer"}
    assert set(frame["arch"]) == {"custom"}
    sizes = frame.groupby("d_model")["n_params"].first()
    embed16 = 256 * 16
    assert sizes[16] == sum(p.numel() for p in make_mixer(plan.specs[0].config).parameters()
                            ) - embed16
    assert sizes[32] > 2 * sizes[16]
    assert frame.loc[frame["lr"] == 100.0, "diverged"].all()
    good = frame[frame["lr"] == 1e-2]
    assert (good["final_val_loss"] < 5.0).all() and good["effective_lr"].notna().all()


@pytest.mark.parametrize("workers", [1, 2])
def test_user_optimizer_is_respected_and_plan_factory_runs(tmp_path, workers):
    plan = expand_plan(tiny_plan(lrs=[0.0001, 1.0], steps=20, model={
        "factory": "tests.test_collectors_byo:make_own_optimizer"}))
    summary = collect(plan, tmp_path / "sweep", execution=CPU, quiet=True, workers=workers)
    assert (summary.done, summary.failed) == (2, 0), summary.errors
    frame = SweepStore(tmp_path / "sweep").to_frame().sort_values("lr")
    slow, fast = frame["effective_lr"]
    assert fast > 100 * slow  # plain SGD: the update size scales with the user's own LR
    assert (frame["meta.threads"] == 1).all()
    assert set(frame["meta.module"]) == {"tests.test_collectors_byo.OwnOptimizer"}
