"""Spectra of a symmetric operator known only through matrix-vector products.

Pure functions over `matvec: (dim,) tensor -> (dim,) tensor` with explicit seeds and
keyword-only settings (optax style): power iteration (Rayleigh quotient, deflation for the
top k), Lanczos with full reorthogonalization (Ritz values at both ends of the spectrum),
Hutchinson's trace estimator and the spectral density by stochastic Lanczos quadrature
(Golub & Meurant; Ubaru, Chen & Saad 2017; Ghorbani et al. 2019; Yao et al. 2020).

Nothing here knows about models: `collectors.hessian` builds Hessian operators to feed them.
Random vectors are drawn on the CPU from a seeded generator and then moved, so a seed gives
the same numbers on every device; they take the operator's `dtype` and `device` attributes
(a HessianOperator has both) unless these are given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from bayeslr.errors import BayesLRError

MatVec = Callable[[Tensor], Tensor]


class HessianError(BayesLRError, ValueError):
    """A Hessian or its spectrum cannot be computed from the given inputs or settings."""


class NonFiniteLossError(HessianError):
    """The loss (or its gradient) is NaN or infinite where the Hessian was asked for."""


class PowerResult(NamedTuple):
    """Dominant eigenpair found by power iteration."""

    eigenvalue: float
    """Rayleigh quotient v'Av of the returned unit vector (NaN if the operator returned NaN)."""
    eigenvector: Tensor
    """Unit-norm eigenvector estimate, shape (dim,)."""
    num_iters: int
    """Matrix-vector products used."""
    converged: bool
    """Whether the residual |Av - eigenvalue v| fell to `tol` |eigenvalue|."""


class TopEigen(NamedTuple):
    """The k algebraically largest eigenpairs, descending."""

    eigenvalues: tuple[float, ...]
    eigenvectors: tuple[Tensor, ...]
    num_iters: int
    """Matrix-vector products used in total."""
    converged: tuple[bool, ...] = ()
    """Per eigenpair (same order): whether its residual bound was met within num_iters."""


class LanczosResult(NamedTuple):
    """Ritz values of a Lanczos run and their quadrature weights."""

    ritz_values: Tensor
    """Eigenvalues of the tridiagonal matrix T, ascending, float64 on the CPU, shape (m,)."""
    ritz_weights: Tensor
    """Squared first components of T's eigenvectors (sum to 1): Gauss quadrature weights."""
    ritz_vectors: Tensor | None
    """(m, dim) Ritz vectors when asked for (return_vectors=True), else None."""

    def top(self, k: int) -> tuple[float, ...]:
        """The k largest Ritz values, descending."""
        return tuple(self.ritz_values.flip(0)[:k].tolist())

    def bottom(self, k: int) -> tuple[float, ...]:
        """The k most negative (smallest) Ritz values, ascending."""
        return tuple(self.ritz_values[:k].tolist())


class TraceEstimate(NamedTuple):
    """Hutchinson's estimate of tr(A) with its Monte-Carlo standard error."""

    trace: float
    stderr: float
    num_probes: int


class SpectralDensity(NamedTuple):
    """Gaussian-broadened eigenvalue density; integrates to 1 over `grid`."""

    grid: Tensor
    """Eigenvalue axis, float64, shape (num_points,)."""
    density: Tensor
    """Density at each grid point (1 / eigenvalue units), float64."""
    nodes: Tensor
    """Ritz values of each Lanczos run, shape (num_runs, m)."""
    weights: Tensor
    """Quadrature weights of each node (each row sums to 1)."""
    sigma: float
    """Width of the Gaussian kernel, in eigenvalue units."""


def random_vector(dim: int, *, seed: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None, kind: str = "gaussian") -> Tensor:
    """A seeded random vector: 'gaussian' N(0, 1) or 'rademacher' (+-1) entries, shape (dim,)."""
    generator = torch.Generator().manual_seed(int(seed))
    if kind == "gaussian":
        v = torch.randn(dim, generator=generator, dtype=torch.float64)
    elif kind == "rademacher":
        v = torch.randint(0, 2, (dim,), generator=generator).double() * 2 - 1
    else:
        raise HessianError(f"random_vector: unknown kind {kind!r}; known: gaussian, rademacher")
    return v.to(dtype=dtype, device=device)


