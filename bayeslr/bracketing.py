"""Whether each sweep's LR grid brackets its optimum, and what to tell the user when not.

A sweep locates its optimum when runs on both sides of its best LR did worse: a higher loss
or, on the high side, a failure (divergence or a loss spike, both information for the
model). A sweep whose best LR is the lowest it tried, or the highest with nothing above it
that failed or did worse, only bounds its optimum on one side; the posterior then leans on
the law and the other sweeps for it. Sweeps are read as bayeslr.baselines reads them:
seeds at one LR averaged, nothing above the first failed LR.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeslr.baselines import stable_points

BELOW = "below"
"""The best LR is the lowest one tried: the optimum may lie below the grid."""
ABOVE = "above"
"""The best LR is the highest one tried and nothing above it failed: the optimum may lie
above the grid."""
EXAMPLES = 3
"""Configurations named in a note before the rest are counted."""


def grid_edges(log_lr: np.ndarray, loss: np.ndarray, diverged: np.ndarray,
               point_config: np.ndarray, n_configs: int) -> np.ndarray:
    """(C,) per configuration BELOW, ABOVE or '' (bracketed, or no stable run to tell).
    log_lr: natural log of each run's LR; loss: nats/token (NaN where diverged)."""
    out = np.full(n_configs, "", dtype=object)
    for c in range(n_configs):
        mine = point_config == c
        points = stable_points(log_lr[mine], loss[mine], diverged[mine])
        if len(points.loss) < 2:
            continue
        if points.best == 0:
            out[c] = BELOW
        elif points.best == len(points.loss) - 1 and points.n_lrs == len(points.loss):
            out[c] = ABOVE
    return out


def grid_notes(edges: np.ndarray, labels: pd.Series) -> list[str]:
    """Notes for the configurations whose optimum the grid does not bracket; `labels` names
    each configuration (same order as `edges`)."""
    advice = {BELOW: ("the lowest LR they tried", "below", "lower"),
              ABOVE: ("the largest LR they tried, and no run above it diverged or did worse",
                      "above", "higher")}
    notes = []
    for edge, (where, side, direction) in advice.items():
        hit = np.flatnonzero(edges == edge)
        if not len(hit):
            continue
        named = "; ".join(str(labels.iloc[i]) for i in hit[:EXAMPLES])
        more = f"; and {len(hit) - EXAMPLES} more" if len(hit) > EXAMPLES else ""
        notes.append(f"{len(hit)} of {len(edges)} configurations have their lowest loss at "
                     f"{where}, so their optimum may lie {side} the grid, where the sweep "
                     f"does not see it and the posterior leans on the law and the other sweeps "
                     f"({named}{more}); sweep them to {direction} LRs")
    return notes
