"""Accuracy of the finite-difference Hessian-vector product against the exact one.

1. The default GPT (collectors.model.GPT, default GPTConfig) after --steps AdamW steps on
   the bundled text: relative error of the finite-difference H v along the top eigenvector
   (where the loss is least quadratic) and of lambda_max by Lanczos, for the default step
   (eps^(1/3) / 4 in the parameters' dtype) and for eps^(1/3).
2. The tests' tiny GPT-style block (tests/tiny_nets.py: its attention has a qkv bias, and
   softmax is invariant to the key bias, so that gradient and Adam's second moment are zero
   and P = eps = 1e-8 there) after 25 full-batch Adam steps: lambda_max(P^-1 H) from
   finite-difference and from exact products.

Usage: python benchmarks/hessian_fd.py [--steps 1000] [--threads 1]
Last line: hessian_fd: hv_rel_err=<x> lambda_rel_err=<y> preconditioned_fd_over_exact=<z>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def default_gpt_errors(*, steps: int) -> dict[str, float]:
    """FD errors on the default GPT after `steps` AdamW steps, for two step sizes."""
    import lightning.pytorch as pl

    from collectors.data import ByteDataModule, load_corpus
    from collectors.hessian import hessian_operator, lanczos
    from collectors.model import GPT, GPTConfig
    from collectors.sharpness import next_token_loss

    torch.manual_seed(0)
    data = ByteDataModule(load_corpus("shakespeare"), batch_size=16, seq_len=128, steps=steps)
    model = GPT(GPTConfig())
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    batch = next(iter(data.train_dataloader()))
    exact_op = hessian_operator(model, next_token_loss, batch)
    top = lanczos(exact_op, dim=exact_op.dim, num_iters=60, seed=0, return_vectors=True)
    v, exact_lambda = top.ritz_vectors[-1], top.top(1)[0]
    exact_hv = exact_op(v)
    eps = torch.finfo(torch.float32).eps
    out = {"lambda_max": exact_lambda}
    for name, step in (("default", None), ("eps^(1/3)", eps ** (1 / 3))):
        fd = hessian_operator(model, next_token_loss, batch, method="finite_difference",
                              fd_step=step)
        hv_err = float(torch.linalg.vector_norm(fd(v) - exact_hv)
                       / torch.linalg.vector_norm(exact_hv))
        lam = lanczos(fd, dim=fd.dim, num_iters=60, seed=0).top(1)[0]
        out[f"{name}_hv"], out[f"{name}_lambda"] = hv_err, abs(lam / exact_lambda - 1)
    return out


def preconditioned_tiny() -> dict[str, float]:
    """lambda_max(P^-1 H) of a tiny GPT after 25 Adam steps, from FD and exact products."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
    from collectors.hessian import adam_preconditioner, hessian_operator, lanczos, preconditioned
    from collectors.sharpness import next_token_loss
    from tests.tiny_nets import TinyGPT, token_batch

    torch.manual_seed(0)
    model, batch = TinyGPT(), token_batch(batch=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        optimizer.zero_grad()
        next_token_loss(model, batch).backward()
        optimizer.step()
    diagonal = adam_preconditioner(optimizer, list(model.parameters()))
    values = {"min_P": float(diagonal.min())}
    for method in ("double_backward", "finite_difference"):
        op = hessian_operator(model, next_token_loss, batch, method=method)
        values[method] = lanczos(preconditioned(op, diagonal), dim=op.dim, num_iters=80,
                                 seed=0).top(1)[0]
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="AdamW steps of the GPT")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gpt = default_gpt_errors(steps=args.steps)
    print(f"default GPT after {args.steps} AdamW steps, lambda_max {gpt['lambda_max']:.4g}: "
          f"finite-difference rel. error of H v along its eigenvector / of lambda_max: "
          f"default step {gpt['default_hv']:.1e} / {gpt['default_lambda']:.1e}, "
          f"eps^(1/3) {gpt['eps^(1/3)_hv']:.1e} / {gpt['eps^(1/3)_lambda']:.1e}")
    tiny = preconditioned_tiny()
    print(f"tiny GPT after 25 Adam steps (min P {tiny['min_P']:.1e}): lambda_max(P^-1 H) "
          f"exact {tiny['double_backward']:.4g}, finite difference "
          f"{tiny['finite_difference']:.4g}")
    print(f"hessian_fd: hv_rel_err={gpt['default_hv']:.1e} "
          f"lambda_rel_err={gpt['default_lambda']:.1e} "
          f"preconditioned_fd_over_exact={tiny['finite_difference'] / tiny['double_backward']:.2f}")


if __name__ == "__main__":
    main()
