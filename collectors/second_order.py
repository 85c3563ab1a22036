"""Attention, layer norm, GELU and cross entropy with hand-derived second derivatives.

A double-backward Hessian-vector product (Pearlmutter 1994) builds the gradient with a graph
and differentiates it once more. PyTorch's generic rules for that second pass are slow for
the layers of a small transformer: attention has to run in the math kernel (the fused kernels
have no double backward) and the double backward of its softmax makes about thirty passes
over the heads x T x T scores; layer norm's and GELU's double backwards are long chains of
small operations. Inside `second_order_kernels()` the calls

    F.scaled_dot_product_attention (no mask tensor, no dropout, no grouped-query heads),
    F.layer_norm, F.gelu (exact, approximate='none'),
    F.cross_entropy ((N, C) logits, class indices, mean or sum, no weights or smoothing),

run as autograd Functions whose backward is itself a Function with a hand-derived backward:

- the forward and the gradient use the fused kernels (flash attention, native layer norm),
  so building the gradient graph costs about one ordinary gradient;
- the second pass, the vector-Jacobian product of the gradient with respect to its inputs,
  is written out below with few passes over the data. Attention works on blocks of query
  rows against the keys they can see (a causal mask skips 3/8 of the scores) and a few heads
  at a time, so that its score-sized buffers stay small; small calls keep their attention
  probabilities for the next products.

With weight_gradients=False, F.linear records the graph of its weight gradient without
computing its value (one matrix product fewer per layer when only the graph is needed).
Other calls (attention masks, dropout, tanh GELU, ...) go to PyTorch unchanged. The results
are autograd's to rounding; third derivatives are not supported (the second pass is
once-differentiable).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import Function, FunctionCtx, once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

__all__ = ["second_order_kernels"]

_ANY_KERNEL = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
               SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]
_CHUNK_SCORES = 1 << 18
"""Attention scores per chunk of heads in the second pass (1 MiB in float32)."""
_KEEP_SCORES = 1 << 22
"""Attention calls with at most this many scores (heads x queries x keys) keep their
probabilities after the first second pass, for the next passes (16 MiB in float32)."""
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@contextmanager
def second_order_kernels(*, weight_gradients: bool = True) -> Iterator[None]:
    """Within this context, attention, layer norm, GELU and cross-entropy calls record graphs
    with fast exact second derivatives (see the module docstring). Use it around the forward
    pass only.

    weight_gradients=False: a gradient taken with create_graph=True holds zeros in place of
    the gradient of linear layers' weights (F.linear), with the graph of the true gradient
    behind them. Differentiating that graph (a Hessian-vector product) is exact and skips one
    matrix product per linear layer; the gradient values themselves are then not usable.
    """
    with _SecondOrderMode(weight_gradients):
        yield


class _SecondOrderMode(TorchFunctionMode):
    def __init__(self, weight_gradients: bool) -> None:
        super().__init__()
        self.weight_gradients = weight_gradients

    def __torch_function__(self, func: Callable[..., Any], types: Any,
                           args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        rule = _RULES.get(func)
        if rule is not None and torch.is_grad_enabled():
            options = {"weight_gradient": self.weight_gradients} if func is F.linear else {}
            out = rule(*args, **kwargs, **options)
            if out is not None:
                return out
        return func(*args, **kwargs)


# ---- attention ------------------------------------------------------------------------------

def _attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
               enable_gqa: bool = False) -> Tensor | None:
    """Attention with fast second derivatives, or None where the call is not covered."""
    if attn_mask is not None or dropout_p or enable_gqa or query.dim() < 3:
        return None
    lead, dim, source = query.shape[:-2], query.shape[-1], key.shape[-2]
    if (key.shape != (*lead, source, dim) or value.shape[:-1] != (*lead, source)
            or not query.is_floating_point()):
        return None
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    return _Attention.apply(query, key, value, bool(is_causal), scale)


class _Shared:
    """What the nodes of one attention call share: the fused kernel's graph (output and
    detached inputs) and, once a second pass has computed them, the attention probabilities
    per block of query rows, for the next second passes (kept when there are at most
    _KEEP_SCORES of them)."""

    def __init__(self, out: Tensor, leaves: tuple[Tensor, ...], causal: bool,
                 scale: float) -> None:
        self.out, self.leaves, self.causal, self.scale = out, leaves, causal, scale
        self.probs: list[Tensor] | None = None


class _Attention(Function):
    """softmax(s q k' [+ causal mask]) v with the fused kernel, keeping its graph for the
    gradient."""

    @staticmethod
    def forward(ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor, causal: bool,
                scale: float) -> Tensor:
        with torch.enable_grad(), sdpa_kernel(_ANY_KERNEL):
            leaves = tuple(t.detach().requires_grad_() for t in (q, k, v))
            out = F.scaled_dot_product_attention(*leaves, is_causal=causal, scale=scale)
        ctx.save_for_backward(q, k, v)
        ctx.shared = _Shared(out, leaves, causal, scale)
        return out.detach()

    @staticmethod
    def backward(ctx: FunctionCtx, d_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v = ctx.saved_tensors
        dq, dk, dv = _AttentionGrad.apply(d_out, q, k, v, ctx.shared)
        return dq, dk, dv, None, None


def _rows(t: Tensor, n: int) -> Tensor:
    """(..., n, E) -> (heads, n, E)."""
    return t.reshape(-1, n, t.shape[-1])


class _AttentionGrad(Function):
    """(dq, dk, dv) from d_out by the fused kernel; its backward is the exact second pass."""

    @staticmethod
    def forward(ctx: FunctionCtx, d_out: Tensor, q: Tensor, k: Tensor, v: Tensor,
                shared: _Shared) -> tuple[Tensor, ...]:
        grads = torch.autograd.grad(shared.out, shared.leaves, d_out, retain_graph=True)
        ctx.save_for_backward(d_out, q, k, v)
        ctx.shared = shared
        return grads

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, uq: Tensor, uk: Tensor,
                 uv: Tensor) -> tuple[Tensor | None, ...]:
        d_out, q, k, v = ctx.saved_tensors
        shared = ctx.shared
        length, source, scale = q.shape[-2], k.shape[-2], shared.scale
        q3, k3 = _rows(q, length), _rows(k, source)
        queries = [_rows(d_out, length), _rows(shared.out, length),
                   torch.cat([_rows(uq, length), q3], -1).mul_(scale)]  # s [uq, q]
        keys = [_rows(v, source), _rows(uv, source), torch.cat([k3, _rows(uk, source)], -1)]
        blocks = _query_blocks(length, source, shared.causal)
        keep = len(q3) * length * source <= _KEEP_SCORES
        kept = shared.probs or [None] * len(blocks)
        parts = [_attention_block(q3, k3, queries, keys, block, probs, shared, keep)
                 for block, probs in zip(blocks, kept, strict=True)]
        if keep:
            shared.probs = [p[4] for p in parts]
        gd_out, gq = _cat([p[0] for p in parts], 1), _cat([p[1] for p in parts], 1)
        gk, gv = torch.zeros_like(k3), torch.zeros_like(keys[0])
        for (_, _, seen), p in zip(blocks, parts, strict=True):
            gk[:, :seen] += p[2]
            gv[:, :seen] += p[3]
        return (gd_out.view(d_out.shape), gq.view(q.shape), gk.view(k.shape), gv.view(v.shape),
                None)


def _attention_block(q: Tensor, k: Tensor, queries: list[Tensor], keys: list[Tensor],
                     block: tuple[int, int, int], probs: Tensor | None, shared: _Shared,
                     keep: bool) -> tuple[Tensor, ...]:
    """The second pass for query rows first..last-1 against keys 0..seen-1: the cotangents
    of d_out and q for those rows, of k and v for those keys, and the probabilities when they
    are kept (then all heads at once; otherwise a chunk of heads at a time)."""
    first, last, seen = block
    heads = len(q)
    step = heads if keep else max(1, _CHUNK_SCORES // ((last - first) * seen))
    chunks = []
    for start in range(0, heads, step):
        h = slice(start, min(heads, start + step))
        if probs is None or not keep:
            probs = _probabilities(q[h, first:last], k[h, :seen], first, shared.causal,
                                   shared.scale)
        chunks.append(_attention_second_pass(*(t[h, first:last] for t in queries),
                                             *(t[h, :seen] for t in keys), probs,
                                             shared.scale))
    parts = tuple(_cat(list(c), 0) for c in zip(*chunks, strict=True))
    return (*parts, probs) if keep else parts


def _cat(tensors: Sequence[Tensor], dim: int) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def _query_blocks(length: int, source: int, causal: bool) -> list[tuple[int, int, int]]:
    """(first, last, seen): query rows first..last-1 attend to keys 0..seen-1. Under a causal
    mask four blocks of rows skip the keys they cannot see: 5/8 of the score entries."""
    if not causal:
        return [(0, length, source)]
    size = max(16, -(-length // 4))
    return [(first, min(length, first + size), min(source, first + size))
            for first in range(0, length, size)]


def _probabilities(q: Tensor, k: Tensor, first: int, causal: bool, scale: float) -> Tensor:
    """softmax(s q k') of query rows first.. against keys 0.., causal mask top-left aligned
    as in F.scaled_dot_product_attention."""
    if not causal:
        return torch.softmax(torch.bmm(q, k.mT).mul_(scale), -1)
    bias = torch.full((q.shape[1], k.shape[1]), -math.inf, dtype=q.dtype,
                      device=q.device).triu_(first + 1)
    return torch.softmax(torch.baddbmm(bias, q, k.mT, alpha=scale), -1)


def _attention_second_pass(d_out: Tensor, out: Tensor, uq_q: Tensor, v: Tensor, uv: Tensor,
                           k_uk: Tensor, probs: Tensor,
                           scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cotangents of (d_out, q, k, v) for the cotangents (uq, uk, uv) of the attention
    gradient, for n heads: (n, L, E) queries, (n, S, E) keys, probabilities P (n, L, S);
    uq_q = s [uq, q] and k_uk = [k, uk] are concatenated along the last dimension.

    With P = softmax(S), S = s q k' (+ mask), dP = d_out v', r = rowsum(d_out * out),
    dS = P * (dP - r): dq = s dS k, dk = s dS' q, dv = P' d_out. Its vector-Jacobian product:
    G = s (uq k' + q uk') is the cotangent of dS, so the cotangent of dP is
    P * (G - w), w = rowsum(P * G) (the softmax backward of G), and that of P is
    (G - w) * (dP - r) + d_out uv' =: C; the cotangent of S is Z - P rowsum(Z) with
    Z = P * C = P * (G - w) * (dP - r) + P * (d_out uv').
    """
    width = uq_q.shape[-1] // 2
    uq, q, k, uk = uq_q[..., :width], uq_q[..., width:], k_uk[..., :width], k_uk[..., width:]
    dp_r = torch.baddbmm((d_out * out).sum(-1, keepdim=True).neg_(), d_out, v.mT)  # dP - r
    g = torch.bmm(uq_q, k_uk.mT)                                       # G
    g_dp = torch._softmax_backward_data(g, probs, -1, probs.dtype)     # cotangent of dP
    z = g.baddbmm_(d_out, uv.mT, beta=0).mul_(probs).addcmul_(g_dp, dp_r)  # Z
    g_s = z.addcmul_(probs, z.sum(-1, keepdim=True), value=-1)        # cotangent of S
    ds = dp_r.mul_(probs)                                              # dS
    gd_out = torch.bmm(probs, uv).baddbmm_(g_dp, v)
    gq = torch.bmm(ds, uk).baddbmm_(g_s, k).mul_(scale)
    gk = torch.bmm(ds.mT, uq).baddbmm_(g_s.mT, q)                      # uq, q carry s
    gv = torch.bmm(g_dp.mT, d_out)
    return gd_out, gq, gk, gv


# ---- linear ---------------------------------------------------------------------------------

def _linear(input: Tensor, weight: Tensor, bias: Tensor | None = None, *,  # noqa: A002
            weight_gradient: bool) -> Tensor | None:
    """x w' + b whose gradient graph may skip the value of the weight's gradient."""
    if weight_gradient or weight.dim() != 2 or not input.is_floating_point():
        return None
    return _Linear.apply(input, weight, bias)


class _Linear(Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: FunctionCtx, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        needs_x, needs_w, needs_b = ctx.needs_input_grad
        dx = dy @ weight if needs_x else None
        rows_dy, rows_x = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
        dw = None
        if needs_w and torch.is_grad_enabled():  # recording a graph: zeros stand in for it
            dw = _LinearWeightGrad.apply(rows_dy, rows_x)
        elif needs_w:
            dw = rows_dy.mT @ rows_x
        db = rows_dy.sum(0) if ctx.has_bias and needs_b else None
        return dx, dw, db


class _LinearWeightGrad(Function):
    """Zeros in place of dy' x (the weight gradient); its backward is that of dy' x."""

    @staticmethod
    def forward(ctx: FunctionCtx, dy: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(dy, x)
        return dy.new_zeros(dy.shape[-1], x.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, u: Tensor) -> tuple[Tensor | None, Tensor | None]:
        dy, x = ctx.saved_tensors
        g_dy = x @ u.mT if ctx.needs_input_grad[0] else None
        g_x = dy @ u if ctx.needs_input_grad[1] else None
        return g_dy, g_x


# ---- layer norm -----------------------------------------------------------------------------

def _layer_norm(input: Tensor, normalized_shape: Sequence[int] | int,  # noqa: A002
                weight: Tensor | None = None, bias: Tensor | None = None,
                eps: float = 1e-5) -> Tensor | None:
    """Layer norm with fast second derivatives, or None where the call is not covered."""
    if not input.is_floating_point():
        return None
    shape = [normalized_shape] if isinstance(normalized_shape, int) else list(normalized_shape)
    return _LayerNorm.apply(input, shape, weight, bias, float(eps))


class _LayerNorm(Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, shape: list[int], weight: Tensor | None,
                bias: Tensor | None, eps: float) -> Tensor:
        y, mean, rstd = torch.native_layer_norm(x, shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias)
        ctx.stats, ctx.shape = (mean, rstd), shape
        return y

    @staticmethod
    def backward(ctx: FunctionCtx, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = _LayerNormGrad.apply(dy, x, weight, bias, ctx.stats, ctx.shape)
        return dx, None, dw, db, None


class _LayerNormGrad(Function):
    """(dx, dweight, dbias) by the fused kernel; its backward is the exact second pass."""

    @staticmethod
    def forward(ctx: FunctionCtx, dy: Tensor, x: Tensor, weight: Tensor | None,
                bias: Tensor | None, stats: tuple[Tensor, Tensor],
                shape: list[int]) -> tuple[Tensor | None, ...]:
        mask = [True, weight is not None, bias is not None]
        dx, dw, db = torch.ops.aten.native_layer_norm_backward(dy, x, shape, *stats, weight,
                                                               bias, mask)
        ctx.save_for_backward(dy, x, weight)
        ctx.stats, ctx.shape, ctx.dx = stats, shape, dx.detach()
        return dx, dw, db

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, ux: Tensor, uw: Tensor | None,
                 ub: Tensor | None) -> tuple[Tensor | None, ...]:
        """With xh = (x - mean) r (r = 1/std, per row), g = dy * weight and
        N(z) = r (z - mean(z) - xh mean(z xh)) (layer norm's input gradient with weight 1):
        dx = N(g), dweight = sum over rows of dy xh, dbias = sum of dy. The cotangent of g
        is N(ux); of xh, uw dy - r (ux mean(g xh) + g mean(ux xh)); of x, N(that) minus
        r xh mean(ux dx), the last term from dx's own factor r."""
        dy, x, weight = ctx.saved_tensors
        mean, rstd = ctx.stats
        dims = tuple(range(-len(ctx.shape), 0))
        xh = (x - mean).mul_(rstd)

        def normalized_grad(z: Tensor) -> Tensor:
            return torch.ops.aten.native_layer_norm_backward(
                z, x, ctx.shape, mean, rstd, None, None, [True, False, False])[0]

        g = dy if weight is None else dy * weight
        g_g = normalized_grad(ux)                                   # cotangent of g
        g_dy = g_g.clone() if weight is None else g_g * weight
        c, c_u = ((a * xh).mean(dims, keepdim=True).mul_(-rstd) for a in (g, ux))
        g_xh = torch.mul(ux, c).addcmul_(g, c_u)
        if uw is not None:
            g_dy.addcmul_(uw, xh)
            g_xh.addcmul_(uw, dy)
        if ub is not None:
            g_dy.add_(ub)
        m = (ux * ctx.dx).mean(dims, keepdim=True).mul_(rstd)
        g_x = normalized_grad(g_xh).addcmul_(xh, m, value=-1)
        rows = tuple(range(x.dim() - len(ctx.shape)))
        g_w = None if weight is None else (g_g * dy).sum(rows)
        return g_dy, g_x, g_w, None, None, None


# ---- GELU -----------------------------------------------------------------------------------

def _gelu(input: Tensor, approximate: str = "none") -> Tensor | None:  # noqa: A002
    """Exact GELU with fast second derivatives, or None for the tanh approximation."""
    if approximate != "none" or not input.is_floating_point():
        return None
    return _Gelu.apply(input)


class _Gelu(Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        ctx.slope = None
        return torch.ops.aten.gelu(x)

    @staticmethod
    def backward(ctx: FunctionCtx, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        if ctx.slope is None:  # gelu'(x), kept for the later passes through this layer
            ctx.slope = torch.ops.aten.gelu_backward(x.new_ones(()).expand_as(x), x)
        return _GeluGrad.apply(g, x, ctx.slope)


class _GeluGrad(Function):
    """g * gelu'(x); its backward is the exact second pass, gelu''(x) = phi(x) (2 - x^2)."""

    @staticmethod
    def forward(ctx: FunctionCtx, g: Tensor, x: Tensor, slope: Tensor) -> Tensor:
        ctx.save_for_backward(g, x)
        ctx.slope = slope
        return g * slope

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, u: Tensor) -> tuple[Tensor, Tensor, None]:
        g, x = ctx.saved_tensors
        shifted = torch.addcmul(x.new_full((), -2.0), x, x)               # x^2 - 2
        curvature = shifted.mul_(torch.mul(shifted, -0.5).exp_())  # -e sqrt(2 pi) gelu''(x)
        g_x = curvature.mul_(u).mul_(g).mul_(-_INV_SQRT_2PI / math.e)
        return u * ctx.slope, g_x, None


# ---- cross entropy --------------------------------------------------------------------------

def _cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,  # noqa: A002
                   size_average: bool | None = None, ignore_index: int = -100,
                   reduce: bool | None = None, reduction: str = "mean",
                   label_smoothing: float = 0.0) -> Tensor | None:
    """Cross entropy of (N, C) logits against (N,) class indices, mean or sum, with fast
    second derivatives; None for weights, label smoothing, probabilities or other shapes."""
    if (weight is not None or size_average is not None or reduce is not None
            or label_smoothing or reduction not in ("mean", "sum") or input.dim() != 2
            or target.shape != input.shape[:1] or target.dtype != torch.long
            or not input.is_floating_point()):
        return None
    return _CrossEntropy.apply(input, target, ignore_index, reduction == "mean")


class _CrossEntropy(Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, target: Tensor, ignore_index: int,
                mean: bool) -> Tensor:
        log_probs = torch.log_softmax(x, -1)
        loss = F.nll_loss(log_probs, target, ignore_index=ignore_index,
                          reduction="mean" if mean else "sum")
        weight = (target != ignore_index).unsqueeze(-1).to(x.dtype)  # (N, 1): 1, 0 if ignored
        ctx.save_for_backward(x)
        ctx.log_probs, ctx.target = log_probs, target
        ctx.weight = weight / weight.sum() if mean else weight
        ctx.cached = None
        return loss

    @staticmethod
    def backward(ctx: FunctionCtx, g: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        if ctx.cached is None:  # softmax and d loss / dx, kept for the later passes
            probs = ctx.log_probs.exp()
            base = probs.clone()
            rows = torch.arange(len(ctx.target), device=x.device)
            base[rows, ctx.target.clamp(0, x.shape[-1] - 1)] -= 1.0
            ctx.cached = (probs, base.mul_(ctx.weight))
        dx = _CrossEntropyGrad.apply(g, x, ctx.cached, ctx.weight)
        return dx, None, None, None


class _CrossEntropyGrad(Function):
    """g w (softmax(x) - onehot(target)) (w: 1/n, or 1 for a sum, 0 on ignored rows); its
    backward is the exact second pass: the softmax backward of the cotangent, times g w."""

    @staticmethod
    def forward(ctx: FunctionCtx, g: Tensor, x: Tensor, cached: tuple[Tensor, Tensor],
                weight: Tensor) -> Tensor:
        ctx.save_for_backward(g)
        ctx.cached, ctx.weight = cached, weight
        return cached[1] * g

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, u: Tensor) -> tuple[Tensor | None, ...]:
        (g,) = ctx.saved_tensors
        probs, base = ctx.cached
        g_x = torch._softmax_backward_data(u, probs, -1, probs.dtype).mul_(ctx.weight * g)
        g_g = (u * base).sum().reshape(g.shape) if ctx.needs_input_grad[0] else None
        return g_g, g_x, None, None


_RULES: dict[Callable[..., Any], Callable[..., Tensor | None]] = {
    F.scaled_dot_product_attention: _attention,
    F.layer_norm: _layer_norm,
    F.gelu: _gelu,
    F.cross_entropy: _cross_entropy,
    F.linear: _linear,
}
