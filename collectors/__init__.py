"""Collectors: PyTorch Lightning LR sweeps of small GPT-style models into a sweep store.

Modules (import what you need; this package imports nothing at import time):
`model` the GPT LightningModule · `data` byte tokenizer, corpus and data module · `optim`
optimizers and schedules · `plan` TOML sweep plans · `shapes` model sizes and factories ·
`run` one training run -> RunRecord · `callbacks` divergence and effective-LR callbacks ·
`backends` the local (sequential or multi-process) backend · `vectorized` K LRs in one
batched model · `work` and `ray_backend` the Ray backend · `hessian`, `spectrum` and
`sharpness` Hessian-vector products, eigenvalues, trace, density and the sharpness callback ·
`export` a sweep as JSON lines for shipping. See docs/collectors.md, docs/scale.md and
docs/hessian.md.
"""