def power_iteration(matvec: MatVec, *, v0: Tensor, num_iters: int = 100, tol: float = 1e-4,
                    shift: float = 0.0) -> PowerResult:
    """Dominant (largest |lambda - shift|) eigenpair of a symmetric operator A.

    Iterates v <- (A - shift I) v / |(A - shift I) v| and stops once the residual of A's
    Rayleigh quotient theta = v'Av is small, |Av - theta v| <= tol |theta|, or after
    `num_iters` products. The residual bounds the error: some eigenvalue of A lies within
    |Av - theta v| of theta (and, with spectral gap g, within |Av - theta v|^2 / g). Unlike
    a test on the change of theta it cannot stop on a plateau (two eigenvalues of nearly
    equal size). A `shift` below the spectrum makes its top dominant; theta and the residual
    are A's own, so the shift changes what converges, not when it counts as converged.
    Stops, with a NaN eigenvalue, if the operator returns a non-finite vector.
    """
    _check_iters(num_iters, "power_iteration")
    v = _unit(v0, "power_iteration: v0")
    for i in range(1, num_iters + 1):
        w = matvec(v)
        theta = float(torch.dot(v, w))
        residual = float(torch.linalg.vector_norm(w - theta * v))
        if not (math.isfinite(theta) and math.isfinite(residual)):
            return PowerResult(math.nan, v, i, False)
        converged = residual <= tol * abs(theta)
        w = w - shift * v if shift else w
        norm = float(torch.linalg.vector_norm(w))
        if converged or i == num_iters or norm == 0.0:
            return PowerResult(theta, v, i, converged)
        v = w / norm
    raise AssertionError("unreachable")  # the loop returns at i == num_iters


def deflated(matvec: MatVec, vectors: Sequence[Tensor], *, shift: float = 0.0) -> MatVec:
    """v -> P (A - shift I) P v + shift v, P the projector off the span of orthonormal `vectors`.

    On the range of P this is A restricted there, while the found `vectors` become
    eigenvectors of eigenvalue `shift`; so power iteration (shifted by the same `shift`, from
    a start vector in the range of P) finds the next eigenpair of A, and the found directions
    stay annihilated by the shifted iteration instead of growing back from round-off.
    """
    if not vectors:
        return matvec
    basis = torch.stack(list(vectors))  # (j, dim)

    def project(v: Tensor) -> Tensor:
        return v - basis.T @ (basis @ v)

    def apply(v: Tensor) -> Tensor:
        u = project(v)
        w = project(matvec(u) - shift * u if shift else matvec(u))
        return w + shift * v if shift else w

    return apply


def top_eigenvalues(matvec: MatVec, *, k: int, v0: Sequence[Tensor], num_iters: int = 100,
                    tol: float = 1e-4) -> TopEigen:
    """The k algebraically largest eigenpairs by power iteration with deflation.

    `v0` gives one start vector per eigenpair (warm starts, or `random_vector`s); `tol` is
    power iteration's residual bound. When the dominant remaining eigenvalue (largest in
    magnitude) comes out negative, power iteration is rerun shifted by it, which makes the
    largest remaining eigenvalue dominant (slowly if it is close to the next one); `num_iters`
    applies to each run. A pair that did not converge keeps its last Rayleigh quotient (a
    lower bound on the eigenvalue it approaches) and is flagged in `converged`.
    """
    if k < 1 or len(v0) < k:
        raise HessianError(f"top_eigenvalues: need k >= 1 and k start vectors, got k={k} "
                           f"and {len(v0)} vectors")
    found: list[PowerResult] = []
    vectors: list[Tensor] = []
    used = 0
    for i in range(k):
        start = _orthonormalize(v0[i], vectors)  # stay off the found directions
        result = power_iteration(deflated(matvec, vectors), v0=start, num_iters=num_iters,
                                 tol=tol)
        used += result.num_iters
        if result.eigenvalue < 0:
            shift = result.eigenvalue
            result = power_iteration(deflated(matvec, vectors, shift=shift), v0=start,
                                     num_iters=num_iters, tol=tol, shift=shift)
            used += result.num_iters
        found.append(result)
        vectors.append(_orthonormalize(result.eigenvector, vectors))
    order = sorted(range(k), key=lambda j: -found[j].eigenvalue
                   if math.isfinite(found[j].eigenvalue) else math.inf)
    return TopEigen(tuple(found[j].eigenvalue for j in order), tuple(vectors[j] for j in order),
                    used, tuple(found[j].converged for j in order))


