"""Scale-out speed, measured side by side in one run.

1. K = 8 learning rates of the smallest default model (GPT d_model 64, 2 layers, 4 heads,
   context 128, batch 16: ~125k parameters) trained as one vectorised group
   (collectors.vectorized, its default strategy: vmap on CUDA, a member loop on CPU; on CPU
   the forced vmap figure is printed too) vs 8 sequential runs of collectors.run.train_run.
   On CPU always; with --device cuda also on the GPU (the figure the last line reports
   then). The records of both are compared (max relative difference of final val losses).
2. 4 runs through the Ray backend with 2 one-CPU workers vs the local backend training them
   one after another (one torch thread each), alternating, best of two of each (the machine
   may be shared). The reported figure is on started workers (a running cluster); the cold
   one, counting the workers' start and imports, is printed too. Skipped (ray_speedup=nan)
   when Ray is not installed.

    python benchmarks/scale.py [--device cuda] [--quick]

Last line: `scale: device=<cpu|cuda> vmap_speedup=<x> ray_speedup=<y>`.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import tempfile
import time
import warnings
from pathlib import Path

import torch

from collectors.backends import collect
from collectors.plan import Plan, expand_plan
from collectors.run import Execution, train_run
from collectors.vectorized import train_vectorized


def smallest_plan(*, lrs: int, steps: int, precision: str) -> Plan:
    """The default GPT shape over a log-spaced AdamW LR grid (seed 0)."""
    return expand_plan({
        "name": "scale-bench", "seeds": [0],
        "model": {"widths": [64], "depths": [2], "heads": [4], "context": 128},
        "train": {"steps": [steps], "batch_sizes": [16], "schedule": "cosine",
                  "warmup_fraction": 0.1},
        "measure": {"curve_points": 20, "eval_batches": 4},
        "optimizers": {"adamw": {"lr": {"min": 1e-4, "max": 3e-2, "num": lrs}}},
    }, precision=precision)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def vmap_speedup(device: str, steps: int, strategies: tuple[str, ...]) -> float:
    """Seconds of 8 sequential runs / seconds of one vectorised group of the same 8 runs, for
    each strategy (the first one's ratio is returned)."""
    execution = Execution(device=device, threads=1 if device == "cpu" else None)
    plan = smallest_plan(lrs=8, steps=steps, precision=execution.precision)
    warm = smallest_plan(lrs=2, steps=3, precision=execution.precision)
    for strategy in strategies:  # kernels, caches, allocator
        train_vectorized(warm.specs, corpus=warm.corpus, execution=execution, strategy=strategy)
    train_run(warm.specs[0], corpus=warm.corpus, execution=execution)
    _sync(device)
    began = time.perf_counter()
    alone = [train_run(s, corpus=plan.corpus, execution=execution) for s in plan.specs]
    _sync(device)
    sequential = time.perf_counter() - began
    n_params = plan.specs[0].config.model.n_params_total
    print(f"vectorised {device}: 8 LRs x {steps} steps ({n_params:.0f} params, "
          f"{sum(r.outcome.diverged for r in alone)} diverged): 8 sequential runs "
          f"{sequential:.2f} s")
    ratios = []
    for strategy in strategies:
        began = time.perf_counter()
        batched = train_vectorized(plan.specs, corpus=plan.corpus, execution=execution,
                                   strategy=strategy)
        _sync(device)
        seconds = time.perf_counter() - began
        ratios.append(sequential / seconds)
        print(f"  strategy {strategy}: {seconds:.2f} s -> {ratios[-1]:.2f}x; "
              f"{_agreement(alone, batched)}")
    return ratios[0]


def _agreement(alone: list, batched: list) -> str:
    """How far the vectorised records are from the separate runs' records."""
    same = all(a.run_id == b.run_id and a.outcome.diverged == b.outcome.diverged
               for a, b in zip(alone, batched, strict=True))
    diffs = [abs(a.outcome.final_val_loss - b.outcome.final_val_loss) / a.outcome.final_val_loss
             for a, b in zip(alone, batched, strict=True)
             if a.outcome.final_val_loss and b.outcome.final_val_loss]
    return (f"same ids and divergence: {same}; max rel. diff of final val loss "
            f"{max(diffs, default=0.0):.1e}")


def ray_speedup(steps: int, repeats: int) -> float:
    """Seconds of 4 local sequential runs / seconds of the Ray backend with 2 workers (the
    best of `repeats` alternating measurements of each, against other load on the machine)."""
    if importlib.util.find_spec("ray") is None:
        print("ray: not installed (pip install 'bayeslr[ray]'); Ray figure skipped")
        return math.nan
    import ray

    from collectors.ray_backend import RaySettings, collect_ray

    plan = smallest_plan(lrs=4, steps=steps, precision="fp32")
    execution = Execution(device="cpu", threads=1)
    settings = RaySettings(cpus_per_run=1)
    local, warm, stored = [], [], []
    with tempfile.TemporaryDirectory(prefix="bayeslr-scale-") as tmp:
        root = Path(tmp)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            began = time.perf_counter()
            stored.append(collect_ray(plan, root / "cold", settings=settings,
                                      execution=execution, quiet=True).done)
            cold = time.perf_counter() - began
            for r in range(repeats):
                began = time.perf_counter()
                stored.append(collect(plan, root / f"local{r}", execution=execution,
                                      quiet=True).done)
                local.append(time.perf_counter() - began)
                began = time.perf_counter()
                stored.append(collect_ray(plan, root / f"warm{r}", settings=settings,
                                          execution=execution, quiet=True).done)
                warm.append(time.perf_counter() - began)
        finally:
            ray.shutdown()
    sequential = min(local)
    print(f"ray: 4 runs x {steps} steps: local sequential {_seconds(local)}; Ray, 2 workers: "
          f"{cold:.1f} s with the workers' start ({sequential / cold:.2f}x), {_seconds(warm)} "
          f"on started workers ({sequential / min(warm):.2f}x); all runs stored: "
          f"{set(stored) == {len(plan.specs)}}")
    return sequential / min(warm)


def _seconds(values: list[float]) -> str:
    return " / ".join(f"{v:.1f}" for v in values) + " s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: also measure the vectorised speed-up on the GPU")
    parser.add_argument("--quick", action="store_true", help="fewer steps (noisier)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="lightning")
    torch.set_num_threads(1)
    cpu_steps, gpu_steps, ray_steps = (10, 50, 60) if args.quick else (40, 300, 200)
    speedup = vmap_speedup("cpu", cpu_steps, ("auto", "vmap"))
    if args.device == "cuda":
        speedup = vmap_speedup("cuda", gpu_steps, ("auto",))
    ray = ray_speedup(ray_steps, repeats=1 if args.quick else 2)
    print(f"scale: device={args.device} vmap_speedup={speedup:.2f} ray_speedup={ray:.2f}")


if __name__ == "__main__":
    main()
