"""Command-line options shared by the answer commands: the target and the posterior file."""

from __future__ import annotations

import argparse
import warnings
from typing import Any


def add_posterior_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("posterior", help="posterior file written by `bayeslr fit` (netCDF)")


def add_target_arguments(parser: argparse.ArgumentParser, *, optimizer: bool = True) -> None:
    """--params/--width/--depth/--heads, --tokens, --batch-size, --optimizer, --arch, ..."""
    group = parser.add_argument_group("target (the model you are about to train)")
    group.add_argument("--params", type=float, metavar="N",
                       help="non-embedding parameters, e.g. 1.3e9 (or give --width and --depth)")
    group.add_argument("--width", type=float, metavar="WIDTH", help="d_model (residual width)")
    group.add_argument("--depth", type=float, metavar="LAYERS", help="number of transformer blocks")
    group.add_argument("--heads", type=float, metavar="HEADS", help="attention heads per block")
    group.add_argument("--tokens", type=float, metavar="TOKENS",
                       help="training tokens, e.g. 2.6e10")
    group.add_argument("--batch-size", type=float, metavar="B",
                       help="sequences per optimizer step, e.g. 512")
    group.add_argument("--seq-len", type=float, metavar="LEN", help="tokens per sequence")
    if optimizer:
        group.add_argument("--optimizer", metavar="NAME",
                           help="optimizer, e.g. adamw (one the posterior knows)")
    group.add_argument("--arch", metavar="FAMILY",
                       help="architecture family (default: the posterior's only one)")


def target_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The target as a dict of given options (None when no target option was given)."""
    names = {"params": "n_params", "width": "d_model", "depth": "n_layers", "heads": "n_heads",
             "tokens": "tokens", "batch_size": "batch_size", "seq_len": "seq_len",
             "optimizer": "optimizer", "arch": "arch"}
    target = {key: getattr(args, name) for name, key in names.items()
              if getattr(args, name, None) is not None}
    return target or None


def load_posterior(path: str) -> Any:
    from bayeslr.posterior import Posterior

    return Posterior.load(path)


class WarningLog:
    """Collect warnings raised by an answer, to print them on stderr and put them in JSON."""

    def __enter__(self) -> list[str]:
        self._catch = warnings.catch_warnings(record=True)
        self._records = self._catch.__enter__()
        warnings.simplefilter("always")
        self.messages: list[str] = []
        return self.messages

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(*exc)
        seen = set()
        for record in self._records:
            text = f"{record.category.__name__}: {record.message}"
            if text not in seen:
                seen.add(text)
                self.messages.append(text)
