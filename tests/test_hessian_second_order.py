"""The hand-derived second derivatives of collectors.second_order against autograd's own."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import collectors.second_order as second_order
from collectors.hessian import METHODS, dense_hessian, hessian_operator, random_vector
from collectors.second_order import second_order_kernels
from tests.tiny_nets import TinyGPT, lm_loss, token_batch

EXACT = [m for m in METHODS if m != "finite_difference"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a.detach() - b) / torch.linalg.vector_norm(b))


def _hvp(layer, inputs, *, rules: bool, seed: int = 0):
    """Gradient and Hessian-vector product of sum(w * y) + sum(y^2) / 2, y = layer(*inputs),
    with respect to the inputs, in float64: the second pass goes through the gradient's own
    graph and through the layer again (its output's cotangent depends on the inputs)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    with sdpa_kernel([SDPBackend.MATH]), second_order_kernels() if rules else nullcontext():
        out = layer(*leaves)
    weights = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(9))
    loss = (weights * out).sum() + out.pow(2).sum() / 2
    grads = torch.autograd.grad(loss, leaves, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    vectors = [torch.randn(t.shape, dtype=t.dtype, generator=gen) for t in leaves]
    hv = torch.autograd.grad(grads, leaves, vectors)
    return [g.detach() for g in grads], list(hv)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _attention(length: int, source: int, **kwargs):
    inputs = (_randn(2, 3, length, 8, seed=1), _randn(2, 3, source, 8, seed=2),
              _randn(2, 3, source, 5, seed=3))
    return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kwargs)), inputs


def _layer_norm(shape, affine: bool):
    x = _randn(4, 6, *shape, seed=1) * 3 + 1
    if not affine:
        return (lambda x: F.layer_norm(x, shape)), (x,)
    w, b = _randn(*shape, seed=2), _randn(*shape, seed=3)
    return (lambda x, w, b: F.layer_norm(x, shape, w, b, eps=1e-3)), (x, w, b)


def _cross_entropy(**kwargs):
    target = torch.randint(0, 7, (12,), generator=torch.Generator().manual_seed(4))
    target[[2, 5]] = -100
    return (lambda x: F.cross_entropy(x, target, **kwargs).reshape(1)), (_randn(12, 7, seed=1),)


