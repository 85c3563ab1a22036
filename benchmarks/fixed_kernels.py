"""Fix the CPU kernels that a fit's last bits depend on, so that a benchmark prints the same
figures on every x86-64 CPU with AVX2, with or without AVX-512.

NumPy picks SIMD kernels for the CPU it runs on when it is imported, and OpenBLAS a set of
kernels for that CPU; their results differ in the last bits between CPUs, and the sampler's
chains amplify them into another Monte Carlo draw of the same posterior (measured in
docs/model.md, "Fitting and diagnostics"). The main tables in docs/ were measured with
AVX2's kernels. Importing this module does nothing; `fix_kernels()` does the fixing."""

from __future__ import annotations

import os
import platform
import sys
import warnings

FIXED_KERNELS = {
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "OPENBLAS_CORETYPE": "Haswell",
}
"""NumPy's SIMD dispatch capped at x86-64-v3 (AVX2, FMA); OpenBLAS's Haswell (AVX2) kernels.
Naming a feature the CPU lacks is allowed: NumPy ignores it."""


def fix_kernels() -> None:
    """Run this script again, at once, with `FIXED_KERNELS` in its environment, unless every
    one is set already (a value the user set is kept). Call it first in `main()`: NumPy and
    OpenBLAS read these variables only when they are loaded. Does nothing on a CPU without
    AVX2 and FMA (OpenBLAS's Haswell kernels would not run there) or off x86-64."""
    if not has_avx2():
        return
    missing = {name: value for name, value in FIXED_KERNELS.items() if name not in os.environ}
    if missing:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
                  {**os.environ, **missing})


def has_avx2() -> bool:
    """Whether this is an x86-64 CPU with AVX2 and FMA, as NumPy detected it (the table that
    `numpy.show_runtime` reads; a NumPy without it gets a warning and the CPU's own kernels)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        warnings.warn("fixed_kernels: this NumPy does not say which SIMD features the CPU "
                      "has; running with the CPU's own kernels, so posterior figures may "
                      "differ from the documented ones by Monte Carlo noise", stacklevel=2)
        return False
    return bool(__cpu_features__.get("AVX2") and __cpu_features__.get("FMA3"))
