"""The sharpness callback in real Lightning training: edge of stability, Adam, failures, plot."""

from __future__ import annotations

import dataclasses
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bayeslr.schema import Measurements
from bayeslr.sharpness_plot import adam_threshold, plot_sharpness
from bayeslr.store import SweepStore
from collectors.hessian import (
    HessianError,
    adam_preconditioner,
    hessian_operator,
    lanczos,
    power_iteration,
    preconditioned,
    random_vector,
)
from collectors.sharpness import SharpnessCallback, SharpnessWarning
from tests.conftest import make_record
from tests.tiny_nets import FullBatchModule, TinyGPT, lm_loss, mse_loss, token_batch

LR = 0.3  # gradient descent's stability edge: 2 / LR = 6.67


def _regression(seed: int = 0, n: int = 128, d: int = 8):
    """A tanh MLP (3 x 32) and a fixed batch of teacher-network targets."""
    torch.manual_seed(seed)
    x = torch.randn(n, d)
    teacher = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 1))
    with torch.no_grad():
        y = teacher(x)
        y = y / y.std()
    net = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                        nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    return net, (x, y)


def _fit(module, data, callback, steps):
    trainer = pl.Trainer(max_steps=steps, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    loader = DataLoader(TensorDataset(*data), batch_size=len(data[0]))  # full batch
    trainer.fit(module, train_dataloaders=loader)
    return trainer


@pytest.fixture(scope="module", params=[("lanczos", "finite_difference", 0),
                                        ("power", "double_backward", 0),
                                        *[("lanczos", "double_backward", s) for s in (1, 2, 3, 4)]],
                ids=lambda p: "-".join(map(str, p)))
def edge_of_stability(request):
    solver, method, seed = request.param
    net, batch = _regression(seed=seed)
    callback = SharpnessCallback(every_n_steps=10, loss_fn=mse_loss, solver=solver,
                                 method=method)
    trainer = _fit(FullBatchModule(net, mse_loss, lr=LR), batch, callback, steps=600)
    return trainer, callback


def test_gradient_descent_drives_sharpness_to_two_over_lr_and_it_hovers(edge_of_stability):
    trainer, callback = edge_of_stability
    assert trainer.global_step == 600
    series = callback.measurements()["series"]["sharpness"]
    steps, sharp = np.array(series["step"]), np.array(series["lambda_max"]) * LR / 2
    assert list(steps) == list(range(0, 601, 10))
    assert sharp[0] < 0.5  # starts far below 2/lr ...
    reached = np.flatnonzero(sharp >= 0.9)
    assert len(reached) and steps[reached[0]] <= 300  # ... rises to it ...
    hovering = sharp[reached[0]:]
    assert np.all(np.abs(hovering - 1) <= 0.2), hovering  # ... and stays within 20%
    assert abs(np.median(hovering) - 1) <= 0.1
    hvps = np.array(series["hvp_count"])
    assert hvps[5:].mean() < hvps[0]  # warm starts need fewer products than the cold one


def test_measurements_fit_the_schema_and_survive_the_store(edge_of_stability, tmp_path):
    _, callback = edge_of_stability
    found = callback.measurements()
    measurements = Measurements(**found)
    assert measurements.lambda_max == found["series"]["sharpness"]["lambda_max"][-1]
    assert measurements.top_eigenvalues == (measurements.lambda_max,)
    assert measurements.hessian_trace is None and measurements.preconditioned_lambda_max is None
    record = dataclasses.replace(make_record(), measurements=measurements)
    store = SweepStore(tmp_path)
    store.put(record)
    assert store.get(record.run_id).measurements == measurements


def test_plot_shows_sharpness_against_the_thresholds(edge_of_stability, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    _, callback = edge_of_stability
    ax = plot_sharpness(callback.measurements(), lr=LR, optimizer="sgd")
    assert any(np.allclose(line.get_ydata(), 2 / LR) for line in ax.get_lines())
    path = tmp_path / "sharpness.png"
    ax.figure.savefig(path, dpi=60)
    assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"
    series = {"step": [0, 10, 20], "lambda_max": [1.0, None, 3.0],
              "preconditioned_lambda_max": [None, 300.0, 350.0]}
    ax = plot_sharpness(series, lr=0.1, optimizer="adamw", beta1=0.9)
    assert any(np.allclose(line.get_ydata(), adam_threshold(0.1, beta1=0.9))
               for line in ax.get_lines())
    assert adam_threshold(0.1, beta1=0.9) == pytest.approx(380.0)


def test_adam_run_records_topk_trace_and_preconditioned_sharpness_at_the_end():
    torch.manual_seed(0)
    batch = token_batch(batch=16)
    module = FullBatchModule(TinyGPT(), lm_loss, lr=3e-3, optimizer="adam")
    callback = SharpnessCallback(every_n_steps=10, top_k=3, trace=True, trace_probes=4,
                                 num_iters=100, tol=1e-5, loss_fn=lm_loss)
    trainer = _fit(module, batch, callback, steps=25)
    found = callback.measurements()
    series = found["series"]["sharpness"]
    assert series["step"] == (0, 10, 20, 25)
    assert set(series) >= {"lambda_max", "lambda_2", "lambda_3", "hessian_trace",
                           "preconditioned_lambda_max"}
    assert math.isnan(series["preconditioned_lambda_max"][0])  # no Adam state before step 1
    assert all(map(math.isfinite, series["preconditioned_lambda_max"][1:]))
    assert list(found["top_eigenvalues"]) == sorted(found["top_eigenvalues"], reverse=True)
    # the final values are those of the trained model: check them independently
    op = hessian_operator(module, lm_loss, batch)
    exact = lanczos(op, dim=op.dim, num_iters=60, seed=1)
    assert found["top_eigenvalues"] == pytest.approx(exact.top(3), rel=1e-2)
    diagonal = adam_preconditioner(trainer.optimizers[0], list(module.parameters()))
    pre = power_iteration(preconditioned(op, diagonal), v0=random_vector(op.dim, seed=2),
                          num_iters=500, tol=1e-7)
    assert found["preconditioned_lambda_max"] == pytest.approx(pre.eigenvalue, rel=1e-2)
    assert found["preconditioned_lambda_max"] > found["lambda_max"]  # sqrt(v)+eps << 1


def test_a_failed_measurement_is_missing_with_a_warning_and_training_continues():
    net, batch = _regression(n=32)

    def flaky(module, b):  # the fixed batch gives NaN at step 20 only
        return mse_loss(module, b) * (math.nan if module.global_step == 20 else 1.0)

    callback = SharpnessCallback(every_n_steps=10, loss_fn=flaky)
    with pytest.warns(SharpnessWarning, match="step 20"):
        trainer = _fit(FullBatchModule(net, mse_loss, lr=0.05), batch, callback, steps=40)
    assert trainer.global_step == 40
    series = callback.measurements()["series"]["sharpness"]
    assert series["step"] == (0, 10, 20, 30, 40)
    finite = [math.isfinite(v) for v in series["lambda_max"]]
    assert finite == [True, True, False, True, True]
    assert callback.measurements()["lambda_max"] == series["lambda_max"][-1]


def test_a_batch_that_always_gives_nan_leaves_every_value_missing():
    net, (x, y) = _regression(n=32)
    bad = x.clone()
    bad[0, 0] = math.nan
    callback = SharpnessCallback(every_n_steps=5, loss_fn=mse_loss, batch=(bad, y))
    with pytest.warns(SharpnessWarning, match="nan"):
        trainer = _fit(FullBatchModule(net, mse_loss, lr=0.05), (x, y), callback, steps=10)
    assert trainer.global_step == 10
    found = callback.measurements()
    assert found["lambda_max"] is None and found["top_eigenvalues"] is None
    assert all(math.isnan(v) for v in found["series"]["sharpness"]["lambda_max"])
    Measurements(**found)  # still a valid record part


def test_a_loss_that_is_not_a_scalar_is_missing_and_training_continues():
    net, batch = _regression(n=32)

    def per_example(module, b):  # forgot the reduction: shape (32, 1)
        return (module(b[0]) - b[1]) ** 2

    callback = SharpnessCallback(every_n_steps=5, loss_fn=per_example)
    with pytest.warns(SharpnessWarning, match="scalar loss"):
        trainer = _fit(FullBatchModule(net, mse_loss, lr=0.05), batch, callback, steps=10)
    assert trainer.global_step == 10
    found = callback.measurements()
    assert found["series"]["sharpness"]["step"] == (0, 5, 10)
    assert all(math.isnan(v) for v in found["series"]["sharpness"]["lambda_max"])
    assert found["lambda_max"] is None


def test_finite_differences_with_adam_preconditioning_warn():
    torch.manual_seed(0)
    module = FullBatchModule(TinyGPT(), lm_loss, lr=3e-3, optimizer="adam")
    callback = SharpnessCallback(method="finite_difference", loss_fn=lm_loss)
    with pytest.warns(SharpnessWarning, match="unreliable for the preconditioned"):
        _fit(module, token_batch(batch=4), callback, steps=2)


def test_bad_settings_are_refused_before_training():
    with pytest.raises(HessianError, match="every_n_steps"):
        SharpnessCallback(every_n_steps=0)
    with pytest.raises(HessianError, match="unknown method"):
        SharpnessCallback(method="exact")
    net, batch = _regression(n=16)
    callback = SharpnessCallback(preconditioned=True, loss_fn=mse_loss)
    with pytest.raises(HessianError, match="needs torch.optim.Adam"):
        _fit(FullBatchModule(net, mse_loss, lr=0.1), batch, callback, steps=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_callback_on_cuda_moves_a_given_cpu_batch_and_measures():
    net, batch = _regression()
    callback = SharpnessCallback(every_n_steps=50, loss_fn=mse_loss, batch=batch)
    trainer = pl.Trainer(max_steps=200, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="gpu", devices=1)
    trainer.fit(FullBatchModule(net, mse_loss, lr=LR),
                train_dataloaders=DataLoader(TensorDataset(*batch), batch_size=len(batch[0])))
    series = callback.measurements()["series"]["sharpness"]
    assert series["step"] == (0, 50, 100, 150, 200)
    assert all(map(math.isfinite, series["lambda_max"]))
    sharp = np.array(series["lambda_max"]) * LR / 2
    assert sharp[0] < 0.5 and abs(sharp[-1] - 1) < 0.2  # same edge of stability as on the CPU
