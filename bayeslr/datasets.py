"""Paths of the sweep tables shipped inside the package (read with importlib.resources)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def shipped(name: str) -> Path:
    """Path of a shipped data file; see bayeslr/data/README.md for what each one is."""
    path = Path(str(resources.files("bayeslr") / "data" / name))
    if not path.exists():
        known = sorted(p.name for p in path.parent.iterdir() if p.name != "README.md")
        raise FileNotFoundError(f"no shipped data file {name!r}; shipped: {known}")
    return path


def marin_csv() -> Path:
    """The real Marin optimizer sweep (Wen et al. 2025): 271 runs, 4 optimizers, 39 diverged."""
    return shipped("marin_optimizer_sweep.csv")


def reference_jsonl() -> Path:
    """The reference sweep collected with collectors/plans/reference.toml (see the README):
    5 GPT sizes x 3 horizons x 2 batch sizes x AdamW/SGD/RMSprop x 9 LRs, as JSON lines."""
    return shipped("reference_sweep.jsonl.gz")


def dense_jsonl() -> Path:
    """Dense sweeps (LRs a factor 1.33 apart) of the reference sweep's configurations at
    24.9k, 55.8k, 333k and 1.77M parameters, all three optimizers; collected with
    collectors/plans/*dense*.toml (see the README), as JSON lines."""
    return shipped("dense_sweep.jsonl.gz")
