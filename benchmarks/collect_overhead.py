"""Throughput of the default smallest model on CPU, and the collector's overhead.

The collector (plan -> Lightning Trainer with divergence and effective-LR callbacks -> final
train/validation evaluation -> atomic store write) trains one run of the default GPT
(d_model 64, 2 layers, 4 heads, context 128, batch 16, byte vocabulary; 123k parameters).
A bare PyTorch loop trains the same model with the same optimizer, schedule and batches for
the same steps. The two alternate `--rounds` times in this one process.

Both are timed in CPU seconds of this process (`time.process_time`) as well as wall-clock:
with one torch thread CPU time equals wall time on an idle core, and unlike wall time it is
not inflated by other programs competing for a shared machine. The overhead ratio is the
median over rounds of collector / bare CPU time; tokens/s is tokens per CPU second of the
collector (median round). Wall-clock figures are printed alongside.

    python benchmarks/collect_overhead.py [--steps 150] [--rounds 5] [--threads 1]

Last line: `collect: tokens_per_s=<x> overhead_ratio=<y>`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from collectors.backends import collect
from collectors.data import ByteDataModule
from collectors.model import GPT
from collectors.optim import configure_optimizers, schedule_of
from collectors.plan import expand_plan
from collectors.run import Execution
from collectors.shapes import gpt_config


def plan_dict(steps: int) -> dict:
    return {
        "name": "overhead",
        "model": {"widths": [64], "depths": [2], "heads": [4], "context": 128},
        "train": {"steps": [steps], "batch_sizes": [16], "schedule": "cosine",
                  "warmup_fraction": 0.1},
        "optimizers": {"adamw": {"lrs": [1e-3]}},
    }


def timed(fn, *args) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of fn(*args)."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn(*args)
    return time.process_time() - cpu, time.perf_counter() - wall


def bare_loop(spec, corpus) -> None:
    """The same steps in a plain loop: forward, backward, step, schedule."""
    config = spec.config
    torch.manual_seed(config.train.seed)
    model = GPT(gpt_config(config))
    setup = configure_optimizers(model, config.optimizer, schedule_of(config.train))
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    data = ByteDataModule(corpus, batch_size=config.train.batch_size,
                          seq_len=int(config.train.seq_len), steps=int(config.train.steps),
                          seed=config.train.seed)
    for batch in data.train_dataloader():
        loss = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss.item()


def collector(plan, root: Path) -> None:
    """`collect` of the one-run plan into a fresh store."""
    summary = collect(plan, root, execution=Execution(device="cpu", threads=None), quiet=True)
    assert summary.done == 1, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    plan = expand_plan(plan_dict(args.steps))
    print(f"plan expansion (corpus + parameter count): {time.perf_counter() - began:.2f} s")
    spec = plan.specs[0]
    tokens = args.steps * spec.config.train.batch_size * spec.config.train.seq_len
    print(f"model: {spec.config.model.n_params_total:.0f} parameters "
          f"({spec.config.model.n_params:.0f} non-embedding); {args.steps} steps x "
          f"{tokens // args.steps} tokens; torch threads {torch.get_num_threads()}")
    bare, coll = [], []
    with tempfile.TemporaryDirectory() as tmp:
        bare_loop(spec, plan.corpus)  # warm-up: allocator, kernels, imports
        for i in range(args.rounds):
            bare.append(timed(bare_loop, spec, plan.corpus))
            coll.append(timed(collector, plan, Path(tmp) / f"store{i}"))
            print(f"round {i + 1}: bare {bare[-1][0]:.2f} s CPU / {bare[-1][1]:.2f} s wall, "
                  f"collector {coll[-1][0]:.2f} s CPU / {coll[-1][1]:.2f} s wall "
                  f"({coll[-1][0] / bare[-1][0]:.3f}x CPU)")
    ratio = statistics.median(c[0] / b[0] for c, b in zip(coll, bare, strict=True))
    wall_ratio = statistics.median(c[1] / b[1] for c, b in zip(coll, bare, strict=True))
    cpu_coll = statistics.median(c[0] for c in coll)
    cpu_bare = statistics.median(b[0] for b in bare)
    print(f"bare loop: {tokens / cpu_bare:,.0f} tokens/CPU-s ({1e3 * cpu_bare / args.steps:.1f} "
          f"ms/step); collector: {tokens / cpu_coll:,.0f} tokens/CPU-s; wall-clock: collector "
          f"{tokens / min(c[1] for c in coll):,.0f} tokens/s at best, median wall ratio "
          f"{wall_ratio:.3f}")
    print(f"collect: tokens_per_s={tokens / cpu_coll:.0f} overhead_ratio={ratio:.3f}")

if __name__ == "__main__":
    main()
