"""A small GPT-style decoder as a LightningModule: the model every sweep trains by default.

Pre-LN blocks (LayerNorm -> causal self-attention -> residual, LayerNorm -> MLP -> residual),
attention through `torch.nn.functional.scaled_dot_product_attention`, a GELU or SwiGLU MLP,
learned position embeddings, tied or untied input/output embeddings.

Parameterizations:
- 'sp' (standard, GPT-2 style): N(0, init_std^2) weights, residual projections scaled by
  1/sqrt(2 * n_layers), attention logits scaled by 1/sqrt(d_head).
- 'mup' (maximal update, Yang et al. 2022): with width multiplier m = d_model / base_width,
  hidden matrices start with std init_std / sqrt(m), attention logits are scaled by 1/d_head
  (times sqrt(base d_head) so the base width matches 'sp'), and logits are multiplied by 1/m.
  Per-group LR multipliers (hidden Adam LR / m, SGD vector-like LR * m) are applied by
  `collectors.optim`, which reads the `kind` and `width_mult` of `parameter_groups()`.

Batches are `(x, y)` LongTensors of shape (B, T): y is x shifted by one token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayeslr.errors import PlanError

MLP_KINDS = ("gelu", "swiglu")
PARAMETERIZATIONS = ("sp", "mup")


@dataclass(frozen=True)
class GPTConfig:
    """Shape and parameterization of the decoder."""

    d_model: int = 64
    """Width: residual-stream dimension."""
    n_layers: int = 2
    """Depth: number of transformer blocks."""
    n_heads: int = 4
    """Attention heads per block; must divide d_model."""
    d_ff: int | None = None
    """MLP hidden size; default 4*d_model (GELU) or 8/3*d_model rounded up to 8 (SwiGLU)."""
    context: int = 128
    """Maximum sequence length in tokens (size of the position embedding)."""
    vocab_size: int = 256
    """Tokenizer vocabulary (256 for bytes)."""
    mlp: str = "gelu"
    """'gelu' or 'swiglu'."""
    tied_embeddings: bool = True
    """Whether the output projection shares the token-embedding matrix."""
    parameterization: str = "sp"
    """'sp' (standard) or 'mup' (maximal update)."""
    base_width: int = 64
    """muP only: the width at which 'mup' equals 'sp' (width multiplier = d_model/base_width)."""
    init_std: float = 0.02
    """Standard deviation of weight initialization at the base width."""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "context", "vocab_size", "base_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise PlanError(f"model.{name}: expected a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise PlanError(f"model: width d_model={self.d_model} is not divisible by "
                            f"n_heads={self.n_heads}; choose heads that divide the width")
        if self.d_ff is not None and (not isinstance(self.d_ff, int) or self.d_ff <= 0):
            raise PlanError(f"model.d_ff: expected a positive integer, got {self.d_ff!r}")
        if self.mlp not in MLP_KINDS:
            raise PlanError(f"model.mlp: unknown MLP {self.mlp!r}; known: {', '.join(MLP_KINDS)}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise PlanError(f"model.parameterization: unknown {self.parameterization!r}; "
                            f"known: {', '.join(PARAMETERIZATIONS)}")
        if not self.init_std > 0:
            raise PlanError(f"model.init_std: expected > 0, got {self.init_std!r}")

    @property
    def hidden(self) -> int:
        """The MLP hidden size actually used."""
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "swiglu":
            return 8 * math.ceil(8 * self.d_model / 3 / 8)
        return 4 * self.d_model

    @property
    def width_mult(self) -> float:
        """muP width multiplier m = d_model / base_width (1.0 under 'sp')."""
        return self.d_model / self.base_width if self.parameterization == "mup" else 1.0


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused QKV projection."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        d_head = cfg.d_model // cfg.n_heads
        if cfg.parameterization == "mup":  # 1/d_head, equal to 1/sqrt(d_head) at base width
            base_head = cfg.base_width / cfg.n_heads
            self.scale = math.sqrt(base_head) / d_head
        else:
            self.scale = 1.0 / math.sqrt(d_head)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape  # (B, T, C)
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)
                   for z in (q, k, v))  # (B, H, T, d_head)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    """GELU MLP (fc -> gelu -> proj) or SwiGLU (silu(gate) * up -> proj)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        width = 2 * cfg.hidden if self.swiglu else cfg.hidden
        self.fc = nn.Linear(cfg.d_model, width, bias=False)
        self.proj = nn.Linear(cfg.hidden, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)  # (B, T, hidden or 2*hidden)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            return self.proj(F.silu(gate) * up)
        return self.proj(F.gelu(h))


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(pl.LightningModule):
    """GPT-style decoder; `training_step` returns the mean next-token cross-entropy (nats).

    `optimizer` (an OptimizerConfig) and `schedule` (a collectors.optim.Schedule) set what
    `configure_optimizers` builds; without them it uses AdamW(lr=1e-3) at a constant LR.
    """

    def __init__(self, config: GPTConfig | None = None, *, optimizer: Any = None,
                 schedule: Any = None) -> None:
        super().__init__()
        self.config = cfg = config or GPTConfig()
        self.optimizer_config = optimizer
        self.schedule = schedule
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = None if cfg.tied_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size,
                                                               bias=False)
        self.logit_mult = 1.0 / cfg.width_mult
        self._init_weights()

    def _init_weights(self) -> None:
        cfg = self.config
        hidden_std = cfg.init_std / math.sqrt(cfg.width_mult)
        residual_std = hidden_std / math.sqrt(2 * cfg.n_layers)
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # LayerNorm weights stay 1, biases 0
            if name.startswith(("wte", "wpe", "head")):
                std = cfg.init_std
            else:
                std = residual_std if name.endswith("proj.weight") else hidden_std
            nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx: Tensor) -> Tensor:
        """Token ids (B, T) -> logits (B, T, vocab)."""
        t = idx.shape[1]
        if t > self.config.context:
            raise ValueError(f"sequence length {t} exceeds the model context "
                             f"{self.config.context}")
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        weight = self.wte.weight if self.head is None else self.head.weight
        return F.linear(x, weight) * self.logit_mult  # (B, T, vocab)

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Mean next-token cross-entropy of a batch (x, y), in nats per token."""
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.loss(batch)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("val_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        from collectors.optim import DEFAULT_OPTIMIZER, Schedule, configure_optimizers

        schedule = self.schedule or Schedule(kind="constant", total_steps=1)
        return configure_optimizers(self, self.optimizer_config or DEFAULT_OPTIMIZER, schedule)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Named groups for optimizers: kind 'matrix' (hidden weights) or 'vector'
        (embeddings, read-out, norms), with a weight-decay flag and the muP width multiplier."""
        groups: dict[str, dict[str, Any]] = {}
        for name, p in self.named_parameters():
            if name.startswith(("wte", "wpe", "head")):
                key, kind, decay = "embedding", "vector", True
            elif p.dim() < 2:
                key, kind, decay = "norm", "vector", False
            elif ".attn." in name:
                key, kind, decay = "attention", "matrix", True
            else:
                key, kind, decay = "mlp", "matrix", True
            group = groups.setdefault(key, {"name": key, "kind": kind, "decay": decay,
                                            "width_mult": self.config.width_mult, "params": []})
            group["params"].append(p)
        return list(groups.values())

    def num_params(self, *, non_embedding: bool = True) -> int:
        """Parameter count; non-embedding excludes token and position embeddings and the
        (tied or untied) output matrix, as in Kaplan et al. 2020."""
        total = sum(p.numel() for p in self.parameters())
        if not non_embedding:
            return total
        embed = self.wte.weight.numel() + self.wpe.weight.numel()
        if self.head is not None:
            embed += self.head.weight.numel()
        return total - embed

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 * (non-embedding params + read-out matmul) plus
        attention scores and values, 6 * n_layers * context * d_model (Kaplan et al. 2020)."""
        cfg = self.config
        matmul = self.num_params(non_embedding=True) + cfg.d_model * cfg.vocab_size
        return 6.0 * matmul + 6.0 * cfg.n_layers * cfg.context * cfg.d_model
