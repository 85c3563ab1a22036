"""`bayeslr predict / compare / report` on a real saved posterior: the CLI prints exactly the
numbers of the Python API, warns when extrapolating, and fails clearly on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bayeslr.answers import predict_lr
from bayeslr.cli import build_parser, main
from bayeslr.comparison import compare_optimizers
from bayeslr.decisions import DIVERGENCE_COST, loss_penalty, recommend
from bayeslr.posterior import Posterior
from tests.answers_support import FAR, INSIDE, small_fit_sweep

TARGET_ARGS = ["--params", "8e5", "--tokens", "1e8", "--batch-size", "32"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """`bayeslr fit` on the shared simulated sweep, written to a sweep directory."""
    from bayeslr.store import SweepStore

    root = tmp_path_factory.mktemp("cli")
    sweep = small_fit_sweep()
    SweepStore(root / "sweep").put_many(sweep.records)
    path = root / "posterior.nc"
    argv = ["fit", str(root / "sweep"), "-o", str(path), "--draws", "500", "--tune", "500",
            "--chains", "2", "--seed", "3", "--quiet", "--json"]
    assert main(argv) == 0
    return path


@pytest.fixture(scope="module")
def loaded(saved):
    return Posterior.load(saved)


def _json(capsys, argv):
    assert main(argv) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_fit_writes_a_posterior_and_reports_it(saved, loaded, tmp_path, capsys):
    assert loaded.optimizers == ("adamw", "sgd")
    assert loaded.info["draws"] == 500 and loaded.info["chains"] == 2
    assert main(["fit", str(saved.parent / "sweep"), "-o", str(tmp_path / "x.nc"),
                 "--optimizers", "rmsprop"]) == 1
    assert "present: adamw, sgd" in capsys.readouterr().err


def test_predict_json_equals_the_python_api(saved, loaded, capsys):
    data, err = _json(capsys, ["predict", str(saved), *TARGET_ARGS, "--optimizer", "adamw",
                               "--lr", "1e-3", "4e-3", "--seed", "3", "--json"])
    assert err == ""
    row = predict_lr(loaded, INSIDE, seed=3).iloc[0]
    assert data["eta_median"] == row["eta_median"]
    for mass in ("50", "90", "95"):
        assert data["intervals"][mass] == [row[f"eta_lo{mass}"], row[f"eta_hi{mass}"]]
    rec = recommend(loaded, INSIDE, seed=3).iloc[0]
    assert data["recommendation"]["lr"] == rec["lr"]
    assert data["recommendation"]["expected_penalty"] == rec["expected_penalty"]
    assert data["recommendation"]["divergence_cost"] == DIVERGENCE_COST
    pen = loss_penalty(loaded, INSIDE, [1e-3, 4e-3], seed=3)
    assert [p["expected_penalty"] for p in data["penalties"]] == list(pen["expected_penalty"])
    assert [p["p_too_high"] for p in data["penalties"]] == list(pen["p_too_high"])
    assert data["warnings"] == [] and data["extrapolation"] == 0


def test_predict_table_is_readable(saved, capsys):
    assert main(["predict", str(saved), *TARGET_ARGS, "--optimizer", "sgd", "--lr", "0.1"]) == 0
    out = capsys.readouterr().out
    for text in ("optimal peak LR eta*", "90% interval", "recommended LR", "P(diverge)",
                 "exp. penalty"):
        assert text in out


def test_predict_far_target_warns_on_stderr_and_in_json(saved, capsys):
    argv = ["predict", str(saved), "--params", str(FAR["n_params"]), "--tokens", "1e8",
            "--batch-size", "32", "--optimizer", "adamw", "--json"]
    data, err = _json(capsys, argv)
    assert "ExtrapolationWarning" in err and "extrapolating" in err
    assert data["extrapolation"] > 3
    assert len(data["warnings"]) == 1


def test_predict_bad_input_exits_with_a_clear_message(saved, tmp_path, capsys):
    assert main(["predict", str(saved), *TARGET_ARGS, "--optimizer", "rmsprop"]) == 1
    assert "unknown optimizer 'rmsprop'" in capsys.readouterr().err
    assert main(["predict", str(saved), *TARGET_ARGS, "--optimizer", "adamw",
                 "--arch", "llama"]) == 1
    assert "known: gpt" in capsys.readouterr().err
    assert main(["predict", str(saved), "--optimizer", "adamw"]) == 1
    assert "required" in capsys.readouterr().err
    garbage = tmp_path / "garbage.nc"
    garbage.write_bytes(b"not a netCDF file")
    assert main(["predict", str(garbage), *TARGET_ARGS, "--optimizer", "adamw"]) == 1
    assert "garbage.nc" in capsys.readouterr().err


def test_compare_json_equals_the_python_api(saved, loaded, capsys):
    data, _ = _json(capsys, ["compare", str(saved), *TARGET_ARGS, "--seed", "2", "--json"])
    target = {k: v for k, v in INSIDE.items() if k != "optimizer"}
    expected = compare_optimizers(loaded, target, seed=2).to_dict()
    assert data["contrasts"] == expected["contrasts"]
    assert data["at_target"] == expected["at_target"]
    assert {r["optimizer"] for r in data["exponents"]} == {"adamw", "sgd"}
    assert main(["compare", str(saved)]) == 0
    assert "P(exponent_a > exponent_b)" in capsys.readouterr().out


def test_report_writes_pngs_and_an_index(saved, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(saved), "-o", str(out), *TARGET_ARGS, "--optimizer", "adamw",
                 "--max-configs", "4"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"lr_curves.png", "eta_vs_n_params.png", "eta_vs_tokens.png",
            "optimizer_exponents.png", "sharpness_vs_lr.png", "index.md",
            "index.html"} <= names
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:4] == b"\x89PNG"
    index = (out / "index.md").read_text()
    assert "max R-hat" in index and "recommended LR" in index
    for name in names - {"index.md", "index.html"}:
        assert f"]({name})" in index


def test_help_matches_the_defaults():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    for name in ("predict", "compare"):
        assert f"(default {DIVERGENCE_COST})" in " ".join(sub[name].format_help().split())
    assert {"predict", "compare", "report"} <= set(sub)


def test_console_entry_point_runs(saved):
    result = subprocess.run([sys.executable, "-m", "bayeslr.cli", "predict", str(saved),
                             *TARGET_ARGS, "--optimizer", "adamw", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["eta_median"] > 0


def test_cli_reference_matches_the_real_help(monkeypatch):
    """docs/cli.md embeds `COLUMNS=100 bayeslr X --help` verbatim for fit and the answers
    and names every command the CLI offers."""
    from pathlib import Path

    monkeypatch.setenv("COLUMNS", "100")
    text = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    sub = build_parser()._subparsers._group_actions[0].choices
    for name in ("fit", "predict", "compare", "report"):
        assert sub[name].format_help().rstrip("\n") in text, f"docs/cli.md: stale {name} help"
    for name in sub:
        assert f"`bayeslr {name}" in text, f"docs/cli.md does not mention `bayeslr {name}`"
