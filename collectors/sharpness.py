"""A Lightning Callback that measures the Hessian's top eigenvalue (sharpness) during training.

Every `every_n_steps` optimizer steps it builds the Hessian operator of the training loss on
one FIXED batch (the first training batch, or one you give) and finds lambda_max by Lanczos
(or power iteration), warm-started from the previous top eigenvector, so that a measurement
costs a handful of Hessian-vector products once training is under way. Optionally it also
finds the top-k eigenvalues, Hutchinson's trace and, for Adam, the preconditioned sharpness
lambda_max(P^-1 H). Edge of stability predicts lambda_max ~ 2/lr for gradient descent and
lambda_max(P^-1 H) ~ (2 + 2 beta1) / ((1 - beta1) lr) for Adam.

A measurement that fails (NaN loss on the batch, an operator error) is recorded as missing
(NaN in the series, None in the final scalars) with a SharpnessWarning; training goes on.
`measurements()` returns keyword arguments for `bayeslr.schema.Measurements`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from collectors.hessian import (
    METHODS,
    HessianError,
    HessianOperator,
    LossFn,
    adam_preconditioner,
    hessian_operator,
    hutchinson_trace,
    lanczos,
    preconditioned,
    random_vector,
    top_eigenvalues,
    trainable_parameters,
)

SERIES = "sharpness"
"""Name of the time series in Measurements.series."""

SOLVERS = ("lanczos", "power")


class SharpnessWarning(UserWarning):
    """A sharpness measurement failed and was recorded as missing; training continues."""


def next_token_loss(module: nn.Module, batch: Any) -> Tensor:
    """Default loss: cross entropy of module(inputs) against targets, batch = (inputs, targets).

    Works for language models (logits (B, T, V), targets (B, T)) and classifiers (logits
    (B, C), targets (B,)); a tuple output uses its first element. Pass your own `loss_fn`
    for anything else.
    """
    inputs, targets = batch[0], batch[1]
    logits = module(inputs)
    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class SharpnessCallback(pl.Callback):
    """Measure Hessian sharpness every K steps on a fixed batch; see the module docstring."""

    def __init__(self, every_n_steps: int = 500, *, num_iters: int = 30, tol: float = 1e-2,
                 solver: str = "lanczos", top_k: int = 1, trace: bool = False,
                 trace_probes: int = 10,
                 preconditioned: bool | str = "auto", method: str = "double_backward",
                 loss_fn: LossFn | None = None, batch: Any = None, seed: int = 0,
                 at_start: bool = True, at_end: bool = True, log: bool = True) -> None:
        """
        every_n_steps: measure when the optimizer-step count is a multiple of it.
        num_iters: most Hessian-vector products per eigen-solve (per eigenvalue for 'power').
        tol: stop when the residual bound of each wanted eigenpair is below tol times its
            eigenvalue (both solvers). The eigenvalue error is at most that bound, and about
            its square over the spectral gap: relative 1e-2 (the default) gives errors near
            1e-4 (docs/hessian.md has the measured figures).
        solver: 'lanczos' (default: a few products once warm) or 'power' (power iteration
            with deflation), both warm-started from the previous top eigenvector(s).
        top_k: eigenvalues to find, largest first.
        trace / trace_probes: also estimate tr(H) with that many Rademacher probes.
        preconditioned: lambda_max(P^-1 H) from Adam's state: True, False or 'auto' (when the
            optimizer is torch Adam/AdamW).
        method: Hessian-vector product, one of collectors.hessian.METHODS. The exact double
            backward is the default; 'finite_difference' costs about 20% less per product
            on the default GPT (benchmarks/hessian.py), but its round-off is amplified by
            Adam's P^-1/2 where the second moment is tiny, so do not combine it with
            preconditioned sharpness.
        loss_fn: loss_fn(module, batch) -> scalar; default `next_token_loss`.
        batch: the fixed batch; default the first training batch (captured once).
        seed: seed of the random start vectors and probes.
        at_start / at_end: also measure before the first step / after the last.
        log: log the values through pl_module.log (as 'sharpness/<name>').
        """
        super().__init__()
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise HessianError(f"every_n_steps must be a positive integer, got {every_n_steps!r}")
        if top_k < 1 or num_iters <= top_k or trace_probes < 1:
            raise HessianError(f"need top_k >= 1, num_iters > top_k and trace_probes >= 1, got "
                               f"{top_k}, {num_iters}, {trace_probes}")
        if solver not in SOLVERS:
            raise HessianError(f"unknown solver {solver!r}; known: {', '.join(SOLVERS)}")
        if method not in METHODS:
            raise HessianError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        if preconditioned not in (True, False, "auto"):
            raise HessianError(f"preconditioned must be True, False or 'auto', got "
                               f"{preconditioned!r}")
        self.every_n_steps, self.num_iters = every_n_steps, num_iters
        if not tol > 0:
            raise HessianError(f"tol must be > 0, got {tol!r}")
        self.tol = tol
        self.top_k, self.solver = top_k, solver
        self.trace, self.trace_probes, self.method, self.seed = trace, trace_probes, method, seed
        self.preconditioned, self.at_start, self.at_end, self.log = (preconditioned, at_start,
                                                                     at_end, log)
        self.loss_fn: LossFn = loss_fn or next_token_loss
        self._given_batch, self._batch = batch, None
        self._vectors: list[Tensor] | None = None  # warm starts: previous top eigenvectors
        self._pre_vectors: list[Tensor] | None = None
        self._use_pre = False
        self._series: dict[str, list] = {}
        self.seconds = 0.0
        """Wall-clock seconds spent measuring so far."""

    @property
    def batch(self) -> Any:
        """The fixed batch the measurements use (None until training starts)."""
        return self._batch

    # ---- Lightning hooks -------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        adam = bool(trainer.optimizers) and isinstance(trainer.optimizers[0], torch.optim.Adam)
        if self.preconditioned is True and not adam:
            raise HessianError("SharpnessCallback(preconditioned=True) needs torch.optim.Adam or "
                               f"AdamW; the optimizer is {_optimizer_name(trainer)}: use "
                               "preconditioned='auto' or False")
        self._use_pre = self.preconditioned is True or (self.preconditioned == "auto" and adam)
        if self._use_pre and self.method == "finite_difference":
            warnings.warn("finite-difference products are unreliable for the preconditioned "
                          "sharpness (Adam's P^-1/2 amplifies their round-off); use "
                          "method='double_backward' or preconditioned=False",
                          SharpnessWarning, stacklevel=1)
        if not self._series:
            keys = ["step", "lambda_max"] + [f"lambda_{i}" for i in range(2, self.top_k + 1)]
            keys += ["preconditioned_lambda_max"] if self._use_pre else []
            keys += ["hessian_trace"] if self.trace else []
            self._series = {k: [] for k in keys + ["hvp_count", "seconds"]}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self._batch is None:
            source = batch if self._given_batch is None else self._given_batch
            source = move_data_to_device(source, pl_module.device)
            self._batch = tree_map(lambda t: t.detach().clone() if isinstance(t, Tensor) else t,
                                   source)
        if self.at_start and trainer.global_step == 0:
            self._measure(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0:
            self._measure(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_end and self._batch is not None:
            self._measure(trainer, pl_module, log=False)  # logging is closed in this hook

    def state_dict(self) -> dict[str, Any]:
        return {"series": {k: list(v) for k, v in self._series.items()}, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._series = {k: list(v) for k, v in state_dict.get("series", {}).items()}
        self.seconds = float(state_dict.get("seconds", 0.0))

    # ---- results ---------------------------------------------------------------------------
    def measurements(self) -> dict[str, Any]:
        """Keyword arguments for bayeslr.schema.Measurements: final values + the series."""
        series = self._series
        if not series.get("step"):
            return {"series": {}}
        last = {k: v[-1] for k, v in series.items()}
        top = [last["lambda_max"]] + [last[f"lambda_{i}"] for i in range(2, self.top_k + 1)]
        return {
            "lambda_max": _finite_or_none(last["lambda_max"]),
            "top_eigenvalues": tuple(top) if all(map(math.isfinite, top)) else None,
            "hessian_trace": _finite_or_none(last.get("hessian_trace")),
            "preconditioned_lambda_max": _finite_or_none(last.get("preconditioned_lambda_max")),
            "series": {SERIES: {k: tuple(v) for k, v in series.items()}},
        }

    # ---- measuring -------------------------------------------------------------------------
    def _measure(self, trainer: pl.Trainer, module: pl.LightningModule, *,
                 log: bool = True) -> None:
        step = trainer.global_step
        if not self._series or (self._series["step"] and self._series["step"][-1] == step):
            return
        row = {k: math.nan for k in self._series if k != "step"}
        start = time.perf_counter()
        with torch.inference_mode(False), torch.enable_grad():
            op = self._guarded(step, "sharpness", lambda: self._operator(module))
            if op is not None:
                products = [0]

                def counted(v: Tensor) -> Tensor:
                    products[0] += 1
                    return op(v)

                row.update(self._guarded(step, "lambda_max", lambda: self._top(counted, op)) or {})
                if self._use_pre:
                    row["preconditioned_lambda_max"] = self._guarded(
                        step, "preconditioned_lambda_max",
                        lambda: self._preconditioned(counted, op, trainer, module), math.nan)
                if self.trace:
                    row["hessian_trace"] = self._guarded(
                        step, "hessian_trace", lambda: self._trace(counted, op, step), math.nan)
                row["hvp_count"] = products[0]
        row["seconds"] = time.perf_counter() - start
        self.seconds += row["seconds"]
        self._series["step"].append(step)
        for key, value in row.items():
            self._series[key].append(float(value))
        if log and self.log:
            for key in ("lambda_max", "preconditioned_lambda_max", "hessian_trace"):
                if key in row:
                    module.log(f"sharpness/{key}", row[key], on_step=True, on_epoch=False)

    def _guarded(self, step: int, what: str, work: Callable[[], Any], missing: Any = None) -> Any:
        """Run one piece of a measurement; on failure warn and return `missing`."""
        try:
            return work()
        except (HessianError, RuntimeError, ValueError) as err:
            warnings.warn(f"{what} at step {step} could not be measured and is recorded as "
                          f"missing: {err}", SharpnessWarning, stacklevel=1)
            return missing

    def _operator(self, module: nn.Module) -> HessianOperator:
        return hessian_operator(module, self.loss_fn, self._batch, method=self.method)

    def _solve(self, matvec: Callable[[Tensor], Tensor], op: HessianOperator, *, k: int,
               warm: list[Tensor] | None, seed: int) -> tuple[tuple[float, ...], list[Tensor]]:
        """Top-k eigenvalues of `matvec` (shaped like `op`) and the vectors to warm-start from."""
        if self.solver == "lanczos":
            result = lanczos(matvec, dim=op.dim, num_iters=self.num_iters, seed=seed,
                             v0=warm[0] if warm else None, dtype=op.dtype, device=op.device,
                             tol=self.tol, top_k=k, return_vectors=True)
            values, vectors = result.top(k), [result.ritz_vectors[-1]]
        else:
            starts = warm or [random_vector(op.dim, seed=seed + i, dtype=op.dtype,
                                            device=op.device) for i in range(k)]
            found = top_eigenvalues(matvec, k=k, v0=starts, num_iters=self.num_iters,
                                    tol=self.tol)
            values, vectors = found.eigenvalues, list(found.eigenvectors)
        if len(values) < k or not all(map(math.isfinite, values)):
            raise HessianError(f"the {self.solver} solver returned {values} (non-finite "
                               "products, or fewer than top_k values)")
        return values, vectors

    def _top(self, matvec: Callable[[Tensor], Tensor], op: HessianOperator) -> dict[str, float]:
        values, self._vectors = self._solve(matvec, op, k=self.top_k, warm=self._vectors,
                                            seed=self.seed)
        out = {"lambda_max": values[0]}
        out.update({f"lambda_{i + 1}": values[i] for i in range(1, self.top_k)})
        return out

    def _preconditioned(self, matvec: Callable[[Tensor], Tensor], op: HessianOperator,
                        trainer: pl.Trainer, module: nn.Module) -> float:
        optimizer = trainer.optimizers[0]
        tensors = [p for _, p in trainable_parameters(module)]
        if not any(optimizer.state.get(p) for p in tensors):
            return math.nan  # before the first step Adam has no second moments: not a failure
        diagonal = adam_preconditioner(optimizer, tensors)
        values, self._pre_vectors = self._solve(preconditioned(matvec, diagonal), op, k=1,
                                                warm=self._pre_vectors, seed=self.seed + 7919)
        return values[0]

    def _trace(self, matvec: Callable[[Tensor], Tensor], op: HessianOperator,
               step: int) -> float:
        estimate = hutchinson_trace(matvec, dim=op.dim, num_probes=self.trace_probes,
                                    seed=self.seed + 1_000_003 * (step + 1), dtype=op.dtype,
                                    device=op.device)
        if not math.isfinite(estimate.trace):
            raise HessianError("Hutchinson's trace estimate is not finite")
        return estimate.trace


def _optimizer_name(trainer: pl.Trainer) -> str:
    return type(trainer.optimizers[0]).__name__ if trainer.optimizers else "none"


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
