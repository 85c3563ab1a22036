"""Write the tutorial notebooks (01_fit, 02_predict, 03_compare_optimizers) from this script.

The notebooks are generated, not hand-edited, so they stay short and reviewable: edit the
cells here and run `python notebooks/make_notebooks.py`. They are stored without outputs;
tests/test_notebooks.py executes them top to bottom.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

pd.set_option("display.width", 140)
pd.set_option("display.precision", 4)
scratch = tempfile.TemporaryDirectory(prefix="bayeslr-notebook-")  # removed with the kernel
workdir = Path(scratch.name)  # files this notebook writes"""

LOAD_MARIN = """\
from bayeslr.datasets import marin_csv
from bayeslr.importers import read_sweep_csv
from bayeslr.store import records_to_frame

records = read_sweep_csv(marin_csv())
runs = records_to_frame(records)
print(len(runs), "runs;", int(runs["diverged"].sum()), "diverged")
runs.groupby("optimizer").agg(runs=("lr", "size"), sizes=("n_params", "nunique"),
                              horizons=("tokens", "nunique"), lrs=("lr", "nunique"))"""

FIT_MARIN = """\
from bayeslr.fit import fit

adam_runs = runs[runs["optimizer"].isin(["adamw", "nadamw"])]
posterior = fit(adam_runs, draws=500, tune=500, chains=2, seed=0, progressbar=False)
posterior"""

NB1 = [
    new_markdown_cell("""\
# 1. Fit a posterior on a real LR sweep

We fit bayeslr's hierarchical model to **real** pre-training results shipped with the package:
the Marin optimizer study (Wen, Hall, Ma, Liang 2025), 271 runs of Llama-style models from 130M
to 1.2B non-embedding parameters, 1-16x Chinchilla tokens, four optimizers, 39 diverged runs
(see `bayeslr/data/README.md`). The model infers each sweep's optimal LR jointly with the
scaling law, using the diverged runs as information, and we check the sampler's diagnostics.
To keep this notebook quick we fit the two Adam-type optimizers (AdamW and NAdamW) with short
chains; a production fit would use the defaults (4 chains x 1000 draws)."""),
    new_code_cell(SETUP),
    new_markdown_cell("## The sweep\nOne row per run; `config_id` groups the runs of one LR "
                      "sweep (everything equal except the LR)."),
    new_code_cell(LOAD_MARIN),
    new_code_cell("""\
cols = ["optimizer", "n_params", "tokens", "batch_size", "lr", "loss", "diverged"]
runs[cols].sort_values(["optimizer", "n_params", "tokens", "batch_size", "lr"]).head(12)"""),
    new_markdown_cell("""\
## Fit
`fit` cleans the table (every dropped run or unidentified term is reported as a warning),
builds the PyMC model and samples with NUTS. Sweeps with a single LR carry no information about
their own optimum and are dropped, which the warning says; sweeps whose best LR is the lowest
or the highest they tried (many of these slices have two LRs) are counted and named, since
their optimum may lie outside the grid."""),
    new_code_cell(FIT_MARIN),
    new_markdown_cell("""\
## Diagnostics
`ok` requires max R-hat <= 1.01, min bulk ESS >= 400 and no divergent transitions. The short
chains of this notebook (2 x 500 draws, to run in CI) may fail these checks: the fit then warns
with the remedy, and the numbers below carry more Monte Carlo noise than a full fit's. Use the
defaults, and check `ok`, before acting on an answer."""),
    new_code_cell("posterior.diagnostics()"),
    new_code_cell("for note in posterior.notes:\n    print('-', note)"),
    new_markdown_cell("""\
## The law
log eta* at the data's centre per optimizer, the exponents d ln eta*/d ln x (natural units),
curvature terms, the scatter of sweeps around the law, and the loss-curve shape."""),
    new_code_cell("posterior.summary()"),
    new_code_cell("posterior.configs().sort_values(['optimizer', 'n_params', 'tokens']).head(10)"),
    new_markdown_cell("## Does the fitted curve match the runs?\nEach panel: one sweep's runs "
                      "(black; red crosses diverged), the fitted loss curve with its band, and "
                      "the 90% interval of that sweep's eta* (green)."),
    new_code_cell("""\
from bayeslr import plots

curves = plots.lr_curve_data(posterior, max_configs=6)
fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
plots.plot_lr_curves(curves, axes)
fig.tight_layout()"""),
    new_code_cell("""\
fig, ax = plt.subplots(figsize=(7, 3))
plots.plot_forest(plots.forest_data(posterior), ax);"""),
    new_markdown_cell("## Save it\nA saved posterior describes itself (model spec, versions, "
                      "data hash) and answers questions later: `bayeslr predict FILE ...`."),
    new_code_cell("""\
from bayeslr.posterior import Posterior

path = workdir / "marin_adam.nc"
posterior.save(path)
again = Posterior.load(path)
print(path.name, f"{path.stat().st_size / 1e6:.1f} MB;", again.optimizers)"""),
]

