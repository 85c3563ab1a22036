"""Grid resolution: where the reference sweep's coarse LR grid puts the optimum, against dense
sweeps of the same configurations.

The reference sweep steps its LRs by a factor 3.16, and the transfer benchmark reads each
sweep's optimum as the vertex of a quadratic in ln LR through the five stable points around
its argmin (bayeslr.baselines.sweep_optimum), a window 4.6 natural-log units wide. Dense
sweeps (collectors/plans/*dense*.toml: a factor 1.33 between LRs, the same models, horizons,
batch sizes and seeds) measure the loss between those points.
For each dense configuration this prints, as LRs and as regret on the dense sweep:

- the dense optimum: sweep_optimum of the dense runs, completed outside their LR range by the
  reference runs (the seeds averaged per LR, as the transfer benchmark reads a sweep; four
  seeds inside the dense range at 333k and AdamW's at 4.73M, two elsewhere);
- the coarse optimum: sweep_optimum of the reference runs alone (what transfer.py scores
  against);
- the thinned optimum: sweep_optimum of the dense sweep's own runs at the reference grid's LRs
  (within 1%), completed as the dense optimum is: the coarse reading of the dense runs and
  seeds, so that where it agrees with the coarse optimum and not with the dense one, the grid's
  resolution makes the difference, not the runs;
- the model's optimum: the posterior median of eta* from a fit to the reference sweep's
  `--train-sizes` smallest sizes, seed 0 (transfer.py's default fit): the configuration's own
  posterior at a fitted size, the prediction for a new configuration at a held-out size;
- the OLS power law on the training sizes' grid argmins (transfer.py's baseline);
- the seed noise floor: a seed's own dense optimum on another seed's dense sweep;
- how far above the dense optimum the sweep's stable LRs end (`cliff_decades`): the first LR
  whose seed-mean loss lies CLIFF_NATS above the optimum's, or where a seed diverged;
- per optimizer and size, how the dense, coarse and model optima move with the horizon and
  the batch size: the slopes of ln LR in ln D and ln B, fitted jointly over the six
  configurations (the law's exponents, read size by size).

    python benchmarks/grid_resolution.py [SWEEPDIR ...] [--train-sizes 3] [--window 2]
                                         [--plot FILE.png]

`--window K` fits the coarse and thinned readings' quadratic to K stable points on each side
of the argmin (default 2, as transfer.py reads a sweep; on the reference grid, K = 2 spans 2
decades and K = 1 one decade). The dense optimum keeps K = 2 (half a decade).

`--plot` draws, for each optimizer and dense size, one configuration (the longest horizon,
the largest batch): the stable points the dense and the coarse readings are taken from
(seed-mean loss against the LR), with the four readings of its optimum.

The dense sweeps default to the shipped bayeslr/data/dense_sweep.jsonl.gz (all three
optimizers at 24.9k, 55.8k, 333k, 1.77M and 4.73M).

Last line: `grid: coarse_log10_bias=<x> model_log10_bias=<y> coarse_regret_pct=<a>
model_regret_pct=<b> ols_regret_pct=<c>` (medians over the dense configurations; bias =
log10(LR / dense optimum); regret in % of the dense optimum's loss).
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np
import pandas as pd
from fixed_kernels import fix_kernels
from transfer import CONFIG, COVARIATES, first_seed, optima, seed_noise, with_dense

from bayeslr.answers import predict_lr
from bayeslr.baselines import WINDOW, SweepOptimum, fit_ols_law, regret
from bayeslr.datasets import dense_jsonl, reference_jsonl
from bayeslr.fit import as_table, fit
from bayeslr.spec import ModelSpec

READINGS = ("coarse", "thinned", "model", "ols")
"""The readings of each dense configuration's optimum scored against its dense optimum."""
CLIFF_NATS = 0.2
"""Rise of the seed-mean loss above a sweep's optimum that marks the end of its stable LRs
(nats/token; about five times one run's loss noise, docs/model.md)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="*",
                        help="sweep dirs or .jsonl[.gz] of dense sweeps (default: the shipped "
                             "bayeslr/data/dense_sweep.jsonl.gz)")
    parser.add_argument("--train-sizes", type=int, default=3,
                        help="fit the model and OLS on this many smallest sizes (default 3)")
    parser.add_argument("--window", type=int, default=WINDOW,
                        help="stable points on each side of the argmin that the coarse and "
                             f"thinned readings' quadratic is fitted to (default {WINDOW})")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    parser.add_argument("--plot", help="write the per-optimizer and size figure (PNG)")
    return parser.parse_args()


def model_optima(train: pd.DataFrame, targets: pd.DataFrame, seed: int) -> np.ndarray:
    """Posterior median eta* at each target: the configuration's own posterior where it was
    fitted, the predictive distribution of a new configuration elsewhere."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = fit(train, ModelSpec(covariates=COVARIATES), draws=1000, tune=1000,
                        chains=4, seed=seed, progressbar=False)
        predicted = predict_lr(posterior, targets[CONFIG], seed=seed)["eta_median"].to_numpy()
    fitted = posterior.configs().reset_index()
    fitted["eta"] = np.exp(fitted["log_eta_median"])
    own = targets[CONFIG].merge(fitted[[*CONFIG, "eta"]], on=CONFIG, how="left")["eta"]
    return np.where(own.notna(), own.to_numpy(), predicted)


