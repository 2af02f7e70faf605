"""Exact synthetic teacher: a first-order Markov chain over V tokens and L positions.

Its concrete score under the absorbing and uniform graphs is exact at every sigmabar
(forward-backward, O(L V^2) per sequence), and every sample has an exact likelihood.

Exact posterior used by the score: with emissions e_i(a) = P(x_t^i | x_0^i = a) and
leave-one-out messages (position i's own observation excluded),
    w_i(a) = P(x_0^i = a | x_t^{-i}) ~ alpha_i(a) beta_i(a),
the concrete score is
    absorbing, x^i masked:   s[y] = w_i(y) / expm1(sigmabar),  s[mask] = 1;
    absorbing, x^i = c:      s[y] = w_i(y) / w_i(c),          s[mask] = expm1(sigmabar) / w_i(c);
    uniform, x^i = c:        s[y] = m_i(y) / m_i(c),  m_i(y) = e^-sigmabar w_i(y) + (1 - e^-sigmabar) / V.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax.divergences import bigram_counts
from lsd_jax.eval.text_metrics import unigram_entropy
from lsd_jax.graphs import Graph, expm1_stable, is_token

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class MarkovChain:
    """P(x) = init[x_0] prod_i trans[x_{i-1}, x_i]; init [V], trans [V, V] (rows sum to 1)."""

    init: np.ndarray
    trans: np.ndarray
    length: int
    HEADLINE: ClassVar[str] = "bigram_kl"  # the key of `evaluate` that tuning and selection minimise

    @property
    def num_tokens(self) -> int:
        return int(self.init.shape[0])

    def to_dict(self) -> dict:
        return {"init": self.init.tolist(), "trans": self.trans.tolist(), "length": self.length}

    @classmethod
    def from_dict(cls, d: dict) -> "MarkovChain":
        return cls(np.asarray(d["init"], np.float64), np.asarray(d["trans"], np.float64), int(d["length"]))

    # --- exact quantities -------------------------------------------------------------
    def marginals(self) -> np.ndarray:
        """P(x_i = a) for every position: [L, V] (float64)."""
        p = [self.init]
        for _ in range(self.length - 1):
            p.append(p[-1] @ self.trans)
        return np.stack(p)

    def entropy_rate(self) -> float:
        """H(x_0..x_{L-1}) / L in nats: the NLL per token of exact samples."""
        marg = self.marginals()
        h_row = -(self.trans * np.log(self.trans)).sum(1)
        h = -(self.init * np.log(self.init)).sum() + (marg[:-1] @ h_row).sum()
        return float(h / self.length)

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the position-averaged token distribution of the chain."""
        p = self.marginals().mean(0)
        return float(-(p * np.log(p)).sum())

    def bigram_probs(self) -> np.ndarray:
        """Position-averaged distribution of adjacent pairs (x_i, x_{i+1}): [V, V]."""
        marg = self.marginals()[:-1].mean(0)
        return marg[:, None] * self.trans

    # --- sampling and likelihood ------------------------------------------------------
    def sample(self, key: Array, n: int) -> Array:
        """n exact samples [n, L] int32 (ancestral)."""
        log_init = jnp.log(jnp.asarray(self.init, jnp.float32))
        log_trans = jnp.log(jnp.asarray(self.trans, jnp.float32))
        k0, k1 = jax.random.split(key)
        x0 = jax.random.categorical(k0, log_init, shape=(n,))

        def body(prev, k):
            nxt = jax.random.categorical(k, log_trans[prev])
            return nxt, nxt

        _, rest = jax.lax.scan(body, x0, jax.random.split(k1, self.length - 1))
        return jnp.concatenate([x0[None], rest], 0).T.astype(jnp.int32)

    def log_prob(self, x) -> np.ndarray:
        """log P(x) [B] (float64) for tokens x [B, L]; -inf where x holds a non-token id."""
        x = np.asarray(x)
        bad = (x < 0) | (x >= self.num_tokens)
        xc = np.clip(x, 0, self.num_tokens - 1)
        lp = np.log(self.init)[xc[:, 0]] + np.log(self.trans)[xc[:, :-1], xc[:, 1:]].sum(1)
        return np.where(bad.any(1), -np.inf, lp)

    def evaluate(self, tokens) -> dict:
        """Exact metrics of samples [B, L] (module function `evaluate`)."""
        return evaluate(self, tokens)

    # --- the exact score --------------------------------------------------------------
    def log_score(self, graph: Graph, x: Array, sigmabar: Array) -> Array:
        """Exact log concrete score [B, L, graph.dim] for x [B, L], sigmabar [B]."""
        return _exact_log_score(
            jnp.asarray(self.init, sigmabar.dtype), jnp.asarray(self.trans, sigmabar.dtype), graph, x, sigmabar
        )

    def score_fn(self, graph: Graph):
        """The score-function interface `(x, sigmabar) -> log-score`, one object per graph
        (so jit caches keyed on it are reused)."""
        return _score_fn_cache(self, graph)