def lanczos(matvec: MatVec, *, dim: int, num_iters: int, seed: int, v0: Tensor | None = None,
            dtype: torch.dtype | None = None, device: torch.device | str | None = None,
            tol: float | None = None, top_k: int = 1,
            return_vectors: bool = False) -> LanczosResult:
    """Lanczos tridiagonalization with full reorthogonalization (Gram-Schmidt, twice).

    After m <= min(num_iters, dim) products, the Ritz values (eigenvalues of the m x m
    tridiagonal T) approximate both ends of the spectrum; the squared first components of
    T's eigenvectors are the Gauss-quadrature weights used by the spectral density. With
    `tol`, it stops as soon as the `top_k` largest Ritz values have residual bounds
    beta_m |y_m| <= tol |theta| (each lies within that distance of a true eigenvalue). Stops
    on breakdown (an invariant subspace). Memory: m vectors of length dim.
    """
    _check_iters(num_iters, "lanczos")
    m = min(num_iters, dim)
    dtype, device = _like(matvec, dtype, device)
    start = random_vector(dim, seed=seed, dtype=dtype, device=device) if v0 is None else v0
    basis = torch.zeros(m, dim, dtype=start.dtype, device=start.device)  # (m, dim)
    basis[0] = _unit(start, "lanczos: v0")
    alpha: list[float] = []
    beta: list[float] = []
    for j in range(m):
        w = matvec(basis[j])
        alpha.append(float(torch.dot(w, basis[j])))
        if not math.isfinite(alpha[-1]):
            raise NonFiniteLossError("lanczos: the operator returned a non-finite vector")
        for _ in range(2):  # full reorthogonalization; the second pass fixes cancellation
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        norm = float(torch.linalg.vector_norm(w))
        if (j + 1 == m or norm <= 1e-10 * max(abs(a) for a in alpha)
                or (tol is not None and _converged(alpha, beta, norm, tol, top_k))):
            break
        beta.append(norm)
        basis[j + 1] = w / norm
    values, vecs = torch.linalg.eigh(_tridiagonal(alpha, beta))  # ascending
    m = len(alpha)
    ritz = (basis[:m].T.double() @ vecs.to(basis.device)).T.to(basis.dtype) \
        if return_vectors else None
    return LanczosResult(values, vecs[0] ** 2, ritz)


def _tridiagonal(alpha: Sequence[float], beta: Sequence[float]) -> Tensor:
    tri = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if beta:
        off = torch.tensor(beta, dtype=torch.float64)
        tri += torch.diag(off, 1) + torch.diag(off, -1)
    return tri


def _converged(alpha: Sequence[float], beta: Sequence[float], residual: float, tol: float,
               top_k: int) -> bool:
    """Whether the top_k Ritz values have residual bounds within tol of their size."""
    if len(alpha) < top_k + 1:
        return False
    values, vecs = torch.linalg.eigh(_tridiagonal(alpha, beta))
    bounds = residual * vecs[-1, -top_k:].abs()
    return bool((bounds <= tol * values[-top_k:].abs()).all())


