"""The sweep schema: one versioned record per training run, validated at the boundary.

A :class:`RunRecord` is what every part of bayeslr speaks: the collectors write it, the
importers build it from external tables, the store keeps one JSON file of it per run, and the
model reads the table made from many of them. Units are in each field's docstring; losses are
in nats per token, learning rates are peak values, token counts are totals over training.
"""

from __future__ import annotations

import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Union

from bayeslr.errors import SchemaError

SCHEMA_VERSION = 1
"""Version of the run-record layout; bump it when a field changes meaning or is removed."""


class DIMS:
    """Names of the dimensions used everywhere: xarray objects, PyMC coords, tables."""

    RUN = "run"
    STEP = "step"
    CONFIG = "config"
    OPTIMIZER = "optimizer"
    FAMILY = "family"
    POINT = "point"
    TARGET = "target"
    SAMPLE = "sample"
    EIGEN = "eigen"
    COVARIATE = "covariate"
    """Covariates of the LR law (n_params, tokens, batch_size, ...)."""
    TERM = "term"
    """Curvature terms of the LR law (n_params^2, tokens^2, n_params*tokens)."""
    OBSERVED = "observed_point"
    """Runs with an observed loss (not diverged), a subset of POINT."""
    SIDE = "side"
    """Side of a configuration's optimum in log LR: left (LR too low), right (too high)."""


KNOWN_OPTIMIZERS = (
    "adamw", "adam", "nadamw", "sgd", "rmsprop", "lion", "muon", "adafactor", "lamb",
    "lars", "adagrad", "soap", "shampoo", "sophia", "mars", "kron", "scion", "cautious",
)
"""Optimizer names a record may carry; the collectors train the first five."""

OPTIMIZER_ALIASES = {
    "adam_w": "adamw", "nadam": "nadamw", "sgdm": "sgd", "sgd_momentum": "sgd",
    "momentum": "sgd", "nesterov": "sgd", "rms_prop": "rmsprop",
}

KNOWN_SCHEDULES = ("constant", "cosine", "linear", "wsd", "unknown")


