"""Graphs: the forward rate matrix Q of the token-level CTMC (SEDD's graph_lib).

`dim` is the number of states a token can take. Absorbing: `num_tokens` data tokens plus
the mask id `num_tokens` (the last id). Uniform: `num_tokens` states, jump to any.

Conventions (as SEDD): for a token x [...], `rate(x)` is the row Q[x, :], `transp_rate(x)`
the column Q[:, x], `transition(x, s)` the row of exp(s Q) and `transp_transition(x, s)`
its column, each of shape [..., dim]. Scores are concrete scores s[y] ~ p(x^i=y)/p(x);
functions taking `score` want it in linear space, `log_score` in log space.
No one-hot tensors are materialised: `is_token(x, dim)` is a broadcast comparison XLA fuses.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import jax
import jax.numpy as jnp

from lsd_jax.names import GRAPHS

Array = jnp.ndarray


def is_token(x: Array, dim: int) -> Array:
    """Boolean [..., dim]: entry y is (y == x)."""
    return x[..., None] == jnp.arange(dim, dtype=x.dtype).reshape((1,) * x.ndim + (dim,))


def id_row(dim: int, idx: int, ndim: int) -> Array:
    """Boolean [1] * (ndim - 1) + [dim]: entry y is (y == idx), rank-matched to [..., dim]
    arrays of rank ndim (no implicit rank promotion)."""
    return (jnp.arange(dim) == idx).reshape((1,) * (ndim - 1) + (dim,))


def expm1_stable(sigma: Array) -> Array:
    """exp(sigma) - 1, accurate for small and large sigma."""
    return jnp.where(sigma < 0.5, jnp.expm1(sigma), jnp.exp(sigma) - 1.0)


@dataclasses.dataclass(frozen=True)
class Absorbing:
    """Absorbing graph: each token jumps to the mask id at rate 1."""

    num_tokens: int
    name: str = dataclasses.field(default="absorb", init=False)

    def __post_init__(self):
        if self.num_tokens < 1:
            raise ValueError(f"graph.num_tokens must be >= 1, got {self.num_tokens}")

    @property
    def dim(self) -> int:
        return self.num_tokens + 1

    @property
    def mask_id(self) -> int:
        return self.num_tokens

    @property
    def is_absorbing(self) -> bool:
        return True

    def rate(self, x: Array) -> Array:
        to_mask = jnp.where(id_row(self.dim, self.mask_id, x.ndim + 1), 1.0, 0.0)
        return to_mask - jnp.where(is_token(x, self.dim), 1.0, 0.0)

    def transp_rate(self, x: Array) -> Array:
        """Q[:, x]: at a masked token all ones but the mask entry; else -1 at x."""
        is_x = is_token(x, self.dim)
        masked = (x == self.mask_id)[..., None]
        return jnp.where(masked, jnp.where(is_x, 0.0, 1.0), jnp.where(is_x, -1.0, 0.0))

    def transition(self, x: Array, sigma: Array) -> Array:
        """Row x of exp(sigma Q): stay with e^-sigma, else mask (the mask is absorbing)."""
        sigma = jnp.asarray(sigma)[..., None]
        stay = jnp.exp(-sigma)
        clean = (x != self.mask_id)[..., None]
        out = jnp.where(is_token(x, self.dim), jnp.where(clean, stay, 1.0), 0.0)
        to_mask = id_row(self.dim, self.mask_id, out.ndim)
        return out + jnp.where(to_mask & clean, 1.0 - stay, 0.0)

    def transp_transition(self, x: Array, sigma: Array) -> Array:
        """Column x of exp(sigma Q)."""
        sigma = jnp.asarray(sigma)[..., None]
        stay = jnp.exp(-sigma)
        out = jnp.where(is_token(x, self.dim), stay, 0.0)
        return out + jnp.where((x == self.mask_id)[..., None], 1.0 - stay, 0.0)

    def staggered_score(self, score: Array, dsigma: Array) -> Array:
        """exp(-dsigma Q)^T score (SEDD staggered score, Tweedie tau-leaping); dsigma [...] broadcasts to score[..., 0]."""
        dsigma = jnp.asarray(dsigma)[..., None]
        extra = (1.0 - jnp.exp(dsigma)) * score.sum(-1, keepdims=True)
        is_mask = id_row(self.dim, self.mask_id, score.ndim)
        return score * jnp.exp(dsigma) + jnp.where(is_mask, extra, 0.0)

    def reverse_rate(self, x: Array, score: Array) -> Array:
        """Reverse rate R[y] = Q[y, x] s[y] for y != x, R[x] = -sum (SEDD reverse_rate)."""
        off = jnp.where(
            (x == self.mask_id)[..., None] & ~id_row(self.dim, self.mask_id, x.ndim + 1), score, 0.0
        )
        return jnp.where(is_token(x, self.dim), -off.sum(-1, keepdims=True), off)

    def sample_limit(self, key: Array, shape: tuple) -> Array:
        del key
        return jnp.full(shape, self.mask_id, dtype=jnp.int32)

    def sample_transition(self, key: Array, x: Array, sigma: Array) -> Array:
        """Forward noising of clean x [B, L] by total noise sigma [B]."""
        move = jax.random.uniform(key, x.shape) < -jnp.expm1(-sigma)[:, None]
        return jnp.where(move, self.mask_id, x)

    def score_entropy(self, log_score: Array, sigma: Array, x: Array, x0: Array) -> Array:
        """Denoising score entropy [B, L] (SEDD Absorbing.score_entropy); sigma [B]."""
        masked = x == self.mask_id
        ratio = 1.0 / expm1_stable(sigma)[:, None] * jnp.ones_like(log_score[..., 0])
        neg = ratio * jnp.take_along_axis(log_score, x0[..., None], -1)[..., 0]
        pos = jnp.exp(log_score[..., :-1]).sum(-1)
        const = ratio * (jnp.log(ratio) - 1.0)
        return jnp.where(masked, pos - neg + const, 0.0)


@dataclasses.dataclass(frozen=True)
class Uniform:
    """Uniform graph: Q = (1/dim) 11^T - I; a token jumps to a uniform state at rate 1."""

    num_tokens: int
    name: str = dataclasses.field(default="uniform", init=False)

    def __post_init__(self):
        if self.num_tokens < 2:
            raise ValueError(f"graph.num_tokens must be >= 2, got {self.num_tokens}")

    @property
    def dim(self) -> int:
        return self.num_tokens

    @property
    def mask_id(self) -> None:
        return None

    @property
    def is_absorbing(self) -> bool:
        return False

    def rate(self, x: Array) -> Array:
        d = self.dim
        return jnp.where(is_token(x, d), -(d - 1) / d, 1.0 / d)

    def transp_rate(self, x: Array) -> Array:
        return self.rate(x)

    def transition(self, x: Array, sigma: Array) -> Array:
        d = self.dim
        move = -jnp.expm1(-jnp.asarray(sigma))[..., None] / d
        return jnp.where(is_token(x, d), 1.0 - (d - 1) * move, move)

    def transp_transition(self, x: Array, sigma: Array) -> Array:
        return self.transition(x, sigma)

    def staggered_score(self, score: Array, dsigma: Array) -> Array:
        d = self.dim
        epow = jnp.exp(-jnp.asarray(dsigma))[..., None]
        return (epow - 1.0) / (d * epow) * score.sum(-1, keepdims=True) + score / epow

    def reverse_rate(self, x: Array, score: Array) -> Array:
        off = jnp.where(is_token(x, self.dim), 0.0, score / self.dim)
        return jnp.where(is_token(x, self.dim), -off.sum(-1, keepdims=True), off)

    def sample_limit(self, key: Array, shape: tuple) -> Array:
        return jax.random.randint(key, shape, 0, self.dim, dtype=jnp.int32)

    def sample_transition(self, key: Array, x: Array, sigma: Array) -> Array:
        k1, k2 = jax.random.split(key)
        move = jax.random.uniform(k1, x.shape) < -jnp.expm1(-sigma)[:, None]
        return jnp.where(move, jax.random.randint(k2, x.shape, 0, self.dim, dtype=x.dtype), x)

    def score_entropy(self, log_score: Array, sigma: Array, x: Array, x0: Array) -> Array:
        """Denoising score entropy [B, L] (SEDD Uniform.score_entropy); sigma [B]."""
        d = self.dim
        esigm1 = expm1_stable(sigma)[:, None]
        ratio = 1.0 - d / (esigm1 + d)
        at = lambda a, i: jnp.take_along_axis(a, i[..., None], -1)[..., 0]
        neg = log_score.mean(-1) - at(log_score, x) / d
        neg = jnp.where(x == x0, ratio * neg, at(log_score, x0) / esigm1 + neg)
        const = jnp.where(
            x == x0,
            (d - 1) / d * ratio * (jnp.log(ratio) - 1.0),
            ((-jnp.log(ratio) - 1.0) / ratio - (d - 2)) / d,
        )
        sexp = jnp.exp(log_score)
        pos = sexp.mean(-1) - at(sexp, x) / d
        return pos - neg + const


Graph = Union[Absorbing, Uniform]


def get_graph(name: str, num_tokens: int) -> Graph:
    """Builds a graph by name: "absorb" (mask id = num_tokens) or "uniform"."""
    if name in ("absorb", "absorbing"):
        return Absorbing(num_tokens)
    if name == "uniform":
        return Uniform(num_tokens)
    raise ValueError(f"graph type {name!r} is not supported; allowed: {', '.join(GRAPHS)}")