def main() -> None:
    fix_kernels()
    args = parse_args()
    reference = as_table(reference_jsonl())
    paths = args.sweeps or [dense_jsonl()]
    dense = pd.concat([as_table(path) for path in paths], ignore_index=True)
    completed = with_dense(reference.merge(dense[CONFIG].drop_duplicates(), on=CONFIG), dense)
    measured = optima(completed)
    coarse = measured[CONFIG].merge(
        optima(reference.merge(measured[CONFIG], on=CONFIG), args.window), on=CONFIG, how="left")
    thinned = measured[CONFIG].merge(
        optima(on_grid(completed, reference), args.window), on=CONFIG, how="left")
    sizes = np.sort(reference["n_params"].unique())[:args.train_sizes]
    train = first_seed(reference[reference["n_params"].isin(sizes)])
    table = measured[CONFIG].assign(
        dense=measured["lr_opt"],
        coarse=coarse["lr_opt"],
        thinned=thinned["lr_opt"],
        model=model_optima(train, measured, args.seed),
        ols=fit_ols_law(optima(train), COVARIATES).predict(measured),
        cliff_decades=[cliff_decades(opt) for opt in measured["opt"]])
    divergence_loss = math.log(float(reference["vocab_size"].dropna().iloc[0]))
    score(table, measured, divergence_loss)
    print(f"dense configurations: {len(table)}; model and OLS fitted on sizes "
          f"{[f'{s:.3g}' for s in sizes]} (seed 0)\n")
    print_report(table, completed, divergence_loss)
    if args.plot:
        plot(table, measured["opt"], coarse["opt"], args.plot)


