"""Baselines beside every learned sampler: temperature-matched Euler and the JYS grid.

temperature_matched: one global temperature on the score (reading "temperature": log s ->
    phi log s at every step, phi constant), chosen by bisection so the samples' unigram entropy
    matches a target (the teacher's): the control for any "temperature" reading of LSD's phi.
jys_grid: Jump Your Steps (Park et al., ICLR 2025): the M-step grid that minimises an upper
    bound on the KL between the exact reverse CTMC and the tau-leaping sampler, the sum over
    steps of KLUB(s -> t), computed with the model. Our estimate of one step's bound:
        KLUB(s -> t) = E int_t^s sum_{i, y} [R_s(x_s) - R_u(x_u) + R_u(x_u) log(R_u(x_u) / R_s(x_s))] du,
    R_u(x; i, y) = sigma(u) exp(move_logits(x, score(x, sigmabar(u))))[i, y] (the Euler rates of
    lsd_jax.solvers); the true process's rates are taken at its own state x_u and the step's at
    the frozen x_s (so reveals that already happened on the true path count: the compounding
    decoding error JYS bounds). (x_u, x_s) are drawn jointly by noising reference samples (the
    teacher's many-step samples) through x_u1, x_u2, x_u3 to x_s with fixed keys (the forward
    process's joint law = the reverse path's); the u-integral by 3-point Gauss-Legendre. Like JYS the
    grid is refined hierarchically: each interval's split point minimises the sum of the two
    halves' bounds (golden-section search in t), level by level; for M not a power of two the
    last level splits the intervals with the largest bound.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax.solvers.base import move_logits

GL_NODES = (-math.sqrt(3 / 5), 0.0, math.sqrt(3 / 5))  # 3-point Gauss-Legendre on [-1, 1] (python floats: weak)
GL_WEIGHTS = (5 / 9, 8 / 9, 5 / 9)


def klub_fn(score_fn, graph, noise, reference, key=None) -> Callable[[float, float], float]:
    """KLUB(s, t) for s > t (one step from s to t), averaged over the reference samples [B, L]."""
    ref = jnp.asarray(reference, jnp.int32)
    key = jax.random.PRNGKey(0) if key is None else key
    bsz = ref.shape[0]

    def log_rate(x, u):
        ub = jnp.full((bsz,), u)
        return jnp.log(noise.rate(ub))[:, None, None] + move_logits(graph, x, score_fn(x, noise.total(ub)))

    @jax.jit
    def klub(s, t):
        us = [0.5 * (s + t) + 0.5 * (s - t) * node for node in GL_NODES]  # ascending in u
        keys = jax.random.split(key, len(us) + 1)
        xs, x, prev = [], ref, jnp.zeros(())
        for k, u in zip(keys, list(us) + [s]):  # the true joint path: noise x0 -> x_u1 -> x_u2 -> x_u3 -> x_s
            x = graph.sample_transition(k, x, jnp.full((bsz,), noise.total(u) - prev))
            prev = noise.total(u)
            xs.append(x)
        lr_s = log_rate(xs[-1], s)
        total = 0.0
        for x_u, u, w in zip(xs[:-1], us, GL_WEIGHTS):
            lr_u = log_rate(x_u, u)
            r_s = jnp.exp(jnp.where(jnp.isfinite(lr_s), lr_s, -jnp.inf))
            r_u = jnp.exp(jnp.where(jnp.isfinite(lr_u), lr_u, -jnp.inf))
            both = jnp.isfinite(lr_u) & jnp.isfinite(lr_s)
            term = r_s - r_u + jnp.where(both, r_u * (lr_u - lr_s), 0.0)
            # a true jump the frozen step cannot make: absorbing, none (a revealed position has no
            # rate at x_u); uniform, a move back to x_s's own token: left out (it would make every
            # bound infinite; our reading where the paper's jump notation is silent)
            total = total + 0.5 * (s - t) * w * term.sum((1, 2)).mean()
        return total

    return lambda s, t: float(klub(jnp.asarray(s), jnp.asarray(t)))


def _golden(f: Callable[[float], float], a: float, b: float, iters: int) -> float:
    """Minimiser of f on (a, b) by golden-section search (a < b)."""
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return 0.5 * (a + b)


def jys_grid(score_fn, graph, noise, reference, m: int, eps: float, iters: int = 10, key=None) -> np.ndarray:
    """The JYS grid [M + 1] (1 -> eps) for the model `score_fn` on `graph`/`noise`; reference
    [B, L] are the model's own many-step samples."""
    if int(m) != m or m < 1:
        raise ValueError(f"number of steps (nfe) must be a positive integer, got {m!r}")
    klub = klub_fn(score_fn, graph, noise, reference, key)
    grid = [1.0, eps]

    def split(s, t):
        return _golden(lambda u: klub(s, u) + klub(u, t), t + 1e-6 * (s - t), s - 1e-6 * (s - t), iters)

    while 2 * (len(grid) - 1) <= m:  # full levels: split every interval
        new = [grid[0]]
        for s, t in zip(grid[:-1], grid[1:]):
            new += [split(s, t), t]
        grid = new
    while len(grid) - 1 < m:  # the rest: split the intervals with the largest bound
        bounds = [klub(s, t) for s, t in zip(grid[:-1], grid[1:])]
        i = int(np.argmax(bounds))
        grid.insert(i + 1, split(grid[i], grid[i + 1]))
    return np.asarray(grid, np.float64)


