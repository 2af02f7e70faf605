"""Time grids: M-step grids t_0 = 1 > t_1 > ... > t_M = eps, as arrays of shape [M + 1].

A sampler with M steps moves from t_k to t_{k+1}; NFE (score-network calls of the
predictor) is M. Fixed families (uniform, power, cosine, log-SNR) and the LSD+
parameterisation from unconstrained logits.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax.names import GRID_FAMILIES

Array = jnp.ndarray


def _check_m(m: int) -> None:
    if int(m) != m or m < 1:
        raise ValueError(f"number of steps (nfe) must be a positive integer, got {m!r}")


def from_fractions(u: Array, eps: float) -> Array:
    """Maps fractions u [M+1] with u_0 = 0, u_M = 1 (increasing) to t = eps + (1 - eps)(1 - u)."""
    return eps + (1.0 - eps) * (1.0 - u)


def uniform(m: int, eps: float) -> Array:
    """linspace(1, eps, M + 1): SEDD's grid."""
    _check_m(m)
    return jnp.linspace(1.0, eps, m + 1)


def power(m: int, eps: float, p: float) -> Array:
    """t_k = 1 - (1 - eps) (k / M)^p: p > 1 takes small steps near t = 1, p < 1 near eps."""
    _check_m(m)
    if p <= 0:
        raise ValueError(f"power grid needs p > 0, got p={p}")
    return from_fractions((jnp.arange(m + 1, dtype=float) / m) ** p, eps)


def cosine(m: int, eps: float) -> Array:
    """t_k = eps + (1 - eps) cos(pi k / (2 M)): small steps near t = 1."""
    _check_m(m)
    return from_fractions(1.0 - jnp.cos(0.5 * math.pi * jnp.arange(m + 1, dtype=float) / m), eps)


def loglinear(m: int, eps: float, noise) -> Array:
    """Uniform in log sigmabar(t) between t = 1 and eps (a log-SNR-style grid)."""
    _check_m(m)
    lo, hi = float(noise.total(jnp.asarray(eps))), float(noise.total(jnp.asarray(1.0)))
    targets = np.exp(np.linspace(np.log(hi), np.log(lo), m + 1))
    # sigmabar is monotone: invert by bisection (host side, small).
    ts = []
    for target in targets:
        a, b = eps, 1.0
        for _ in range(80):
            mid = 0.5 * (a + b)
            if float(noise.total(jnp.asarray(mid))) < target:
                a = mid
            else:
                b = mid
        ts.append(0.5 * (a + b))
    ts[0], ts[-1] = 1.0, eps
    return jnp.asarray(ts)


def get_grid(name: str, m: int, eps: float, *, p: float = 2.0, noise=None) -> Array:
    """Grid by family name: uniform, power (param p), cosine, loglinear (needs noise)."""
    if name == "uniform":
        return uniform(m, eps)
    if name == "power":
        return power(m, eps, p)
    if name == "cosine":
        return cosine(m, eps)
    if name == "loglinear":
        if noise is None:
            raise ValueError("grid 'loglinear' needs the noise schedule")
        return loglinear(m, eps, noise)
    raise ValueError(f"grid {name!r} is not supported; allowed: {', '.join(GRID_FAMILIES)}")


def from_logits(logits: Array, eps: float) -> Array:
    """LSD+ parameterisation: step sizes kappa = (1 - eps) softmax(logits) [M] > 0.

    t_0 = 1, t_k = 1 - sum_{j<k} kappa_j, so t_M = eps exactly and t is strictly
    decreasing for any finite logits. Uniform logits give the uniform grid.
    """
    frac = jnp.cumsum(jax.nn.softmax(logits))
    u = jnp.concatenate([jnp.zeros((1,), frac.dtype), frac.at[-1].set(1.0)])
    return from_fractions(u, eps)


def to_logits(grid: Array, eps: float) -> Array:
    """Inverse of `from_logits` (up to an additive constant): log of the step sizes."""
    grid = jnp.asarray(grid)
    return jnp.log(-jnp.diff(grid) / (1.0 - eps))


def validate(grid, eps: float | None = None, name: str = "grid") -> np.ndarray:
    """Checks a grid is 1-D, starts at 1, strictly decreases and stays in (0, 1].

    Returns it as a numpy array; raises ValueError naming what is wrong.
    """
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or g.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D array of M + 1 >= 2 times, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError(f"{name} has non-finite entries: {g}")
    if abs(g[0] - 1.0) > 1e-6:
        raise ValueError(f"{name} must start at t = 1, got t_0 = {g[0]}")
    if np.any(np.diff(g) >= 0):
        k = int(np.argmax(np.diff(g) >= 0))
        raise ValueError(f"{name} must strictly decrease; t_{k} = {g[k]} <= t_{k + 1} = {g[k + 1]}")
    if g[-1] <= 0:
        raise ValueError(f"{name} must end above 0, got t_M = {g[-1]}")
    if eps is not None and abs(g[-1] - eps) > 1e-6 * max(1.0, eps):
        raise ValueError(f"{name} must end at eps = {eps}, got t_M = {g[-1]}")
    return g
