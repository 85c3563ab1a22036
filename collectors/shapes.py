"""Model sizes of a plan, and the factories that build a LightningModule for a run.

A factory is any callable `f(run_config: RunConfig) -> LightningModule`. The default,
`gpt_factory`, builds `collectors.model.GPT` from `run_config.model` and `run_config.extra`.
A user's factory (bring your own model) reads what it needs from the same RunConfig (for
example `run_config.model.d_model`) and must not depend on `run_config.model.n_params`: the
plan fills that in by building the module once on the meta device (no memory, no compute)
and counting its parameters.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from bayeslr.errors import PlanError, SchemaError
from bayeslr.schema import ModelShape, OptimizerConfig, RunConfig, TrainConfig
from collectors.model import GPT, GPTConfig
from collectors.optim import schedule_of

Factory = Callable[[RunConfig], Any]
"""f(run_config) -> LightningModule."""

VOCAB = 256


def gpt_config(config: RunConfig) -> GPTConfig:
    """The GPTConfig a run's ModelShape and extra settings describe."""
    m, extra = config.model, config.extra
    return GPTConfig(d_model=int(m.d_model), n_layers=int(m.n_layers), n_heads=int(m.n_heads),
                     d_ff=m.d_ff, context=int(m.context), vocab_size=int(m.vocab_size or VOCAB),
                     mlp=str(extra.get("mlp", "gelu")),
                     tied_embeddings=bool(m.tied_embeddings), parameterization=m.parameterization,
                     base_width=int(extra.get("base_width", 64)),
                     init_std=float(extra.get("init_std", 0.02)))


def gpt_factory(config: RunConfig) -> GPT:
    """The default factory: collectors.model.GPT with the run's optimizer and schedule."""
    return GPT(gpt_config(config), optimizer=config.optimizer,
               schedule=schedule_of(config.train))


def resolve_factory(name: str | None) -> Factory | None:
    """Import 'package.module:function'; None stays None (the default GPT)."""
    if name is None:
        return None
    module_name, _, attr = name.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as err:
        raise PlanError(f"model.factory {name!r}: cannot import ({err}); give "
                        "'package.module:function' importable from the working directory"
                        ) from None
    if not attr or not callable(obj):
        raise PlanError(f"model.factory {name!r}: expected 'package.module:function' naming a "
                        "callable f(run_config) -> LightningModule")
    return obj


def factory_name(factory: Factory) -> str:
    """'module:qualname' of a factory (recorded in the runs' extra)."""
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', '?')}"


def count_params(module: nn.Module) -> tuple[int, int]:
    """(non-embedding, total) parameters; modules may define `num_params(non_embedding=)`,
    else every nn.Embedding counts as embedding."""
    if hasattr(module, "num_params"):
        return (int(module.num_params(non_embedding=True)),
                int(module.num_params(non_embedding=False)))
    total = sum(p.numel() for p in module.parameters())
    embed = sum(p.numel() for m in module.modules() if isinstance(m, nn.Embedding)
                for p in m.parameters(recurse=False))
    return total - embed, total


def flops_per_token(module: nn.Module) -> float:
    """Training FLOPs per token: the module's `flops_per_token()` if defined, else 6 x all
    parameters."""
    if hasattr(module, "flops_per_token"):
        return float(module.flops_per_token())
    return 6.0 * count_params(module)[1]


def expand_shapes(model: Mapping[str, Any], factory: Factory | None
                  ) -> list[tuple[ModelShape, dict[str, Any]]]:
    """The plan's [model] section -> (ModelShape, extra settings) per size, params counted."""
    common = _common(model, custom=factory is not None)
    out = []
    for raw in _raw_shapes(model):
        cfg = GPTConfig(**raw, **{k: common[k] for k in ("context", "mlp", "tied_embeddings",
                                                         "parameterization", "base_width",
                                                         "init_std")})
        extra = {"mlp": cfg.mlp, "init_std": cfg.init_std}
        if cfg.parameterization == "mup":
            extra["base_width"] = cfg.base_width
        shape = ModelShape(n_params=1.0, arch=common["arch"], d_model=cfg.d_model,
                           n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_ff=cfg.hidden,
                           vocab_size=cfg.vocab_size, context=cfg.context,
                           tied_embeddings=cfg.tied_embeddings,
                           parameterization=cfg.parameterization)
        out.append((_counted(shape, extra, factory), extra))
    if not out:
        raise PlanError("[model]: the size grid is empty; give widths/depths/heads or shapes")
    return out


