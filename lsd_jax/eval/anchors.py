"""Reference texts that place sampler rows on an evaluator's scale (numpy).

All are strings of the sampler's alphabet with the samples' length, so their NLL per
character is comparable with the samples':

- ``real``: held-out corpus rows (the teacher's validation split), decoded;
- ``words shuffled``: the same rows with their space-separated words permuted (same
  characters, English words, no syntax);
- ``char bigram``: draws from a character-bigram model of the training split (add-alpha);
- ``random chars``: characters drawn uniformly from the alphabet.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

ANCHORS = ("real", "words shuffled", "char bigram", "random chars")


def shuffle_words(texts: Sequence[str], seed: int = 0) -> list[str]:
    """Each text with its words (split on single spaces) in a random order; the length
    and the multiset of characters are kept."""
    rng = np.random.default_rng(seed)
    out = []
    for t in texts:
        words = t.split(" ")
        out.append(" ".join(words[i] for i in rng.permutation(len(words))))
    return out


class CharBigram:
    """First-order Markov model of token ids (add-``alpha`` smoothed counts).

    ``log_start`` [V]: unigram log-probabilities (the first position); ``log_trans`` [V, V]:
    log p(next | previous)."""

    def __init__(self, log_start: np.ndarray, log_trans: np.ndarray):
        self.log_start, self.log_trans = log_start, log_trans

    @classmethod
    def fit(cls, stream: np.ndarray, vocab: int, alpha: float = 0.5) -> "CharBigram":
        """Counts of ``stream`` [n] (ids in [0, vocab))."""
        s = np.asarray(stream, np.int64).ravel()
        if s.size < 2 or s.min() < 0 or s.max() >= vocab:
            raise ValueError(f"CharBigram.fit needs >= 2 ids in [0, {vocab}), got {s.size} ids in "
                             f"[{s.min() if s.size else None}, {s.max() if s.size else None}]")
        uni = np.bincount(s, minlength=vocab) + alpha
        pair = np.bincount(s[:-1] * vocab + s[1:], minlength=vocab * vocab).reshape(vocab, vocab) + alpha
        return cls(np.log(uni / uni.sum()), np.log(pair / pair.sum(1, keepdims=True)))

    def sample(self, num: int, length: int, seed: int = 0) -> np.ndarray:
        """Ids [num, length] drawn from the chain."""
        rng = np.random.default_rng(seed)
        vocab = self.log_start.size
        cdf = np.cumsum(np.exp(self.log_trans), axis=1)
        out = np.empty((num, length), np.int64)
        out[:, 0] = rng.choice(vocab, size=num, p=np.exp(self.log_start) / np.exp(self.log_start).sum())
        for j in range(1, length):
            u = rng.random(num) * cdf[out[:, j - 1], -1]
            out[:, j] = np.minimum((cdf[out[:, j - 1]] < u[:, None]).sum(1), vocab - 1)
        return out

    def log_prob(self, ids: np.ndarray) -> np.ndarray:
        """Log-probability [num] of each row of ``ids`` [num, length]."""
        ids = np.asarray(ids, np.int64)
        return self.log_start[ids[:, 0]] + self.log_trans[ids[:, :-1], ids[:, 1:]].sum(1)


def anchor_texts(train_stream: np.ndarray, validation_rows: np.ndarray, decode: Callable[[np.ndarray], str],
                 vocab: int, num: int, seed: int = 0) -> dict[str, list[str]]:
    """The four anchors (``ANCHORS``), ``num`` texts each of the rows' length.

    ``validation_rows`` [N, L]: held-out corpus rows (``num`` of them, evenly spaced, are
    the real texts); ``train_stream`` [n]: training ids for the bigram model."""
    rows = np.asarray(validation_rows)
    if rows.ndim != 2 or rows.shape[0] < num:
        raise ValueError(f"anchor_texts needs validation rows [N >= {num}, L], got shape {rows.shape}")
    length = rows.shape[1]
    real = [decode(r) for r in rows[np.linspace(0, rows.shape[0] - 1, num).round().astype(int)]]
    bigram = CharBigram.fit(train_stream, vocab).sample(num, length, seed)
    rand = np.random.default_rng(seed + 1).integers(0, vocab, size=(num, length))
    return {
        "real": real,
        "words shuffled": shuffle_words(real, seed),
        "char bigram": [decode(r) for r in bigram],
        "random chars": [decode(r) for r in rand],
    }


__all__ = ["ANCHORS", "CharBigram", "anchor_texts", "shuffle_words"]
