"""Tiny real sweep plans shared by the collector tests (seconds of CPU each)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_MODEL = {"widths": [16], "depths": [1], "heads": [2], "context": 32}
"""A 1-block, width-16 GPT: about 3k non-embedding parameters."""


def tiny_plan(*, lrs: list[float] | None = None, steps: int = 30, **overrides: Any
              ) -> dict[str, Any]:
    """A plan dict: one tiny GPT, AdamW over `lrs`, `steps` steps of batch 8 x 32 tokens."""
    plan: dict[str, Any] = {
        "name": "test",
        "seeds": [0],
        "model": dict(TINY_MODEL),
        "train": {"steps": [steps], "batch_sizes": [8], "schedule": "cosine",
                  "warmup_steps": 3},
        "measure": {"curve_points": 10, "eval_batches": 2, "effective_lr_every": 5},
        "optimizers": {"adamw": {"lrs": lrs or [1e-2]}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(plan.get(key), dict):
            plan[key] = {**plan[key], **value}
        else:
            plan[key] = value
    return plan


def to_toml(plan: dict[str, Any]) -> str:
    """Write a plan dict as TOML (the subset these tests use: tables, lists, scalars)."""
    top = [f"{k} = {_value(v)}" for k, v in plan.items() if not isinstance(v, dict)]
    tables = []
    for name, table in plan.items():
        if not isinstance(table, dict):
            continue
        if name == "optimizers":
            for opt, settings in table.items():
                tables.append(f"[optimizers.{opt}]")
                tables += [f"{k} = {_value(v)}" for k, v in settings.items()]
            continue
        tables.append(f"[{name}]")
        tables += [f"{k} = {_value(v)}" for k, v in table.items()]
    return "\n".join(top + tables) + "\n"


def write_plan(path: Path, plan: dict[str, Any]) -> Path:
    path.write_text(to_toml(plan))
    return path


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + "}"
    return repr(value)
