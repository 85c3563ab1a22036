"""Hessian-vector products of any model's loss, and the curvature measures built on them.

`hessian_operator(model, loss_fn, batch)` returns a symmetric operator v -> H v over the
flat vector of the trainable parameters without ever forming H (n x n), computed one of
five ways:

- 'double_backward' (default): g = dL/dtheta with a graph, then H v = d(g . v)/dtheta
  (Pearlmutter 1994). The gradient graph is built once per operator and reused by every
  product, so the operator must be used before the parameters change. Attention, layer norm,
  GELU and cross entropy record the hand-derived second derivatives of
  `collectors.second_order` (fused kernels for the gradient, a short exact second pass),
  linear layers skip the values of their weight gradients (the product needs only their
  graph); everything else uses autograd's own rules.
- 'double_backward_autograd': the same with autograd's rules for every layer and attention
  in the math kernel (same results to rounding, slower).
- 'forward_over_reverse': H v = jvp(grad L)(theta; v) with torch.func over a deep copy of the
  model (same results; no graph kept between products).
- 'compiled': the same product traced whole by torch.compile (inductor), which fuses the
  elementwise work around the matrix products; the first product compiles (tens of seconds on
  a CPU, cached on disk by torch), later products of any operator with the same model
  structure, loss and shapes reuse the compiled code. Needs a working torch.compile (a C++
  compiler on CPU, triton on GPU).
- 'finite_difference': H v ~ (g(theta + h v) - g(theta - h v)) / 2h with the parameters
  perturbed in place and restored exactly; needs only first derivatives (works under
  sharding or kernels without a double backward). Error O(h^2) + O(machine eps / h).

Attention calls the second-order rules do not cover, and all attention under
'double_backward_autograd', 'forward_over_reverse' and 'compiled', run in the math SDPA
kernel (fused kernels have no double backward, nor forward-mode AD on CPU); the finite
difference keeps the fast kernels. The model is switched to eval mode (no dropout) while
the loss is evaluated and restored afterwards. The spectral routines live in
`collectors.spectrum` and are re-exported here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from collectors.second_order import second_order_kernels
from collectors.spectrum import (
    HessianError,
    LanczosResult,
    MatVec,
    NonFiniteLossError,
    PowerResult,
    SpectralDensity,
    TopEigen,
    TraceEstimate,
    deflated,
    hutchinson_trace,
    lanczos,
    power_iteration,
    random_vector,
    spectral_density,
    top_eigenvalues,
)

LossFn = Callable[[nn.Module, Any], Tensor]
"""loss_fn(model, batch) -> scalar loss tensor."""

METHODS = ("double_backward", "double_backward_autograd", "forward_over_reverse", "compiled",
           "finite_difference")

__all__ = [
    "METHODS", "HessianError", "HessianOperator", "LanczosResult", "LossFn", "MatVec",
    "NonFiniteLossError", "PowerResult", "SpectralDensity", "TopEigen", "TraceEstimate",
    "adam_preconditioner", "block_sharpness", "deflated", "dense_hessian", "flatten",
    "hessian_operator", "hutchinson_trace", "lanczos", "math_attention", "parameter_groups",
    "power_iteration", "preconditioned", "random_vector", "spectral_density",
    "top_eigenvalues", "trainable_parameters", "unflatten",
]


@dataclass(frozen=True)
class HessianOperator:
    """v -> H v over the flat trainable-parameter vector; call it like a function."""

    matvec: MatVec
    names: tuple[str, ...]
    """Parameter names in flat-vector order (as in model.named_parameters())."""
    shapes: tuple[torch.Size, ...]
    loss: float
    """Loss at the point where the Hessian is taken."""
    dtype: torch.dtype
    device: torch.device

    def __call__(self, v: Tensor) -> Tensor:
        return self.matvec(v)

    @property
    def dim(self) -> int:
        """Number of parameters n: H is n x n."""
        return sum(math.prod(s) for s in self.shapes)

    @property
    def slices(self) -> dict[str, slice]:
        """Where each parameter lies in the flat vector."""
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            out[name] = slice(start, start + math.prod(shape))
            start += math.prod(shape)
        return out


def trainable_parameters(model: nn.Module, *,
                         names: Sequence[str] | None = None) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs with requires_grad, tied weights once; optionally a subset."""
    found = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if names is not None:
        index = dict(found)
        unknown = [n for n in names if n not in index]
        if unknown:
            raise HessianError(f"unknown or frozen parameter name(s) {unknown[:5]}; trainable "
                               f"ones are e.g. {[n for n, _ in found[:5]]}")
        found = [(n, index[n]) for n in names]
    if not found:
        raise HessianError(f"{type(model).__name__} has no trainable parameters (none, or all "
                           "requires_grad=False): unfreeze the parameters whose curvature you "
                           "want")
    return found


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector, shape (sum of numel,)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: Tensor, shapes: Sequence[torch.Size]) -> list[Tensor]:
    """Split a flat vector into views with the given shapes (inverse of `flatten`)."""
    sizes = [math.prod(s) for s in shapes]
    if vector.shape != (sum(sizes),):
        raise HessianError(f"expected a flat vector of {sum(sizes)} entries, got shape "
                           f"{tuple(vector.shape)}")
    return [chunk.view(s) for chunk, s in zip(vector.split(sizes), shapes, strict=True)]


