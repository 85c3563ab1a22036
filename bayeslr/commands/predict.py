"""`bayeslr predict POSTERIOR --params N --tokens D --batch-size B --optimizer NAME`.

Prints the optimal LR eta* with credible intervals, the risk-aware recommendation and, with
`--lr`, the expected loss penalty of given LRs. `--json` prints the same numbers as
`bayeslr.answers.predict_lr`, `bayeslr.decisions.recommend` and `loss_penalty` return.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bayeslr.commands._target import (
    WarningLog,
    add_posterior_argument,
    add_target_arguments,
    load_posterior,
    target_from_args,
)

HELP = "predict the optimal LR of a target model, with credible intervals and a recommendation"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_posterior_argument(parser)
    add_target_arguments(parser)
    parser.add_argument("--lr", type=float, nargs="+", metavar="LR",
                        help="also report the expected loss penalty of these LRs")
    parser.add_argument("--divergence-cost", type=float, default=None, metavar="NATS",
                        help="cost of a diverged run in nats/token of final loss, for the "
                        "recommendation and penalties (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the predictive draws")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    import json

    from bayeslr.errors import PosteriorError

    target = target_from_args(args)
    if not target:
        raise PosteriorError("predict: give the target, e.g. --params 1.3e9 --tokens 2.6e10 "
                             "--batch-size 512 --optimizer adamw")
    posterior = load_posterior(args.posterior)
    with WarningLog() as messages:
        result = answer(posterior, target, lrs=args.lr, seed=args.seed,
                        divergence_cost=args.divergence_cost)
    result["warnings"] = messages
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def answer(posterior: Any, target: dict[str, Any], *, lrs: list[float] | None = None,
           seed: int = 0, divergence_cost: float | None = None) -> dict[str, Any]:
    """The numbers `predict` prints, from the Python API (JSON-ready)."""
    from bayeslr.answers import PROBS, mass_label, predict_lr
    from bayeslr.decisions import DIVERGENCE_COST, loss_penalty, recommend

    cost = DIVERGENCE_COST if divergence_cost is None else divergence_cost
    row = predict_lr(posterior, target, seed=seed).iloc[0]
    rec = recommend(posterior, target, seed=seed, divergence_cost=cost,
                    warn_beyond=None).iloc[0]
    result = {
        "target": {k: _plain(row[k]) for k in row.index if not k.startswith(("eta_", "log10"))
                   and k != "extrapolation"},
        "eta_median": float(row["eta_median"]),
        "intervals": {m: [float(row[f"eta_lo{m}"]), float(row[f"eta_hi{m}"])]
                      for m in map(mass_label, PROBS)},
        "log10_eta_sd": float(row["log10_eta_sd"]),
        "extrapolation": float(row["extrapolation"]),
        "recommendation": {k: _plain(v) for k, v in rec.items() if k != "target"},
        "seed": seed,
    }
    if lrs:
        table = loss_penalty(posterior, target, lrs, seed=seed, divergence_cost=cost,
                             warn_beyond=None)
        result["penalties"] = [{k: _plain(v) for k, v in r.items() if k != "target"}
                               for r in table.to_dict(orient="records")]
    return result


def format_table(result: dict[str, Any]) -> str:
    """A readable summary of `answer`'s result."""
    t = result["target"]
    size = f"N={t['n_params']:.3g}"
    if t.get("d_model") is not None:
        size += f" (width {t['d_model']:g}, depth {t.get('n_layers', float('nan')):g})"
    lines = [f"target: {size}, D={t['tokens']:.3g} tokens, batch {t['batch_size']:g}, "
             f"{t['optimizer']}, family {t.get('arch')}",
             "",
             f"optimal peak LR eta*   median {result['eta_median']:.3g}"]
    for mass, (lo, hi) in result["intervals"].items():
        lines.append(f"  {mass:>3}% interval        [{lo:.3g}, {hi:.3g}]")
    lines.append(f"  sd of log10 eta*      {result['log10_eta_sd']:.3f} decades")
    if result["extrapolation"] > 0:
        lines.append(f"  extrapolation         {result['extrapolation']:.2f} standardized units "
                     "outside the data")
    rec = result["recommendation"]
    lines += ["",
              f"recommended LR         {rec['lr']:.3g}  ({rec['lr_over_eta']:.2f} x median "
              f"eta*; divergence cost {rec['divergence_cost']:g} nats)",
              f"  expected penalty      {rec['expected_penalty']:.4f} nats/token",
              f"  loss gap if no div.   {rec['gap_mean']:.4f} (90%: {rec['gap_lo90']:.4f} to "
              f"{rec['gap_hi90']:.4f})",
              f"  P(diverge)            {rec['p_diverge']:.3f}"]
    if result.get("penalties"):
        lines += ["", f"{'LR':>10} {'gap mean':>9} {'gap 90%':>19} {'P(div)':>7} "
                  f"{'P(LR>eta*)':>10} {'exp. penalty':>12}"]
        for p in result["penalties"]:
            interval = f"[{p['gap_lo90']:.4f}, {p['gap_hi90']:.4f}]"
            lines.append(f"{p['lr']:>10.3g} {p['gap_mean']:>9.4f} {interval:>19} "
                         f"{p['p_diverge']:>7.3f} {p['p_too_high']:>10.3f} "
                         f"{p['expected_penalty']:>12.4f}")
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """A JSON-ready scalar (numpy -> Python; NaN -> None)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
