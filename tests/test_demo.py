"""`bayeslr demo`, the main job, end to end: real training, real sampling, real files."""

import re

from bayeslr.cli import main
from bayeslr.commands.demo import demo_plan_path
from bayeslr.posterior import Posterior
from bayeslr.store import SweepStore
from collectors.backends import collect
from collectors.plan import load_plan


def test_demo_collects_fits_and_predicts_a_larger_model(tmp_path, capsys):
    into = tmp_path / "demo"
    assert main(["demo", "--into", str(into), "--draws", "150", "--quiet"]) == 0
    out = capsys.readouterr().out

    plan = load_plan(demo_plan_path())
    store = SweepStore(into, create=False)
    assert len(store) == len(plan.specs) == 21
    frame = store.to_frame()
    assert frame["diverged"].any() and not frame["diverged"].all()

    posterior = Posterior.load(into / "posterior.nc")
    assert posterior.features.n_configs == 3
    assert "target: N=7.86e+05 (width 128, depth 4)" in out
    median = float(re.search(r"median ([0-9.e+-]+)", out).group(1))
    lo, hi = map(float, re.search(r"90% interval\s+\[([0-9.e+-]+), ([0-9.e+-]+)\]", out).groups())
    assert lo < median < hi
    assert frame["lr"].min() < median < frame["lr"].max()

    again = collect(plan, into, quiet=True)
    assert (again.done, again.skipped) == (0, 21)