@functools.lru_cache(maxsize=64)
def _score_fn_cache(model, graph: Graph):
    """The score function of an exact model (MarkovChain, HMM: anything with num_tokens and
    log_score) on `graph`, one object per (model, graph)."""
    if graph.num_tokens != model.num_tokens:
        raise ValueError(f"graph.num_tokens = {graph.num_tokens} but the {type(model).__name__} has "
                         f"V = {model.num_tokens}")

    def score_fn(x, sigmabar):
        return model.log_score(graph, x, sigmabar)

    return score_fn


def _posterior(init: Array, trans: Array, emis: Array) -> Array:
    """Leave-one-out posteriors w [B, L, V] from emissions emis [B, L, V]."""
    bsz, length, v = emis.shape

    def nrm(a):
        return a / a.sum(-1, keepdims=True)

    def fwd(alpha, e):  # alpha_i -> alpha_{i+1}
        nxt = nrm((alpha * e) @ trans)
        return nxt, nxt

    def bwd(beta, e):  # beta_{i+1}, e_{i+1} -> beta_i
        nxt = nrm((e * beta) @ trans.T)
        return nxt, nxt

    alpha0 = jnp.broadcast_to(init, (bsz, v))
    ems = jnp.swapaxes(emis, 0, 1)  # [L, B, V]
    _, alphas = jax.lax.scan(fwd, alpha0, ems[:-1])
    alphas = jnp.concatenate([alpha0[None], alphas], 0)
    beta_last = jnp.ones((bsz, v), emis.dtype) / v
    _, betas = jax.lax.scan(bwd, beta_last, ems[1:], reverse=True)
    betas = jnp.concatenate([betas, beta_last[None]], 0)
    return jnp.swapaxes(nrm(alphas * betas), 0, 1)


@functools.partial(jax.jit, static_argnames=("graph",))
def _exact_log_score(init: Array, trans: Array, graph: Graph, x: Array, sigmabar: Array) -> Array:
    v = init.shape[0]
    dt = init.dtype
    sb = sigmabar.astype(dt)[:, None, None]  # [B, 1, 1]
    is_x = is_token(x, v)  # [B, L, V] (mask id never matches)
    if graph.is_absorbing:
        emis = jnp.where((x == graph.mask_id)[..., None], 1.0, is_x.astype(dt))
    else:
        stay = jnp.exp(-sb)
        emis = jnp.where(is_x, stay, 0.0) + (1.0 - stay) / v
    return log_score_from_posterior(graph, x, sb, _posterior(init, trans, emis))


