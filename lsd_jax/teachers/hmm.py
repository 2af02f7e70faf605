"""Exact synthetic teacher with long-range dependence: a hidden Markov model.

Hidden states z_0..z_{L-1} follow a first-order chain (init [H], trans [H, H]); each
position emits a token x_i ~ emit[z_i] (emit [H, V]). A revealed token does not screen off
the rest of the sequence (it only informs the hidden state), so the dependence between
tokens d apart decays slowly (`mutual_information`), yet the concrete score under both
graphs is exact at every sigmabar and every sequence has an exact likelihood.

Exact score: x_t^i is seen through the forward channel k(a, c) = P(x_t^i = c | x_0^i = a);
the evidence of position i about its hidden state is E_i(z) = sum_a emit[z, a] k(a, x_t^i):
    absorbing: E_i(z) = 1 at a masked position (no evidence), emit[z, c] where x_t^i = c;
    uniform:   E_i(z) = e^-sigmabar emit[z, c] + (1 - e^-sigmabar) / V.
Leave-one-out forward-backward over the hidden chain (`markov._posterior`, normalised at
every step: no underflow, O(L H^2)) gives q_i(z) = P(z_i | x_t^{-i}); the clean-token
posterior is w_i = q_i @ emit (O(L H V)); the score follows from w_i by the same formulas
as the first-order chain (`markov.log_score_from_posterior`), returned in log space.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax.graphs import Graph
from lsd_jax.eval.text_metrics import unigram_entropy
from lsd_jax.teachers.markov import _posterior, _score_fn_cache, log_score_from_posterior

Array = jnp.ndarray

LAGS = (1, 2, 4, 8)  # token distances of `lag_kl` and `mutual_information`
ENTROPY_SAMPLES = 16384  # exact ancestral samples behind `data_entropy`
ENTROPY_SEED = 12345  # their seed (not a sampler seed used anywhere else)


@dataclasses.dataclass(frozen=True, eq=False)
class HMM:
    """P(x) = sum_z init[z_0] emit[z_0, x_0] prod_i trans[z_{i-1}, z_i] emit[z_i, x_i];
    init [H], trans [H, H], emit [H, V] (rows sum to 1), `length` L positions."""

    init: np.ndarray
    trans: np.ndarray
    emit: np.ndarray
    length: int
    HEADLINE: ClassVar[str] = "lag_kl"  # the key of `evaluate` that tuning and selection minimise

    @property
    def num_tokens(self) -> int:
        return int(self.emit.shape[1])

    @property
    def num_states(self) -> int:
        return int(self.emit.shape[0])

    def to_dict(self) -> dict:
        return {"kind": "hmm", "init": self.init.tolist(), "trans": self.trans.tolist(),
                "emit": self.emit.tolist(), "length": self.length}

    @classmethod
    def from_dict(cls, d: dict) -> "HMM":
        return cls(*(np.asarray(d[k], np.float64) for k in ("init", "trans", "emit")), int(d["length"]))

    # --- exact laws ---------------------------------------------------------------------
    def state_marginals(self) -> np.ndarray:
        """P(z_i = z) for every position: [L, H] (float64)."""
        p = [self.init]
        for _ in range(self.length - 1):
            p.append(p[-1] @ self.trans)
        return np.stack(p)

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the position-averaged token distribution."""
        p = self.state_marginals().mean(0) @ self.emit
        return float(-(p * np.log(p)).sum())

    def pair_probs(self, lag: int) -> np.ndarray:
        """Position-averaged law of (x_i, x_{i+lag}) over i < L - lag: [V, V] (float64)."""
        if not 1 <= lag < self.length:
            raise ValueError(f"lag must be in [1, L - 1 = {self.length - 1}], got {lag}")
        m = self.state_marginals()[: self.length - lag].mean(0)  # [H]
        return (self.emit * m[:, None]).T @ np.linalg.matrix_power(self.trans, lag) @ self.emit

    def bigram_probs(self) -> np.ndarray:
        """Position-averaged law of adjacent pairs (x_i, x_{i+1}): [V, V]."""
        return self.pair_probs(1)

    def mutual_information(self, lag: int) -> float:
        """I(x_i; x_{i+lag}) in nats under the position-averaged pair law (exact per position
        when init is the stationary law, as in `make_hmm`)."""
        p = self.pair_probs(lag)
        indep = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
        return float((p * (np.log(p) - np.log(indep))).sum())

    # --- sampling and likelihood --------------------------------------------------------
    def sample(self, key: Array, n: int) -> Array:
        """n exact samples [n, L] int32 (ancestral: hidden chain, then emissions)."""
        logs = [jnp.log(jnp.asarray(a, jnp.float32)) for a in (self.init, self.trans, self.emit)]
        return _ancestral(*logs, key, n, self.length)

    def log_prob(self, x) -> np.ndarray:
        """log P(x) [B] (float64, forward algorithm) for tokens x [B, L]; -inf where x holds
        a non-token id."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.length:
            raise ValueError(f"log_prob expects tokens [B, {self.length}], got shape {x.shape}")
        bad = ((x < 0) | (x >= self.num_tokens)).any(1)
        ev = self.emit.T[np.clip(x, 0, self.num_tokens - 1)]  # [B, L, H]
        alpha = self.init * ev[:, 0]
        lp = np.zeros(x.shape[0])
        for i in range(self.length):
            if i:
                alpha = (alpha @ self.trans) * ev[:, i]
            c = alpha.sum(1)
            lp += np.log(c)
            alpha = alpha / c[:, None]
        return np.where(bad, -np.inf, lp)

    def sample_numpy(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n exact samples [n, L] int64, float64 ancestral draws in numpy (no compile; used
        by the Monte Carlo entropy)."""
        def draw(probs):  # probs [n, K] -> [n] by inverse CDF
            return np.minimum((probs.cumsum(1) < rng.random((probs.shape[0], 1))).sum(1), probs.shape[1] - 1)

        z = draw(np.broadcast_to(self.init, (n, self.num_states)))
        x = np.empty((n, self.length), np.int64)
        for i in range(self.length):
            if i:
                z = draw(self.trans[z])
            x[:, i] = draw(self.emit[z])
        return x

    @functools.cached_property
    def _entropy_mc(self) -> tuple[float, float]:
        n = ENTROPY_SAMPLES
        nll = -self.log_prob(self.sample_numpy(np.random.default_rng(ENTROPY_SEED), n)) / self.length
        return float(nll.mean()), float(nll.std(ddof=1) / np.sqrt(n))

    def entropy_rate(self) -> float:
        """H(x_0..x_{L-1}) / L in nats: Monte Carlo over ENTROPY_SAMPLES exact samples with
        exact log-probabilities (no closed form for an HMM); standard error `entropy_rate_se`."""
        return self._entropy_mc[0]

    def entropy_rate_se(self) -> float:
        return self._entropy_mc[1]

    # --- the exact score ----------------------------------------------------------------
    def log_score(self, graph: Graph, x: Array, sigmabar: Array) -> Array:
        """Exact log concrete score [B, L, graph.dim] for x [B, L], sigmabar [B]."""
        dt = sigmabar.dtype
        return _hmm_log_score(jnp.asarray(self.init, dt), jnp.asarray(self.trans, dt), jnp.asarray(self.emit, dt),
                              graph, x, sigmabar)

    def score_fn(self, graph: Graph):
        """`(x, sigmabar) -> log-score`, one object per graph (jit caches keyed on it are reused)."""
        return _score_fn_cache(self, graph)

    # --- metrics of samples -------------------------------------------------------------
    def evaluate(self, tokens) -> dict:
        """Exact metrics of samples [B, L]: nll per token (forward algorithm), data entropy
        rate (Monte Carlo, with its standard error), unigram entropies, bigram KL and the
        lag-d pair KLs (`lag_kl`) with their finite-sample floors, and their mean `lag_kl`."""
        x = np.asarray(tokens)
        b, v = x.shape[0], self.num_tokens
        out = {
            "nll": float(-self.log_prob(x).mean() / self.length),
            "data_entropy": self.entropy_rate(),
            "data_entropy_se": self.entropy_rate_se(),
            "unigram_entropy": unigram_entropy(x, mode="pooled"),
            "data_unigram_entropy": self.unigram_entropy(),
        }
        lags = [d for d in LAGS if d < self.length]
        for d in lags:
            out[f"lag_kl_{d}"] = lag_kl(self, x, d)
        out["bigram_kl"] = out["lag_kl_1"]
        out["bigram_kl_floor"] = (v * v - 1) / (2.0 * b * (self.length - 1))
        out["lag_kl"] = float(np.mean([out[f"lag_kl_{d}"] for d in lags]))
        out["lag_kl_floor"] = float(np.mean([(v * v - 1) / (2.0 * b * (self.length - d)) for d in lags]))
        return out


