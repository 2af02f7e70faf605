"""One-step kernels in log space (`LogKernel`), their normalised probabilities, and the draw.

Every step of every solver is written once, as a LogKernel per position [B, L]: log-weights
of the "regular" entries (a move to token y) and one "special" entry (the stay / mask mass at
the current token) given by a function of the regular log-total. The distillation loss uses
`probs(kernel)` (normalised over V, differentiable); sampling uses `draw(key, kernel)`. There
is no second formula in probability space.

`draw` is Gumbel-max: flat for V <= FLAT_VOCAB_MAX (the uniforms of `categorical`), else
two-level: a draw over the log-sum-exp of blocks of `block_size(V)` entries (plus the special
entry), then a draw inside the chosen block. By max-stability of the Gumbel law this is the
same categorical, exactly, with ~2 sqrt(V) instead of V random numbers per position.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from lsd_jax.graphs import is_token

Array = jnp.ndarray

FLAT_VOCAB_MAX = 4096  # above this, `draw` uses the two-level Gumbel-max


class LogKernel(NamedTuple):
    """A one-step transition distribution in log space, per position [B, L].

    reg [B, L, V]: log-weights of the regular entries, up to the per-position `shift` [B, L]
    (-inf at entries that are not regular, the special entry included). special_idx [B, L]
    int32 is the one special entry; `special(log_total)` gives its log-weight from the
    log-sum-exp over the regular entries (shift included), so a kernel whose stay mass
    depends on the total needs no extra pass over V.
    """

    reg: Array
    shift: Array
    special_idx: Array
    special: Callable[[Array], Array]


def log_clip(a: Array) -> Array:
    """log(max(a, 0)) without a NaN gradient path: -inf where a <= 0."""
    return jnp.where(a > 0, jnp.log(jnp.where(a > 0, a, 1.0)), -jnp.inf)


def stay_euler(log_total: Array) -> Array:
    """Categorical (Euler) stay: log(1 - total), clipped at 0 (large steps)."""
    return log_clip(1.0 - jnp.exp(log_total))


def stay_first_jump(log_total: Array) -> Array:
    """First-jump stay for total rate mass T = exp(log_total): P(stay) = e^-T and moves in
    proportion to their rates, i.e. stay weight T / expm1(T) against move weights summing to T.
    T = 0 (nothing can move): log 1 = 0."""
    total = jnp.exp(log_total)
    safe = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, log_total - jnp.log(jnp.expm1(safe)), 0.0)


def logsumexp0(a: Array, axis: int = -1) -> Array:
    """log-sum-exp over `axis`, -inf for an all -inf row (no NaN, no NaN gradient)."""
    mx = jax.lax.stop_gradient(jnp.max(a, axis=axis, keepdims=True))
    safe = jnp.where(jnp.isfinite(mx), mx, 0.0)
    total = jnp.sum(jnp.exp(a - safe), axis=axis, keepdims=True)
    out = jnp.where(total > 0, jnp.log(jnp.where(total > 0, total, 1.0)) + safe, -jnp.inf)
    return jnp.squeeze(out, axis)


def logits(kern: LogKernel) -> Array:
    """Full log-weights [B, L, V] (unnormalised): shifted regular entries and the special one."""
    shift = kern.shift.astype(kern.reg.dtype)
    log_total = logsumexp0(kern.reg) + shift
    sp = kern.special(log_total).astype(kern.reg.dtype)
    return jnp.where(is_token(kern.special_idx, kern.reg.shape[-1]), sp[..., None], kern.reg + shift[..., None])


def probs(kern: LogKernel) -> Array:
    """Normalised probabilities [B, L, V] of the kernel (what the distillation loss compares)."""
    return jax.nn.softmax(logits(kern), axis=-1)


def categorical(key: Array, p: Array, dtype=jnp.float32) -> Array:
    """Reference draw: one index per row of probabilities p [..., V] by Gumbel-max -> int32."""
    return jnp.argmax(jnp.log(p.astype(dtype)) + gumbel(key, p.shape, dtype), axis=-1).astype(jnp.int32)


def gumbel(key: Array, shape: tuple, dtype) -> Array:
    """Gumbel noise -log(E), E ~ Exp(1), resolved finely where it matters: at small E.

    The textbook -log(-log(u)) with one float32 uniform u = j 2^-23 rounds E = -log(u) up to
    the grid near u = 1, so G is capped near 15.9 and an entry whose odds against the rest are
    S loses a fraction ~ S 2^-24 of its probability (Zheng et al. 2025): 1.2% at S = 2e5, all
    of it at S = 1e9 (benchmarks/zipf_draw.py). Here E = -log1p(-w) with w = (j + v) 2^-23
    built from two uniforms of `dtype`, so near E = 0 the grid is 2^-46 (float32) and the loss
    is ~ S 2^-47: negligible for any V x step size in use. float64 keeps one 52-bit uniform."""
    dtype = jnp.dtype(dtype)
    tiny = jnp.finfo(dtype).tiny
    if dtype == jnp.float64:
        u = jax.random.uniform(key, shape, dtype=dtype, minval=tiny, maxval=1.0)
        return -jnp.log(-jnp.log(u))
    k1, k2 = jax.random.split(key)
    return gumbel_from_uniforms(jax.random.uniform(k1, shape, dtype=dtype), jax.random.uniform(k2, shape, dtype=dtype))


def gumbel_from_uniforms(coarse: Array, fine: Array) -> Array:
    """-log(-log1p(-w)) with w = coarse + fine 2^-23 (coarse on the float32 grid j 2^-23, fine
    in [0, 1)): w is uniform on the 2^-46 grid, so E = -log1p(-w) ~ w resolves 2^-46 at 0."""
    w = jnp.maximum(coarse + fine * jnp.asarray(2.0**-23, coarse.dtype), jnp.finfo(coarse.dtype).tiny)
    return -jnp.log(-jnp.log1p(-w))


def block_size(v: int) -> int:
    """Block width of the two-level draw: the power of two nearest above sqrt(V), >= 128."""
    return max(128, 1 << max(0, math.ceil(math.log2(math.sqrt(v)))))


def draw_noise(key: Array, lead: tuple, v: int, dtype=jnp.float32) -> tuple:
    """The Gumbel noise `draw` uses for positions `lead` (e.g. (B, L)) of a V-entry kernel:
    (flat [*lead, V],) for V <= FLAT_VOCAB_MAX, else (top [*lead, nb + 1], inner [*lead, K]).
    O(sqrt V) numbers per position; JAX's counter PRNG makes position i's noise depend on its
    flat index only, so a caller may draw it here for all positions and gather some rows."""
    if v <= FLAT_VOCAB_MAX:
        return (gumbel(key, tuple(lead) + (v,), dtype),)
    k = block_size(v)
    nb = -(-v // k)
    k1, k2 = jax.random.split(key)
    return gumbel(k1, tuple(lead) + (nb + 1,), dtype), gumbel(k2, tuple(lead) + (k,), dtype)


def draw(key: Array, kern: LogKernel, dtype=jnp.float32) -> Array:
    """One index per position [B, L] int32 from a LogKernel by Gumbel-max in `dtype`."""
    return draw_with(kern, draw_noise(key, kern.reg.shape[:-1], kern.reg.shape[-1], dtype), dtype)


def draw_with(kern: LogKernel, noise: tuple, dtype=jnp.float32) -> Array:
    """`draw` given its noise (`draw_noise` for the kernel's positions and V)."""
    reg, v = kern.reg, kern.reg.shape[-1]
    if v <= FLAT_VOCAB_MAX:
        return jnp.argmax(logits(kern).astype(dtype) + noise[0], axis=-1).astype(jnp.int32)
    shift = kern.shift.astype(reg.dtype)
    lead = reg.shape[:-1]
    k = block_size(v)
    nfull, rem = divmod(v, k)  # full blocks, then a tail block of rem entries (no padded copy of reg)
    nb = nfull + (rem > 0)
    main = reg[..., : nfull * k].reshape(lead + (nfull, k))
    lse = logsumexp0(main)  # [..., nfull]
    if rem:
        tail = reg[..., nfull * k:]
        lse = jnp.concatenate([lse, logsumexp0(tail)[..., None]], axis=-1)
    log_total = logsumexp0(lse) + shift
    sp = kern.special(log_total)
    top = jnp.concatenate([(lse + shift[..., None]).astype(dtype), sp[..., None].astype(dtype)], axis=-1)
    choice = jnp.argmax(top + noise[0], axis=-1)  # nb: the special entry
    b = jnp.minimum(choice, nb - 1)
    inner = jnp.take_along_axis(main, jnp.minimum(b, nfull - 1)[..., None, None], axis=-2)[..., 0, :]  # [..., K]
    if rem:
        tail_k = jnp.concatenate([tail, jnp.full(lead + (k - rem,), -jnp.inf, reg.dtype)], axis=-1)
        inner = jnp.where((b == nfull)[..., None], tail_k, inner)
    j = jnp.argmax(inner.astype(dtype) + noise[1], axis=-1)
    return jnp.where(choice == nb, kern.special_idx, b * k + j).astype(jnp.int32)
