"""Transfer: sweeps of small models -> the optimal LR of a larger, held-out one.

On the reference sweep (bayeslr/data/reference_sweep.jsonl.gz, collected with
collectors/plans/reference.toml), the Bayesian model is fitted to the smallest `--train-sizes`
model sizes (all horizons, batch sizes and optimizers) and predicts eta* for every
configuration (horizon x batch size x optimizer) of the largest size (or the `--held-size`
K-th smallest), which it never saw.
With `--hold-out horizon` it is fitted to every size at all but the longest token horizon
and predicts eta* at the longest one instead (size x batch size x optimizer).
Each prediction is scored against that configuration's measured sweep:

- log10 error: |log10 predicted - log10 measured optimum| (decades);
- regret: measured loss at the predicted LR minus the sweep's optimal loss, in nats/token and
  in percent of that loss (bayeslr.baselines.measured_loss reads the sweep off-grid);
- coverage: whether the measured optimum lies in the 90% credible interval.

It also counts the predictions that fall between a sweep's last stable and first diverged LR
(unmeasured; read as the last stable loss) and the sweeps whose best LR is the grid's lowest.
With `--dense`, the held-out sweeps that the shipped dense sweeps resample (LRs a factor 1.33
apart, every optimizer at 24.9k, 55.8k, 333k, 1.77M and 4.73M;
bayeslr/data/dense_sweep.jsonl.gz) are scored against those, completed outside their LR range
by the coarse runs. With
`--dense-fit`, the training sweeps that the dense sweeps resample (24.9k and 55.8k with the
default three training sizes) are fitted with their dense runs in, the same way: what the
coarse grid of the small sweeps costs the prediction.

The fit sees one seed (the first, or `--train-seed`) of the training sizes, as a user's small
sweeps would. The held-out sweeps are read with all their seeds: losses at one LR are
averaged, and an LR where any seed diverged counts as diverged
(bayeslr.baselines.sweep_optimum), so the measured optimum carries less seed noise.
`--unseen-seeds` reads them without the fitted seed: the collectors branch every horizon of
an LR from one run, so in the horizon transfer a fitted seed's luck at an LR is shared by its
held-out runs (benchmarks/loss_noise.py measures how much). With two
or more seeds the run also prints the seed noise floor: the regret of each seed's own optimum
on another seed's sweep, the best a grid search at the target with one seed could do on a
fresh seed. The scores against the first seed alone are printed too, and every method's
median regret read against the mean of k seeds for each k (the dense sweeps at 333k and
AdamW's at 4.73M have four seeds): how much of a regret is the measurement's seed noise.

The bayeslr LR scored is the posterior median of eta*; the risk-aware recommendation
(bayeslr.decisions.recommend, default divergence cost) is scored alongside as `bayes_rec`.
A sweep is read as bayeslr.baselines.sweep_optimum does: runs at LRs above the first diverged
one are past the stability edge and not part of the curve, and the optimum is the vertex of a
quadratic through the stable points around the argmin, `--window` (default 2) on each side.
Under the fit's diagnostics the command prints how the fit reads the data: its loss noise sd
and the scatter of the configurations' optima around the law (resid_sd), posterior medians
(benchmarks/loss_noise.py measures the loss noise between seeds), and the training runs'
losses minus their fitted curves by distance from the optimum (`curve_residuals`); with
`--dense`, also how far the fit's own optima at the training configurations that the dense
sweeps resample lie from those sweeps' optima (`fitted_optima`); with `--hold-out horizon`,
how the training configurations' optima move with the horizon, read off the sweeps and as
the fit has them (`horizon_slopes`).
The model is the default ModelSpec with the covariates N, D and batch size;
`--optimizer-curvature`, `--curve`, `--blowup-gap` and `--prior NAME=MU,SIGMA` change it.

Baselines scored the same way in the same run: an ordinary least-squares power law fitted per
optimizer to the training configurations' grid argmins (the usual practice), and "the same LR
as the largest training size" (or the longest training horizon) for the same optimizer and
the other settings unchanged. Compute: FLOPs of all training runs against a grid search at
the held-out configurations with as many LRs as a training sweep, and what that ratio means
in GPU-hours and energy for a user-given target, with the assumptions printed.

    python benchmarks/transfer.py [--sweep FILE|DIR] [--hold-out size|horizon]
                                  [--train-sizes 3] [--held-size K] [--train-seed S|all]
                                  [--lr-kind lr|effective] [--no-curvature]
                                  [--optimizer-curvature] [--curve quadratic|wall|saturating]
                                  [--blowup-gap 1.0] [--prior NAME=MU,SIGMA] [--dense]
                                  [--dense-fit] [--unseen-seeds] [--window 2]
                                  [--plot FILE.png]

Last line: `transfer: regret_pct=<x> ols_regret_pct=<y> coverage90=<z> compute_ratio=<r>`
(regrets are medians over the held-out configurations).
"""

