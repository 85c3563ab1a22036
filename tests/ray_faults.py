"""A model factory that kills its worker process once, mid-run (for the Ray reliability tests).

It lives in an importable module so Ray workers can unpickle it. The kill is real: the
process exits with os._exit while training, exactly like a worker lost to the OOM killer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bayeslr.schema import RunConfig
from collectors.shapes import gpt_factory


@dataclass(frozen=True)
class CrashOnce:
    """Build the default GPT; the first run with peak LR `lr` kills its process after
    `after_steps` forward passes. `marker` (a file path) records that the kill happened, so
    a retried run trains normally."""

    marker: str
    lr: float
    after_steps: int = 5

    def __call__(self, config: RunConfig):
        module = gpt_factory(config)
        if config.optimizer.lr == self.lr and not os.path.exists(self.marker):
            calls = {"n": 0}

            def count(_module, _inputs):
                calls["n"] += 1
                if calls["n"] == self.after_steps:
                    with open(self.marker, "x") as handle:  # exclusive: only one kill
                        handle.write(str(os.getpid()))
                    os._exit(3)

            module.register_forward_pre_hook(count)
        return module
