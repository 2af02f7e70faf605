"""CTMC samplers for discrete diffusion: Euler, Tweedie tau-leaping, final denoise.

One home for each step: `step_probs` gives the one-step transition distribution that the
teacher, the LSD student, the benchmarks and the CLI all use; `sample` runs a whole
trajectory under `lax.scan`.

The score function interface (the seam between models and samplers):
    score_fn(x: int32 [B, L], sigmabar: float [B]) -> log concrete score [B, L, dim]
where entry [b, i, y] approximates log p_t(x with x^i = y) / p_t(x); the entry of the
current token is 0.

NFE convention: `nfe` = M, the number of predictor steps on a grid of M + 1 times; the
final denoise (on by default, as SEDD) is one more network call at t_M = eps for every
sampler alike, reported as `network_calls = M + 1`. It uses the raw score (no phi), so a
learned sampler gets no extra learnable step.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax import grids as grids_lib
from lsd_jax._compat import x64_enabled
from lsd_jax.graphs import Graph, _is
from lsd_jax.noise import Noise

Array = jnp.ndarray
ScoreFn = Callable[[Array, Array], Array]

SAMPLERS = ("euler", "tweedie")
READINGS = ("linear", "temperature")


def check_choice(field: str, value: str, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"{field} {value!r} is not supported; allowed: {', '.join(allowed)}")
    return value


def apply_phi(x: Array, log_score: Array, phi: Array, reading: str = "linear") -> Array:
    """Scales the score by the LSD coefficient phi [B] (or scalar) off the current token.

    linear: s[y] -> phi s[y] (the paper's phi * s); temperature: log s[y] -> phi log s[y]
    (the official code's reading). The current-token entry stays log 1 = 0.
    """
    phi = jnp.asarray(phi, log_score.dtype).reshape(jnp.shape(phi) + (1,) * (log_score.ndim - jnp.ndim(phi)))
    if reading == "linear":
        scaled = log_score + jnp.log(phi)
    elif reading == "temperature":
        scaled = log_score * phi
    else:
        check_choice("reading", reading, READINGS)
    return jnp.where(_is(x, log_score.shape[-1]), 0.0, scaled)


def normalize(probs: Array) -> Array:
    """Clips negative mass (large Euler steps) and renormalises over the last axis."""
    probs = jnp.maximum(probs, 0.0)
    return probs / probs.sum(-1, keepdims=True)


def euler_probs(graph: Graph, x: Array, score: Array, rate_dt: Array) -> Array:
    """Unnormalised Euler step: one-hot(x) + dt sigma(t) R[x, :] with R the reverse rate.

    x [B, L], score [B, L, dim] (linear), rate_dt [B] = (t_k - t_{k+1}) sigma(t_k).
    """
    rev = graph.reverse_rate(x, score) * rate_dt[:, None, None]
    return jnp.where(_is(x, graph.dim), 1.0 + rev, rev)


def tweedie_probs(graph: Graph, x: Array, score: Array, dsigma: Array) -> Array:
    """Unnormalised Tweedie tau-leaping step (SEDD AnalyticPredictor); dsigma [B]."""
    return graph.staggered_score(score, dsigma[:, None]) * graph.transp_transition(x, dsigma[:, None])


def denoise_probs(graph: Graph, x: Array, score: Array, sigmabar: Array) -> Array:
    """Unnormalised final denoise from total noise sigmabar [B] to 0; never emits the mask."""
    probs = tweedie_probs(graph, x, score, sigmabar)
    if graph.is_absorbing:
        probs = jnp.where(jnp.arange(graph.dim) == graph.mask_id, 0.0, probs)
    return probs


def step_probs(
    graph: Graph,
    noise: Noise,
    sampler: str,
    x: Array,
    log_score: Array,
    t: Array,
    t_next: Array,
) -> Array:
    """Normalised one-step transition distribution [B, L, dim] from t [B] to t_next [B].

    `log_score` is the (phi-scaled) score evaluated at sigmabar(t).
    """
    score = jnp.exp(log_score)
    if sampler == "euler":
        probs = euler_probs(graph, x, score, (t - t_next) * noise.rate(t))
    elif sampler == "tweedie":
        probs = tweedie_probs(graph, x, score, noise.total(t) - noise.total(t_next))
    else:
        check_choice("sampler", sampler, SAMPLERS)
    return normalize(probs)


def categorical(key: Array, probs: Array, dtype=jnp.float32) -> Array:
    """Draws one index per row of probs [..., V] by Gumbel-max in `dtype` -> int32 [...]."""
    tiny = jnp.finfo(dtype).tiny
    u = jax.random.uniform(key, probs.shape, dtype=dtype, minval=tiny, maxval=1.0)
    gumbel = -jnp.log(-jnp.log(u))
    return jnp.argmax(jnp.log(probs.astype(dtype)) + gumbel, axis=-1).astype(jnp.int32)


class Samples(NamedTuple):
    tokens: Array  # [B, L] int32
    nfe: int  # predictor network calls (M)
    network_calls: int  # M + 1 with the final denoise
    path: Optional[Array] = None  # [M + 1, B, L] states at t_0..t_M when asked


def as_pytree_fn(score_fn: ScoreFn) -> jax.tree_util.Partial:
    """Wraps a score function as a pytree (`jax.tree_util.Partial`) so it can be a traced
    argument of jit: network params inside it stay arguments, not baked-in constants, and
    the jit cache is keyed on the function (a plain closure: compile once per closure)."""
    return score_fn if isinstance(score_fn, jax.tree_util.Partial) else jax.tree_util.Partial(score_fn)


@functools.partial(
    jax.jit,
    static_argnames=("graph", "noise", "sampler", "reading", "denoise", "draw_dtype", "return_path"),
)
def _run(score_fn, graph, noise, grid, phi, key, x, *, sampler, reading, denoise, draw_dtype, return_path):
    bsz = x.shape[0]

    def body(x, inputs):
        k, t, t_next, phi_k = inputs
        tb, tnb = jnp.full((bsz,), t), jnp.full((bsz,), t_next)
        log_score = apply_phi(x, score_fn(x, noise.total(tb)), phi_k, reading)
        probs = step_probs(graph, noise, sampler, x, log_score, tb, tnb)
        x_new = categorical(jax.random.fold_in(key, k), probs, draw_dtype)
        return x_new, (x_new if return_path else None)

    m = grid.shape[0] - 1
    x_last, path = jax.lax.scan(body, x, (jnp.arange(m), grid[:-1], grid[1:], phi))
    x_out = x_last
    if denoise:
        sb = noise.total(jnp.full((bsz,), grid[-1]))
        probs = normalize(denoise_probs(graph, x_last, jnp.exp(score_fn(x_last, sb)), sb))
        x_out = categorical(jax.random.fold_in(key, m), probs, draw_dtype)
    if return_path:
        path = jnp.concatenate([x[None], path], axis=0)
    return x_out, path


def sample(
    score_fn: ScoreFn,
    graph: Graph,
    noise: Noise,
    grid,
    key: Array,
    batch_size: int,
    length: int,
    *,
    sampler: str = "euler",
    phi=None,
    reading: str = "linear",
    denoise: bool = True,
    x64: bool = False,
    x_init: Optional[Array] = None,
    return_path: bool = False,
) -> Samples:
    """Runs the reverse CTMC on `grid` [M + 1] (t_0 = 1 ... t_M = eps) from the limit.

    phi [M] scales the score of each predictor step (default 1: the plain sampler).
    x64 draws categoricals in float64 (needs jax x64 enabled). Compiles once per
    (score_fn, graph, noise, options, shapes): grid, phi and key are traced.
    """
    check_choice("sampler", sampler, SAMPLERS)
    check_choice("reading", reading, READINGS)
    g = grids_lib.validate(grid)
    m = g.shape[0] - 1
    if phi is None:
        phi = jnp.ones((m,))
    phi = jnp.asarray(phi)
    if phi.shape != (m,):
        raise ValueError(f"phi must have shape [M] = [{m}] for a grid of {m + 1} times, got {phi.shape}")
    if x64 and not x64_enabled():
        raise ValueError(
            "x64=True draws in float64 and needs jax x64: wrap the call in "
            "lsd_jax._compat.enable_x64() or set JAX_ENABLE_X64=1 (CLI: --x64)"
        )
    draw_dtype = jnp.float64 if x64 else jnp.float32
    k_init, k_run = jax.random.split(key)
    if x_init is None:
        x_init = graph.sample_limit(k_init, (batch_size, length))
    elif tuple(x_init.shape) != (batch_size, length):
        raise ValueError(f"x_init must have shape [batch_size, length] = {[batch_size, length]}, got {x_init.shape}")
    fdt = jnp.float64 if x64_enabled() else jnp.float32
    tokens, path = _run(
        as_pytree_fn(score_fn), graph, noise, jnp.asarray(g, fdt), phi.astype(fdt), k_run, jnp.asarray(x_init, jnp.int32),
        sampler=sampler, reading=reading, denoise=denoise, draw_dtype=draw_dtype, return_path=return_path,
    )
    return Samples(tokens, m, m + int(denoise), path)
