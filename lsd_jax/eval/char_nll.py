"""Evaluator NLL per character of decoded texts, and paired differences with t intervals.

NLL per character of a text s under a causal LM: the evaluator's total NLL of s, scored
with a BOS token in front so that every token of s is a target, divided by the number of
characters of s (nats; divide by ln 2 for bits). Unlike per-token gen-PPL it does not
reward text that splits into many short, individually likely tokens: on character-level
samples random characters get a lower per-token gen-PPL than real samplers, but a much
higher NLL per character.

Row value: total NLL / total characters over all texts (the mean of the per-text values
when all texts have the same length). Comparisons between two samplers use the per-text
values of texts drawn with the same seed and index (the same random numbers): the
paired differences d_i = a_i - b_i, their mean and a Student-t interval,
mean +- t_{(1 + level) / 2, n - 1} sd(d) / sqrt(n).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TextScores:
    """Per-text NLL of texts under one evaluator (BOS in front; every token scored)."""

    evaluator: str
    nll: np.ndarray  # [n] float64, total NLL of each text (nats)
    tokens: np.ndarray  # [n] int64, evaluator tokens of each text (all scored)
    chars: np.ndarray  # [n] int64, characters of each text

    @property
    def nll_per_char(self) -> np.ndarray:
        """[n] NLL per character of each text (nats)."""
        return self.nll / self.chars

    def summary(self) -> dict:
        """Row values, JSON-ready: nats and bits per character, gen-PPL (BOS in front) in
        both conventions, characters per token."""
        total, chars, toks = float(self.nll.sum()), int(self.chars.sum()), int(self.tokens.sum())
        return {
            "nll_per_char": total / chars,
            "bits_per_char": total / chars / math.log(2.0),
            "genppl": math.exp(total / toks),
            "genppl_per_sample": float(np.exp(self.nll / self.tokens).mean()),
            "chars_per_token": chars / toks,
            "num_texts": int(self.nll.size),
        }


def score_texts(evaluator: Any, texts: Sequence[str], batch_tokens: int = 2048,
                progress: bool | None = None) -> TextScores:
    """Per-text NLL of ``texts`` under ``evaluator`` (a ``CausalLMEvaluator``, or any
    object with ``name``, ``token_ids(texts, add_bos)`` and ``score_ids(ids, ...)``).

    Every text is scored with a BOS in front, so all its tokens are targets; texts must
    be non-empty and fit the evaluator's context (no windows)."""
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError("score_texts: texts must be a non-empty sequence of strings")
    chars = np.asarray([len(t) for t in texts], np.int64)
    if (chars == 0).any():
        raise ValueError(f"score_texts: text {int(np.argmin(chars))} is empty")
    ids = evaluator.token_ids(texts, add_bos=True)
    longest = max(len(x) for x in ids)
    if longest > evaluator.context_length:
        raise ValueError(f"score_texts: a text has {longest} {evaluator.name} tokens (BOS included), more than "
                         f"its context {evaluator.context_length}; NLL per character needs each text in one window")
    nll, count = evaluator.score_ids(ids, stride=evaluator.context_length, batch_tokens=batch_tokens,
                                     progress=progress)
    tokens = np.asarray([len(x) - 1 for x in ids], np.int64)
    if not np.array_equal(np.asarray(count), tokens):
        raise RuntimeError("score_texts: the evaluator left tokens unscored")
    return TextScores(evaluator.name, np.asarray(nll, np.float64), tokens, chars)


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean with a two-sided Student-t confidence interval."""

    mean: float
    half_width: float  # t_{(1 + level) / 2, n - 1} * std / sqrt(n)
    std: float  # sample standard deviation (ddof 1)
    n: int
    level: float

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "low": self.low, "high": self.high}


def t_quantile(p: float, df: int) -> float:
    """Quantile ``p`` of Student's t distribution with ``df`` degrees of freedom."""
    from scipy.stats import t  # scipy comes with jax

    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df >= 1, got p={p}, df={df}")
    return float(t.ppf(p, df))


def mean_interval(x: Any, level: float = 0.95) -> Interval:
    """Mean of ``x`` [n] (n >= 2, finite) with its ``level`` Student-t interval."""
    x = np.asarray(x, np.float64).ravel()
    if x.size < 2:
        raise ValueError(f"an interval needs at least 2 values, got {x.size}")
    if not np.isfinite(x).all():
        raise ValueError("an interval needs finite values (a text went unscored?)")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    sd = float(x.std(ddof=1))
    half = t_quantile(0.5 + level / 2, x.size - 1) * sd / math.sqrt(x.size)
    return Interval(float(x.mean()), half, sd, int(x.size), level)


def paired_difference(a: Any, b: Any, level: float = 0.95) -> Interval:
    """Mean of a_i - b_i over paired values (same seed and index: shared random numbers)
    with its ``level`` Student-t interval."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same shape, got {a.shape} and {b.shape}")
    return mean_interval(a - b, level)


__all__ = ["Interval", "TextScores", "mean_interval", "paired_difference", "score_texts", "t_quantile"]