from __future__ import annotations

import argparse
import itertools
import math
import warnings

import numpy as np
import pandas as pd
from fixed_kernels import fix_kernels

from bayeslr import curve
from bayeslr.answers import predict_lr
from bayeslr.baselines import WINDOW, SweepOptimum, fit_ols_law, regret, sweep_optimum
from bayeslr.datasets import dense_jsonl, reference_jsonl
from bayeslr.decisions import recommend
from bayeslr.errors import ModelError
from bayeslr.fit import as_table, fit
from bayeslr.loglik import run_curve_params
from bayeslr.posterior import Posterior
from bayeslr.spec import CURVES, ModelSpec

COVARIATES = ("n_params", "tokens", "batch_size")
CONFIG = ["n_params", "optimizer", "tokens", "batch_size"]
"""What identifies a configuration (one LR sweep)."""
AXIS = {"size": "n_params", "horizon": "tokens"}
"""The column each --hold-out extrapolates along."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default=None,
                        help="sweep dir or .jsonl[.gz] (default: the shipped reference sweep)")
    parser.add_argument("--hold-out", choices=tuple(AXIS), default="size",
                        help="predict the largest model size (default) or the longest "
                             "token horizon")
    parser.add_argument("--train-sizes", type=int, default=3,
                        help="with --hold-out size: fit on this many smallest model sizes "
                             "(default 3)")
    parser.add_argument("--held-size", type=int, default=None, metavar="K",
                        help="with --hold-out size: predict the K-th smallest model size "
                             "(default: the largest)")
    parser.add_argument("--train-seed", default=None, metavar="S",
                        help="fit the training sweeps of seed S (default: the first), or of "
                             "every seed with 'all'")
    parser.add_argument("--lr-kind", choices=("lr", "effective"), default="lr",
                        help="fit the law for the peak LR (default) or for the effective LR "
                             "(update size relative to weight norm; ModelSpec.lr_kind)")
    parser.add_argument("--curvature", action=argparse.BooleanOptionalAction, default=True,
                        help="the law's quadratic and interaction terms in log N and log D "
                             "(ModelSpec.curvature; default on)")
    parser.add_argument("--optimizer-curvature", action="store_true",
                        help="per-optimizer curvature coefficients of the law "
                             "(bayeslr.spec.ModelSpec.optimizer_curvature)")
    parser.add_argument("--prior", action="append", default=[], type=user_prior,
                        metavar="NAME=MU,SIGMA",
                        help="a user prior (names of bayeslr.priors.DEFAULT_PRIORS, natural "
                             "units; a log-normal's MU is the log of its median); repeatable")
    parser.add_argument("--curve", choices=CURVES, default="quadratic",
                        help="loss-vs-LR shape of the fitted model (bayeslr.spec.ModelSpec)")
    parser.add_argument("--blowup-gap", type=float, default=ModelSpec.blowup_gap,
                        help="nats/token above a sweep's best loss from which a run above its "
                             "best LR counts as diverged (bayeslr.spec.ModelSpec)")
    parser.add_argument("--dense", action="store_true",
                        help="score the held-out sweeps that the shipped dense sweeps "
                             "resample (24.9k .. 4.73M) against those")
    parser.add_argument("--dense-fit", action="store_true",
                        help="fit the training sweeps that the shipped dense sweeps resample "
                             "(of 24.9k .. 4.73M) with their dense runs in")
    parser.add_argument("--unseen-seeds", action="store_true",
                        help="score against the held-out runs of the seeds the fit did not "
                             "see (the held-out horizon branches from the fitted runs)")
    parser.add_argument("--window", type=int, default=WINDOW,
                        help="read each held-out sweep's optimum from a quadratic through "
                             "this many stable points on each side of its argmin (default "
                             f"{WINDOW})")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="write the comparison figure (PNG)")
    parser.add_argument("--target-params", type=float, default=1e9,
                        help="user target for the cost estimate: parameters (default 1e9)")
    parser.add_argument("--target-tokens", type=float, default=2e10,
                        help="user target: training tokens (default 2e10)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="accelerator peak dense bf16 TFLOP/s (default 989: H100 SXM)")
    parser.add_argument("--mfu", type=float, default=0.4,
                        help="model FLOPs utilisation achieved (default 0.4)")
    parser.add_argument("--gpu-kw", type=float, default=0.7,
                        help="board power per accelerator in kW (default 0.7: H100 SXM TDP)")
    parser.add_argument("--pue", type=float, default=1.2,
                        help="data-centre power usage effectiveness (default 1.2)")
    return parser.parse_args()


def user_prior(text: str) -> tuple[str, tuple[float, float]]:
    """'NAME=MU,SIGMA' -> (NAME, (MU, SIGMA)), for --prior."""
    try:
        name, values = text.split("=")
        mu, sigma = (float(v) for v in values.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=MU,SIGMA, got {text!r}") from None
    return name.strip(), (mu, sigma)


def split(table: pd.DataFrame, hold_out: str, train_sizes: int, held_size: int | None = None,
          train_seed: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs to fit, of seed `train_seed`: default the first, 'all' every seed; every run to
    score): for
    'size', the `train_sizes`
    smallest sizes and the `held_size`-th smallest (default the largest); for 'horizon', all
    but the longest horizon and the longest (which needs two shorter ones to fit a horizon
    exponent)."""
    if hold_out == "size":
        sizes = np.sort(table["n_params"].unique())
        held_size = held_size or len(sizes)
        if not train_sizes < held_size <= len(sizes):
            raise SystemExit(f"the sweep has {len(sizes)} model sizes; --held-size must be "
                             f"above --train-sizes {train_sizes} and at most {len(sizes)}")
        train = table[table["n_params"].isin(sizes[:train_sizes])]
        return one_seed(train, train_seed), table[table["n_params"] == sizes[held_size - 1]]
    level = horizon_levels(table["tokens"])
    if level.max() < 2:
        raise SystemExit(f"the sweep has {level.max() + 1} token horizons; --hold-out horizon "
                         "needs at least 3")
    longest = level == level.max()
    return one_seed(table[~longest], train_seed), table[longest]


