"""Seed-to-seed loss noise of the shipped sweeps: how precisely one run measures the loss at
one LR, the noise level the calibration benchmark's simulated sweeps are drawn around
(bayeslr.simulate.NOISE_MEDIAN).

The reference and dense sweeps train every configuration and LR with two seeds, 0 and 1
(different initialization and data order; the dense sweeps at 333k and AdamW's at 4.73M add
seeds 2 and 3, which are left out here so that every sweep is read the same way). For each
such pair of stable runs, the sample sd of the two final validation losses is
|difference| / sqrt(2); for normal noise its median over pairs is 0.674 sigma, so sigma is
estimated as that median / 0.674 (robust to the rare pair with a loss spike). Printed for
all pairs and for the pairs near their sweep's optimum (seed-mean loss within --near nats
of the configuration's best seed-mean loss), by optimizer and size.

The sweeps branch every horizon of one LR from one training run (WSD branching: the
shorter horizons decay off the longer one's constant-LR trunk), so a seed's luck at an LR is
shared by its horizons. The command prints how much: per sweep, optimizer and size, the
correlation between horizons of the seed difference (seed 0's loss minus seed 1's at the same
LR and batch size), which the shared trunk makes positive and independent runs would leave
near zero.

    python benchmarks/loss_noise.py [--near 0.1]

Last line: `loss_noise: sigma_all=<x> sigma_near_optimum=<y> pairs=<n>` (nats/token, over
both shipped sweeps).
"""

from __future__ import annotations

import argparse

import pandas as pd
from transfer import CONFIG, horizon_levels

from bayeslr.datasets import dense_jsonl, reference_jsonl
from bayeslr.fit import as_table

MEDIAN_SD_OF_TWO = 0.674
"""Median of the sample sd of two draws from N(0, 1): |z1 - z2| / sqrt(2) is half-normal
with scale 1, whose median is the normal's 75% quantile."""


def seed_pairs(table: pd.DataFrame, near: float) -> pd.DataFrame:
    """One row per configuration and LR trained stably with both seeds 0 and 1: the sample sd
    of the two final validation losses (nats/token) and whether the LR is near the
    configuration's optimum (seed-mean loss within `near` nats of its best)."""
    stable = table[~table["diverged"] & table["final_val_loss"].notna()
                   & table["seed"].isin([0, 1])]
    pairs = stable.groupby([*CONFIG, "lr"])["final_val_loss"].agg(["std", "mean", "count"])
    pairs = pairs[pairs["count"] == 2].reset_index()
    best = pairs.groupby(CONFIG)["mean"].transform("min")
    return pairs.assign(near_optimum=pairs["mean"] - best <= near)


def horizon_correlation(table: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer and size: the correlation, over LRs and batch sizes, of the seed
    difference (seed 0's final validation loss minus seed 1's) between the shortest horizon
    and each longer one, with the number of (LR, batch size) pairs."""
    stable = table[~table["diverged"] & table["final_val_loss"].notna()
                   & table["seed"].isin([0, 1])]
    stable = stable.assign(horizon=horizon_levels(stable["tokens"]))
    keys = ["optimizer", "n_params", "batch_size", "lr", "horizon"]
    loss = stable.pivot_table(index=keys, columns="seed", values="final_val_loss").dropna()
    diff = (loss[0] - loss[1]).unstack("horizon")
    rows = []
    for (optimizer, size), group in diff.groupby(level=["optimizer", "n_params"]):
        row = {"optimizer": optimizer, "n_params": size}
        for horizon in group.columns[1:]:
            both = group[[group.columns[0], horizon]].dropna()
            row[f"corr_h0_h{horizon}"] = both.corr().iloc[0, 1] if len(both) > 2 else float("nan")
            row[f"n_h{horizon}"] = len(both)
        rows.append(row)
    return pd.DataFrame(rows).set_index(["optimizer", "n_params"])


def sigma(sds: pd.Series) -> float:
    """The noise sd (nats/token) implied by the median two-seed sample sd."""
    return float(sds.median() / MEDIAN_SD_OF_TWO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--near", type=float, default=0.1,
                        help="nats above a configuration's best loss that count as near its "
                             "optimum (default 0.1)")
    args = parser.parse_args()
    tables = {"reference": as_table(reference_jsonl()), "dense": as_table(dense_jsonl())}
    pairs = pd.concat([seed_pairs(table, args.near).assign(sweep=name)
                       for name, table in tables.items()], ignore_index=True)
    near = pairs[pairs["near_optimum"]]
    for name, group in (("all LRs", pairs), (f"within {args.near:g} nats of the optimum", near)):
        table = group.groupby(["sweep", "optimizer"])["std"].agg([sigma, "size"])
        print(f"sigma of the loss (nats/token), {name}:\n" + table.round(4).to_string())
    by_size = near.groupby(["sweep", "n_params"])["std"].agg([sigma, "size"])
    print("near the optimum, by model size:\n" + by_size.round(4).to_string())
    for name, table in tables.items():
        print(f"{name} sweeps: correlation of the seed difference between the shortest "
              "horizon (h0) and each longer one (h1, h2), over LRs and batch sizes:\n"
              + horizon_correlation(table).round(2).to_string())
    print(f"loss_noise: sigma_all={sigma(pairs['std']):.4f} "
          f"sigma_near_optimum={sigma(near['std']):.4f} pairs={len(pairs)}")


if __name__ == "__main__":
    main()