def _common(model: Mapping[str, Any], *, custom: bool) -> dict[str, Any]:
    arch = model.get("arch", "custom" if custom else "gpt")
    return {"context": model.get("context", 128), "mlp": model.get("mlp", "gelu"),
            "tied_embeddings": model.get("tied_embeddings", True),
            "parameterization": model.get("parameterization", "sp"),
            "base_width": model.get("base_width", 64), "init_std": model.get("init_std", 0.02),
            "arch": str(arch)}


def _raw_shapes(model: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Width/depth/heads dicts from `shapes = [...]` or the product widths x depths x heads."""
    if "shapes" in model:
        if any(k in model for k in ("widths", "depths", "heads")):
            raise PlanError("[model]: give either shapes or widths/depths/heads, not both")
        shapes = model["shapes"]
        if not isinstance(shapes, list):
            raise PlanError("model.shapes: expected a list of {d_model, n_layers, n_heads} tables")
        out = []
        for i, s in enumerate(shapes):
            unknown = set(s) - {"d_model", "n_layers", "n_heads", "d_ff"} if isinstance(
                s, Mapping) else {"?"}
            if unknown or "d_model" not in s or "n_layers" not in s:
                raise PlanError(f"model.shapes[{i}]: expected a table with d_model, n_layers, "
                                f"n_heads (or a global head_dim) and optional d_ff, got {s!r}")
            heads = s.get("n_heads", _heads_from_dim(model, s["d_model"]))
            out.append({"d_model": s["d_model"], "n_layers": s["n_layers"], "n_heads": heads,
                        "d_ff": s.get("d_ff", _d_ff(model, s["d_model"]))})
        return out
    widths, depths = _list(model, "widths", [64]), _list(model, "depths", [2])
    if "heads" in model and "head_dim" in model:
        raise PlanError("[model]: give either heads or head_dim, not both")
    out = []
    for width, depth in itertools.product(widths, depths):
        heads_list = (_list(model, "heads", [4]) if "head_dim" not in model
                      else [_heads_from_dim(model, width)])
        for heads in heads_list:
            out.append({"d_model": width, "n_layers": depth, "n_heads": heads,
                        "d_ff": _d_ff(model, width)})
    return out


def _list(model: Mapping[str, Any], key: str, default: list) -> list:
    values = model.get(key, default)
    values = values if isinstance(values, list) else [values]
    if not values:
        raise PlanError(f"model.{key}: the list is empty; give at least one value")
    return values


def _heads_from_dim(model: Mapping[str, Any], width: Any) -> int:
    head_dim = model.get("head_dim")
    if head_dim is None:
        return 4
    if not isinstance(width, int) or not isinstance(head_dim, int) or head_dim <= 0 \
            or width % head_dim:
        raise PlanError(f"model.head_dim={head_dim!r} does not divide width d_model={width!r}; "
                        "choose a head_dim that divides every width")
    return width // head_dim


def _d_ff(model: Mapping[str, Any], width: Any) -> int | None:
    if "d_ff" in model and "ff_mult" in model:
        raise PlanError("[model]: give either d_ff or ff_mult, not both")
    if "ff_mult" in model:
        mult = model["ff_mult"]
        if not isinstance(mult, (int, float)) or mult <= 0 or not isinstance(width, int):
            raise PlanError(f"model.ff_mult: expected a number > 0, got {mult!r}")
        return max(1, round(mult * width))
    return model.get("d_ff")


def _counted(shape: ModelShape, extra: dict[str, Any], factory: Factory | None) -> ModelShape:
    """Fill in n_params by building the module on the meta device."""
    probe = RunConfig(model=shape, optimizer=OptimizerConfig(name="adamw", lr=1e-3),
                      train=TrainConfig(tokens=1.0, batch_size=1, steps=1, schedule="constant"),
                      extra=extra)
    try:
        with torch.device("meta"):
            module = (factory or gpt_factory)(probe)
    except PlanError:
        raise
    except Exception as err:  # a user's factory may fail in any way; name it
        raise PlanError(f"model factory failed for d_model={shape.d_model}, n_layers="
                        f"{shape.n_layers}: {type(err).__name__}: {err}") from None
    non_embedding, total = count_params(module)
    try:
        return ModelShape(**{**vars(shape), "n_params": float(non_embedding),
                             "n_params_total": float(total)})
    except SchemaError as err:
        raise PlanError(f"[model]: {err}") from None