def on_grid(runs: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """The runs at an LR of their configuration's reference grid (within 1%), of the
    configurations where they reach every LR of that grid (dense grids laid out on other LRs
    have none of them inside their range)."""
    grid = reference[[*CONFIG, "lr"]].drop_duplicates().rename(columns={"lr": "grid_lr"})
    pairs = runs.reset_index().merge(grid, on=CONFIG)
    pairs = pairs[np.abs(np.log(pairs["lr"] / pairs["grid_lr"])) < 0.01]
    reached = pairs.groupby(CONFIG)["grid_lr"].nunique()
    complete = reached.index[reached == grid.groupby(CONFIG).size().reindex(reached.index)]
    whole = pairs.set_index(CONFIG).index.isin(complete)
    return runs.loc[pairs.loc[whole, "index"].unique()]


def cliff_decades(opt: SweepOptimum) -> float:
    """Decades from the sweep's optimum up to the first LR above it whose loss lies CLIFF_NATS
    above the optimum's, or else to its first diverged LR (NaN when neither is in the
    sweep)."""
    above = (opt.log_lr > math.log(opt.lr_opt)) & (opt.loss > opt.loss_opt + CLIFF_NATS)
    edge = opt.log_lr[above][0] if above.any() else opt.first_diverged_log_lr
    return (edge - math.log(opt.lr_opt)) / math.log(10) if math.isfinite(edge) else math.nan


def score(table: pd.DataFrame, measured: pd.DataFrame, divergence_loss: float) -> None:
    """Add each reading's regret (% of the dense optimum's loss) on the dense sweep and its
    log10 ratio to the dense optimum, in place."""
    for name in READINGS:
        table[f"{name}_regret_pct"] = [
            100 * regret(opt, lr, divergence_loss=divergence_loss) / opt.loss_opt
            if np.isfinite(lr) else np.nan
            for opt, lr in zip(measured["opt"], table[name], strict=True)]
        table[f"{name}_log10"] = np.log10(table[name] / table["dense"])


def print_report(table: pd.DataFrame, completed: pd.DataFrame, divergence_loss: float) -> None:
    """Per configuration, medians by optimizer and size, the seed noise floor, and the last
    line."""
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print("\nmedians by optimizer and size (log10 LR / dense optimum; regret % on the dense "
          "sweep; cliff_decades: from the dense optimum up to the end of the stable LRs):")
    columns = [*(f"{n}_{k}" for k in ("log10", "regret_pct") for n in READINGS),
               "cliff_decades"]
    print(table.groupby(["optimizer", "n_params"])[columns].median().to_string(
        float_format=lambda v: f"{v:+.3f}"))
    print("\nslopes of ln LR in ln D and ln B per optimizer and size, of the dense, thinned, "
          "coarse and model optima:")
    slopes = {name: trend_slopes(table, name) for name in ("dense", "thinned", "coarse", "model")}
    print(pd.concat(slopes, axis=1).to_string(float_format=lambda v: f"{v:+.2f}"))
    noise = seed_noise({seed: optima(runs) for seed, runs in completed.groupby("seed")},
                       divergence_loss)
    if noise is not None:
        print(f"seed noise floor on the dense sweeps: a seed's own optimum on another seed's "
              f"sweep costs {noise['regret_pct'].median():.3f}% (median), optima differ by "
              f"{noise['log10_diff'].median():.3f} decades (median; {len(noise)} pairs)")
    print(f"grid: coarse_log10_bias={table['coarse_log10'].median():.3f} "
          f"model_log10_bias={table['model_log10'].median():.3f} "
          f"coarse_regret_pct={table['coarse_regret_pct'].median():.3f} "
          f"model_regret_pct={table['model_regret_pct'].median():.3f} "
          f"ols_regret_pct={table['ols_regret_pct'].median():.3f}")


def trend_slopes(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per optimizer and size, the exponents of `column` (an LR) in tokens and batch size: the
    OLS power law of the transfer baseline, fitted to that size's configurations alone."""
    rows = {}
    for size, group in table[table[column].notna()].groupby("n_params"):
        law = fit_ols_law(group.assign(lr_argmin=group[column]), ("tokens", "batch_size"))
        for optimizer, (_, d_slope, b_slope) in law.coefficients.items():
            rows[(optimizer, size)] = {"d_slope": d_slope, "b_slope": b_slope}
    return (pd.DataFrame.from_dict(rows, orient="index")
            .rename_axis(["optimizer", "n_params"]).sort_index())


def plot(table: pd.DataFrame, dense: pd.Series, coarse: pd.Series, path: str) -> None:
    """One panel per optimizer (rows) and dense size (columns), for the configuration with the
    longest horizon and the largest batch: the stable points of its dense and coarse sweeps
    (`dense`, `coarse`: SweepOptimum per row of `table`) and the dense, coarse, bayeslr and
    OLS optima."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    shown = table.sort_values(["batch_size", "tokens"]).groupby(
        ["optimizer", "n_params"]).tail(1).sort_values(["optimizer", "n_params"])
    optimizers, sizes = sorted(shown["optimizer"].unique()), sorted(shown["n_params"].unique())
    fig, axes = plt.subplots(len(optimizers), len(sizes), squeeze=False,
                             figsize=(3.6 * len(sizes), 2.8 * len(optimizers)))
    readings = {"dense": ("k", "-"), "coarse": ("C3", "--"), "model": ("C0", "-"),
                "ols": ("C1", ":")}
    for ax in axes.flat:  # a size that not every optimizer was resampled at leaves gaps
        ax.axis("off")
    for row in shown.itertuples():
        ax = axes[optimizers.index(row.optimizer), sizes.index(row.n_params)]
        ax.axis("on")
        fine, grid = dense[row.Index], coarse[row.Index]
        ax.plot(np.exp(fine.log_lr), fine.loss, ".-", color="0.5", ms=4,
                label="dense, seed mean")
        ax.plot(np.exp(grid.log_lr), grid.loss, "s", mfc="none", color="C3",
                label="coarse grid")
        for name, (color, style) in readings.items():
            ax.axvline(getattr(row, name), color=color, ls=style, lw=1.2,
                       label=f"{name} optimum" if name != "model" else "bayeslr")
        ax.set_ylim(fine.loss.min() - 0.02, fine.loss.min() + 0.6)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow sweep labels no minor ticks
        ax.set_title(f"{row.optimizer}, N={row.n_params:.3g}, D={row.tokens:.2g}, "
                     f"B={row.batch_size:g}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=6)
    for column in axes.T:
        [ax for ax in column if ax.axison][-1].set_xlabel("learning rate", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("val loss (nats/token)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
