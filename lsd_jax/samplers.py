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

How `sample` draws (the fast path; `step_probs` + `categorical` stay the reference):
each step is written as a log-space kernel (`step_kernel`): log-weights of the "regular"
entries (the score plus a per-position constant, no exp/normalise/log round trip) and one
"special" entry (the stay/mask mass at the current token, from the regular total). It is
drawn by Gumbel-max over these logits (`draw`). For vocabularies above FLAT_VOCAB_MAX the
Gumbel-max is two-level: a draw over the log-sum-exp of blocks of BLOCK entries (plus the
special entry), then a gather of the chosen block and a draw inside it. By max-stability of
the Gumbel distribution this is the same categorical, exactly, with ~2 sqrt(V) instead of V
random numbers per position (V 50258: 454 instead of 50258); no [B, L, V] one-hot, rate or
noise tensor exists. Small vocabularies use the flat draw with the same uniforms as
`categorical`, so their samples match the probability-space reference up to float rounding.
Steps run in a `lax.fori_loop` whose trip count is traced and whose grid/phi are padded to
a capacity (a power of two, at least 1024), so NFE values up to 1024 share one compilation.
The batch is sharded over all devices when there are several (`lsd_jax.sharding`).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax import grids as grids_lib
from lsd_jax._compat import x64_enabled
from lsd_jax.graphs import Graph, id_row, is_token
from lsd_jax.names import READINGS, SAMPLERS
from lsd_jax.noise import Noise

Array = jnp.ndarray
ScoreFn = Callable[[Array, Array], Array]



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
    return jnp.where(is_token(x, log_score.shape[-1]), 0.0, scaled)


def normalize(probs: Array) -> Array:
    """Clips negative mass (large Euler steps) and renormalises over the last axis."""
    probs = jnp.maximum(probs, 0.0)
    return probs / probs.sum(-1, keepdims=True)


def euler_probs(graph: Graph, x: Array, score: Array, rate_dt: Array) -> Array:
    """Unnormalised Euler step: one-hot(x) + dt sigma(t) R[x, :] with R the reverse rate.

    x [B, L], score [B, L, dim] (linear), rate_dt [B] = (t_k - t_{k+1}) sigma(t_k).
    """
    rev = graph.reverse_rate(x, score) * rate_dt[:, None, None]
    return jnp.where(is_token(x, graph.dim), 1.0 + rev, rev)


def tweedie_probs(graph: Graph, x: Array, score: Array, dsigma: Array) -> Array:
    """Unnormalised Tweedie tau-leaping step (SEDD AnalyticPredictor); dsigma [B]."""
    return graph.staggered_score(score, dsigma[:, None]) * graph.transp_transition(x, dsigma[:, None])


def denoise_probs(graph: Graph, x: Array, score: Array, sigmabar: Array) -> Array:
    """Unnormalised final denoise from total noise sigmabar [B] to 0; never emits the mask."""
    probs = tweedie_probs(graph, x, score, sigmabar)
    if graph.is_absorbing:
        probs = jnp.where(id_row(graph.dim, graph.mask_id, probs.ndim), 0.0, probs)
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


# ------------------------------------------------------------------ log-space kernels
FLAT_VOCAB_MAX = 4096  # above this, `draw` uses the two-level Gumbel-max
MIN_CAPACITY = 1024  # grid capacity of the compiled loop: NFE <= this shares one compilation


class LogKernel(NamedTuple):
    """A one-step transition distribution in log space, per position [B, L].

    reg [B, L, V]: log-weights of the regular entries, up to the per-position `shift` [B, L]
    (-inf at entries that are not regular, the special entry included). special_idx [B, L]
    int32 is the one special entry; `special(log_total)` gives its log-weight from the
    log-sum-exp over the regular entries (shift included), so that a kernel whose stay mass
    depends on the total needs no extra pass over V.
    """

    reg: Array
    shift: Array
    special_idx: Array
    special: Callable[[Array], Array]


def _neg_inf(dtype) -> Array:
    return jnp.asarray(-jnp.inf, dtype)


def _log_clip(a: Array) -> Array:
    """log(max(a, 0)) without a NaN gradient path: -inf where a <= 0."""
    return jnp.where(a > 0, jnp.log(jnp.where(a > 0, a, 1.0)), -jnp.inf)


