"""Two-sample divergences between a sampler's samples and reference samples.

Each is proper (zero iff the statistics match) and penalises both lost diversity and
added noise, because it is symmetric: KL(P || Q) grows when the student drops what the
reference has, KL(Q || P) when it invents what the reference lacks.
"""

from __future__ import annotations

import numpy as np


def _counts_unigram(x: np.ndarray, v: int) -> np.ndarray:
    return np.bincount(x.ravel(), minlength=v).astype(np.float64)


def _counts_bigram(x: np.ndarray, v: int) -> np.ndarray:
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
    uni = _sym_kl(_counts_unigram(x, vocab), _counts_unigram(r, vocab), alpha)
    bi = _sym_kl(_counts_bigram(x, vocab), _counts_bigram(r, vocab), alpha)
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
        off = d2[np.triu_indices(len(z), 1)]
        bandwidth = float(np.sqrt(np.median(off))) if np.any(off > 0) else 1.0
    k = np.exp(-d2 / (2.0 * bandwidth**2))
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2.0 * kxy.mean())
