"""Every held-out setup of the transfer benchmark in one command, as one table.

Runs benchmarks/transfer.py once per setup and sampler seed, each in its own process, and
prints one markdown row per setup: the median regret (% of the loss) of bayeslr's posterior
median and of its risk-aware recommendation, of the OLS power law and of "the same LR", how
many measured optima the 90% intervals cover, the fit's max R-hat and the compute ratio.
The setups are the three held-out sizes fitted on the three smallest sizes, the two larger
sizes fitted on five and six sizes, and the held-out horizon, each scored against the
reference grid and, with `--dense`, against the dense sweeps (docs/transfer.md).

Each run's whole output is kept in `--logs DIR`, named after the setup, the seed and the
extra arguments, and a run whose log is complete is not run again: an interrupted suite
resumes where it stopped, and the logs hold every per-configuration figure. Arguments after
`--` go to every run (e.g. `-- --optimizer-curvature`). With several `--seeds` a cell shows
each seed's figure, separated by slashes (one figure where all agree, as the baselines'
do): how much a figure moves from one run to the next.

    python benchmarks/transfer_suite.py [--logs transfer_logs] [--only NAME ...]
                                        [--scoring coarse|dense ...] [--seeds 0 [1 ...]]
                                        [-- TRANSFER_ARGS]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fixed_kernels import fix_kernels
from tqdm import tqdm

TRANSFER = Path(__file__).with_name("transfer.py")

SETUPS: dict[str, tuple[str, list[str]]] = {
    "3-333k": ("3 → 333k (13×)", ["--held-size", "5"]),
    "3-1.77M": ("3 → 1.77M (71×)", ["--held-size", "6"]),
    "3-4.73M": ("3 → 4.73M (190×)", []),
    "5-1.77M": ("5 → 1.77M (5.3×)", ["--train-sizes", "5", "--held-size", "6"]),
    "5-4.73M": ("5 → 4.73M (14×)", ["--train-sizes", "5"]),
    "6-4.73M": ("6 → 4.73M (2.7×)", ["--train-sizes", "6"]),
    "horizon": ("2 horizons → 400k tokens", ["--hold-out", "horizon"]),
}
"""Setup key -> (label: training sizes → held out, transfer.py arguments); each setup runs
coarse- and dense-scored."""

SCORINGS = {"coarse": [], "dense": ["--dense"]}
"""How the held-out sweeps are read: off the reference grid, or off the dense sweeps."""


@dataclass(frozen=True)
class Result:
    """The figures of one transfer.py run (median regrets in % of the optimal loss)."""

    regret: float
    recommended: float
    ols: float
    same_lr: float
    covered: int
    configurations: int
    rhat: float
    compute_ratio: float


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=Path, default=Path("transfer_logs"),
                        help="directory for each run's output (default transfer_logs)")
    parser.add_argument("--only", nargs="+", choices=tuple(SETUPS), default=None,
                        metavar="NAME", help=f"run these setups only: {', '.join(SETUPS)}")
    parser.add_argument("--scoring", nargs="+", choices=tuple(SCORINGS),
                        default=list(SCORINGS), help="coarse, dense or both (default)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="sampler seeds; each setup runs once per seed (default 0)")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="after --: arguments passed to every transfer.py run")
    args = parser.parse_args()
    args.extra = [a for a in args.extra if a != "--"]
    return args


def log_name(setup: str, scoring: str, seed: int, extra: list[str]) -> str:
    """A file name that tells a run's setup, scoring, seed and extra arguments apart."""
    words = [setup, scoring, f"seed{seed}", *(word.lstrip("-") for word in extra)]
    return re.sub(r"[^A-Za-z0-9.=,-]+", "_", "_".join(words)).strip("_") + ".log"