def normalize_optimizer(name: Any, *, where: str = "optimizer") -> str:
    """Lower-case an optimizer name, resolve aliases, and reject unknown ones."""
    if not isinstance(name, str) or not name.strip():
        raise SchemaError(f"{where}: expected an optimizer name, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    key = OPTIMIZER_ALIASES.get(key, key)
    if key not in KNOWN_OPTIMIZERS:
        raise SchemaError(
            f"{where}: unknown optimizer {name!r}; known: {', '.join(KNOWN_OPTIMIZERS)}"
        )
    return key


@dataclass(frozen=True)
class ModelShape:
    """The network a run trained."""

    n_params: float
    """Non-embedding parameter count N (the scaling-law N)."""
    arch: str = "gpt"
    """Architecture family, e.g. 'gpt', 'llama'; pooled hierarchically by the model."""
    n_params_total: float | None = None
    """All parameters, embeddings included."""
    d_model: int | None = None
    """Width: residual-stream dimension."""
    n_layers: int | None = None
    """Depth: number of transformer blocks."""
    n_heads: int | None = None
    """Attention heads per block."""
    d_ff: int | None = None
    """Hidden size of the MLP."""
    vocab_size: int | None = None
    """Tokenizer vocabulary size."""
    context: int | None = None
    """Maximum sequence length the model attends over, in tokens."""
    tied_embeddings: bool | None = None
    """Whether input and output embeddings share weights."""
    parameterization: str = "sp"
    """'sp' (standard) or 'mup' (maximal-update parameterization)."""

    def __post_init__(self) -> None:
        _canonical_numbers(self)
        _positive(self, "n_params", "n_params_total", "d_model", "n_layers", "n_heads",
                  "d_ff", "vocab_size", "context")
        if self.d_model and self.n_heads and self.d_model % self.n_heads:
            raise SchemaError(f"model.d_model={self.d_model} is not divisible by "
                              f"model.n_heads={self.n_heads}")
        if self.parameterization not in ("sp", "mup"):
            raise SchemaError(f"model.parameterization: expected 'sp' or 'mup', "
                              f"got {self.parameterization!r}")


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer and its settings; `lr` is the peak learning rate of the schedule."""

    name: str
    """Optimizer name, one of KNOWN_OPTIMIZERS (aliases such as 'sgdm' are resolved)."""
    lr: float
    """Peak learning rate (dimensionless step multiplier), > 0."""
    weight_decay: float | None = None
    """Decoupled (AdamW) or L2 weight decay coefficient."""
    beta1: float | None = None
    """Adam first-moment decay (also Lion's interpolation)."""
    beta2: float | None = None
    """Adam second-moment decay."""
    eps: float | None = None
    """Adam / RMSprop denominator epsilon."""
    momentum: float | None = None
    """SGD or RMSprop momentum."""
    nesterov: bool | None = None
    """Nesterov momentum (SGD)."""
    alpha: float | None = None
    """RMSprop squared-gradient smoothing constant."""
    max_grad_norm: float | None = None
    """Gradient clipping threshold on the global L2 norm; None = no clipping."""

    def __post_init__(self) -> None:
        _canonical_numbers(self)
        object.__setattr__(self, "name", normalize_optimizer(self.name, where="optimizer.name"))
        if not _finite(self.lr) or self.lr <= 0:
            raise SchemaError(f"optimizer.lr: expected a finite learning rate > 0, got {self.lr!r}")
        _nonnegative(self, "weight_decay", "eps", "momentum", "max_grad_norm")
        for name in ("beta1", "beta2", "alpha"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise SchemaError(f"optimizer.{name}: expected a value in [0, 1), got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How long and how wide the run trained."""

    tokens: float
    """Token horizon D: tokens seen over the whole run."""
    batch_size: int
    """Sequences per optimizer step."""
    seq_len: int | None = None
    """Tokens per sequence; batch_size * seq_len = tokens per step."""
    steps: int | None = None
    """Optimizer steps planned for the run."""
    schedule: str = "unknown"
    """LR schedule after warmup: constant, cosine, linear, wsd (warmup-stable-decay) or unknown."""
    warmup_steps: int | None = None
    """Linear warmup steps from 0 to the peak LR."""
    min_lr_ratio: float | None = None
    """Final LR as a fraction of the peak."""
    decay_fraction: float | None = None
    """WSD only: fraction of the steps spent in the final decay."""
    seed: int = 0
    """Seed of initialization and data order."""
    precision: str = "fp32"
    """Numeric precision of training: fp32, bf16, fp16, mixed ..."""
    trunk: str | None = None
    """WSD branching: id of the stable-phase run this cool-down branched from."""

    def __post_init__(self) -> None:
        _canonical_numbers(self)
        _positive(self, "tokens", "batch_size", "seq_len", "steps")
        _nonnegative(self, "warmup_steps", "min_lr_ratio", "decay_fraction")
        if self.schedule not in KNOWN_SCHEDULES:
            raise SchemaError(f"train.schedule: unknown schedule {self.schedule!r}; "
                              f"known: {', '.join(KNOWN_SCHEDULES)}")

    @property
    def batch_tokens(self) -> int | None:
        """Tokens per optimizer step, when the sequence length is known."""
        return self.batch_size * self.seq_len if self.seq_len else None


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; its hash is the run's id in the store."""

    model: ModelShape
    optimizer: OptimizerConfig
    train: TrainConfig
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Other settings that distinguish runs (JSON values); part of the identity."""

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    def run_id(self) -> str:
        """Stable 16-hex-digit hash of the whole configuration."""
        return _digest(self.to_dict())

    def config_id(self) -> str:
        """Hash of the configuration without LR, seed and WSD trunk: runs sharing it form one
        LR sweep (cool-downs branched off each LR's own trunk belong to the same sweep)."""
        data = self.to_dict()
        data["optimizer"].pop("lr")
        data["train"].pop("seed")
        data["train"].pop("trunk")
        return _digest(data)


@dataclass(frozen=True)
class LossCurve:
    """Loss over training at a modest resolution (nats/token)."""

    step: tuple[int, ...]
    train_loss: tuple[float | None, ...]
    val_loss: tuple[float | None, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.step)
        if len(self.train_loss) != n or (self.val_loss is not None and len(self.val_loss) != n):
            raise SchemaError("curve: step, train_loss and val_loss must have equal length")
        if any(b <= a for a, b in zip(self.step, self.step[1:], strict=False)):
            raise SchemaError("curve.step: steps must be strictly increasing")


@dataclass(frozen=True)
class RunOutcome:
    """What the run produced."""

    diverged: bool
    """True when the run blew up (NaN/inf, or loss far above its start); kept, not dropped."""
    final_train_loss: float | None = None
    """Training loss at the end (nats/token); None if diverged or unknown."""
    final_val_loss: float | None = None
    """Held-out loss at the end (nats/token); None if diverged or unknown."""
    diverged_step: int | None = None
    """Step at which divergence was detected."""
    curve: LossCurve | None = None
    """Loss curve over training."""
    wall_time_s: float | None = None
    """Wall-clock training time in seconds."""
    flops: float | None = None
    """Training compute estimate in FLOPs (6·N·D plus attention)."""
    device: str | None = None
    """Where it ran, e.g. 'cpu', 'cuda:NVIDIA H100'."""

    def __post_init__(self) -> None:
        _canonical_numbers(self)
        _nonnegative(self, "diverged_step", "wall_time_s", "flops")
        if not self.diverged and self.loss is None:
            raise SchemaError("outcome: a run that did not diverge needs final_val_loss or "
                              "final_train_loss")
        for name in ("final_train_loss", "final_val_loss"):
            value = getattr(self, name)
            if value is not None and not _finite(value):
                raise SchemaError(f"outcome.{name}: expected a finite loss or null, got {value!r}"
                                  " (mark the run diverged instead)")

    @property
    def loss(self) -> float | None:
        """The loss the model fits: validation loss where known, else training loss."""
        return self.final_val_loss if self.final_val_loss is not None else self.final_train_loss


@dataclass(frozen=True)
class Measurements:
    """Optional measurements: curvature and effective learning rate."""

    lambda_max: float | None = None
    """Top Hessian eigenvalue of the training loss at the end of training (1/LR units)."""
    top_eigenvalues: tuple[float, ...] | None = None
    """Largest Hessian eigenvalues, descending."""
    hessian_trace: float | None = None
    """Hutchinson estimate of the Hessian trace."""
    preconditioned_lambda_max: float | None = None
    """Top eigenvalue of P^-1 H (Adam: P from the second-moment state)."""
    effective_lr: float | None = None
    """Mean relative update size ||dW|| / ||W|| per step over the last fifth of training."""
    weight_norm: float | None = None
    """Global L2 norm of the weights at the end of training."""
    series: Mapping[str, Mapping[str, tuple]] = field(default_factory=dict)
    """Named time series, each a mapping with a 'step' tuple and equal-length value tuples,
    e.g. {'sharpness': {'step': (...), 'lambda_max': (...)}, 'effective_lr': {...}}."""

    def __post_init__(self) -> None:
        for name, table in self.series.items():
            if "step" not in table:
                raise SchemaError(f"measurements.series.{name}: missing 'step'")
            n = len(table["step"])
            for key, values in table.items():
                if len(values) != n:
                    raise SchemaError(f"measurements.series.{name}.{key}: length {len(values)} "
                                      f"!= {n} steps")


@dataclass(frozen=True)
class RunRecord:
    """One training run: configuration, outcome, measurements, provenance."""

    config: RunConfig
    outcome: RunOutcome
    measurements: Measurements = field(default_factory=Measurements)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Provenance and other columns that do not define the run (source, notes...)."""
    schema_version: int = SCHEMA_VERSION

    @property
    def run_id(self) -> str:
        return self.config.run_id()

    def to_dict(self) -> dict[str, Any]:
        data = _jsonable(asdict(self))
        data["run_id"] = self.run_id
        return data

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "record") -> RunRecord:
        """Validate a decoded JSON object; errors name `where` and the field."""
        if not isinstance(data, Mapping):
            raise SchemaError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise SchemaError(f"{where}: field 'schema_version' missing or not an integer")
        if version > SCHEMA_VERSION:
            raise SchemaError(f"{where}: written with schema version {version}, newer than this "
                              f"bayeslr reads ({SCHEMA_VERSION}); upgrade bayeslr")
        body = {k: v for k, v in data.items() if k != "run_id"}
        try:
            record = _build(cls, body, "")
        except SchemaError as err:
            raise SchemaError(f"{where}: {err}") from None
        stated = data.get("run_id")
        if stated is not None and stated != record.run_id:
            raise SchemaError(f"{where}: run_id {stated!r} does not match the configuration's "
                              f"hash {record.run_id!r} (file edited by hand?)")
        return record


def _build(cls: type, data: Any, path: str) -> Any:
    """Construct dataclass `cls` from plain JSON data, checking names and types."""
    if not isinstance(data, Mapping):
        raise SchemaError(f"{path or cls.__name__}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise SchemaError(f"{path or 'record'}: unknown field(s) {sorted(unknown)}")
    kwargs = {}
    for name, spec in known.items():
        where = f"{path}.{name}" if path else name
        if name not in data:
            if _required(spec):
                raise SchemaError(f"{where}: required field is missing")
            continue
        kwargs[name] = _coerce(hints[name], data[name], where)
    try:
        return cls(**kwargs)
    except SchemaError as err:
        parent = path.rpartition(".")[0]
        raise SchemaError(f"{parent + '.' if parent else ''}{err}") from None
    except (TypeError, ValueError) as err:
        raise SchemaError(f"{path or cls.__name__}: {err}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except SchemaError as err:
                errors.append(str(err))
        raise SchemaError(errors[0] if errors else f"{where}: unexpected null")
    if hint is Any:
        return value
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        return _build(hint, value, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise SchemaError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise SchemaError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise SchemaError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise SchemaError(f"{where}: expected a string, got {value!r}")
    if hint is tuple:  # bare `tuple` (measurement series): a JSON list of plain values
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"{where}: expected a list, got {type(value).__name__}")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict, typing.get_origin(Mapping[str, Any])):
        if not isinstance(value, Mapping):
            raise SchemaError(f"{where}: expected an object, got {type(value).__name__}")
        _, item = typing.get_args(hint) or (str, Any)
        return {str(k): _coerce(item, v, f"{where}.{k}") for k, v in value.items()}
    raise SchemaError(f"{where}: cannot read a value of type {hint!r}")  # pragma: no cover


def _canonical_numbers(obj: Any) -> None:
    """Store ints given for float fields as floats, so equal configs hash equally."""
    for name, hint in typing.get_type_hints(type(obj)).items():
        value = getattr(obj, name)
        if (hint in (float, float | None) and isinstance(value, int)
                and not isinstance(value, bool)):
            object.__setattr__(obj, name, float(value))


def _required(spec: Any) -> bool:
    return spec.default is MISSING and spec.default_factory is MISSING


def _jsonable(value: Any) -> Any:
    """Tuples to lists and non-finite floats to None, so json.dumps is strict and stable."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _digest(data: Mapping[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and not (_finite(value) and value > 0):
            raise SchemaError(f"{_section(obj)}.{name}: expected a finite number > 0, "
                              f"got {value!r}")


def _nonnegative(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and not (_finite(value) and value >= 0):
            raise SchemaError(f"{_section(obj)}.{name}: expected a finite number >= 0, "
                              f"got {value!r}")


def _section(obj: Any) -> str:
    return {ModelShape: "model", OptimizerConfig: "optimizer", TrainConfig: "train",
            RunOutcome: "outcome"}.get(type(obj), type(obj).__name__)