@functools.partial(jax.jit, static_argnums=(4, 5))
def _ancestral(log_init: Array, log_trans: Array, log_emit: Array, key: Array, n: int, length: int) -> Array:
    kz, kz0, kx = jax.random.split(key, 3)
    z0 = jax.random.categorical(kz0, log_init, shape=(n,))

    def body(prev, k):
        nxt = jax.random.categorical(k, log_trans[prev])
        return nxt, nxt

    _, rest = jax.lax.scan(body, z0, jax.random.split(kz, length - 1))
    z = jnp.concatenate([z0[None], rest], 0).T  # [n, L]
    return jax.random.categorical(kx, log_emit[z]).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graph",))
def _hmm_log_score(init: Array, trans: Array, emit: Array, graph: Graph, x: Array, sigmabar: Array) -> Array:
    v = emit.shape[1]
    sb = sigmabar.astype(emit.dtype)[:, None, None]  # [B, 1, 1]
    ev = emit.T[jnp.clip(x, 0, v - 1)]  # [B, L, H]: emit[z, x^i]
    if graph.is_absorbing:
        evid = jnp.where((x == graph.mask_id)[..., None], 1.0, ev)
    else:
        stay = jnp.exp(-sb)
        evid = stay * ev + (1.0 - stay) / v
    q = _posterior(init, trans, evid)  # [B, L, H] leave-one-out state posteriors
    return log_score_from_posterior(graph, x, sb, q @ emit)