def horizon_levels(tokens: pd.Series) -> np.ndarray:
    """0, 1, ... for each run's token horizon, shortest first. Tokens within 25% of each other
    are one horizon: the trained tokens are whole steps, so one planned horizon gives slightly
    different counts at different batch sizes."""
    values = np.sort(tokens.unique())
    breaks = values[1:][values[1:] > 1.25 * values[:-1]]
    return np.searchsorted(breaks, tokens.to_numpy(), side="right")


def first_seed(table: pd.DataFrame) -> pd.DataFrame:
    """The runs of the table's smallest seed."""
    return table[table["seed"] == table["seed"].min()]


def one_seed(table: pd.DataFrame, seed: str | None) -> pd.DataFrame:
    """The runs of `seed` (None: the smallest; 'all': every run)."""
    if seed is None:
        return first_seed(table)
    if seed == "all":
        return table
    seeds = {str(s): s for s in table["seed"].unique()}
    if seed not in seeds:
        raise SystemExit(f"--train-seed {seed}: the sweep has seeds {sorted(seeds)} (or 'all')")
    return table[table["seed"] == seeds[seed]]


def optima(table: pd.DataFrame, window: int = WINDOW) -> pd.DataFrame:
    """One row per configuration (CONFIG) with its SweepOptimum (its quadratic fitted to
    `window` stable points on each side of the argmin)."""
    rows = []
    for key, runs in table.groupby(CONFIG):
        try:
            opt = sweep_optimum(runs["lr"], runs["loss"], runs["diverged"], window=window)
        except ModelError as err:  # too few stable runs: the configuration cannot be scored
            print(f"skipped configuration {key}: {err}")
            continue
        rows.append({**dict(zip(CONFIG, key, strict=True)), "opt": opt,
                     "lr_argmin": opt.lr_argmin, "lr_opt": opt.lr_opt,
                     "loss_opt": opt.loss_opt})
    return pd.DataFrame(rows)


