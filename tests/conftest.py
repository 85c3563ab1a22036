"""Shared fixtures: tiny real records and the shipped real sweep."""

from __future__ import annotations

import sys

import pytest

from bayeslr.schema import (
    LossCurve,
    ModelShape,
    OptimizerConfig,
    RunConfig,
    RunOutcome,
    RunRecord,
    TrainConfig,
)


def make_record(lr: float = 1e-3, *, seed: int = 0, d_model: int = 64, diverged: bool = False,
                loss: float = 3.0, curve_points: int = 5) -> RunRecord:
    """A small valid record of a GPT run (real field values, nothing mocked)."""
    steps = tuple(range(0, 100 * curve_points, 100))
    config = RunConfig(
        model=ModelShape(n_params=12 * 2 * d_model**2, n_params_total=12 * 2 * d_model**2
                         + 256 * d_model, d_model=d_model, n_layers=2, n_heads=4,
                         d_ff=4 * d_model, vocab_size=256, context=128, tied_embeddings=True),
        optimizer=OptimizerConfig(name="adamw", lr=lr, beta1=0.9, beta2=0.95, eps=1e-8,
                                  weight_decay=0.1),
        train=TrainConfig(tokens=16 * 128 * 400, batch_size=16, seq_len=128, steps=400,
                          schedule="cosine", warmup_steps=40, seed=seed),
    )
    curve = LossCurve(step=steps, train_loss=tuple(5.5 - 0.1 * i for i in range(curve_points)))
    outcome = RunOutcome(diverged=diverged, final_train_loss=None if diverged else loss,
                         final_val_loss=None if diverged else loss + 0.05,
                         diverged_step=120 if diverged else None, curve=curve,
                         wall_time_s=12.5, flops=1e12, device="cpu")
    return RunRecord(config=config, outcome=outcome, metadata={"note": "test"})


@pytest.fixture
def record() -> RunRecord:
    return make_record()


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests that use torch train with one thread (deterministic, and fair to a 2-core CI).
    Session-wide, so module-scoped fixtures that train run with one thread too; test modules
    are imported (and torch with them) before any fixture runs."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