def lag_kl(hmm: HMM, tokens, lag: int) -> float:
    """KL(empirical || exact) in nats of the position-averaged pairs (x_i, x_{i+lag}).

    Finite (the HMM has full support); with n pairs its sampling floor is about
    (V^2 - 1) / (2 n)."""
    x = np.asarray(tokens)
    v = hmm.num_tokens
    if x.min() < 0 or x.max() >= v:
        raise ValueError("samples hold ids outside the HMM's tokens (leftover masks?)")
    idx = x[:, :-lag] * v + x[:, lag:]
    emp = np.bincount(idx.ravel(), minlength=v * v).astype(np.float64)
    emp /= emp.sum()
    true = hmm.pair_probs(lag).ravel()
    nz = emp > 0
    return float((emp[nz] * (np.log(emp[nz]) - np.log(true[nz]))).sum())


def stationary(trans: np.ndarray) -> np.ndarray:
    """The stationary law of an ergodic transition matrix [H, H]."""
    vals, vecs = np.linalg.eig(trans.T)
    p = np.abs(np.real(vecs[:, np.argmin(np.abs(vals - 1.0))]))
    return p / p.sum()


def make_hmm(
    num_states: int = 16,
    num_tokens: int = 32,
    length: int = 32,
    seed: int = 0,
    persistence: tuple = (0.9, 0.98),
    concentration: float = 0.3,
    support: int = 6,
    zipf: float = 1.0,
    floor: float = 1e-3,
) -> HMM:
    """A seeded HMM with long-range dependence (the default teacher: see the README).

    Each hidden state stays with probability in `persistence` (slow mixing: tokens far apart
    share their state), else jumps by a sparse Dirichlet(concentration) row. Each state
    emits from `support` (at most V) tokens drawn with Zipf(`zipf`) weights over the vocabulary, so
    frequent tokens are shared by many states (ambiguous, like function words) and rare
    ones name their state; a token does not determine the state, hence no screening off.
    A `floor` of uniform mass in trans and emit keeps full support (finite divergences).
    init is the stationary law: every position has the same marginal."""
    h, v = num_states, num_tokens
    if h < 2 or v < 2 or length < 2:
        raise ValueError(f"hmm needs states >= 2, vocab >= 2 and length >= 2, got {h}, {v}, {length}")
    if support < 1:
        raise ValueError(f"support must be >= 1, got {support}")
    support = min(support, v)
    rng = np.random.default_rng(seed)
    stick = rng.uniform(*persistence, size=h)
    trans = np.zeros((h, h))
    for a in range(h):
        others = rng.dirichlet(np.full(h - 1, concentration))
        trans[a] = np.insert(others * (1.0 - stick[a]), a, stick[a])
    trans = (1.0 - floor) * trans + floor / h
    zipf_w = 1.0 / np.arange(1, v + 1) ** zipf
    emit = np.zeros((h, v))
    for z in range(h):
        toks = rng.choice(v, size=support, replace=False, p=zipf_w / zipf_w.sum())
        emit[z, toks] = rng.dirichlet(np.ones(support))
    emit = (1.0 - floor) * emit + floor / v
    trans /= trans.sum(1, keepdims=True)
    emit /= emit.sum(1, keepdims=True)
    return HMM(stationary(trans), trans, emit, length)
