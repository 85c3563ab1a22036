"""`bayeslr report POSTERIOR -o DIR [target options]`: the posterior's figures as PNGs.

Writes loss-vs-LR curves of fitted configurations, eta* vs model size and vs tokens (with the
target marked when given), the optimizers' exponents (forest plot), sharpness vs LR where
measured, and an index (index.md and index.html) with the diagnostics and the answers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bayeslr.commands._target import (
    WarningLog,
    add_posterior_argument,
    add_target_arguments,
    load_posterior,
    target_from_args,
)

HELP = "write the posterior's plots (PNG) and an index page to a directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_posterior_argument(parser)
    parser.add_argument("-o", "--out", required=True, metavar="DIR",
                        help="output directory (created if missing; files are overwritten)")
    add_target_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the predictive draws")
    parser.add_argument("--max-configs", type=int, default=9, metavar="N",
                        help="configurations shown in the loss-vs-LR figure (default 9)")


def run(args: argparse.Namespace) -> int:
    posterior = load_posterior(args.posterior)
    with WarningLog() as messages:
        written = write_report(posterior, args.out, target=target_from_args(args),
                               seed=args.seed, max_configs=args.max_configs,
                               source=Path(args.posterior).name)
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)
    print(f"wrote {len(written)} files to {args.out}: " + ", ".join(p.name for p in written))
    return 0


def write_report(posterior: Any, out: str | Path, *, target: dict | None = None,
                 seed: int = 0, max_configs: int = 9, source: str = "posterior") -> list[Path]:
    """Write the figures and index files; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bayeslr import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = []

    curves = plots.lr_curve_data(posterior, max_configs=max_configs)
    n = len(curves.configs)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    plots.plot_lr_curves(curves, axes)
    figures.append(_save(fig, out / "lr_curves.png", plt,
                         "Loss vs LR of fitted configurations: runs, fitted curve (band: "
                         "90% interval of the mean loss), eta* interval (green)"))
    if target is not None and "optimizer" not in target:
        target = None  # the scaling plots need one optimizer to mark a target
    for along in ("n_params", "tokens"):
        if along not in posterior.covariates:
            continue
        fig, ax = plt.subplots(figsize=(6, 4.2))
        plots.plot_scaling(plots.scaling_data(posterior, along=along, target=target,
                                              seed=seed), ax)
        figures.append(_save(fig, out / f"eta_vs_{along}.png", plt,
                             f"eta* vs {along}: the law with its 90% band (dark) and the "
                             "predictive band of a new sweep (light); points: each fitted "
                             "sweep's eta* (90% interval) moved onto the plotted slice by the "
                             "law; grey: outside the data's range"))
    if posterior.covariates:
        table = plots.forest_data(posterior)
        fig, ax = plt.subplots(figsize=(6, 0.35 * len(table) + 1.5))
        plots.plot_forest(table, ax)
        figures.append(_save(fig, out / "optimizer_exponents.png", plt,
                             "Exponents d ln eta*/d ln x by optimizer (50% and 90% intervals)"))
    sharp = plots.sharpness_vs_lr_data(posterior)
    if not sharp.empty:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        plots.plot_sharpness_vs_lr(sharp, ax)
        figures.append(_save(fig, out / "sharpness_vs_lr.png", plt,
                             "Measured sharpness vs LR with the edge-of-stability lines"))
    text = index_markdown(posterior, figures, target=target, seed=seed, source=source)
    (out / "index.md").write_text(text)
    (out / "index.html").write_text(_html(text, figures))
    return [out / name for name, _ in figures] + [out / "index.md", out / "index.html"]


def _save(fig: Any, path: Path, plt: Any, caption: str) -> tuple[str, str]:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name, caption


def index_markdown(posterior: Any, figures: list[tuple[str, str]], *, target: dict | None,
                   seed: int, source: str) -> str:
    """The report's index: data, diagnostics, the law, and the answer at the target."""
    d = posterior.diagnostics()
    f = posterior.features
    lines = [f"# bayeslr report: {source}", "",
             f"- runs: {f.n_points} ({int(f.diverged.sum())} diverged) in {f.n_configs} "
             f"configurations; optimizers: {', '.join(posterior.optimizers)}; families: "
             f"{', '.join(posterior.families)}",
             f"- law covariates: {', '.join(posterior.covariates) or 'none'}",
             f"- diagnostics: max R-hat {d['rhat_max']:.3f}, min bulk ESS "
             f"{d['ess_bulk_min']:.0f}, divergent transitions {d['n_divergences']} -> "
             f"{'ok' if d['ok'] else 'NOT OK: treat intervals with care'}"]
    lines += [f"- note: {note}" for note in posterior.notes]
    if target is not None:
        from bayeslr.commands.predict import answer, format_table

        lines += ["", "## Answer at the target", "", "```",
                  format_table(answer(posterior, target, seed=seed)), "```"]
    lines += ["", "## Figures", ""]
    for name, caption in figures:
        text = caption.replace("*", "\\*")  # eta* must not start markdown emphasis
        lines += [f"![{text}]({name})", "", f"*{text}*", ""]
    return "\n".join(lines) + "\n"


def _html(markdown: str, figures: list[tuple[str, str]]) -> str:
    """A dependency-free HTML rendering of the index (text in <pre>, figures inline)."""
    import html

    body = markdown.split("## Figures")[0]
    images = "\n".join(f'<figure><img src="{name}" alt="{html.escape(cap)}">'
                       f"<figcaption>{html.escape(cap)}</figcaption></figure>"
                       for name, cap in figures)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>bayeslr report</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
            "img{max-width:100%}pre{background:#f4f4f4;padding:1em}</style></head><body>"
            f"<pre>{html.escape(body)}</pre>\n{images}\n</body></html>\n")