@contextmanager
def math_attention() -> Iterator[None]:
    """Run scaled-dot-product attention in the math kernel (has double backward and jvp)."""
    with sdpa_kernel([SDPBackend.MATH]):
        yield


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def hessian_operator(model: nn.Module, loss_fn: LossFn, batch: Any, *,
                     method: str = "double_backward", params: Sequence[str] | None = None,
                     fd_step: float | None = None) -> HessianOperator:
    """The Hessian of `loss_fn(model, batch)` w.r.t. the trainable parameters, as an operator.

    `params` restricts it to named parameters (a diagonal block of H). `fd_step` is the norm
    of the finite-difference perturbation h|v| (default: machine epsilon ** (1/3) / 4 of the
    parameters' dtype, 1.2e-3 in float32, 1.5e-6 in float64). Raises HessianError when the
    model has no trainable parameters or the loss is not a scalar, NonFiniteLossError when it
    is NaN/inf.
    """
    if method not in METHODS:
        raise HessianError(f"unknown Hessian-vector method {method!r}; known: "
                           f"{', '.join(METHODS)}")
    named = trainable_parameters(model, names=params)
    tensors = [p for _, p in named]
    names = tuple(n for n, _ in named)
    shapes = tuple(p.shape for p in tensors)
    if method in ("double_backward", "double_backward_autograd"):
        rules = method == "double_backward"
        matvec, loss = _double_backward(model, loss_fn, batch, tensors, rules=rules)
    elif method in ("forward_over_reverse", "compiled"):
        matvec, loss = _forward_over_reverse(model, loss_fn, batch, named,
                                             compiled=method == "compiled")
    else:
        step = fd_step if fd_step is not None else _default_fd_step(tensors[0].dtype)
        matvec, loss = _finite_difference(model, loss_fn, batch, tensors, step)
    return HessianOperator(matvec, names, shapes, loss, tensors[0].dtype, tensors[0].device)


def _default_fd_step(dtype: torch.dtype) -> float:
    """eps^(1/3) / 4, near the central-difference optimum (3 eps |g| / |g3|)^(1/3) (g3: third
    derivative) where the loss is far from quadratic, as along a trained network's sharpest
    direction."""
    return torch.finfo(dtype).eps ** (1 / 3) / 4


def _checked_loss(model: nn.Module, loss_fn: LossFn, batch: Any) -> Tensor:
    """loss_fn(model, batch) as a 0-d tensor with a graph, or a HessianError saying why not."""
    loss = loss_fn(model, batch)
    if not isinstance(loss, Tensor):
        raise HessianError(f"loss_fn returned {type(loss).__name__}; expected a scalar tensor")
    if loss.dim() != 0:
        raise HessianError(f"loss_fn returned a tensor of shape {tuple(loss.shape)}; the "
                           "Hessian needs a scalar loss: reduce it (e.g. .mean())")
    if not loss.requires_grad:
        raise HessianError("the loss does not depend on the trainable parameters (no "
                           "graph): compute it from model(...) inside loss_fn")
    return loss