def hutchinson_trace(matvec: MatVec, *, dim: int, num_probes: int, seed: int,
                     dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> TraceEstimate:
    """Hutchinson's estimator tr(A) ~ mean of z'Az over Rademacher probes z.

    Probe i uses seed `seed + i`. The standard error is the sample standard deviation of
    z'Az over sqrt(num_probes) (NaN for one probe).
    """
    _check_iters(num_probes, "hutchinson_trace (num_probes)")
    dtype, device = _like(matvec, dtype, device)
    samples = torch.empty(num_probes, dtype=torch.float64)
    for i in range(num_probes):
        z = random_vector(dim, seed=seed + i, dtype=dtype, device=device, kind="rademacher")
        samples[i] = float(torch.dot(z, matvec(z)))
    stderr = float(samples.std() / math.sqrt(num_probes)) if num_probes > 1 else math.nan
    return TraceEstimate(float(samples.mean()), stderr, num_probes)


def spectral_density(matvec: MatVec, *, dim: int, num_runs: int = 1, num_iters: int = 80,
                     seed: int, num_points: int = 1000, sigma: float | None = None,
                     grid: Tensor | None = None, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> SpectralDensity:
    """Eigenvalue density by stochastic Lanczos quadrature, broadened by Gaussians.

    Each of `num_runs` Lanczos runs from a Gaussian start (seed `seed + r`) gives nodes
    theta_j (Ritz values) and weights tau_j (summing to 1); the density is
    phi(t) = mean over runs of sum_j tau_j N(t; theta_j, sigma^2). The default `sigma` is 1%
    of the nodes' range, and the default grid spans the nodes padded by 8 sigma, so the
    density integrates to 1 on it up to quadrature error.
    """
    _check_iters(num_runs, "spectral_density (num_runs)")
    runs = [lanczos(matvec, dim=dim, num_iters=num_iters, seed=seed + r, dtype=dtype,
                    device=device) for r in range(num_runs)]
    nodes = _stack_runs(runs, "ritz_values")  # (runs, m)
    weights = _stack_runs(runs, "ritz_weights")
    low, high = float(nodes.min()), float(nodes.max())
    width = sigma if sigma is not None else 0.01 * max(high - low, abs(high), 1e-12)
    if grid is None:
        grid = torch.linspace(low - 8 * width, high + 8 * width, num_points, dtype=torch.float64)
    grid = torch.as_tensor(grid, dtype=torch.float64)
    z = (grid[:, None, None] - nodes[None]) / width  # (points, runs, m)
    kernel = torch.exp(-0.5 * z**2) / (width * math.sqrt(2 * math.pi))
    density = (kernel * weights[None]).sum(-1).mean(-1)
    return SpectralDensity(grid, density, nodes, weights, width)


def _like(matvec: MatVec, dtype: torch.dtype | None,
          device: torch.device | str | None) -> tuple[torch.dtype, torch.device | str | None]:
    """Probe dtype and device: as given, else the operator's own (a HessianOperator has
    them), else float32 on the CPU."""
    dtype = dtype if dtype is not None else getattr(matvec, "dtype", torch.float32)
    return dtype, device if device is not None else getattr(matvec, "device", None)


def _stack_runs(runs: Sequence[LanczosResult], field: str) -> Tensor:
    """Stack runs; pad those that broke down early with zero-weight nodes."""
    m = max(len(r.ritz_values) for r in runs)
    rows = []
    for r in runs:
        row = getattr(r, field)
        fill = r.ritz_values[-1] if field == "ritz_values" else 0.0
        rows.append(torch.cat([row, torch.full((m - len(row),), float(fill),
                                               dtype=torch.float64)]))
    return torch.stack(rows)


def _orthonormalize(v: Tensor, basis: Sequence[Tensor]) -> Tensor:
    for b in basis:
        v = v - torch.dot(b, v) * b
    return v / torch.linalg.vector_norm(v).clamp_min(torch.finfo(v.dtype).tiny)


def _unit(v: Tensor, where: str) -> Tensor:
    if v.dim() != 1:
        raise HessianError(f"{where}: expected a flat vector, got shape {tuple(v.shape)}")
    norm = torch.linalg.vector_norm(v)
    if not torch.isfinite(norm) or norm == 0:
        raise HessianError(f"{where}: the start vector must be finite and non-zero")
    return v / norm


def _check_iters(n: int, where: str) -> None:
    if not isinstance(n, int) or n < 1:
        raise HessianError(f"{where}: expected a positive integer count, got {n!r}")
