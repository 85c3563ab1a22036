"""Cost and accuracy of the Hessian tools, measured side by side in one run.

1. One Hessian-vector product over one gradient on the default small GPT
   (collectors.model.GPT with its default GPTConfig: d_model 64, 2 layers, 4 heads, context
   128, byte vocabulary; batch 16 x 128 tokens), for each product method. The gradient is
   an ordinary one (fused attention kernel). Standalone products start from scratch each
   time: the default method ('double_backward', with the second-order rules of
   collectors.second_order) builds the operator at the point (forward + backward with a
   graph) and makes one product; 'double_backward_autograd' does the same with autograd's
   rules for every layer. Building once and reusing the operator makes each further
   product (what power iteration, Lanczos and Hutchinson pay per product) cheaper; that is
   reported per method too. The headline is the standalone product of method 'compiled'
   (forward-over-reverse traced whole by torch.compile) over a gradient compiled the same
   way (torch.func.grad through torch.compile, fused attention): like against like. Its
   first call, which compiles, is timed and reported apart.
2. The sharpness callback's cost as a fraction of training time at its default
   every_n_steps: two real Lightning fits of the same GPT on the bundled text (AdamW, default
   settings), without and with the callback (repeated --reps times, interleaved). The
   headline is the wall time spent inside the callback's measurements over the wall time of
   the fit without it; the difference of the two fits' wall times (minimum of each) is
   printed too, but on a shared machine it is dominated by load changes between the fits.
3. Top-5 eigenvalues (power iteration with deflation, and Lanczos) against eigvalsh of the
   exact Hessian of a tiny GPT (collectors.model, about 1k parameters, float64).

Usage: python benchmarks/hessian.py [--steps 3000] [--reps 1] [--threads 1] [--device cpu]
Last line: hessian: hvp_over_grad=<x> callback_overhead=<y> top5_rel_err=<z>
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch


def _interleaved_min(fns: dict[str, Callable[[], object]], *, rounds: int,
                     device: str) -> dict[str, float]:
    """Fastest of `rounds` timings of each function, in seconds, timed in turn round by
    round, so that a load change on a shared machine hits every function alike; the minimum
    is the least disturbed run."""

    def timed(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for fn in fns.values():
        timed(fn)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: min(values) for name, values in times.items()}


def hvp_costs(*, reps: int, device: str) -> dict[str, float]:
    """Seconds per gradient and cost of products in gradients on the default GPT."""
    from collectors.hessian import METHODS, hessian_operator, math_attention, random_vector
    from collectors.model import GPT, GPTConfig
    from collectors.sharpness import next_token_loss

    torch.manual_seed(0)
    model = GPT(GPTConfig()).to(device)
    tokens = torch.randint(0, 256, (16, 129), generator=torch.Generator().manual_seed(0))
    batch = (tokens[:, :-1].to(device), tokens[:, 1:].to(device))  # (B, T) inputs, targets
    params = list(model.parameters())
    v = random_vector(sum(p.numel() for p in params), seed=0, device=device)

    def gradient() -> object:
        return torch.autograd.grad(next_token_loss(model, batch), params)

    def gradient_math() -> object:
        with math_attention():
            return gradient()

    def build(method: str = "double_backward") -> object:
        return hessian_operator(model, next_token_loss, batch, method=method)

    fns = {"grad": gradient, "grad_math_sdpa": gradient_math, "build": build,
           "build+hvp": lambda: build()(v),
           "autograd build+hvp": lambda: build("double_backward_autograd")(v)}
    for method in METHODS:
        # the finite difference perturbs parameters in place, which would invalidate the
        # reused double-backward graph: give it its own copy of the model
        owner = copy.deepcopy(model) if method == "finite_difference" else model
        op = hessian_operator(owner, next_token_loss, batch, method=method)
        fns[method] = lambda op=op: op(v)
    first_compile = _first_call_seconds(fns["compiled"], device=device)
    fns["grad_compiled"] = compiled_gradient(model, batch)
    first_compile_grad = _first_call_seconds(fns["grad_compiled"], device=device)
    best = _interleaved_min(fns, rounds=10 * reps, device=device)
    return ({key: value / best["grad"] for key, value in best.items()}
            | {"grad_s": best["grad"], "n_params": len(v), "compile_s": first_compile,
               "compile_grad_s": first_compile_grad,
               "compiled_over_compiled_grad": best["compiled"] / best["grad_compiled"]})


def compiled_gradient(model: torch.nn.Module, batch: tuple) -> Callable[[], object]:
    """The gradient of the next-token loss as torch.func.grad through torch.compile (the
    like-for-like reference of method 'compiled')."""
    from collectors.sharpness import next_token_loss

    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss_of(values: dict) -> torch.Tensor:
        return next_token_loss(lambda x: torch.func.functional_call(model, values, (x,)), batch)

    step = torch.compile(torch.func.grad(loss_of), fullgraph=True)
    return lambda: step(params)


def _first_call_seconds(fn: Callable[[], object], *, device: str) -> float:
    """Wall seconds of the first call (for compiled functions: tracing and compiling)."""
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def fit_seconds(*, steps: int, callback: object | None, device: str) -> tuple[float, object]:
    """Wall time of one Lightning fit of the default GPT on the bundled text, and the trainer."""
    import lightning.pytorch as pl

    from collectors.data import ByteDataModule, load_corpus
    from collectors.model import GPT, GPTConfig

    torch.manual_seed(0)
    data = ByteDataModule(load_corpus("shakespeare"), batch_size=16, seq_len=128, steps=steps)
    trainer = pl.Trainer(max_steps=steps, accelerator="gpu" if device == "cuda" else "cpu",
                         devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         callbacks=[callback] if callback is not None else [])
    start = time.perf_counter()
    trainer.fit(GPT(GPTConfig()), datamodule=data)
    return time.perf_counter() - start, trainer


def final_errors(trainer: object, callback: object) -> dict[str, float]:
    """The callback's final values against exact products and a long Lanczos run."""
    from collectors.hessian import adam_preconditioner, hessian_operator, lanczos, preconditioned
    from collectors.sharpness import next_token_loss

    module = trainer.lightning_module  # Lightning moves it back to the CPU after fit
    batch = tuple(t.to(module.device) for t in callback.batch)
    op = hessian_operator(module, next_token_loss, batch)  # exact: double backward
    exact = lanczos(op, dim=op.dim, num_iters=60, seed=1).top(1)[0]
    diagonal = adam_preconditioner(trainer.optimizers[0], list(module.parameters()))
    exact_pre = lanczos(preconditioned(op, diagonal), dim=op.dim, num_iters=60, seed=1).top(1)[0]
    found = callback.measurements()
    return {"lambda_max": abs(found["lambda_max"] / exact - 1),
            "preconditioned": abs(found["preconditioned_lambda_max"] / exact_pre - 1)}