def _finite(loss: Tensor) -> float:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(f"the loss is {value} on this batch at these parameters, so "
                                 "the Hessian is undefined: check the batch for NaN/inf and the "
                                 "parameters for divergence")
    return value


def _gradient(model: nn.Module, loss_fn: LossFn, batch: Any, tensors: Sequence[Tensor], *,
              create_graph: bool, rules: bool = False) -> tuple[list[Tensor], Tensor]:
    """dL/dtheta for `tensors` (zeros where unused) and the loss. When a graph for second
    derivatives is asked for, attention runs in the math kernel, except where `rules` has
    the layers of `collectors.second_order` record their own second derivatives; then the
    values of linear layers' weight gradients are zeros (only their graph is right)."""
    with _eval_mode(model), math_attention() if create_graph else nullcontext():
        with second_order_kernels(weight_gradients=False) if rules else nullcontext():
            loss = _checked_loss(model, loss_fn, batch)
        grads = torch.autograd.grad(loss, tensors, create_graph=create_graph,
                                    allow_unused=True)
    return _fill_unused(grads, tensors), loss


def _checked_forward(model: nn.Module, loss_fn: LossFn, batch: Any) -> float:
    """The loss value after the checks of `_gradient`, from a forward pass alone."""
    with _eval_mode(model), torch.enable_grad():
        return _finite(_checked_loss(model, loss_fn, batch))


def _fill_unused(grads: Sequence[Tensor | None], tensors: Sequence[Tensor]) -> list[Tensor]:
    """Zeros where autograd reports a parameter unused (its derivative is exactly zero)."""
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors, strict=True)]


def _double_backward(model: nn.Module, loss_fn: LossFn, batch: Any, tensors: Sequence[Tensor],
                     *, rules: bool) -> tuple[MatVec, float]:
    grads, loss = _gradient(model, loss_fn, batch, tensors, create_graph=True, rules=rules)
    value = _finite(loss)
    live = [i for i, g in enumerate(grads) if g.requires_grad]  # others: H rows are zero
    shapes = [t.shape for t in tensors]

    def matvec(v: Tensor) -> Tensor:
        pieces = unflatten(v, shapes)
        if not live:
            return torch.zeros_like(v)
        with math_attention():
            hv = torch.autograd.grad([grads[i] for i in live], tensors,
                                     grad_outputs=[pieces[i] for i in live],
                                     retain_graph=True, allow_unused=True)
        return flatten(_fill_unused(hv, tensors))

    return matvec, value


class _Objective(nn.Module):
    """Wraps model + loss_fn as one module so torch.func.functional_call can drive it."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


def _skeleton(model: nn.Module) -> nn.Module:
    """A real-device deep copy of the model (Lightning trainer references are shared)."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for attr in ("_trainer", "_fabric"):
            obj = module.__dict__.get(attr)
            if obj is not None:
                memo[id(obj)] = obj
    try:
        return copy.deepcopy(model, memo)
    except Exception as err:  # arbitrary user modules may refuse to be copied
        raise HessianError(f"cannot deep-copy {type(model).__name__} for "
                           f"forward_over_reverse ({err}); use method='double_backward'") from err


