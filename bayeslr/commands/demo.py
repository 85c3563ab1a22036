"""`bayeslr demo`: the whole job on an embedded default, end to end on the CPU.

Collects a tiny real sweep (collectors/plans/demo.toml: three widths x seven LRs, AdamW, on the
bundled corpus) into a sweep directory, fits the Bayesian LR law to it, and prints the optimal
LR of a wider and deeper model than any it trained, with credible intervals and a risk-aware
recommendation. Runs already collected are reused, so a second call only refits.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "collect a tiny real sweep on CPU, fit, and predict the LR of a larger model"

TARGET = {"d_model": 128, "n_layers": 4, "batch_size": 16, "optimizer": "adamw"}
"""The demo's target: 2x the widest and 2x the deepest model of the sweep (8x its
non-embedding parameters), same horizon and batch size."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--into", default="runs/demo", metavar="DIR",
                        help="sweep directory (default runs/demo); stored runs are reused, the "
                        "posterior is written to DIR/posterior.nc")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                        help="where to train (default cpu, deterministic)")
    parser.add_argument("--draws", type=int, default=500,
                        help="posterior draws (and tuning steps) per chain, 4 chains (500)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def demo_plan_path() -> Path:
    """The plan file shipped with the collectors package."""
    import collectors

    return Path(collectors.__file__).parent / "plans" / "demo.toml"


def run(args: argparse.Namespace) -> int:
    from bayeslr.commands._target import WarningLog
    from bayeslr.commands.predict import answer, format_table
    from bayeslr.fit import fit
    from bayeslr.spec import ModelSpec
    from collectors.backends import collect
    from collectors.plan import load_plan
    from collectors.run import Execution

    execution = Execution(device=args.device)
    plan = load_plan(demo_plan_path(), precision=execution.precision)
    summary = collect(plan, args.into, execution=execution, quiet=args.quiet)
    print(f"1/3 sweep: {summary.done} runs trained, {summary.skipped} reused, "
          f"{summary.failed} failed -> {summary.store}")
    with WarningLog() as messages:
        posterior = fit(summary.store, ModelSpec(covariates=("n_params",)), draws=args.draws,
                        tune=args.draws, chains=4, seed=args.seed,
                        progressbar=not args.quiet)
        out = Path(args.into) / "posterior.nc"
        posterior.save(out)
        diag = posterior.diagnostics()
        print(f"2/3 fit: {posterior.features.n_points} runs in {posterior.features.n_configs} "
              f"configurations; max R-hat {diag['rhat_max']:.3f}, min bulk ESS "
              f"{diag['ess_bulk_min']:.0f} -> {out}")
        target = {**TARGET, "tokens": float(_sweep_tokens(posterior))}
        result = answer(posterior, target, seed=args.seed)
    print("3/3 prediction for a model the sweep never trained:\n")
    print(format_table(result))
    for message in messages:
        print(f"warning: {message}")
    print(f"\nnext: bayeslr report {out} -o {Path(args.into) / 'report'} --width 128 --depth 4")
    return 1 if summary.failed else 0


def _sweep_tokens(posterior: Any) -> float:
    """The token horizon of the demo sweep (all its runs share one)."""
    return float(posterior.data["tokens"].median())