def step_kernel(graph: Graph, noise: Noise, sampler: str, x: Array, log_score: Array, t: Array,
                t_next: Array) -> LogKernel:
    """The kernel of `step_probs` (same distribution, clipping and normalisation included)
    in log space: x [B, L], log_score [B, L, dim] (phi applied), t, t_next [B]."""
    dim = graph.dim
    dt_ = log_score.dtype
    if sampler == "euler":
        c = (t - t_next) * noise.rate(t)  # [B]: mass per unit score
    elif sampler == "tweedie":
        dsigma = noise.total(t) - noise.total(t_next)
        c = jnp.expm1(dsigma)  # absorbing: e^{ds} (1 - e^{-ds}); uniform: see below
    else:
        check_choice("sampler", sampler, SAMPLERS)
    c = c[:, None]
    if graph.is_absorbing:
        # masked x: data y -> c s[y]; stay -> 1 - c sum_y s[y] (clipped). Unmasked x: stays.
        m = graph.mask_id
        masked = x == m
        reg = jnp.where(masked[..., None] & ~id_row(dim, m, log_score.ndim), log_score, _neg_inf(dt_))
        shift = jnp.broadcast_to(jnp.log(c), x.shape)

        def special(log_total):
            return jnp.where(masked, _log_clip(1.0 - jnp.exp(log_total)), 0.0)

        return LogKernel(reg, shift, jnp.where(masked, m, x), special)
    if sampler == "euler":
        # y != x -> c s[y] / d; stay -> 1 - c / d sum_{y != x} s[y] (clipped)
        reg = jnp.where(~is_token(x, dim), log_score, _neg_inf(dt_))
        shift = jnp.broadcast_to(jnp.log(c / dim), x.shape)
        return LogKernel(reg, shift, x, lambda log_total: _log_clip(1.0 - jnp.exp(log_total)))
    return _uniform_tweedie(dim, x, log_score, noise.total(t) - noise.total(t_next))


def _uniform_tweedie(dim: int, x: Array, log_score: Array, dsigma: Array) -> LogKernel:
    """Uniform graph, Tweedie from sigmabar to sigmabar - dsigma [B]: probs[y] =
    (s[y] / e^{-ds} + a S) trans[y] with a = (e^{-ds} - 1) / (d e^{-ds}), S = sum_y s[y],
    trans = the column of exp(ds Q). Not affine in the score: S takes its own pass."""
    d = float(dim)
    dsigma = dsigma[:, None]
    epow = jnp.exp(-dsigma)
    a = (epow - 1.0) / (d * epow)
    total = jnp.exp(jax.nn.logsumexp(log_score, axis=-1))  # [B, L]
    move = -jnp.expm1(-dsigma) / d
    stag = jnp.exp(log_score) / epow[..., None] + (a * total)[..., None]
    reg = jnp.where(~is_token(x, dim), _log_clip(stag) + jnp.log(move)[..., None], _neg_inf(log_score.dtype))
    s_x = jnp.exp(jnp.take_along_axis(log_score, x[..., None], -1)[..., 0])
    stay = _log_clip(s_x / epow + a * total) + jnp.log(1.0 - (d - 1.0) * move)
    return LogKernel(reg, jnp.zeros(x.shape, log_score.dtype), x, lambda log_total: stay)


def denoise_kernel(graph: Graph, x: Array, log_score: Array, sigmabar: Array) -> LogKernel:
    """The kernel of `denoise_probs` (normalised) in log space; sigmabar [B]."""
    if not graph.is_absorbing:
        return _uniform_tweedie(graph.dim, x, log_score, sigmabar)
    m = graph.mask_id
    masked = x == m
    reg = jnp.where(masked[..., None] & ~id_row(graph.dim, m, log_score.ndim), log_score, _neg_inf(log_score.dtype))
    shift = jnp.broadcast_to(jnp.log(jnp.expm1(sigmabar))[:, None], x.shape)
    special = lambda log_total: jnp.where(masked, -jnp.inf, 0.0)  # never the mask; unmasked: stays
    return LogKernel(reg, shift, jnp.where(masked, m, x), special)


def _gumbel(key: Array, shape: tuple, dtype) -> Array:
    u = jax.random.uniform(key, shape, dtype=dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)
    return -jnp.log(-jnp.log(u))


def block_size(v: int) -> int:
    """Block width of the two-level draw: the power of two nearest above sqrt(V), >= 128."""
    return max(128, 1 << max(0, math.ceil(math.log2(math.sqrt(v)))))


def _block_logsumexp(a: Array) -> Array:
    """log-sum-exp over the last axis, -inf for an all -inf row (no NaN)."""
    mx = jnp.max(a, axis=-1)
    safe = jnp.where(jnp.isfinite(mx), mx, 0.0)
    return jnp.log(jnp.sum(jnp.exp(a - safe[..., None]), axis=-1)) + safe