def _hvp_at(objective: nn.Module, buffers: dict[str, Tensor], primals: dict[str, Tensor],
            tangents: dict[str, Tensor], batch: Any) -> dict[str, Tensor]:
    """H v by forward-mode differentiation of torch.func.grad at `primals` along `tangents`,
    with the objective's buffers at `buffers` (the function that method 'compiled' hands to
    torch.compile)."""

    def loss_of(params: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(objective, {**buffers, **params}, (batch,))

    return torch.func.jvp(torch.func.grad(loss_of), (primals,), (tangents,))[1]


def _compiled_hvp(objective: nn.Module, buffers: dict[str, Tensor],
                  primals: dict[str, Tensor], tangents: dict[str, Tensor],
                  batch: Any) -> dict[str, Tensor]:
    """`_hvp_at` through torch.compile (one graph, no fallback to eager), with compiler
    failures turned into a HessianError that names the alternative."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import InductorError

    try:
        return torch.compile(_hvp_at, fullgraph=True)(objective, buffers, primals, tangents,
                                                      batch)
    except (TorchDynamoException, InductorError) as err:
        raise HessianError(f"method='compiled': torch.compile could not compile the "
                           f"Hessian-vector product of {type(objective.model).__name__} "
                           f"({type(err).__name__}: {str(err).splitlines()[0]}); use "
                           "method='double_backward'") from err


def _forward_over_reverse(model: nn.Module, loss_fn: LossFn, batch: Any,
                          named: Sequence[tuple[str, Tensor]], *,
                          compiled: bool) -> tuple[MatVec, float]:
    """Every parameter of the model is a primal (tangent zero outside `named`): holding some
    fixed instead trips torch.compile's fake-tensor tracing of layer norm (torch 2.14)."""
    value = _checked_forward(model, loss_fn, batch)
    objective = _Objective(_skeleton(model), loss_fn).eval()
    primals = {name: p.detach() for name, p in objective.named_parameters()}
    buffers = {name: b.detach() for name, b in objective.named_buffers()}
    wanted = [f"model.{n}" for n, _ in named]
    shapes = [primals[k].shape for k in wanted]
    product = _compiled_hvp if compiled else _hvp_at

    def matvec(v: Tensor) -> Tensor:
        tangents = {k: torch.zeros_like(p) for k, p in primals.items()}
        tangents.update(zip(wanted, unflatten(v, shapes), strict=True))
        with math_attention():
            hv = product(objective, buffers, primals, tangents, batch)
        return flatten([hv[k] for k in wanted])

    return matvec, value


def _finite_difference(model: nn.Module, loss_fn: LossFn, batch: Any,
                       tensors: Sequence[Tensor], step: float) -> tuple[MatVec, float]:
    if not step > 0:
        raise HessianError(f"fd_step must be > 0, got {step!r}")
    value = _checked_forward(model, loss_fn, batch)
    shapes = [t.shape for t in tensors]

    def gradient_at(pieces: Sequence[Tensor], h: float, saved: Sequence[Tensor]) -> Tensor:
        with torch.no_grad():
            for t, s, d in zip(tensors, saved, pieces, strict=True):
                t.copy_(s + h * d)
        grads, _ = _gradient(model, loss_fn, batch, tensors, create_graph=False)
        return flatten(grads)

    def matvec(v: Tensor) -> Tensor:
        norm = float(torch.linalg.vector_norm(v))
        if norm == 0.0:
            return torch.zeros_like(v)
        h = step / norm
        pieces = unflatten(v, shapes)
        saved = [t.detach().clone() for t in tensors]
        try:
            plus = gradient_at(pieces, h, saved)
            minus = gradient_at(pieces, -h, saved)
        finally:
            with torch.no_grad():
                for t, s in zip(tensors, saved, strict=True):
                    t.copy_(s)
        return (plus - minus) / (2 * h)

    return matvec, value


def dense_hessian(model: nn.Module, loss_fn: LossFn, batch: Any, *,
                  params: Sequence[str] | None = None) -> Tensor:
    """The exact n x n Hessian by torch.autograd.functional.hessian: an oracle for tiny models.

    Independent of the operators above (it differentiates a function of the flat parameter
    vector). Costs n backward passes and n^2 memory: only for n up to a few thousand.
    """
    named = trainable_parameters(model, names=params)
    objective = _Objective(model, loss_fn)
    shapes = [p.shape for _, p in named]

    def loss_of(flat: Tensor) -> Tensor:
        pieces = unflatten(flat, shapes)
        values = {f"model.{n}": x for (n, _), x in zip(named, pieces, strict=True)}
        return torch.func.functional_call(objective, values, (batch,))

    flat = flatten([p.detach() for _, p in named])
    with _eval_mode(model), math_attention():
        return torch.autograd.functional.hessian(loss_of, flat)


def parameter_groups(model: nn.Module, *, by: str | Callable[[str], str] = "module",
                     ) -> dict[str, list[str]]:
    """Group trainable parameter names: 'module' (owning module, e.g. 'blocks.0.attn.proj'),
    'parameter' (one each), 'layer' (up to the first numeric part, e.g. 'blocks.0', else the
    top-level module, e.g. 'wte'), or a callable name -> group key."""
    keys: dict[str, Callable[[str], str]] = {
        "module": lambda n: n.rpartition(".")[0] or n,
        "parameter": lambda n: n,
        "layer": _layer_key,
    }
    if isinstance(by, str) and by not in keys:
        raise HessianError(f"unknown grouping {by!r}; known: {', '.join(keys)} or a callable")
    key = keys[by] if isinstance(by, str) else by
    groups: dict[str, list[str]] = {}
    for name, _ in trainable_parameters(model):
        groups.setdefault(key(name), []).append(name)
    return groups


def _layer_key(name: str) -> str:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0] if len(parts) > 1 else name