def temperature_matched(sample_entropy: Callable[[float], float], target: float, lo: float = 0.5, hi: float = 2.0,
                        iters: int = 12, tol: float = 1e-3) -> tuple[float, list]:
    """The global temperature phi with sample_entropy(phi) = target, by bisection (entropy falls
    as phi grows: phi > 1 sharpens). Returns (phi, history of (phi, entropy)). The bracket widens
    (x2) up to 4 times if the target is outside it."""
    history = []

    def h(phi):
        e = float(sample_entropy(phi))
        history.append((float(phi), e))
        return e

    for _ in range(4):
        if h(lo) < target:
            lo /= 2
        elif h(hi) > target:
            hi *= 2
        else:
            break
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        e = h(mid)
        if abs(e - target) < tol * max(1.0, abs(target)):
            return mid, history
        lo, hi = (mid, hi) if e > target else (lo, mid)
    return math.sqrt(lo * hi), history


def temperature_matched_euler(teacher, grid, target_entropy: float, *, seeds: Sequence[int] = (0,),
                              num_samples: int = 1024, sampler: str = "euler") -> tuple[float, list]:
    """temperature_matched on the teacher's samples (tuning seeds) with phi constant over steps."""
    from lsd_jax.eval.sampling import run_sampler
    from lsd_jax.eval.text_metrics import unigram_entropy

    m = int(np.asarray(grid).shape[0]) - 1

    def ent(phi: float) -> float:
        return float(np.mean([unigram_entropy(run_sampler(teacher, grid, sampler=sampler, phi=np.full(m, phi),
                                                          reading="temperature", seed=s, num_samples=num_samples),
                                              mode="pooled")
                              for s in seeds]))

    return temperature_matched(ent, target_entropy)


def optional_reference(teacher, nfe: int = 256, num_samples: int = 256, seed: int = 1,
                       eps: float = 1e-4) -> np.ndarray:
    """The teacher's own many-step samples (JYS's expectation and n-gram references)."""
    from lsd_jax import grids
    from lsd_jax.eval.sampling import run_sampler

    return run_sampler(teacher, grids.uniform(nfe, eps), seed=seed, num_samples=num_samples)


__all__ = ["jys_grid", "klub_fn", "optional_reference", "temperature_matched", "temperature_matched_euler"]