NB2 = [
    new_markdown_cell("""\
# 2. Which LR for a model you have not trained yet?

A team is about to train a **1.3B-parameter model on 26B tokens at batch size 512 with
AdamW**. We ask a posterior fitted on the real Marin sweep (as in notebook 1) for the optimal LR
with credible intervals, a recommendation that accounts for the asymmetric risk (too high
diverges, too low trains slowly), and the loss penalty of alternative LRs."""),
    new_code_cell(SETUP),
    new_code_cell(LOAD_MARIN),
    new_code_cell(FIT_MARIN),
    new_markdown_cell("""\
## eta* with credible intervals
`predict_lr` returns one row per target: the median and the 50/90/95% intervals of the
posterior predictive distribution of eta* (the law's uncertainty plus the scatter of a new
sweep around it), and how far the target lies outside the data (`extrapolation`)."""),
    new_code_cell("""\
from bayeslr.answers import predict_lr

target = {"params": 1.3e9, "tokens": 2.6e10, "batch_size": 512, "optimizer": "adamw"}
predict_lr(posterior, target).T"""),
    new_markdown_cell("""\
## A recommendation under asymmetric risk
`recommend` picks the LR that minimises the posterior expected penalty: the loss gap above the
optimum if the run survives, or `divergence_cost` nats if it diverges. A higher cost of a lost
run moves the recommendation down."""),
    new_code_cell("""\
from bayeslr.decisions import loss_penalty, recommend

pd.concat([recommend(posterior, target, divergence_cost=c) for c in (0.1, 1.0, 10.0)],
          ignore_index=True)[["divergence_cost", "lr", "eta_median", "lr_over_eta",
                              "expected_penalty", "p_diverge"]]"""),
    new_markdown_cell("""\
## What would another LR cost?
`loss_penalty` gives, for each LR, the expected final-loss increase (with its 90% interval),
the probability of divergence and the probability that the LR is above the optimum."""),
    new_code_cell("loss_penalty(posterior, target, [5e-4, 1e-3, 2e-3, 4e-3, 8e-3])"),
    new_markdown_cell("""\
## Far outside the data: an honest warning
LLaMA-1 7B used a peak LR of 3e-4 for ~1T tokens (6.7B parameters; 4M tokens per step, i.e.
1024 sequences of 4096 tokens in this sweep's units). That is far beyond the Marin runs, so the
answer comes with an `ExtrapolationWarning` and much wider intervals, not false confidence.
Bjorck et al. (2024) argued that LLaMA-1's LR was too high; `p_too_high` below is this
posterior's probability that 3e-4 lies above eta*, to be read together with how wide the
interval is this far from the data."""),
    new_code_cell("""\
import warnings

llama = {"params": 6.7e9, "tokens": 1e12, "batch_size": 1024, "optimizer": "adamw"}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    far = predict_lr(posterior, llama)
    penalty = loss_penalty(posterior, llama, 3e-4)
for w in caught:
    print(type(w.message).__name__, ":", str(w.message)[:160], "...")
pd.concat([predict_lr(posterior, target, warn_beyond=None), far])[
    ["n_params", "tokens", "eta_median", "eta_lo90", "eta_hi90", "log10_eta_sd",
     "extrapolation"]]"""),
    new_code_cell("penalty[['lr', 'p_too_high', 'p_diverge', 'gap_median', 'gap_lo90', "
                  "'gap_hi90']]"),
    new_markdown_cell("## eta* vs model size\nThe law with its 90% band (dark), the predictive "
                      "band of a new sweep (light), each sweep's best LR, and the target."),
    new_code_cell("""\
from bayeslr import plots

fig, ax = plt.subplots(figsize=(7, 4.5))
plots.plot_scaling(plots.scaling_data(posterior, along="n_params", target=target), ax);"""),
    new_markdown_cell("""\
## Transfer rules
How should eta* change when you scale what you have already tuned? `transfer` returns the
factor with its interval (the law's, without the scatter of single sweeps)."""),
    new_code_cell("""\
from bayeslr.answers import transfer

base = {"params": 3e8, "tokens": 6e9, "batch_size": 128, "optimizer": "adamw"}
pd.concat([transfer(posterior, base, params=4.0), transfer(posterior, base, tokens=4.0),
           transfer(posterior, base, batch_size=2.0)], ignore_index=True)[
    ["params_factor", "tokens_factor", "batch_size_factor", "ratio_median", "ratio_lo90",
     "ratio_hi90", "p_decrease"]]"""),
    new_markdown_cell("""\
The same answers from the command line (after `posterior.save("posterior.nc")`):

```
bayeslr predict posterior.nc --params 1.3e9 --tokens 2.6e10 --batch-size 512 --optimizer adamw
bayeslr predict posterior.nc ... --lr 1e-3 4e-3 --json
```"""),
]