def log_score_from_posterior(graph: Graph, x: Array, sb: Array, w: Array) -> Array:
    """Concrete log score [B, L, graph.dim] from the leave-one-out posteriors
    w [B, L, V] = P(x_0^i | x_t^{-i}) of the clean tokens (the module docstring's formulas;
    shared with the HMM teacher); x [B, L], sb [B, 1, 1]."""
    v = w.shape[-1]
    dt = w.dtype
    tiny = jnp.finfo(dt).tiny
    is_x = is_token(x, v)  # [B, L, V] (mask id never matches)
    if graph.is_absorbing:
        masked = (x == graph.mask_id)[..., None]
        logw = jnp.log(jnp.maximum(w, tiny))
        log_e = jnp.log(expm1_stable(sb))
        logw_c = jnp.sum(jnp.where(is_x, logw, 0.0), -1, keepdims=True)
        data = jnp.where(masked, logw - log_e, logw - logw_c)
        mask_col = jnp.where(masked, 0.0, log_e - logw_c)
        return jnp.concatenate([data, mask_col], -1)
    stay = jnp.exp(-sb)
    logm = jnp.log(jnp.maximum(stay * w + (-jnp.expm1(-sb)) / v, tiny))
    return logm - jnp.sum(jnp.where(is_x, logm, 0.0), -1, keepdims=True)


def make_chain(
    num_tokens: int = 16,
    length: int = 32,
    seed: int = 0,
    stickiness: tuple = (0.6, 0.95),
    concentration: float = 0.15,
    floor: float = 1e-3,
) -> MarkovChain:
    """A seeded "interesting" chain: sticky states (self-transition in `stickiness`) give
    runs and long-range structure; the rest of each row is a sparse Dirichlet(concentration)
    over the other states (low entropy rate); a `floor` of uniform mass keeps full support,
    so every divergence against the chain is finite."""
    if num_tokens < 2 or length < 2:
        raise ValueError(f"chain needs num_tokens >= 2 and length >= 2, got {num_tokens}, {length}")
    rng = np.random.default_rng(seed)
    v = num_tokens
    stick = rng.uniform(*stickiness, size=v)
    trans = np.zeros((v, v))
    for a in range(v):
        others = rng.dirichlet(np.full(v - 1, concentration))
        row = np.insert(others * (1.0 - stick[a]), a, stick[a])
        trans[a] = (1.0 - floor) * row + floor / v
    init = 0.9 * rng.dirichlet(np.full(v, 0.5)) + 0.1 / v
    return MarkovChain(init / init.sum(), trans / trans.sum(1, keepdims=True), length)


# --- metrics on samples ---------------------------------------------------------------
def bigram_kl(chain: MarkovChain, tokens) -> float:
    """KL(empirical || chain) in nats over position-averaged adjacent pairs (x_i, x_{i+1}).

    A proper divergence (>= 0, 0 iff the pair statistics match) and finite because the
    chain has full support. With n pairs its sampling floor is about (V^2 - 1) / (2 n).
    """
    x = np.asarray(tokens)
    v = chain.num_tokens
    if x.min() < 0 or x.max() >= v:
        raise ValueError("samples hold ids outside the chain's tokens (leftover masks?)")
    emp = bigram_counts(x, v)
    emp /= emp.sum()
    true = chain.bigram_probs().ravel()
    nz = emp > 0
    return float((emp[nz] * (np.log(emp[nz]) - np.log(true[nz]))).sum())


def evaluate(chain: MarkovChain, tokens) -> dict:
    """Exact metrics of samples [B, L]: nll (per token), data entropy, unigram entropies
    (the samples' pooled over all rows, the convention of every table here), bigram KL
    (see `bigram_kl`). Tokens of another length or with ids outside [0, V) are refused."""
    from lsd_jax import validate

    x = validate.tokens(tokens, chain.num_tokens, chain.length, "tokens scored against the chain")
    lp = chain.log_prob(x)
    return {
        "nll": float(-lp.mean() / chain.length),
        "data_entropy": chain.entropy_rate(),
        "unigram_entropy": unigram_entropy(x, mode="pooled"),
        "data_unigram_entropy": chain.unigram_entropy(),
        "bigram_kl": bigram_kl(chain, x),
        "bigram_kl_floor": (chain.num_tokens**2 - 1) / (2.0 * x.shape[0] * (chain.length - 1)),
    }
