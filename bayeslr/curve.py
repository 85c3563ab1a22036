"""The loss-versus-LR curve of one configuration, as the model's likelihood uses it.

Plain arithmetic only (no ufunc with branches), so the same functions run on numpy arrays
(numpy-style broadcasting), xarray DataArrays (broadcast by dimension name) and PyTensor
tensors: the model's likelihood calls them, so answers compute penalties with exactly the
model's shape. Units: log LRs are natural logs; losses in nats/token.

With u = log_lr - log_eta (distance from the optimum in natural-log LR units):
    loss_gap(u) = curv_left * u^2                       for u <= 0 (LR too low)
                = curv_right * u^2 * (1 + wall * u)     for u > 0  (LR too high)
    P(diverge)  = logistic((u - div_offset) / div_scale)
so the loss is smooth at the optimum, may rise faster on the high side (asymmetry and an
optional cubic wall), and runs diverge beyond a boundary div_offset above the optimum.

The saturating curve bounds each side: far below the optimum a run barely trains and its loss
approaches `ceiling_low` (about the loss at initialisation); far above it the run stalls at
`ceiling_high` (e.g. the unigram entropy of the corpus) instead of rising without bound. With
the side's height h = ceiling - loss_min (kept positive, softly),
    saturated_gap = gap * h / (h + gap)
which is the quadratic near the optimum and tends to h far from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scipy.special import expit

LOG_ETA = "log_eta"
"""Natural log of the configuration's optimal (peak) LR."""
CURV_LEFT = "curv_left"
"""Loss increase per squared natural-log unit below the optimum (nats/token)."""
CURV_RIGHT = "curv_right"
"""Loss increase per squared natural-log unit above the optimum (nats/token)."""
WALL = "wall"
"""Cubic wall on the high side, per natural-log unit (0 or absent: plain quadratic)."""
CEIL_LOW = "ceiling_low"
"""Loss the curve approaches far below the optimum (nats/token; saturating curve only)."""
CEIL_HIGH = "ceiling_high"
"""Loss the curve approaches far above the optimum (nats/token; saturating curve only)."""
LOSS_MIN = "loss_min"
"""The configuration's loss at its optimum (nats/token); the saturating curve needs it."""
SOFTNESS = 0.05
"""Width (nats/token) over which a side's height ceiling - loss_min is kept above zero."""
DIV_OFFSET = "div_offset"
"""Distance of the divergence boundary above the optimum (natural-log units)."""
DIV_SCALE = "div_scale"
"""Width of the logistic divergence transition (natural-log units)."""

SHAPE_PARAMS = (CURV_LEFT, CURV_RIGHT, WALL, CEIL_LOW, CEIL_HIGH, DIV_OFFSET, DIV_SCALE)


def loss_gap(log_lr: Any, params: Mapping[str, Any]) -> Any:
    """Expected loss above the configuration's optimum at `log_lr` (nats/token, >= 0)."""
    u = log_lr - params[LOG_ETA]
    low = (u - abs(u)) * 0.5  # min(u, 0)
    high = (u + abs(u)) * 0.5  # max(u, 0)
    left = params[CURV_LEFT] * low**2
    right = params[CURV_RIGHT] * high**2
    if WALL in params:
        right = right * (1.0 + params[WALL] * high)
    if CEIL_LOW in params:
        left = _saturate(left, params[CEIL_LOW] - params[LOSS_MIN])
        right = _saturate(right, params[CEIL_HIGH] - params[LOSS_MIN])
    return left + right


def _saturate(gap: Any, height: Any) -> Any:
    """`gap` bounded by `height` (nats/token): gap near zero, height far away; the height is
    made positive smoothly (a configuration whose loss floor lies above a ceiling has a side
    that is almost flat)."""
    height = 0.5 * (height + (height * height + SOFTNESS**2) ** 0.5)
    return gap * height / (height + gap)


def divergence_prob(log_lr: Any, params: Mapping[str, Any]) -> Any:
    """Probability that a run at `log_lr` diverges."""
    return expit(divergence_logit(log_lr, params))


def divergence_logit(log_lr: Any, params: Mapping[str, Any]) -> Any:
    """Log-odds that a run at `log_lr` diverges."""
    return (log_lr - params[LOG_ETA] - params[DIV_OFFSET]) / params[DIV_SCALE]