NB3 = [
    new_markdown_cell("""\
# 3. Compare optimizers: AdamW, SGD and RMSprop

On the **real reference sweep** shipped with bayeslr (`bayeslr/data/README.md`): GPT-style
byte-level models of 6k to 4.7M non-embedding parameters trained on the bundled corpus with
AdamW, SGD with momentum and RMSprop, over 9-11 LRs each with two seeds, at three token horizons
and two batch sizes, collected with `collectors/plans/reference.toml`. To keep the notebook
quick we fit the batch-size-8 half with short chains; the code is the same for any sweep."""),
    new_code_cell(SETUP),
    new_code_cell("""\
from bayeslr.datasets import reference_jsonl
from bayeslr.fit import as_table

runs = as_table(reference_jsonl())
print(len(runs), "runs;", int(runs["diverged"].sum()), "diverged")
runs.groupby("optimizer").agg(runs=("lr", "size"), sizes=("n_params", "nunique"),
                              horizons=("tokens", "nunique"), diverged=("diverged", "sum"))"""),
    new_code_cell("""\
from bayeslr.fit import fit

posterior = fit(runs[runs["batch_size"] == 8], draws=400, tune=400, chains=2, seed=0,
                progressbar=False)
posterior.diagnostics()"""),
    new_markdown_cell("""\
## Exponents and pairwise contrasts
For every covariate and pair of optimizers: the posterior of the difference of exponents and
P(exponent_a > exponent_b)."""),
    new_code_cell("""\
from bayeslr.comparison import compare_optimizers

target = {"params": 1.5e7, "tokens": 4e5, "batch_size": 8}
result = compare_optimizers(posterior, target)
result.exponents"""),
    new_code_cell("result.contrasts"),
    new_code_cell("""\
row = result.contrasts.query("covariate == 'n_params' and a == 'adamw' and b == 'sgd'")
print(f"P(alpha_adamw > alpha_sgd) = {row['p_a_greater'].item():.3f}")"""),
    new_markdown_cell("## At a target\neta* and the risk-aware recommendation per optimizer "
                      "at a model 3x larger than any in the sweep (see its `extrapolation`\n"
                      "column)."),
    new_code_cell("result.at_target"),
    new_code_cell("result.target_contrasts"),
    new_code_cell("""\
from bayeslr import plots

fig, ax = plt.subplots(figsize=(7, 4.5))
plots.plot_forest(plots.forest_data(posterior), ax);"""),
    new_markdown_cell("Sharpness (top Hessian eigenvalue) was measured during training on a "
                      "subset of the AdamW and SGD runs; the edge of stability predicts "
                      "lambda_max ~ 2/eta for plain gradient descent."),
    new_code_cell("""\
fig, ax = plt.subplots(figsize=(7, 4.5))
plots.plot_sharpness_vs_lr(plots.sharpness_vs_lr_data(runs), ax);"""),
]


def write_all(directory: Path = HERE) -> list[Path]:
    """Write the three notebooks (without outputs); returns their paths."""
    out = []
    for name, cells in (("01_fit", NB1), ("02_predict", NB2), ("03_compare_optimizers", NB3)):
        for i, cell in enumerate(cells):
            cell["id"] = f"{name}-{i:02d}"  # stable ids: regenerating changes nothing
        notebook = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"}})
        path = directory / f"{name}.ipynb"
        nbformat.write(notebook, path)
        out.append(path)
    return out


if __name__ == "__main__":
    for path in write_all():
        print("wrote", path.name)