def draw(key: Array, kern: LogKernel, dtype=jnp.float32) -> Array:
    """One index per position from a LogKernel by Gumbel-max with uniforms in `dtype`.

    V <= FLAT_VOCAB_MAX: flat, the uniforms of `categorical(key, probs)` over [..., V].
    Larger V: two-level (block log-sum-exp, then a gather of the chosen block) -> int32.
    """
    reg, v = kern.reg, kern.reg.shape[-1]
    shift = kern.shift.astype(reg.dtype)
    lead = reg.shape[:-1]
    if v <= FLAT_VOCAB_MAX:
        log_total = jax.nn.logsumexp(reg, axis=-1) + shift
        sp = kern.special(log_total)
        logits = jnp.where(is_token(kern.special_idx, v), sp[..., None].astype(reg.dtype), reg + shift[..., None])
        return jnp.argmax(logits.astype(dtype) + _gumbel(key, reg.shape, dtype), axis=-1).astype(jnp.int32)
    k = block_size(v)
    nfull, rem = divmod(v, k)  # full blocks, then a tail block of rem entries (no padded copy of reg)
    nb = nfull + (rem > 0)
    main = reg[..., : nfull * k].reshape(lead + (nfull, k))
    lse = _block_logsumexp(main)  # [..., nfull]
    if rem:
        tail = reg[..., nfull * k:]
        lse = jnp.concatenate([lse, _block_logsumexp(tail)[..., None]], axis=-1)
    log_total = _block_logsumexp(lse) + shift
    sp = kern.special(log_total)
    top = jnp.concatenate([(lse + shift[..., None]).astype(dtype), sp[..., None].astype(dtype)], axis=-1)
    k1, k2 = jax.random.split(key)
    choice = jnp.argmax(top + _gumbel(k1, top.shape, dtype), axis=-1)  # nb: the special entry
    b = jnp.minimum(choice, nb - 1)
    inner = jnp.take_along_axis(main, jnp.minimum(b, nfull - 1)[..., None, None], axis=-2)[..., 0, :]  # [..., K]
    if rem:
        tail_k = jnp.concatenate([tail, jnp.full(lead + (k - rem,), -jnp.inf, reg.dtype)], axis=-1)
        inner = jnp.where((b == nfull)[..., None], tail_k, inner)
    j = jnp.argmax(inner.astype(dtype) + _gumbel(k2, inner.shape, dtype), axis=-1)
    return jnp.where(choice == nb, kern.special_idx, b * k + j).astype(jnp.int32)


class Samples(NamedTuple):
    tokens: Array  # [B, L] int32
    nfe: int  # predictor network calls (M)
    network_calls: int  # M + 1 with the final denoise
    path: Optional[Array] = None  # [M + 1, B, L] states at t_0..t_M when asked
    reveal: Optional[Array] = None  # [B, L] int32, absorbing graph, when asked: the first k with path[k] != mask (M + 1: never)


def as_pytree_fn(score_fn: ScoreFn) -> jax.tree_util.Partial:
    """Wraps a score function as a pytree (`jax.tree_util.Partial`) so it can be a traced
    argument of jit: network params inside it stay arguments, not baked-in constants, and
    the jit cache is keyed on the function (a plain closure: compile once per closure)."""
    return score_fn if isinstance(score_fn, jax.tree_util.Partial) else jax.tree_util.Partial(score_fn)


def capacity(m: int) -> int:
    """Grid capacity of the compiled loop for M steps: max(MIN_CAPACITY, next power of two)."""
    return max(MIN_CAPACITY, 1 << max(0, math.ceil(math.log2(max(m, 1)))))


