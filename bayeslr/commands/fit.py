"""`bayeslr fit SWEEP -o posterior.nc`: fit the LR scaling model to a sweep and save it.

A thin layer over `bayeslr.fit.fit` and `bayeslr.spec.ModelSpec`: SWEEP is a sweep
directory, a CSV table (docs/data.md) or a `.jsonl[.gz]` export. Data cleaning and
diagnostics warnings go to stderr; the posterior is saved even when a diagnostic fails (the
warning names the remedy).
"""

from __future__ import annotations

import argparse
import sys

from bayeslr.spec import CURVES

HELP = "fit the Bayesian LR scaling model to a sweep and save the posterior (netCDF)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", metavar="SWEEP",
                        help="sweep directory, CSV table or .jsonl[.gz] export of runs")
    parser.add_argument("-o", "--out", required=True, metavar="FILE",
                        help="posterior file to write, e.g. posterior.nc")
    parser.add_argument("--optimizers", default="", metavar="A,B",
                        help="fit only these optimizers (default: all in the sweep)")
    model = parser.add_argument_group("model (bayeslr.spec.ModelSpec; see docs/model.md)")
    model.add_argument("--covariates", default="n_params,tokens,batch_size", metavar="A,B",
                       help="covariates of the law (default n_params,tokens,batch_size)")
    model.add_argument("--no-curvature", action="store_true",
                       help="no quadratic / interaction terms in log N and log D")
    model.add_argument("--optimizer-curvature", action="store_true",
                       help="let each optimizer's quadratic / interaction terms depart from the "
                            "shared ones (partial pooling)")
    model.add_argument("--curve", choices=CURVES, default="quadratic",
                       help="loss-vs-LR shape around the optimum (default quadratic)")
    model.add_argument("--no-divergence", action="store_true",
                       help="drop diverged runs instead of modelling them")
    model.add_argument("--lr-kind", choices=("lr", "effective"), default="lr",
                       help="law for the peak LR or the effective LR (default lr)")
    model.add_argument("--prior-law", default=None, metavar="NAME",
                       help="published law as the prior mean (step_law, porian, deepseek)")
    sampler = parser.add_argument_group("sampler")
    sampler.add_argument("--draws", type=int, default=1000, help="draws per chain (1000)")
    sampler.add_argument("--tune", type=int, default=1000, help="tuning steps per chain (1000)")
    sampler.add_argument("--chains", type=int, default=4, help="chains (4)")
    sampler.add_argument("--sampler", default="auto",
                         choices=("auto", "nutpie", "pymc", "numpyro"),
                         help="NUTS implementation (default auto: nutpie when installed)")
    sampler.add_argument("--target-accept", type=float, default=0.9,
                         help="NUTS target acceptance (default 0.9)")
    sampler.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from bayeslr.commands._target import WarningLog
    from bayeslr.errors import ModelError
    from bayeslr.fit import as_table, fit
    from bayeslr.spec import ModelSpec

    table = as_table(args.sweep)
    wanted = [o.strip().lower() for o in args.optimizers.split(",") if o.strip()]
    if wanted:
        missing = sorted(set(wanted) - set(table["optimizer"]))
        if missing:
            raise ModelError(f"--optimizers: {missing} not in {args.sweep}; present: "
                             f"{', '.join(sorted(set(table['optimizer'])))}")
        table = table[table["optimizer"].isin(wanted)]
    spec = ModelSpec(covariates=tuple(c.strip() for c in args.covariates.split(",") if c.strip()),
                     curvature=not args.no_curvature,
                     optimizer_curvature=args.optimizer_curvature, curve=args.curve,
                     divergence=not args.no_divergence, lr_kind=args.lr_kind,
                     prior_law=args.prior_law)
    with WarningLog() as messages:
        posterior = fit(table, spec, draws=args.draws, tune=args.tune, chains=args.chains,
                        seed=args.seed, sampler=args.sampler,
                        target_accept=args.target_accept, progressbar=not args.quiet)
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)
    posterior.save(args.out)
    diag = posterior.diagnostics()
    summary = {"out": str(args.out), "runs": posterior.features.n_points,
               "configs": posterior.features.n_configs, "optimizers": list(posterior.optimizers),
               "covariates": list(posterior.covariates), "notes": list(posterior.notes),
               "seconds": posterior.info.get("seconds"), **diag, "warnings": messages}
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        status = "ok" if diag["ok"] else "NOT OK (see the warnings)"
        print(f"fitted {summary['runs']} runs in {summary['configs']} configurations "
              f"({', '.join(summary['optimizers'])}); law covariates: "
              f"{', '.join(summary['covariates']) or 'none'}")
        print(f"diagnostics: max R-hat {diag['rhat_max']:.3f}, min bulk ESS "
              f"{diag['ess_bulk_min']:.0f}, divergent transitions {diag['n_divergences']}: "
              f"{status}")
        print(f"saved {args.out}")
    return 0
