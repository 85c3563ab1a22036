"""The callbacks in a plain Lightning Trainer with a user's own module and optimizer."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from collectors.callbacks import (
    DivergenceCallback,
    EffectiveLRCallback,
    WeightNormCallback,
    peak_effective_lr,
)
from collectors.run import merge_measurements


class Regression(pl.LightningModule):
    """Linear regression with two named parameter groups and plain SGD."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.head(torch.tanh(self.body(x))), y)

    def configure_optimizers(self):
        return torch.optim.SGD([{"params": self.body.parameters(), "name": "body"},
                                {"params": self.head.parameters()}], lr=self.lr)


def _data(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def _fit(lr: float, callbacks: list, steps: int, **kwargs) -> pl.Trainer:
    torch.manual_seed(0)
    trainer = pl.Trainer(max_steps=steps, callbacks=callbacks, accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, **kwargs)
    trainer.fit(Regression(lr), _data())
    return trainer


def test_effective_lr_is_the_relative_update_of_plain_sgd(tmp_path):
    small, large, frozen = (EffectiveLRCallback(every_n_steps=1) for _ in range(3))
    _fit(0.01, [small], 4, logger=CSVLogger(tmp_path))
    _fit(0.02, [large], 4, logger=False)
    _fit(0.0, [frozen], 4, logger=False)
    assert small.steps == [1, 2, 3, 4]
    # first step: same weights and gradient, so SGD's ||dW|| doubles with the LR
    for group in ("body", "group1", "global"):
        assert large.effective_lr[group][0] == pytest.approx(2 * small.effective_lr[group][0],
                                                             rel=1e-5)
    assert frozen.effective_lr["global"] == [0.0] * 4
    norms = small.weight_norm
    assert norms["global"][0] == pytest.approx(math.hypot(norms["body"][0], norms["group1"][0]))
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "effective_lr/body" in logged and "weight_norm/global" in logged
    result = small.measurements()
    assert small.lr_scale == [1.0] * 4  # no scheduler: every step is at the peak LR
    assert result["effective_lr"] == pytest.approx(sum(small.effective_lr["global"]) / 4)
    assert WeightNormCallback is EffectiveLRCallback


class Scheduled(Regression):
    """The regression with a warmup (2 steps) / constant (2) / linear decay (4) schedule."""

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        shape = [0.5, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: shape[min(s, 7)])
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]


def test_effective_lr_summary_uses_the_steps_near_the_peak_lr():
    callback = EffectiveLRCallback(every_n_steps=1)
    torch.manual_seed(0)
    trainer = pl.Trainer(max_steps=8, callbacks=[callback], accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.fit(Scheduled(0.05), _data())
    assert callback.lr_scale == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])
    ratios = callback.effective_lr["global"]
    assert ratios[-1] == 0.0
    assert callback.measurements()["effective_lr"] == pytest.approx(sum(ratios[1:4]) / 3)
    assert peak_effective_lr([0.1, 0.2, 0.3], [0.5, 0.8, 0.75]) == pytest.approx(0.25)
    assert peak_effective_lr([float("nan")], [1.0]) is None


def test_measurements_merge_into_the_record_schema():
    callback = EffectiveLRCallback(every_n_steps=2)
    _fit(0.05, [callback], 6, logger=False)
    measured, unknown = merge_measurements([callback, DivergenceCallback()], offset=100)
    assert unknown == {}
    assert measured.series["effective_lr"]["step"] == (102, 104, 106)
    assert measured.weight_norm == pytest.approx(callback.weight_norm["global"][-1])
    assert len(measured.series["weight_norm"]["body"]) == 3


def test_divergence_callback_stops_a_plain_trainer():
    callback = DivergenceCallback(threshold=3.0)
    trainer = _fit(50.0, [callback], 200, logger=False)
    assert callback.diverged and trainer.global_step == callback.diverged_step + 1 < 200
    assert len(callback.losses) == callback.diverged_step + 1
    bad = callback.losses[-1]
    assert not math.isfinite(bad) or bad > 3.0 * callback.losses[0]
    calm = DivergenceCallback(threshold=3.0, check_every=4)
    _fit(0.01, [calm], 10, logger=False)
    assert not calm.diverged and len(calm.losses) == 10
