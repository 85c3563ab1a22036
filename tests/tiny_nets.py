"""Tiny real networks for the curvature tests: a GPT-style block and an MLP, both seeded."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn


class TinyGPT(nn.Module):
    """Pre-LN decoder: token + position embeddings, causal SDPA attention, GELU MLP, tied head.

    vocab 11, d 8, 1 block, 2 heads, context 6: 752 parameters, small enough for the exact
    Hessian (752 x 752) as an oracle.
    """

    def __init__(self, *, vocab: int = 11, d: int = 8, heads: int = 2, context: int = 6,
                 layers: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight  # tied embeddings

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, T, vocab)


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, C/H)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Next-token cross entropy (nats/token)."""
    idx, targets = batch
    logits = model(idx)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def token_batch(*, vocab: int = 11, context: int = 6, batch: int = 4, seed: int = 0):
    """A seeded batch of (inputs, next-token targets), shapes (B, T)."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, vocab, (batch, context + 1), generator=g)
    return seq[:, :-1], seq[:, 1:]


def mse_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return 0.5 * F.mse_loss(model(x), y)


class FullBatchModule(pl.LightningModule):
    """Any network trained by full-batch SGD (or Adam) on `loss_fn`."""

    def __init__(self, net: nn.Module, loss_fn, *, lr: float, optimizer: str = "sgd") -> None:
        super().__init__()
        self.net, self.loss_fn, self.lr, self.opt = net, loss_fn, lr, optimizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return self.loss_fn(self, batch)

    def configure_optimizers(self):
        if self.opt == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr)