def parse_log(text: str, path: Path) -> Result:
    """The figures of a complete transfer.py output; ValueError naming `path` otherwise."""
    last = re.search(r"^transfer: regret_pct=(\S+) ols_regret_pct=(\S+) coverage90=\S+ "
                     r"compute_ratio=(\S+)$", text, re.MULTILINE)
    methods = {name: re.search(rf"^{name}\s+\S+\s+\S+\s+(\S+)\s+\S+$", text, re.MULTILINE)
               for name in ("bayes_rec", "same_lr")}  # the first match: the method table
    covered = re.search(r"^90% interval covers the measured optimum in (\d+) of (\d+) ", text,
                        re.MULTILINE)
    rhat = re.search(r"max R-hat (\S+),", text)
    if not (last and covered and rhat and all(methods.values())):
        raise ValueError(f"{path}: not a complete transfer.py output (expected its method "
                         "table, coverage line and last `transfer:` line)")
    return Result(regret=float(last[1]), recommended=float(methods["bayes_rec"][1]),
                  ols=float(last[2]), same_lr=float(methods["same_lr"][1]),
                  covered=int(covered[1]), configurations=int(covered[2]),
                  rhat=float(rhat[1]), compute_ratio=float(last[3]))


def run(arguments: list[str], path: Path) -> Result:
    """transfer.py's figures with `arguments`, from the log at `path` when it is complete,
    else from a new run whose output is written there (via a partial file, renamed when the
    run succeeds, so a killed run leaves no log that looks complete)."""
    if path.exists():
        try:
            return parse_log(path.read_text(), path)
        except ValueError as err:
            raise SystemExit(f"{err}; remove it to run that setup again") from None
    partial = path.with_suffix(".part")
    with partial.open("w") as out:
        done = subprocess.run([sys.executable, str(TRANSFER), *arguments], stdout=out,
                              stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"transfer.py {' '.join(arguments)} failed (exit "
                         f"{done.returncode}); its output is in {partial}")
    result = parse_log(partial.read_text(), partial)
    partial.rename(path)
    return result


def cell(values: list, fmt: str = "") -> str:
    """Each seed's figure, slash-separated; one figure when all seeds agree (a baseline)."""
    texts = [format(v, fmt) for v in values]
    return texts[0] if len(set(texts)) == 1 else " / ".join(texts)


def row(name: str, results: list[Result]) -> str:
    """One markdown row; a column shows each seed's figure."""
    pct = {f: cell([getattr(r, f) for r in results], ".3f") + "%"
           for f in ("regret", "recommended", "ols", "same_lr")}
    covered = cell([r.covered for r in results])
    return (f"| {name} | {pct['regret']} | {pct['recommended']} | {pct['ols']} | "
            f"{pct['same_lr']} | {covered} of {results[0].configurations} | "
            f"{cell([r.rhat for r in results], '.3f')} | {results[0].compute_ratio:.3f} |")


def main() -> None:
    fix_kernels()
    args = parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    names = args.only or list(SETUPS)
    runs = [(name, scoring, seed) for name in names for scoring in args.scoring
            for seed in args.seeds]
    results: dict[tuple[str, str], list[Result]] = {}
    for name, scoring, seed in tqdm(runs, desc="transfer suite", unit="run"):
        arguments = [*SETUPS[name][1], *SCORINGS[scoring], "--seed", str(seed), *args.extra]
        path = args.logs / log_name(name, scoring, seed, args.extra)
        results.setdefault((name, scoring), []).append(run(arguments, path))
    extra = f" with {' '.join(args.extra)}" if args.extra else ""
    print(f"transfer suite{extra}; seeds {', '.join(map(str, args.seeds))}; logs in "
          f"{args.logs}\n")
    print("| training sizes → held out, scoring | bayeslr | risk-aware rec. | OLS | same LR | "
          "90% interval covers | max R-hat | compute vs grid |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, scoring), rows in results.items():
        print(row(f"{SETUPS[name][0]}, {scoring}", rows))


if __name__ == "__main__":
    main()