def unseen_seeds(test: pd.DataFrame, dense: pd.DataFrame | None,
                 train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The held-out runs (and dense runs) of the seeds that `train` does not have. The
    sweeps branch every horizon of an LR from one run (WSD branching), so a fitted seed's
    luck at an LR is shared by its held-out horizon's runs; other seeds' runs are free of
    it."""
    seen = train["seed"].unique()
    unseen = test[~test["seed"].isin(seen)]
    if unseen.empty:
        raise SystemExit(f"--unseen-seeds: the held-out runs have no seed besides the fitted "
                         f"{sorted(seen.tolist())}")
    return unseen, None if dense is None else dense[~dense["seed"].isin(seen)]


def with_dense(test: pd.DataFrame, dense: pd.DataFrame) -> pd.DataFrame:
    """`test` with the runs of each sweep that `dense` resamples replaced, inside the dense
    LR range, by the dense runs (outside it the coarse runs complete the sweep)."""
    span = dense.groupby(CONFIG)["lr"].agg(["min", "max"]).reset_index()
    bounds = test[CONFIG].merge(span, on=CONFIG, how="left")
    inside = ((test["lr"].to_numpy() >= bounds["min"].to_numpy() / 1.01)
              & (test["lr"].to_numpy() <= bounds["max"].to_numpy() * 1.01))
    resampled = dense.merge(test[CONFIG].drop_duplicates(), on=CONFIG)
    return pd.concat([test[~inside], resampled], ignore_index=True)


def dense_resampled(runs: pd.DataFrame, dense: pd.DataFrame,
                    what: str) -> tuple[pd.DataFrame, str]:
    """`runs` with the `dense` runs in (`with_dense`), and a note of how many of its
    configurations they resample (`what` says what was done with them)."""
    keys = dense[CONFIG].drop_duplicates().merge(runs[CONFIG].drop_duplicates(), on=CONFIG)
    return with_dense(runs, dense), f"; {len(keys)} of them {what} dense sweeps"


def score(held: pd.DataFrame, predicted: np.ndarray, divergence_loss: float) -> pd.DataFrame:
    """log10 error and regret (nats, %) of predicted LRs against the held-out sweeps."""
    nats = np.array([regret(o, lr, divergence_loss=divergence_loss)
                     for o, lr in zip(held["opt"], predicted, strict=True)])
    return pd.DataFrame({"lr": predicted,
                         "log10_err": np.abs(np.log10(predicted) - np.log10(held["lr_opt"])),
                         "regret_nats": nats, "regret_pct": 100 * nats / held["loss_opt"]})


def print_by_optimizer(held: pd.DataFrame, scores: dict[str, pd.DataFrame],
                       covered: pd.Series) -> None:
    """Median regret (%) of each method, the median signed log10 error of bayeslr's median
    (decades above the measured optimum) and the intervals' coverage, per optimizer."""
    table = pd.DataFrame({name: s["regret_pct"].to_numpy() for name, s in scores.items()})
    table = table.assign(optimizer=held["optimizer"].to_numpy(), covered90=covered.to_numpy(),
                         offset=np.log10(held["eta_median"] / held["lr_opt"]).to_numpy())
    summary = table.groupby("optimizer").agg(
        **{f"{name} %": (name, "median") for name in scores},
        bayeslr_log10_offset=("offset", "median"),
        covered90=("covered90", "sum"), n=("covered90", "size"))
    print("median regret by optimizer:\n" + summary.to_string(float_format=lambda v: f"{v:.3f}"))


def fit_scales(posterior: Posterior) -> str:
    """The fit's loss noise (nats/token) and its configurations' scatter around the law (ln
    LR), posterior medians: what it takes for measurement noise and for law error."""
    post = posterior.idata.posterior.dataset
    return (f"fit reads: loss noise sd {float(post['noise_sd'].median()):.3f} nats, scatter "
            f"of the configurations' optima around the law (resid_sd) "
            f"{float(post['resid_sd'].median()):.3f} in ln LR (posterior medians)")


CURVE_BINS = (-np.inf, -3.0, -1.5, -0.5, 0.5, 1.5, 3.0, np.inf)
"""Bins of a run's ln LR minus its configuration's fitted ln eta* for `curve_residuals`."""


def curve_residuals(posterior: Posterior) -> pd.DataFrame:
    """Loss minus the fitted curve for every stable training run (nats/token), by distance from
    its configuration's optimum (ln LR): count, mean and robust sd (1.4826 x the median
    absolute deviation) per CURVE_BINS bin. The curve is each configuration's posterior
    median optimum, curvatures and floor: where the asymmetric quadratic departs from the
    sweeps, the mean moves off zero and the sd rises above the loss noise between seeds."""
    post, f = posterior.idata.posterior.dataset, posterior.features
    median = {name: post[name].median(("chain", "draw")).values
              for name in (curve.LOG_ETA, *curve.SHAPE_PARAMS, curve.LOSS_MIN)
              if name in post}
    params = run_curve_params(median, f)
    residual = f.loss - params[curve.LOSS_MIN] - curve.loss_gap(f.log_lr, params)
    stable = ~f.diverged
    table = pd.DataFrame({"u": pd.cut(f.log_lr[stable] - params[curve.LOG_ETA][stable],
                                      CURVE_BINS),
                          "residual": residual[stable]})
    return table.groupby("u", observed=True)["residual"].agg(
        runs="size", mean="mean",
        robust_sd=lambda r: 1.4826 * float(np.median(np.abs(r - r.median()))))


def fitted_optima(posterior: Posterior, table: pd.DataFrame, dense: pd.DataFrame,
                  divergence_loss: float, window: int) -> str | None:
    """How well the fit reads the optima of the sweeps it was fitted on: each training
    configuration's own posterior optimum (median and 90% interval) scored on its dense
    sweep, read with every seed of `table` and `dense` (None when no training configuration
    was resampled)."""
    first = posterior.features.runs.groupby("_config")[CONFIG].first()
    own = posterior.configs()[["log_eta_q05", "log_eta_median", "log_eta_q95"]].join(first)
    keys = dense[CONFIG].drop_duplicates().merge(own[CONFIG], on=CONFIG)
    if keys.empty:
        return None
    measured = optima(with_dense(table.merge(keys, on=CONFIG), dense), window).merge(
        own, on=CONFIG)
    log_opt = np.log(measured["lr_opt"].to_numpy())
    measured["log10_err"] = (measured["log_eta_median"] - log_opt) / math.log(10)
    measured["regret_pct"] = [100 * regret(o, math.exp(m), divergence_loss=divergence_loss)
                              / o.loss_opt
                              for o, m in zip(measured["opt"], measured["log_eta_median"],
                                              strict=True)]
    covered = (measured["log_eta_q05"] <= log_opt) & (log_opt <= measured["log_eta_q95"])
    by_opt = measured.groupby("optimizer")[["log10_err", "regret_pct"]].median()
    per_optimizer = "; ".join(f"{name} {row.regret_pct:.2f}% ({row.log10_err:+.2f} decades)"
                              for name, row in by_opt.iterrows())
    return (f"the fit's own optima at the {len(measured)} training configurations that dense "
            f"sweeps resample, on those sweeps: median |log10 err| "
            f"{measured['log10_err'].abs().median():.3f}, median regret "
            f"{measured['regret_pct'].median():.3f}% ({per_optimizer}); 90% intervals cover "
            f"{int(covered.sum())} of {len(measured)}")


def horizon_slopes(posterior: Posterior, train_optima: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer and size, how the training configurations' optima move with the horizon
    (d ln eta* / d ln D, least squares over the horizons, averaged over batch sizes): as the
    sweeps are read here (`train_optima`, from `optima`) and as the fit's own posterior
    medians have them. Own slopes that follow the law's rather than the sweeps' say the fit
    holds each configuration's optimum to the law."""
    first = posterior.features.runs.groupby("_config")[CONFIG].first()
    own = posterior.configs()[["log_eta_median"]].join(first)
    both = train_optima.merge(own, on=CONFIG)
    both = both.assign(log_d=np.log(both["tokens"]), sweeps=np.log(both["lr_opt"]),
                       fit=both["log_eta_median"])
    rows = []
    for (optimizer, size), group in both.groupby(["optimizer", "n_params"]):
        slopes = {column: np.mean([np.polyfit(b["log_d"], b[column], 1)[0]
                                   for _, b in group.groupby("batch_size")
                                   if b["log_d"].nunique() > 1] or [np.nan])
                  for column in ("sweeps", "fit")}
        rows.append({"optimizer": optimizer, "n_params": size, **slopes})
    return pd.DataFrame(rows).set_index(["optimizer", "n_params"])


def unmeasured(opt: SweepOptimum, lr: float) -> bool:
    """Whether `lr` lies between the sweep's last stable LR and its first diverged one, where
    nothing was measured and `regret` reads the last stable loss (an optimistic reading)."""
    return bool(opt.log_lr[-1] < np.log(lr) < opt.first_diverged_log_lr)


def edge_optimum(opt: SweepOptimum) -> bool:
    """Whether the grid's lowest LR is the sweep's best: the optimum may lie below the grid."""
    return bool(np.isclose(np.log(opt.lr_argmin), opt.log_lr[0]))


def print_reading_caveats(held: pd.DataFrame, scores: dict[str, pd.DataFrame]) -> None:
    """How many measured optima sit at the grid's lowest LR, and how many predictions fall
    where the sweep has no measurement, per method."""
    edge = held["opt"].map(edge_optimum)
    print(f"measured optimum at the grid's lowest LR (may lie below it): {edge.sum()} of "
          f"{len(held)}")
    gaps = {name: sum(unmeasured(o, lr) for o, lr in zip(held["opt"], s["lr"], strict=True))
            for name, s in scores.items()}
    print("predictions between the last stable and the first diverged LR (read as the last "
          "stable loss): " + ", ".join(f"{name} {n}" for name, n in gaps.items()))


def same_lr_baseline(train_optima: pd.DataFrame, held: pd.DataFrame, axis: str) -> np.ndarray:
    """The grid argmin of the training configuration largest along `axis` among those with
    the other settings of each held-out one."""
    others = [c for c in CONFIG if c != axis]
    nearest = train_optima.loc[train_optima.groupby(others)[axis].idxmax()]
    lookup = nearest.set_index(others)["lr_argmin"]
    return np.array([lookup.get(tuple(row[c] for c in others), np.nan)
                     for _, row in held.iterrows()])


def compute_ratio(train: pd.DataFrame, test: pd.DataFrame, n_lrs: int) -> float:
    """FLOPs of every training run over FLOPs of one seed's grid search of `n_lrs` LRs at
    each held-out configuration (both counted run by run, as if each run were trained from
    scratch; diverged runs stop early). A held-out sweep with more LRs than that (the
    reference plan extends the grids of its largest sizes downwards) is counted at `n_lrs`
    of its runs' average cost."""
    sweeps = first_seed(test).groupby(CONFIG).agg(flops=("flops", "sum"), lrs=("lr", "nunique"))
    return float(train["flops"].sum() / (sweeps["flops"] / sweeps["lrs"] * n_lrs).sum())


def covered90(frame: pd.DataFrame) -> pd.Series:
    """Whether each measured optimum lies in its 90% interval."""
    return frame["lr_opt"].between(frame["eta_lo90"], frame["eta_hi90"])


def seed_noise(per_seed: dict[int, pd.DataFrame], divergence_loss: float) -> pd.DataFrame | None:
    """Per configuration and ordered pair of seeds (a, b): the regret (% of loss) of seed a's
    measured optimum on seed b's sweep, and |log10| of the ratio of the two optima; None with
    one seed. `per_seed`: seed -> `optima` of its runs."""
    if len(per_seed) < 2:
        return None
    rows = []
    for a, b in itertools.permutations(per_seed, 2):
        pair = per_seed[a].set_index(CONFIG).merge(per_seed[b].set_index(CONFIG),
                                                   left_index=True, right_index=True,
                                                   suffixes=("_a", "_b"))
        for key, row in pair.iterrows():
            nats = regret(row["opt_b"], row["lr_opt_a"], divergence_loss=divergence_loss)
            rows.append({"config": key, "regret_pct": 100 * nats / row["loss_opt_b"],
                         "log10_diff": abs(np.log10(row["lr_opt_a"] / row["lr_opt_b"]))})
    return pd.DataFrame(rows)


def regret_by_seed_count(test: pd.DataFrame, held: pd.DataFrame, lrs: dict[str, np.ndarray],
                         per_seed: dict[int, pd.DataFrame], divergence_loss: float,
                         window: int = WINDOW) -> pd.DataFrame | None:
    """Median regret (% of loss) of each method's LR (`lrs`: name -> LR per row of `held`)
    read against the mean of k of the held-out sweeps' seeds, for k = 1 .. all (columns),
    with a one-seed grid search's alongside (`one_seed_grid`: a seed's own optimum, from
    `per_seed` as in seed_noise, on the mean of k other seeds). The median is over
    configurations and k-subsets of seeds: at k = all it is the headline median regret, at
    k = 1 the grid search's is the seed noise floor. The fewer seeds, the noisier the
    measured curve, and the lower its minimum lies below the expected loss's, so every
    regret is read higher: the trend in k shows how much of a regret is measurement noise.
    Only configurations trained with every seed; None with one seed."""
    seeds = sorted(per_seed)
    if len(seeds) < 2:
        return None
    full = test.groupby(CONFIG)["seed"].transform("nunique") == len(seeds)
    chosen = held[CONFIG].assign(**lrs).set_index(CONFIG)
    own = {seed: frame.set_index(CONFIG)["lr_opt"] for seed, frame in per_seed.items()}
    rows = []
    for k in range(1, len(seeds) + 1):
        for subset in itertools.combinations(seeds, k):
            sweep = optima(test[full & test["seed"].isin(subset)], window).set_index(CONFIG)
            sweep = sweep.join(chosen, how="inner")
            others = {f"seed {a}": own[a] for a in seeds if a not in subset}
            method = {**{name: name for name in lrs}, **dict.fromkeys(others, "one_seed_grid")}
            if others:
                sweep = sweep.join(pd.DataFrame(others), how="left")
            for key, row in sweep.iterrows():
                for column, name in method.items():
                    if np.isfinite(row[column]):
                        nats = regret(row["opt"], row[column], divergence_loss=divergence_loss)
                        rows.append({"config": key, "k": k, "method": name,
                                     "regret_pct": 100 * nats / row["loss_opt"]})
    table = pd.DataFrame(rows).groupby(["method", "k"])["regret_pct"].median().unstack("k")
    return table.reindex([*lrs, "one_seed_grid"])


def print_first_seed(first: pd.DataFrame, held: pd.DataFrame, divergence_loss: float) -> None:
    """The same predictions scored against the first seed's sweeps alone (`first`: its
    `optima`)."""
    merged = first.merge(held[[*CONFIG, "eta_median", "eta_lo90", "eta_hi90", "ols_lr"]],
                         on=CONFIG)
    bayes = score(merged, merged["eta_median"].to_numpy(), divergence_loss)
    ols = score(merged, merged["ols_lr"].to_numpy(), divergence_loss)
    covered = covered90(merged)
    print(f"against the first seed alone: median regret bayeslr "
          f"{bayes['regret_pct'].median():.3f}%, OLS {ols['regret_pct'].median():.3f}%; "
          f"90% interval covers {covered.sum()} of {len(merged)}")


def cost_lines(args: argparse.Namespace, ratio: float, n_lrs: int) -> list[str]:
    """GPU-hours and energy of a grid search at the user's target vs the small sweeps."""
    grid_flops = n_lrs * 6 * args.target_params * args.target_tokens
    seconds_per_flop = 1 / (args.peak_tflops * 1e12 * args.mfu)
    grid_hours = grid_flops * seconds_per_flop / 3600
    ours_hours = ratio * grid_hours
    kwh = args.gpu_kw * args.pue
    return [
        f"assumptions: target N={args.target_params:.3g} params x D={args.target_tokens:.3g} "
        f"tokens; grid search = {n_lrs} LRs x 6ND FLOPs; accelerator {args.peak_tflops:g} "
        f"TFLOP/s peak at {args.mfu:.0%} MFU, {args.gpu_kw:g} kW, PUE {args.pue:g}; small "
        f"sweeps cost compute_ratio x the grid (the size ladder measured here)",
        f"grid search at target: {grid_hours:,.0f} GPU-hours, {grid_hours * kwh:,.0f} kWh",
        f"small sweeps (ratio {ratio:.3f}): {ours_hours:,.0f} GPU-hours, "
        f"{ours_hours * kwh:,.0f} kWh; saved {grid_hours - ours_hours:,.0f} GPU-hours "
        f"({1 - ratio:.0%})",
    ]


def seeds_per_sweep(test: pd.DataFrame) -> str:
    """How many seeds the held-out sweeps average: '2', or '2-4' where the sweeps differ."""
    counts = test.groupby(CONFIG)["seed"].nunique()
    low, high = counts.min(), counts.max()
    return f"{low}" if low == high else f"{low}-{high}"


def held_out_label(held: pd.DataFrame, axis: str) -> str:
    """'size N=...' or 'horizon D=...' of the held-out configurations."""
    value = held[axis].iloc[0]
    return f"size N={value:.3g}" if axis == "n_params" else f"horizon D={value:.3g} tokens"


def plot(held: pd.DataFrame, path: str, axis: str) -> None:
    """Measured optimum vs bayeslr (median, 90% interval), OLS and same-LR, per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = held.sort_values(CONFIG).reset_index(drop=True)
    x = np.arange(len(held))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(held)), 4))
    ax.vlines(x, held["eta_lo90"], held["eta_hi90"], color="C0", lw=3, alpha=0.4,
              label="bayeslr 90% interval")
    ax.plot(x, held["eta_median"], "o", color="C0", label="bayeslr median")
    ax.plot(x, held["ols_lr"], "x", color="C1", label="OLS on argmins")
    nearest = "largest training size" if axis == "n_params" else "longest training horizon"
    ax.plot(x, held["same_lr"], "+", color="C2", ms=9, label=f"same LR as the {nearest}")
    ax.plot(x, held["lr_opt"], "*", color="k", ms=10, label="measured optimum")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{r.optimizer}\nN={r.n_params / 1e3:.0f}k D={r.tokens / 1e3:.0f}k "
                      f"B={r.batch_size:g}" for r in held.itertuples()], fontsize=7, rotation=90)
    ax.set_ylabel("peak LR")
    ax.set_title(f"held-out {held_out_label(held, axis)}: predicted vs measured eta*")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    print(f"figure written to {path}")


def main() -> None:
    fix_kernels()
    args = parse_args()
    table = as_table(args.sweep or reference_jsonl())
    axis = AXIS[args.hold_out]
    train, test = split(table, args.hold_out, args.train_sizes, args.held_size,
                        args.train_seed)
    dense = as_table(dense_jsonl()) if args.dense or args.dense_fit else None
    train, fit_note = (dense_resampled(train, dense[dense["seed"].isin(train["seed"])],
                                       "fitted with") if args.dense_fit else (train, ""))
    divergence_loss = math.log(float(table["vocab_size"].dropna().iloc[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = fit(train, ModelSpec(covariates=COVARIATES, lr_kind=args.lr_kind,
                                         curvature=args.curvature, curve=args.curve,
                                         blowup_gap=args.blowup_gap,
                                         optimizer_curvature=args.optimizer_curvature,
                                         priors=dict(args.prior)),
                        draws=args.draws, tune=args.draws, chains=args.chains, seed=args.seed,
                        progressbar=False)
    diag = posterior.diagnostics()
    n_lrs = int(train.groupby(CONFIG)["lr"].nunique().median())
    ratio = compute_ratio(train, test, n_lrs)
    scored_dense = dense
    if args.unseen_seeds:
        test, scored_dense = unseen_seeds(test, dense, train)
    test, dense_note = (dense_resampled(test, scored_dense, "scored against") if args.dense
                        else (test, ""))
    held = optima(test, args.window)
    train_optima = optima(train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = predict_lr(posterior, held[CONFIG], seed=args.seed)
        advised = recommend(posterior, held[CONFIG], seed=args.seed)
    held = held.assign(eta_median=pred["eta_median"].to_numpy(),
                       eta_lo90=pred["eta_lo90"].to_numpy(), eta_hi90=pred["eta_hi90"].to_numpy(),
                       recommended=advised["lr"].to_numpy(),
                       ols_lr=fit_ols_law(train_optima, COVARIATES).predict(held),
                       same_lr=same_lr_baseline(train_optima, held, axis))
    scores = {name: score(held, held[column].to_numpy(), divergence_loss)
              for name, column in (("bayeslr", "eta_median"), ("bayes_rec", "recommended"),
                                   ("ols", "ols_lr"), ("same_lr", "same_lr"))}
    covered = covered90(held)

    sizes = sorted(train["n_params"].unique())
    horizons = train["tokens"].groupby(horizon_levels(train["tokens"])).min()
    print(f"fit: {len(train)} runs, sizes {[f'{s:.3g}' for s in sizes]}, horizons "
          f"{[f'{d:.3g}' for d in horizons]}; max R-hat "
          f"{diag['rhat_max']:.3f}, min bulk ESS {diag['ess_bulk_min']:.0f}, "
          f"{posterior.info.get('seconds')} s{fit_note}")
    print(fit_scales(posterior))
    print("fitted loss curves against the training runs (loss minus curve, nats/token), by ln "
          "LR from the configuration's optimum:\n"
          + curve_residuals(posterior).to_string(formatters={"mean": "{:+.3f}".format,
                                                             "robust_sd": "{:.3f}".format}))
    own = (fitted_optima(posterior, table, dense, divergence_loss, args.window)
           if dense is not None else None)
    if own is not None:
        print(own)
    if axis == "tokens":
        print("how the training configurations' optima move with the horizon (d ln eta* / "
              "d ln D, mean over batch sizes): read off the sweeps, and the fit's own\n"
              + horizon_slopes(posterior, train_optima).to_string(
                  float_format=lambda v: f"{v:+.2f}"))
    print(f"held out: {held_out_label(held, axis)}, {len(held)} configurations, "
          f"{seeds_per_sweep(test)} seed(s) per LR averaged{dense_note}\n")
    detail = held[[*CONFIG, "lr_opt", "eta_median", "eta_lo90", "eta_hi90", "recommended",
                   "ols_lr", "same_lr"]].assign(
        bayes_regret_pct=scores["bayeslr"]["regret_pct"].to_numpy(),
        ols_regret_pct=scores["ols"]["regret_pct"].to_numpy(),
        same_regret_pct=scores["same_lr"]["regret_pct"].to_numpy(), covered90=covered)
    print(detail.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\n{'method':<10} {'median |log10 err|':>18} {'median regret':>14} "
          f"{'median regret %':>16} {'mean regret %':>14}")
    for name, s in scores.items():
        print(f"{name:<10} {s['log10_err'].median():>18.3f} {s['regret_nats'].median():>14.4f} "
              f"{s['regret_pct'].median():>16.3f} {s['regret_pct'].mean():>14.3f}")
    print(f"\n90% interval covers the measured optimum in {covered.sum()} of {len(held)} "
          f"configurations")
    print_by_optimizer(held, scores, covered)
    print_reading_caveats(held, scores)
    per_seed = {seed: optima(runs, args.window) for seed, runs in test.groupby("seed")}
    print_first_seed(per_seed[min(per_seed)], held, divergence_loss)
    noise = seed_noise(per_seed, divergence_loss)
    by_seeds = regret_by_seed_count(test, held, {name: s["lr"].to_numpy()
                                                 for name, s in scores.items()},
                                    per_seed, divergence_loss, args.window)
    if by_seeds is not None:
        print(f"median regret (%) read against the mean of k seeds' sweeps (k = columns; "
              f"over the configurations with all {test['seed'].nunique()} seeds and the "
              f"k-subsets):\n" + by_seeds.to_string(float_format=lambda v: f"{v:.3f}"))
    if noise is not None:
        print(f"seed noise floor at the held-out configurations: a seed's own optimum on "
              f"another seed's sweep costs {noise['regret_pct'].median():.3f}% (median; mean "
              f"{noise['regret_pct'].mean():.3f}%), optima differ by "
              f"{noise['log10_diff'].median():.3f} decades (median; {len(noise)} pairs)")
    print(f"compute: training sweeps / grid search at the held-out configurations = "
          f"{ratio:.3f}")
    for line in cost_lines(args, ratio, n_lrs):
        print(line)
    if args.plot:
        plot(held, args.plot, axis)
    print(f"transfer: regret_pct={scores['bayeslr']['regret_pct'].median():.3f} "
          f"ols_regret_pct={scores['ols']['regret_pct'].median():.3f} "
          f"coverage90={covered.mean():.3f} compute_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