def block_sharpness(model: nn.Module, loss_fn: LossFn, batch: Any, *,
                    by: str | Callable[[str], str] = "module", method: str = "double_backward",
                    num_iters: int = 100, tol: float = 1e-4, seed: int = 0) -> dict[str, float]:
    """Top eigenvalue of each diagonal block H_bb of the Hessian, per parameter group.

    One operator is built for the whole model; each block's product pads v with zeros
    outside the block and keeps the block's rows, so H_bb is exact (not an approximation).
    """
    op = hessian_operator(model, loss_fn, batch, method=method)
    slices = op.slices
    out = {}
    for i, (group, names) in enumerate(parameter_groups(model, by=by).items()):
        index = torch.cat([torch.arange(slices[n].start, slices[n].stop) for n in names])
        index = index.to(op.device)

        def block(v: Tensor, index: Tensor = index) -> Tensor:
            full = torch.zeros(op.dim, dtype=v.dtype, device=v.device)
            full[index] = v
            return op(full)[index]

        v0 = random_vector(len(index), seed=seed + i, dtype=op.dtype, device=op.device)
        top = top_eigenvalues(block, k=1, v0=[v0], num_iters=num_iters, tol=tol)
        out[group] = top.eigenvalues[0]
    return out


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> Tensor:
    """Adam's diagonal preconditioner P = sqrt(v_hat) + eps, flat in `params` order.

    v_hat = exp_avg_sq / (1 - beta2^t) (max_exp_avg_sq under amsgrad) from the optimizer's
    state, as torch's Adam and AdamW divide by it. Raises HessianError when the optimizer
    is not Adam-like, has not stepped yet, or does not own one of the parameters.
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    pieces = []
    for i, p in enumerate(params):
        group, state = group_of.get(id(p)), optimizer.state.get(p, {})
        if group is None:
            raise HessianError(f"parameter {i} (shape {tuple(p.shape)}) is not in the "
                               f"optimizer {type(optimizer).__name__}")
        key = "max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq"
        if key not in state or "betas" not in group or "eps" not in group:
            raise HessianError(f"{type(optimizer).__name__} has no Adam second-moment state "
                               f"({key!r}) for parameter {i}: the optimizer is not Adam-like "
                               "or has not taken a step yet")
        step = float(state["step"])
        correction = 1.0 - group["betas"][1] ** step
        pieces.append((state[key] / correction).sqrt() + group["eps"])
    return flatten(pieces).detach()


def preconditioned(matvec: MatVec, diagonal: Tensor) -> MatVec:
    """u -> P^-1/2 H P^-1/2 u: symmetric, with the same eigenvalues as P^-1 H (P diagonal)."""
    if not bool((diagonal > 0).all()):
        raise HessianError("the preconditioner diagonal must be positive (Adam: sqrt(v)+eps)")
    scale = diagonal.rsqrt()

    def apply(u: Tensor) -> Tensor:
        return scale * matvec(scale * u)

    return apply