CASES = {
    "causal attention, 3 query blocks": _attention(40, 40, is_causal=True, scale=0.4),
    "causal attention, fewer queries than keys": _attention(24, 40, is_causal=True),
    "causal attention, more queries than keys": _attention(40, 24, is_causal=True),
    "attention without mask": _attention(33, 20),
    "attention with a mask (left to autograd)": _attention(
        9, 9, attn_mask=torch.rand(9, 9, generator=torch.Generator().manual_seed(5)) > 0.3),
    "layer norm": _layer_norm((5,), affine=True),
    "layer norm over two dimensions, no affine": _layer_norm((3, 5), affine=False),
    "gelu": ((lambda x: F.gelu(x)), (_randn(4, 7, 9, seed=1) * 2,)),
    "tanh gelu (left to autograd)": ((lambda x: F.gelu(x, approximate="tanh")),
                                      (_randn(4, 7, seed=1) * 2,)),
    "cross entropy, mean, ignored rows": _cross_entropy(),
    "cross entropy, sum": _cross_entropy(reduction="sum"),
    "cross entropy with smoothing (left to autograd)": _cross_entropy(label_smoothing=0.1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_second_derivatives_match_autograd(case):
    layer, inputs = CASES[case]
    grads, hv = _hvp(layer, inputs, rules=True)
    ref_grads, ref_hv = _hvp(layer, inputs, rules=False)
    for mine, ref in zip(grads + hv, ref_grads + ref_hv, strict=True):
        assert _rel(mine, ref) < 1e-12, case


def test_attention_in_chunks_of_heads_and_without_kept_probabilities(monkeypatch):
    layer, inputs = CASES["causal attention, 3 query blocks"]
    ref_grads, ref_hv = _hvp(layer, inputs, rules=False)
    monkeypatch.setattr(second_order, "_CHUNK_SCORES", 16 * 40)  # 16 x 16 block: 2 heads each
    monkeypatch.setattr(second_order, "_KEEP_SCORES", 0)
    grads, hv = _hvp(layer, inputs, rules=True)
    for mine, ref in zip(grads + hv, ref_grads + ref_hv, strict=True):
        assert _rel(mine, ref) < 1e-12


def _long_gpt():
    """A float64 TinyGPT with a 40-token context (1,024 parameters), so that attention is
    split into query blocks, after 30 Adam steps."""
    torch.manual_seed(0)
    model = TinyGPT(context=40).double()
    batch = token_batch(context=40, batch=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        lm_loss(model, batch).backward()
        optimizer.step()
    return model, batch


def test_products_match_the_dense_hessian_and_repeat_exactly(monkeypatch):
    """With query blocks, chunks of heads, and the probabilities kept for later products."""
    model, batch = _long_gpt()
    hessian = dense_hessian(model, lm_loss, batch)
    vectors = [random_vector(hessian.shape[0], seed=s, dtype=torch.float64) for s in range(2)]
    for chunk in (second_order._CHUNK_SCORES, 16 * 40):
        monkeypatch.setattr(second_order, "_CHUNK_SCORES", chunk)
        op = hessian_operator(model, lm_loss, batch)
        first = [op(v) for v in vectors]
        again = [op(v) for v in vectors]  # second passes from the kept probabilities
        for v, hv, hv2 in zip(vectors, first, again, strict=True):
            assert _rel(hv, hessian @ v) < 1e-12
            assert _rel(hv2, hv) < 1e-14


@pytest.mark.parametrize("method", EXACT)
def test_unused_parameters_and_a_parameter_subset(method):
    model, batch = TinyGPT().double(), token_batch(batch=8)
    model.unused = nn.Parameter(torch.ones(3, dtype=torch.float64))  # never in the forward
    hessian = dense_hessian(model, lm_loss, batch)
    op = hessian_operator(model, lm_loss, batch, method=method)
    v = random_vector(op.dim, seed=0, dtype=torch.float64)
    hv = op(v)
    assert _rel(hv, hessian @ v) < 1e-10
    assert torch.equal(hv[op.slices["unused"]], torch.zeros(3, dtype=torch.float64))
    names = ["blocks.0.qkv.weight", "blocks.0.ln2.bias", "wpe.weight", "unused"]
    block = dense_hessian(model, lm_loss, batch, params=names)
    sub = hessian_operator(model, lm_loss, batch, method=method, params=names)
    u = random_vector(sub.dim, seed=1, dtype=torch.float64)
    assert sub.names == tuple(names)
    assert _rel(sub(u), block @ u) < 1e-10


def test_the_rules_apply_only_inside_the_context():
    model, batch = TinyGPT(), token_batch()
    hessian_operator(model, lm_loss, batch)
    out = F.gelu(torch.randn(3, requires_grad=True))
    assert type(out.grad_fn).__name__ == "GeluBackward0"
    with second_order_kernels():
        inside = F.gelu(torch.randn(3, requires_grad=True))
        with torch.no_grad():
            plain = F.gelu(torch.randn(3))
    assert type(inside.grad_fn).__name__ == "_GeluBackward"
    assert plain.grad_fn is None


def test_weight_gradients_can_be_left_out_of_a_graph_for_products():
    """weight_gradients=False: zeros stand in for a linear weight's gradient in a graph, and
    differentiating that graph still gives the exact Hessian-vector product."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(11, 5, dtype=torch.float64)
    params = list(net.parameters())
    v = [torch.randn_like(p) for p in params]

    def grads(**kwargs):
        with second_order_kernels(**kwargs):
            loss = net(x).pow(2).sum()
        return torch.autograd.grad(loss, params, create_graph=True)

    exact, skipped = grads(), grads(weight_gradients=False)
    assert torch.equal(skipped[0], torch.zeros_like(params[0]))
    assert torch.equal(skipped[1], exact[1])  # biases keep their values
    hv = torch.autograd.grad(exact, params, v)
    hv_skipped = torch.autograd.grad(skipped, params, v)
    for a, b in zip(hv_skipped, hv, strict=True):
        assert _rel(a, b) < 1e-13
    with second_order_kernels(weight_gradients=False):
        loss = net(x).pow(2).sum()
    first = torch.autograd.grad(loss, params)  # no graph recorded: the true values
    assert all(torch.allclose(a, b.detach()) for a, b in zip(first, exact, strict=True))


@pytest.mark.parametrize("method", EXACT)
def test_frozen_layers_are_left_out_of_the_product(method):
    """A linear layer and a layer norm with requires_grad=False: the rules skip their
    gradients and the product over the trainable parameters stays exact."""
    model, batch = TinyGPT().double(), token_batch(batch=8)
    for name, p in model.named_parameters():
        if name.startswith(("blocks.0.qkv.", "blocks.0.ln1.")):
            p.requires_grad_(False)
    hessian = dense_hessian(model, lm_loss, batch)
    op = hessian_operator(model, lm_loss, batch, method=method)
    assert not any(n.startswith(("blocks.0.qkv.", "blocks.0.ln1.")) for n in op.names)
    v = random_vector(op.dim, seed=2, dtype=torch.float64)
    assert _rel(op(v), hessian @ v) < 1e-10
