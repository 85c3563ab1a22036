"""benchmarks/fixed_kernels.py: a benchmark that calls fix_kernels() runs again with NumPy's
SIMD dispatch capped at AVX2 and OpenBLAS's Haswell kernels, and keeps what the user set."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_fixed_kernels() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fixed_kernels",
                                                  BENCHMARKS / "fixed_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.skipif(not load_fixed_kernels().has_avx2(),
                                reason="the kernels fixed are AVX2 ones")

SCRIPT = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from fixed_kernels import FIXED_KERNELS, fix_kernels
fix_kernels()
import numpy
from numpy._core._multiarray_umath import __cpu_features__
print(json.dumps({"env": {name: os.environ.get(name) for name in FIXED_KERNELS},
                  "avx512_dispatch": __cpu_features__["X86_V4"], "argv": sys.argv[1:]}))
"""


def run_script(tmp_path: Path, **env: str) -> dict:
    script = tmp_path / "bench.py"
    script.write_text(SCRIPT)
    clean = {k: v for k, v in os.environ.items()
             if k not in load_fixed_kernels().FIXED_KERNELS}
    out = subprocess.run([sys.executable, str(script), str(BENCHMARKS), "--x"],
                         env={**clean, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_benchmark_reruns_itself_with_the_fixed_kernels(tmp_path):
    seen = run_script(tmp_path)
    assert seen["env"] == {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
                           "OPENBLAS_CORETYPE": "Haswell"}
    assert seen["avx512_dispatch"] is False
    assert seen["argv"] == [str(BENCHMARKS), "--x"]


def test_a_value_the_user_set_is_kept(tmp_path):
    seen = run_script(tmp_path, OPENBLAS_CORETYPE="Zen")
    assert seen["env"]["OPENBLAS_CORETYPE"] == "Zen"
    assert seen["env"]["NPY_DISABLE_CPU_FEATURES"] == "X86_V4 AVX512_ICL AVX512_SPR"


def test_a_numpy_that_hides_its_cpu_features_leaves_the_kernels_alone(monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy._core._multiarray_umath", None)
    with pytest.warns(UserWarning, match="CPU's own kernels"):
        assert load_fixed_kernels().has_avx2() is False
