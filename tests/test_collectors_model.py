"""The GPT, the byte corpus and the optimizer groups: shapes, counts, causality, splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayeslr.errors import PlanError
from bayeslr.schema import OptimizerConfig
from collectors.data import ByteTokenizer, WindowBatches, load_corpus
from collectors.model import GPT, GPTConfig
from collectors.optim import build_optimizer, parameter_groups


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_counts_match_the_formula(tied):
    d, layers, vocab, context = 32, 3, 256, 64
    model = GPT(GPTConfig(d_model=d, n_layers=layers, n_heads=4, context=context,
                          tied_embeddings=tied))
    per_block = 4 * d * d + 2 * 4 * d * d + 2 * 2 * d  # attention, GELU MLP, two LayerNorms
    non_embedding = layers * per_block + 2 * d  # + final LayerNorm
    embedding = vocab * d * (1 if tied else 2) + context * d
    assert model.num_params() == non_embedding
    assert model.num_params(non_embedding=False) == non_embedding + embedding
    assert sum(p.numel() for p in model.parameters()) == non_embedding + embedding


def test_swiglu_hidden_size_and_output_shape():
    cfg = GPTConfig(d_model=48, n_layers=1, n_heads=4, mlp="swiglu", context=16)
    assert cfg.hidden == 128  # 8/3 * 48 rounded up to a multiple of 8
    logits = GPT(cfg)(torch.randint(0, 256, (2, 16)))
    assert logits.shape == (2, 16, 256)


@pytest.mark.parametrize("parameterization", ["sp", "mup"])
def test_attention_is_causal(parameterization):
    torch.manual_seed(0)
    model = GPT(GPTConfig(d_model=32, n_layers=2, n_heads=4, context=16,
                          parameterization=parameterization, base_width=16)).eval()
    x = torch.randint(0, 256, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 256
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_initial_loss_is_near_uniform_over_bytes():
    torch.manual_seed(0)
    model = GPT(GPTConfig(d_model=32, n_layers=2, n_heads=4, context=32))
    x = torch.randint(0, 256, (4, 32))
    loss = model.loss((x, torch.roll(x, -1, dims=1)))
    assert abs(loss.item() - np.log(256)) < 0.05


def test_mup_scales_hidden_adam_lr_by_width_and_sgd_vector_lr():
    model = GPT(GPTConfig(d_model=64, n_layers=1, n_heads=4, parameterization="mup",
                          base_width=16))
    groups = {g["name"]: g for g in parameter_groups(model)}
    assert groups["mlp"]["kind"] == "matrix" and groups["embedding"]["kind"] == "vector"
    adam = build_optimizer(parameter_groups(model), OptimizerConfig(name="adamw", lr=1e-2))
    lrs = {g["name"]: g["lr"] for g in adam.param_groups}
    assert lrs["mlp"] == pytest.approx(1e-2 / 4) and lrs["embedding"] == pytest.approx(1e-2)
    decay = {g["name"]: g["weight_decay"] for g in adam.param_groups}
    assert decay["norm"] == 0.0 and decay["mlp"] > 0
    sgd = build_optimizer(parameter_groups(model), OptimizerConfig(name="sgd", lr=0.1,
                                                                   momentum=0.9))
    lrs = {g["name"]: g["lr"] for g in sgd.param_groups}
    assert lrs["mlp"] == pytest.approx(0.1) and lrs["norm"] == pytest.approx(0.4)
    sp = GPT(GPTConfig(d_model=64, n_layers=1, n_heads=4))
    assert {g["lr"] for g in build_optimizer(parameter_groups(sp), OptimizerConfig(
        name="rmsprop", lr=1e-3)).param_groups} == {1e-3}


def test_bad_shapes_raise_plan_errors():
    with pytest.raises(PlanError, match="not divisible"):
        GPTConfig(d_model=30, n_heads=4)
    with pytest.raises(PlanError, match="unknown MLP"):
        GPTConfig(mlp="relu")


def test_bundled_corpus_split_is_disjoint_and_stable():
    a, b = load_corpus(), load_corpus("shakespeare")
    assert a.sha256 == b.sha256 and np.array_equal(a.val, b.val)
    assert len(a.train) > 4_000_000 and 0.03 < len(a.val) / len(a.train) < 0.07
    text = ByteTokenizer().decode(a.train[:2000])
    assert "ACT I" in text or "SCENE" in text


def test_directory_corpus_and_unreadable_paths(tmp_path):
    (tmp_path / "a.txt").write_text("alpha " * 2000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("beta " * 2000)
    (tmp_path / ".hidden").write_text("never " * 2000)
    corpus = load_corpus(tmp_path, val_fraction=0.1)
    text = ByteTokenizer().decode(np.concatenate([corpus.train, corpus.val]))
    assert "alpha" in text and "beta" in text and "never" not in text
    with pytest.raises(PlanError, match="cannot read"):
        load_corpus(tmp_path / "missing.txt")


def test_batch_k_does_not_depend_on_run_length():
    tokens = np.frombuffer(b"abcdefghij" * 500, dtype=np.uint8)
    short = WindowBatches(tokens, batch_size=4, seq_len=8, steps=10, seed=3)
    long = WindowBatches(tokens, batch_size=4, seq_len=8, steps=2000, seed=3)
    resumed = WindowBatches(tokens, batch_size=4, seq_len=8, steps=5, seed=3, start_step=5)
    for k in (0, 7):
        assert torch.equal(short[k][0], long[k][0])
    assert torch.equal(resumed[2][0], short[7][0])
    x, y = short[0]
    assert torch.equal(x[:, 1:], y[:, :-1])
    other = WindowBatches(tokens, batch_size=4, seq_len=8, steps=10, seed=4)
    assert not torch.equal(other[0][0], short[0][0])
