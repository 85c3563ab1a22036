"""`bayeslr compare POSTERIOR [target options] [--json]`: compare the fitted optimizers.

Prints each optimizer's scaling exponents with intervals, the posterior probability that one
optimizer's exponent exceeds another's, and, given a target (without --optimizer), eta* and
the recommended LR of every optimizer there. `--json` prints
`bayeslr.comparison.compare_optimizers(...).to_dict()`.
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

HELP = "compare optimizers: exponents, P(exponent_a > exponent_b), eta* at a target"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_posterior_argument(parser)
    add_target_arguments(parser, optimizer=False)
    parser.add_argument("--prob", type=float, default=0.9,
                        help="mass of the credible intervals (default 0.9)")
    parser.add_argument("--divergence-cost", type=float, default=None, metavar="NATS",
                        help="cost of a diverged run in nats, for the recommended LRs "
                        "(default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the predictive draws")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run(args: argparse.Namespace) -> int:
    import json

    from bayeslr.comparison import compare_optimizers
    from bayeslr.decisions import DIVERGENCE_COST

    posterior = load_posterior(args.posterior)
    target = target_from_args(args)
    cost = DIVERGENCE_COST if args.divergence_cost is None else args.divergence_cost
    with WarningLog() as messages:
        result = compare_optimizers(posterior, target, seed=args.seed, prob=args.prob,
                                    divergence_cost=cost)
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)
    if args.json:
        data = result.to_dict()
        data["warnings"] = messages
        print(json.dumps(data, indent=2))
    else:
        print(format_tables(result, args.prob))
    return 0


def format_tables(result: Any, prob: float) -> str:
    """Readable tables of an OptimizerComparison."""
    import pandas as pd

    from bayeslr.answers import mass_label

    pct = mass_label(prob)
    with pd.option_context("display.width", 120, "display.max_columns", 20,
                           "display.float_format", "{:.3g}".format):
        parts = [f"exponents d ln eta*/d ln x (median, {pct}% interval):",
                 result.exponents.to_string(index=False), "",
                 "contrasts (a - b) and P(exponent_a > exponent_b):",
                 result.contrasts.to_string(index=False)]
        if result.at_target is not None:
            parts += ["", "at the target, per optimizer:", result.at_target.to_string(index=False),
                      "", "eta*_a / eta*_b at the target:",
                      result.target_contrasts.to_string(index=False)]
    return "\n".join(parts)