@functools.partial(
    jax.jit,
    static_argnames=("graph", "noise", "sampler", "reading", "denoise", "draw_dtype", "return_path",
                     "return_reveal", "mesh"),
    donate_argnames=("x",),
)
def _run(score_fn, graph, noise, grid, phi, m, key, x, *, sampler, reading, denoise, draw_dtype, return_path,
         return_reveal=False, mesh=None):
    """grid [C + 1] and phi [C] padded to a capacity C >= m; m (traced int32) steps run."""
    from lsd_jax import sharding as sharding_lib

    bsz = x.shape[0]
    pin = (lambda a: sharding_lib.constrain_batch(a, mesh)) if mesh is not None else (lambda a: a)
    x = pin(x)

    def body(k, carry):
        x, path, reveal = carry
        t, t_next, phi_k = grid[k], grid[k + 1], phi[k]
        tb, tnb = jnp.full((bsz,), t), jnp.full((bsz,), t_next)
        log_score = apply_phi(x, score_fn(x, noise.total(tb)), phi_k, reading)
        x_new = pin(draw(jax.random.fold_in(key, k), step_kernel(graph, noise, sampler, x, log_score, tb, tnb),
                         draw_dtype))
        if return_path:
            path = jax.lax.dynamic_update_index_in_dim(path, x_new, k + 1, 0)
        if return_reveal:
            reveal = jnp.where((reveal > m) & (x_new != graph.mask_id), k + 1, reveal)
        return x_new, path, reveal

    path0 = jnp.zeros((grid.shape[0],) + x.shape, x.dtype).at[0].set(x) if return_path else None
    reveal0 = jnp.full(x.shape, m + 1, jnp.int32) if return_reveal else None
    x_last, path, reveal = jax.lax.fori_loop(0, m, body, (x, path0, reveal0))
    x_out = x_last
    if denoise:
        sb = noise.total(jnp.full((bsz,), grid[m]))
        x_out = pin(draw(jax.random.fold_in(key, m), denoise_kernel(graph, x_last, score_fn(x_last, sb), sb),
                         draw_dtype))
    return x_out, path, reveal


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
    return_reveal: bool = False,
    mesh="auto",
) -> Samples:
    """Runs the reverse CTMC on `grid` [M + 1] (t_0 = 1 ... t_M = eps) from the limit.

    phi [M] scales the score of each predictor step (default 1: the plain sampler).
    x64 draws categoricals in float64 (needs jax x64 enabled). Compiles once per
    (score_fn, graph, noise, options, shapes) for every M <= 1024: grid, phi, M and key
    are traced (return_path compiles per M: the path has M + 1 rows).
    return_reveal (absorbing graph): also the step after which each position was first
    unmasked, [B, L] int32 (M + 1: never), which with the final state encodes the whole path.
    mesh: "auto" (`sharding.default_mesh(batch_size)`: all devices when there are several
    and they divide the batch), None (one device) or a `jax.sharding.Mesh` with a "batch"
    axis. Params are replicated and the batch sharded; samples equal the unsharded run's
    for the same key.
    """
    from lsd_jax import sharding as sharding_lib
    from lsd_jax.teachers.base import check_score_fn

    check_score_fn(score_fn, graph, length)  # once per function: a named error before any compile
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
            "lsd_jax.enable_x64() or set JAX_ENABLE_X64=1 (CLI: --x64)"
        )
    if return_reveal and not graph.is_absorbing:
        raise ValueError("return_reveal needs the absorbing graph (uniform-graph tokens can move more than once)")
    draw_dtype = jnp.float64 if x64 else jnp.float32
    k_init, k_run = jax.random.split(key)
    if x_init is None:
        x_init = graph.sample_limit(k_init, (batch_size, length))
    elif tuple(x_init.shape) != (batch_size, length):
        raise ValueError(f"x_init must have shape [batch_size, length] = {[batch_size, length]}, got {x_init.shape}")
    fdt = jnp.float64 if x64_enabled() else jnp.float32
    cap = m if return_path else capacity(m)
    g = jnp.asarray(g, fdt)
    g_pad = jnp.concatenate([g, jnp.full((cap - m,), g[-1], fdt)])
    phi_pad = jnp.concatenate([phi.astype(fdt), jnp.ones((cap - m,), fdt)])
    x0 = jnp.array(x_init, jnp.int32, copy=True)  # donated to the loop: never the caller's buffer
    if isinstance(mesh, str):
        check_choice("mesh", mesh, ("auto",))
        mesh = sharding_lib.default_mesh(batch_size)
    fn = as_pytree_fn(score_fn)
    if mesh is not None:
        fn, g_pad, phi_pad, k_run = sharding_lib.replicate((fn, g_pad, phi_pad, k_run), mesh)
        x0 = sharding_lib.shard_batch(x0, mesh)
    tokens, path, reveal = _run(
        fn, graph, noise, g_pad, phi_pad, jnp.asarray(m, jnp.int32), k_run, x0,
        sampler=sampler, reading=reading, denoise=denoise, draw_dtype=draw_dtype, return_path=return_path,
        return_reveal=return_reveal, mesh=mesh,
    )
    return Samples(tokens, m, m + int(denoise), path, reveal)
