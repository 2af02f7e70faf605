"""Divergences of a sampler's samples: the two-sample ones against reference samples
(n-gram, MMD), the exact one against the Markov chain, and `make_divergence`, the one
factory that tuning, distillation's model selection and the benchmarks use.

Each two-sample divergence is proper (zero iff the statistics match) and penalises both lost diversity and
added noise, because it is symmetric: KL(P || Q) grows when the student drops what the
reference has, KL(Q || P) when it invents what the reference lacks.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from lsd_jax.names import DIVERGENCES  # noqa: F401 - re-exported


def unigram_counts(x: np.ndarray, v: int) -> np.ndarray:
    """Token counts [v] (float64) of integer samples [B, L] with ids < v."""
    return np.bincount(np.asarray(x).ravel(), minlength=v).astype(np.float64)


def bigram_counts(x: np.ndarray, v: int) -> np.ndarray:
    """Counts [v * v] (float64) of adjacent pairs (x_i, x_{i+1}) at index x_i v + x_{i+1},
    pooled over rows and positions of samples [B, L] with ids < v."""
    x = np.asarray(x)
    return np.bincount((x[:, :-1] * v + x[:, 1:]).ravel(), minlength=v * v).astype(np.float64)


def _sym_kl(a: np.ndarray, b: np.ndarray, alpha: float) -> float:
    p = (a + alpha) / (a + alpha).sum()
    q = (b + alpha) / (b + alpha).sum()
    return float(0.5 * ((p * np.log(p / q)).sum() + (q * np.log(q / p)).sum()))


def ngram_divergence(samples, reference, vocab: int, alpha: float = 0.5) -> float:
    """Symmetric KL of unigram plus symmetric KL of adjacent-pair (bigram) statistics,
    each with add-alpha smoothing; samples and reference [B, L] token ids < vocab.

    Usable on any model (the reference is the teacher's many-step samples). With finite
    samples its floor is positive: two fresh reference draws give its noise level.
    """
    x, r = np.asarray(samples), np.asarray(reference)
    for name, a in (("samples", x), ("reference", r)):
        if a.ndim != 2 or a.size == 0:
            raise ValueError(f"{name} must be a non-empty [B, L] array, got shape {a.shape}")
        if a.min() < 0 or a.max() >= vocab:
            raise ValueError(f"{name} hold ids outside [0, {vocab}) (leftover masks?)")
    uni = _sym_kl(unigram_counts(x, vocab), unigram_counts(r, vocab), alpha)
    bi = _sym_kl(bigram_counts(x, vocab), bigram_counts(r, vocab), alpha)
    return uni + bi


def mmd(features_x: np.ndarray, features_y: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with a Gaussian kernel between feature sets [n, F] and [m, F].

    bandwidth: the kernel's length scale; default the median pairwise distance of the
    pooled features (median heuristic). Zero in expectation iff the feature distributions
    match; finite-sample values scatter around 0 for equal distributions.
    """
    x, y = np.asarray(features_x, np.float64), np.asarray(features_y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"mmd needs features [n >= 2, F] and [m >= 2, F], got {x.shape} and {y.shape}")
    z = np.concatenate([x, y])
    sq = (z * z).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    if bandwidth is None:
        bandwidth = median_bandwidth(z)
    k = np.exp(-d2 / (2.0 * bandwidth**2))
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2.0 * kxy.mean())


def exact_divergence(model) -> Callable[[np.ndarray], float]:
    """The exact model's headline divergence of samples (models with `exact` metrics only):
    bigram KL against the chain, lag KL (mean lag-1/2/4/8 pair KL) against the HMM."""
    from lsd_jax.teachers.base import is_exact

    if not is_exact(model):
        raise ValueError("divergence 'exact' needs an exact teacher (--teacher markov|hmm); use 'ngram'")
    key = getattr(getattr(model, "oracle", None), "HEADLINE", "bigram_kl")  # HMM: lag KL
    return lambda tokens: model.metrics(tokens)[key]


def median_bandwidth(features: np.ndarray) -> float:
    """The median pairwise distance of features [n, F] (1.0 when all coincide)."""
    f = np.asarray(features, np.float64)
    sq = (f * f).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0)
    off = d2[np.triu_indices(len(f), 1)]
    return float(np.sqrt(np.median(off))) if np.any(off > 0) else 1.0


def mmd_divergence(model, reference) -> Callable[[np.ndarray], float]:
    """MMD between the model network's pooled final hidden states of samples and of the
    reference samples (network teachers only; the bandwidth is fixed on the reference)."""
    from lsd_jax.teachers.base import model_features

    features = model_features(model)
    if features is None:
        raise ValueError("divergence 'mmd' needs a network teacher (--checkpoint DIR): it compares the "
                         "teacher network's final hidden states; use 'exact' or 'ngram' here")
    ref_feats = features(reference)
    bandwidth = median_bandwidth(ref_feats)
    return lambda tokens: mmd(features(tokens), ref_feats, bandwidth=bandwidth)


def make_divergence(name: str, model, reference: Optional[np.ndarray] = None) -> Callable[[np.ndarray], float]:
    """The divergence `name` (exact | ngram | mmd) of samples [B, L] (lower is better); ngram
    and mmd compare with `reference` [B', L], the model's own many-step samples."""
    if name not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {name!r}")
    if name == "exact":
        return exact_divergence(model)
    if reference is None:
        raise ValueError(f"divergence {name!r} needs reference samples (the teacher's many-step samples)")
    if name == "mmd":
        return mmd_divergence(model, reference)
    ref = np.asarray(reference)
    return lambda tokens: ngram_divergence(tokens, ref, model.graph.num_tokens)
