"""Exact laws of solvers on tiny state spaces by enumeration (no sampling noise).

For a sequence space of dim^L states (e.g. V 3, L 3: 27 uniform-graph states), every
solver step is an exact [S, S] matrix built from the solver's own kernels (`solvers.probs`
of its LogKernel, multiplied over positions), composed over the grid. Used by the
convergence-order tests (tests/test_solvers.py) and the order benchmark.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax.solvers import kernel as K
from lsd_jax.solvers.first_hitting import FirstHitting
from lsd_jax.solvers.trapezoidal import Trapezoidal

Array = jnp.ndarray


def states(dim: int, length: int) -> np.ndarray:
    """All dim^length sequences [S, L] int32, in lexicographic order (index = base-dim number)."""
    return np.array(list(itertools.product(range(dim), repeat=length)), np.int32)


def joint(p: Array, xs: Array) -> Array:
    """Product over positions: p [N, L, V] per-position laws -> [N, S] law over sequences xs [S, L]."""
    return jnp.prod(p[:, jnp.arange(xs.shape[1]), xs], axis=-1)  # p[n, l, xs[s, l]] -> [N, S, L] -> [N, S]


def marginal(chain, graph, sigmabar: float, xs: np.ndarray) -> np.ndarray:
    """Exact forward marginal p_sigmabar over xs [S, L] of the chain's data law (float64 numpy)."""
    clean = states(chain.num_tokens, chain.length)
    p0 = np.exp(chain.log_prob(clean))
    # per position: T[a, y] = P(x_t = y | x_0 = a) = graph.transition(a, sigmabar)[y]
    tr = np.asarray(graph.transition(jnp.arange(chain.num_tokens), jnp.full((chain.num_tokens,), sigmabar)),
                    np.float64)  # [V, dim]
    like = np.prod(tr[clean[:, None, :], xs[None, :, :]], axis=-1)  # [S0, S]
    return p0 @ like


def step_matrix(solver, score_fn, graph, noise, xs: Array, t: Array, t_next: Array) -> Array:
    """The exact [S, S] transition matrix of one step of `solver` from t to t_next (scalars)."""
    n = xs.shape[0]
    tb, tnb = jnp.full((n,), t), jnp.full((n,), t_next)
    ls = score_fn(xs, noise.total(tb))
    if isinstance(solver, Trapezoidal):
        j1 = joint(K.probs(solver.stage1_kernel(graph, noise, xs, ls, tb, tnb)), xs)  # [S, S*]
        t_th = solver.t_theta(tb, tnb)
        ls_star = score_fn(xs, noise.total(t_th))  # at every y*
        xx, yy = jnp.repeat(xs, n, 0), jnp.tile(xs, (n, 1))  # all pairs (x, y*)
        k2 = solver.stage2_kernel(graph, noise, xx, yy, jnp.repeat(ls, n, 0), jnp.tile(ls_star, (n, 1, 1)),
                                  jnp.repeat(tb, n), jnp.repeat(tnb, n))
        j2 = joint(K.probs(k2), xs).reshape(n, n, n)  # [x, y*, x']
        return jnp.einsum("ay,ayb->ab", j1, j2)
    return joint(K.probs(solver.kernel(graph, noise, xs, ls, tb, tnb)), xs)


def law(solver, score_fn, graph, noise, grid, p_start: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Exact law over xs after running `solver` on grid [M + 1] from p_start [S] (no denoise)."""
    xs_j = jnp.asarray(xs)
    step = jax.jit(lambda t, s: step_matrix(solver, score_fn, graph, noise, xs_j, t, s))
    p = jnp.asarray(p_start)
    for k in range(len(grid) - 1):
        p = p @ step(grid[k], grid[k + 1])
    return np.asarray(p, np.float64)


def first_hitting_law(score_fn, graph, length: int, sigmabar: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Exact law of `FirstHitting` from all-mask: (clean states [S0, L], probabilities [S0]).

    Each step picks a masked position uniformly and draws it from the solver's kernel; the
    reveal time does not enter the law of the tokens (only the score's sigmabar, which the
    exact posterior does not depend on)."""
    fhs = FirstHitting()
    xs = states(graph.dim, length)
    idx = {tuple(r): i for i, r in enumerate(xs)}
    xs_j = jnp.asarray(xs)
    ls = score_fn(xs_j, jnp.full((xs.shape[0],), sigmabar))
    masked = xs == graph.mask_id
    n = masked.sum(1)
    mat = np.zeros((xs.shape[0], xs.shape[0]))
    for i in range(length):
        chosen = np.zeros_like(masked)
        chosen[:, i] = masked[:, i]
        pj = np.asarray(joint(K.probs(fhs.kernel(graph, xs_j, ls, jnp.asarray(chosen))), xs_j), np.float64)
        mat += np.where(masked[:, i:i + 1], pj / np.maximum(n, 1)[:, None], 0.0)
    mat[n == 0] = np.eye(xs.shape[0])[n == 0]
    p = np.zeros(xs.shape[0])
    p[idx[(graph.mask_id,) * length]] = 1.0
    for _ in range(length):
        p = p @ mat
    clean = ~masked.any(1)
    return xs[clean], p[clean]