def callback_overhead(*, steps: int, reps: int, device: str) -> dict[str, float]:
    """Training time with the default SharpnessCallback over training time without it."""
    from collectors.sharpness import SharpnessCallback

    plain, measured, inside = [], [], []
    for _ in range(reps):
        plain.append(fit_seconds(steps=steps, callback=None, device=device)[0])
        callback = SharpnessCallback()
        seconds, trainer = fit_seconds(steps=steps, callback=callback, device=device)
        measured.append(seconds)
        inside.append(callback.seconds)
    series = callback.measurements()["series"]["sharpness"]
    return {"every_n_steps": SharpnessCallback().every_n_steps, "plain_s": min(plain),
            "with_s": min(measured), "overhead": min(measured) / min(plain) - 1,
            "inside_callback_s": min(inside), "measurements": len(series["step"]),
            "series": series, "errors": final_errors(trainer, callback),
            "inside_share": min(inside) / min(plain)}


def top5_error() -> dict[str, float]:
    """Largest relative error of the top-5 eigenvalues of a tiny GPT's exact Hessian."""
    from collectors.hessian import (
        dense_hessian,
        hessian_operator,
        lanczos,
        random_vector,
        top_eigenvalues,
    )
    from collectors.model import GPT, GPTConfig
    from collectors.sharpness import next_token_loss

    torch.manual_seed(0)
    model = GPT(GPTConfig(d_model=8, n_layers=1, n_heads=2, context=6, vocab_size=11,
                          init_std=0.3)).double()
    tokens = torch.randint(0, 11, (64, 7), generator=torch.Generator().manual_seed(0))
    batch = (tokens[:, :-1], tokens[:, 1:])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):  # move off the initialization to a curved, non-convex point
        optimizer.zero_grad()
        next_token_loss(model, batch).backward()
        optimizer.step()
    exact = torch.linalg.eigvalsh(dense_hessian(model, next_token_loss, batch)).flip(0)[:5]
    op = hessian_operator(model, next_token_loss, batch)
    starts = [random_vector(op.dim, seed=i, dtype=op.dtype) for i in range(5)]
    power = torch.tensor(top_eigenvalues(op, k=5, v0=starts, num_iters=2000,
                                         tol=1e-9).eigenvalues, dtype=torch.float64)
    ritz = torch.tensor(lanczos(op, dim=op.dim, num_iters=40, seed=0, dtype=op.dtype).top(5),
                        dtype=torch.float64)

    def rel(x: torch.Tensor) -> float:
        return float(((x - exact).abs() / exact.abs()).max())

    return {"n_params": op.dim, "power": rel(power), "lanczos": rel(ritz),
            "top5": exact.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="training steps per fit")
    parser.add_argument("--reps", type=int, default=1, help="interleaved repetitions")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the GPT and its fits run (the tiny-model check is CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    costs = hvp_costs(reps=args.reps, device=args.device)
    where = f"{args.threads} CPU thread(s)" if args.device == "cpu" else "cuda, fp32"
    print(f"gradient (fused SDPA): {costs['grad_s'] * 1e3:.1f} ms on the default GPT "
          f"({costs['n_params']:,} params, batch 16x128, {where}); times in gradients:")
    labels = {"grad_math_sdpa": "gradient, math SDPA kernel",
              "grad_compiled": "gradient, torch.compile",
              "build": "build operator (grad with graph)",
              "build+hvp": "standalone HVP (build + 1 product)",
              "double_backward": "each further product, reused op",
              "autograd build+hvp": "double_backward_autograd standalone",
              "double_backward_autograd": "double_backward_autograd product",
              "forward_over_reverse": "forward_over_reverse product",
              "compiled": "compiled product (standalone)",
              "finite_difference": "finite_difference product"}
    for key, label in labels.items():
        print(f"  {label:>36}: {costs[key]:.2f}")
    print(f"compiled product over compiled gradient: {costs['compiled_over_compiled_grad']:.2f} "
          f"(first calls, which compile: product {costs['compile_s']:.1f} s, gradient "
          f"{costs['compile_grad_s']:.1f} s)")
    over = callback_overhead(steps=args.steps, reps=args.reps, device=args.device)
    print(f"fit {args.steps} steps: {over['plain_s']:.1f} s without, {over['with_s']:.1f} s "
          f"with SharpnessCallback(every_n_steps={over['every_n_steps']}) "
          f"({over['measurements']} measurements, {over['inside_callback_s']:.1f} s inside "
          f"the callback = {over['inside_share']:.1%} of plain training; wall-time "
          f"difference {over['overhead']:+.1%})")
    for key in ("step", "lambda_max", "preconditioned_lambda_max", "hvp_count", "seconds"):
        print(f"  {key:>25}: {[round(x, 3) for x in over['series'].get(key, ())]}")
    errors = over["errors"]
    print(f"  final values vs exact products + Lanczos(60): lambda_max rel. error "
          f"{errors['lambda_max']:.1e}, preconditioned {errors['preconditioned']:.1e}")
    top = top5_error()
    print(f"tiny GPT ({top['n_params']} params) top-5 "
          f"{[round(x, 4) for x in top['top5']]}: rel. error power {top['power']:.1e}, "
          f"Lanczos(40) {top['lanczos']:.1e}")
    print(f"hessian: hvp_over_grad={costs['compiled_over_compiled_grad']:.2f} "
          f"callback_overhead={over['inside_share']:.3f} "
          f"top5_rel_err={max(top['power'], top['lanczos']):.1e}")


if __name__ == "__main__":
    main()
