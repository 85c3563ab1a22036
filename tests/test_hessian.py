"""Hessian-vector products and spectra against the exact Hessian of a tiny transformer."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from collectors.hessian import (
    METHODS,
    HessianError,
    NonFiniteLossError,
    adam_preconditioner,
    block_sharpness,
    dense_hessian,
    hessian_operator,
    hutchinson_trace,
    lanczos,
    parameter_groups,
    power_iteration,
    preconditioned,
    random_vector,
    spectral_density,
    top_eigenvalues,
)
from tests.tiny_nets import TinyGPT, lm_loss, token_batch


@pytest.fixture(scope="module")
def trained():
    """A float64 TinyGPT after 100 full-batch Adam steps, its optimizer and exact Hessian."""
    torch.manual_seed(0)
    model = TinyGPT().double()
    batch = token_batch(batch=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        lm_loss(model, batch).backward()
        optimizer.step()
    hessian = dense_hessian(model, lm_loss, batch)  # (n, n)
    return model, batch, optimizer, hessian, torch.linalg.eigvalsh(hessian)


def _rel(estimate, exact) -> float:
    estimate = torch.as_tensor(estimate, dtype=torch.float64)
    return float(((estimate - exact).abs() / exact.abs()).max())


@pytest.mark.parametrize("method", METHODS)
def test_every_hvp_method_matches_the_exact_hessian(trained, method):
    model, batch, _, hessian, _ = trained
    op = hessian_operator(model, lm_loss, batch, method=method)
    assert op.dim == hessian.shape[0] == sum(p.numel() for p in model.parameters())
    for seed in range(3):
        v = random_vector(op.dim, seed=seed, dtype=torch.float64)
        exact = hessian @ v
        error = float(torch.linalg.vector_norm(op(v) - exact) / torch.linalg.vector_norm(exact))
        assert error < (1e-7 if method == "finite_difference" else 1e-12), (method, error)


def test_hvp_methods_agree_in_float32_and_leave_the_model_unchanged():
    torch.manual_seed(1)
    model, batch = TinyGPT(), token_batch(batch=16)
    before = [p.detach().clone() for p in model.parameters()]
    v = random_vector(sum(p.numel() for p in model.parameters()), seed=0)
    products = {m: hessian_operator(model, lm_loss, batch, method=m)(v) for m in METHODS}
    ref = products["double_backward"]
    for method, hv in products.items():
        error = float(torch.linalg.vector_norm(hv - ref) / torch.linalg.vector_norm(ref))
        assert error < (1e-3 if method == "finite_difference" else 1e-5), (method, error)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_compiled_products_follow_the_parameters_and_new_vectors():
    """The compiled product takes the parameters as inputs: after optimizer steps a new
    operator (reusing the compiled code) gives the product at the new point, not the old."""
    torch.manual_seed(2)
    model, batch = TinyGPT().double(), token_batch(batch=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    dim = sum(p.numel() for p in model.parameters())
    products = []
    for _ in range(2):
        compiled = hessian_operator(model, lm_loss, batch, method="compiled")
        exact = hessian_operator(model, lm_loss, batch)
        for seed in range(2):
            v = random_vector(dim, seed=seed, dtype=torch.float64)
            hv = compiled(v)
            assert _rel_norm(hv, exact(v)) < 1e-12
            products.append(hv)
        for _ in range(3):
            optimizer.zero_grad()
            lm_loss(model, batch).backward()
            optimizer.step()
    assert _rel_norm(products[0], products[2]) > 1e-3  # the point moved, and so did H v


def test_compiled_refuses_a_loss_it_cannot_trace_with_a_clear_error():
    model, batch = TinyGPT(), token_batch(batch=4)

    def loss_with_python_branch(module, b):
        loss = lm_loss(module, b)
        return loss * 2 if loss.item() > 0 else loss  # data-dependent Python control flow

    op = hessian_operator(model, loss_with_python_branch, batch, method="compiled")
    with pytest.raises(HessianError, match="method='compiled'.*use method='double_backward'"):
        op(random_vector(op.dim, seed=0))


def _rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def test_finite_difference_error_is_measured_and_shrinks_like_h_squared(trained):
    """Central differences: error ~ C h^2 until round-off; the default step is accurate."""
    model, batch, _, hessian, _ = trained
    v = random_vector(hessian.shape[0], seed=3, dtype=torch.float64)
    exact = hessian @ v

    def error(step):
        hv = hessian_operator(model, lm_loss, batch, method="finite_difference", fd_step=step)(v)
        return float(torch.linalg.vector_norm(hv - exact) / torch.linalg.vector_norm(exact))

    coarse, fine, default = error(1e-2), error(1e-3), error(None)
    assert 50 < coarse / fine < 200  # O(h^2): 10x smaller step, ~100x smaller error
    assert default < 1e-8


def test_top5_by_power_iteration_with_deflation_matches_eigvalsh(trained):
    model, batch, _, _, eigenvalues = trained
    op = hessian_operator(model, lm_loss, batch)
    starts = [random_vector(op.dim, seed=i, dtype=op.dtype) for i in range(5)]
    top = top_eigenvalues(op, k=5, v0=starts, num_iters=2000, tol=1e-9)
    assert _rel(top.eigenvalues, eigenvalues.flip(0)[:5]) < 1e-3
    vectors = torch.stack(top.eigenvectors)
    assert torch.allclose(vectors @ vectors.T, torch.eye(5, dtype=torch.float64), atol=1e-8)


def test_top5_and_most_negative_by_lanczos_match_eigvalsh(trained):
    model, batch, _, _, eigenvalues = trained
    op = hessian_operator(model, lm_loss, batch)
    result = lanczos(op, dim=op.dim, num_iters=40, seed=0, dtype=op.dtype)
    assert _rel(result.top(5), eigenvalues.flip(0)[:5]) < 1e-3
    assert eigenvalues[0] < 0  # the loss is not convex here: Lanczos must see that
    assert _rel(result.bottom(1), eigenvalues[:1]) < 1e-3


def test_hutchinson_trace_within_5_percent_with_200_probes(trained):
    model, batch, _, hessian, _ = trained
    op = hessian_operator(model, lm_loss, batch)
    estimate = hutchinson_trace(op, dim=op.dim, num_probes=200, seed=0)  # op's float64
    exact = float(hessian.trace())
    assert abs(estimate.trace - exact) <= 0.05 * abs(exact)
    assert abs(estimate.trace - exact) <= 4 * estimate.stderr


def test_slq_density_integrates_to_one_and_keeps_the_moments(trained):
    """Gauss quadrature is exact for low moments: mean and variance match v'Hv, v'H^2v."""
    model, batch, _, hessian, eigenvalues = trained
    op = hessian_operator(model, lm_loss, batch)
    density = spectral_density(op, dim=op.dim, num_runs=3, num_iters=40, seed=5,
                               dtype=op.dtype, num_points=4000)
    grid, phi = density.grid, density.density
    assert float(torch.trapezoid(phi, grid)) == pytest.approx(1.0, abs=1e-6)
    assert bool((phi >= 0).all())
    starts = [random_vector(op.dim, seed=5 + r, dtype=op.dtype) for r in range(3)]
    starts = [v / torch.linalg.vector_norm(v) for v in starts]
    mean = sum(float(v @ hessian @ v) for v in starts) / 3
    second = sum(float(v @ hessian @ hessian @ v) for v in starts) / 3
    assert float(torch.trapezoid(grid * phi, grid)) == pytest.approx(mean, rel=1e-6)
    assert float(torch.trapezoid(grid**2 * phi, grid)) == pytest.approx(
        second + density.sigma**2, rel=1e-6)
    assert _rel(density.nodes.max(), eigenvalues[-1]) < 1e-6  # support reaches lambda_max


def test_block_sharpness_is_the_top_eigenvalue_of_each_diagonal_block(trained):
    model, batch, _, hessian, _ = trained
    blocks = block_sharpness(model, lm_loss, batch, by="layer", num_iters=3000, tol=1e-10)
    groups = parameter_groups(model, by="layer")
    assert set(blocks) == set(groups) == {"wte", "wpe", "blocks.0", "ln_f"}
    slices = hessian_operator(model, lm_loss, batch).slices
    for group, params in groups.items():
        index = torch.cat([torch.arange(slices[n].start, slices[n].stop) for n in params])
        exact = torch.linalg.eigvalsh(hessian[index][:, index])[-1]
        assert _rel(blocks[group], exact) < 1e-3, group


def test_preconditioned_sharpness_is_the_top_eigenvalue_of_p_inverse_h(trained):
    model, batch, optimizer, hessian, _ = trained
    params = list(model.parameters())
    diagonal = adam_preconditioner(optimizer, params)
    group = optimizer.param_groups[0]
    state = optimizer.state[params[0]]
    v_hat = state["exp_avg_sq"] / (1 - group["betas"][1] ** float(state["step"]))
    assert torch.allclose(diagonal[: params[0].numel()], v_hat.sqrt().flatten() + group["eps"])
    exact = torch.linalg.eigvals(hessian / diagonal[:, None]).real.max()  # P^-1 H
    op = preconditioned(hessian_operator(model, lm_loss, batch), diagonal)
    result = power_iteration(op, v0=random_vector(len(diagonal), seed=0, dtype=torch.float64),
                             num_iters=3000, tol=1e-10)
    assert _rel(result.eigenvalue, exact) < 1e-3


def test_adam_preconditioner_refuses_an_optimizer_without_second_moments():
    model = TinyGPT()
    with pytest.raises(HessianError, match="not taken a step"):
        adam_preconditioner(torch.optim.Adam(model.parameters()), list(model.parameters()))
    with pytest.raises(HessianError, match="not Adam-like"):
        sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        lm_loss(model, token_batch()).backward()
        sgd.step()
        adam_preconditioner(sgd, list(model.parameters()))


def test_top_eigenvalues_are_algebraic_even_when_the_dominant_one_is_negative():
    diagonal = torch.tensor([-10.0, 3.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(0)))
    matrix = basis @ torch.diag(diagonal) @ basis.T
    starts = [random_vector(5, seed=i, dtype=torch.float64) for i in range(3)]
    top = top_eigenvalues(lambda v: matrix @ v, k=3, v0=starts, num_iters=5000, tol=1e-12)
    assert top.eigenvalues == pytest.approx((3.0, 2.0, 0.5), rel=1e-6)
    dominant = power_iteration(lambda v: matrix @ v, v0=starts[0], num_iters=5000, tol=1e-12)
    assert dominant.eigenvalue == pytest.approx(-10.0) and dominant.converged


def _symmetric(eigenvalues, seed=0):
    """A dense symmetric matrix with the given eigenvalues in a seeded random basis."""
    n = len(eigenvalues)
    basis, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(seed)))
    return basis @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ basis.T


def test_deflation_past_a_negative_dominant_eigenvalue_finds_every_one():
    """After a shifted run, the found directions must not grow back from round-off: the
    fifth eigenvalue of this matrix is the dominant negative one, not 0."""
    matrix = _symmetric([-10.0, 3.0, 2.0, -1.0, 0.5])
    starts = [random_vector(5, seed=i, dtype=torch.float64) for i in range(5)]
    top = top_eigenvalues(lambda v: matrix @ v, k=5, v0=starts, num_iters=5000, tol=1e-10)
    assert top.eigenvalues == pytest.approx((3.0, 2.0, 0.5, -1.0, -10.0), rel=1e-8)
    assert all(top.converged)
    negative = _symmetric([-10.0, -3.0, -2.0, -1.0, -0.5], seed=1)
    top = top_eigenvalues(lambda v: negative @ v, k=3, v0=starts, num_iters=5000, tol=1e-10)
    assert top.eigenvalues == pytest.approx((-0.5, -1.0, -2.0), rel=1e-8)


def test_power_iteration_does_not_stop_on_a_plateau():
    """With eigenvalues 5 and -4.99 the Rayleigh quotient creeps towards 5 by tiny changes
    long before it gets there; converged must mean within tol of an eigenvalue."""
    matrix = _symmetric([5.0, -4.99, 1.0, 0.2, -0.3] + [0.0] * 20)
    v0 = random_vector(25, seed=0, dtype=torch.float64)
    done = power_iteration(lambda v: matrix @ v, v0=v0, num_iters=20_000, tol=1e-6)
    assert done.converged and done.eigenvalue == pytest.approx(5.0, rel=1e-6)
    cut = power_iteration(lambda v: matrix @ v, v0=v0, num_iters=200, tol=1e-6)
    assert not cut.converged and cut.num_iters == 200
    assert abs(cut.eigenvalue - 5.0) > 1e-3  # not there yet, and it says so
    rayleigh = float(cut.eigenvector @ matrix @ cut.eigenvector)  # value of the vector returned
    assert cut.eigenvalue == pytest.approx(rayleigh, rel=1e-12)
    top = top_eigenvalues(lambda v: matrix @ v, k=1, v0=[v0], num_iters=200, tol=1e-6)
    assert top.converged == (False,)


def test_lanczos_stops_early_within_its_residual_bound(trained):
    model, batch, _, _, eigenvalues = trained
    op = hessian_operator(model, lm_loss, batch)
    exact = eigenvalues.flip(0)[:3]
    for tol in (1e-2, 1e-4):
        result = lanczos(op, dim=op.dim, num_iters=300, seed=0, tol=tol, top_k=3)
        assert len(result.ritz_values) < 300  # stopped early ...
        found = torch.tensor(result.top(3), dtype=torch.float64)
        assert bool(((found - exact).abs() <= tol * exact.abs()).all()), (tol, found, exact)
    warm = lanczos(op, dim=op.dim, num_iters=300, seed=0, tol=1e-4, top_k=1,
                   return_vectors=True)
    again = lanczos(op, dim=op.dim, num_iters=300, seed=1, tol=1e-4, top_k=1,
                    v0=warm.ritz_vectors[-1])
    assert len(again.ritz_values) < len(warm.ritz_values)  # a warm start needs fewer products
    assert _rel(again.top(1), exact[:1]) <= 1e-4


def test_dropout_is_off_while_measuring_and_the_mode_is_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Tanh(), nn.Linear(16, 1))
    batch = (torch.randn(32, 4), torch.randn(32, 1))

    def mse(m, b):
        return ((m(b[0]) - b[1]) ** 2).mean()

    v = random_vector(sum(p.numel() for p in model.parameters()), seed=0)
    for method in METHODS:
        op = hessian_operator(model, mse, batch, method=method)
        assert torch.allclose(op(v), op(v)) and model.training


def test_bad_inputs_raise_clear_errors():
    model, batch = TinyGPT(), token_batch()
    frozen = TinyGPT().requires_grad_(False)
    with pytest.raises(HessianError, match="no trainable parameters"):
        hessian_operator(frozen, lm_loss, batch)
    for method in METHODS:
        with pytest.raises(HessianError, match="scalar"):
            hessian_operator(model, lambda m, b: m(b[0]).sum(-1), batch, method=method)
    x = torch.randn(4, 3)
    x[0, 0] = math.nan  # a batch that gives a NaN loss
    for method in METHODS:
        with pytest.raises(NonFiniteLossError, match="nan"):
            hessian_operator(nn.Linear(3, 1), lambda m, b: m(b).pow(2).mean(), x, method=method)
    with pytest.raises(HessianError, match="unknown Hessian-vector method"):
        hessian_operator(model, lm_loss, batch, method="exact")
    with pytest.raises(HessianError, match="does not depend"):
        hessian_operator(model, lambda m, b: torch.tensor(1.0), batch)
    with pytest.raises(HessianError, match="unknown or frozen"):
        hessian_operator(model, lm_loss, batch, params=["nope.weight"])
    with pytest.raises(HessianError, match="positive integer"):
        lanczos(lambda v: v, dim=3, num_iters=0, seed=0)
    with pytest.raises(HessianError, match="non-zero"):
        power_iteration(lambda v: v, v0=torch.zeros(3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_products_and_lanczos_on_cuda_match_the_cpu():
    torch.manual_seed(0)
    model, batch = TinyGPT().double(), token_batch(batch=16)
    gpu_model, gpu_batch = copy.deepcopy(model).cuda(), tuple(t.cuda() for t in batch)
    v = random_vector(sum(p.numel() for p in model.parameters()), seed=0, dtype=torch.float64)
    assert torch.equal(random_vector(len(v), seed=0, dtype=torch.float64, device="cuda").cpu(), v)
    for method in METHODS:
        cpu = hessian_operator(model, lm_loss, batch, method=method)
        gpu = hessian_operator(gpu_model, lm_loss, gpu_batch, method=method)
        assert gpu.device.type == "cuda"
        assert torch.allclose(gpu(v.cuda()).cpu(), cpu(v), rtol=1e-6, atol=1e-9), method
        top_cpu = lanczos(cpu, dim=cpu.dim, num_iters=30, seed=0, dtype=cpu.dtype).top(3)
        top_gpu = lanczos(gpu, dim=gpu.dim, num_iters=30, seed=0, dtype=gpu.dtype,
                          device="cuda").top(3)
        assert top_gpu == pytest.approx(top_cpu, rel=1e-6), method
