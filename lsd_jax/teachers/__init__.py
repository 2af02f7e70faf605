"""Teachers: a score function together with its graph, noise schedule and metrics.

`Teacher` is the concrete score model (`teachers.base.ScoreModel`) that the CLI and the
benchmarks build, for the exact Markov chain and for networks alike; the library itself
(samplers, distillation, tuning, evaluation) needs only the protocol's four attributes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from lsd_jax import graphs as graphs_lib
from lsd_jax import noise as noise_lib
from lsd_jax.eval.text_metrics import unigram_entropy
from lsd_jax.names import DEFAULT_NOISE, TEACHERS  # noqa: F401 - TEACHERS re-exported
from lsd_jax.teachers import markov
from lsd_jax.teachers.base import ScoreModel, check_model, check_score_fn


@dataclasses.dataclass(frozen=True, eq=False)
class Teacher:
    """A `ScoreModel` with a name, and for exact teachers the chain (exact metrics)."""

    score_fn: Callable  # (x [B, L] int32, sigmabar [B]) -> log-score [B, L, dim]
    graph: graphs_lib.Graph
    noise: noise_lib.Noise
    length: int
    name: str
    chain: Optional[markov.MarkovChain] = None  # exact teachers only
    decode: Optional[Callable] = None  # tokens [L] -> str, where a tokenizer is known
    features: Optional[Callable] = None  # tokens [B, L] -> [B, F] network features (network teachers)

    @property
    def exact(self) -> bool:
        return self.chain is not None

    def metrics(self, tokens) -> dict:
        """Exact metrics for chain teachers; unigram entropy otherwise."""
        if self.chain is not None:
            return markov.evaluate(self.chain, tokens)
        return {"unigram_entropy": unigram_entropy(tokens, mode="pooled")}

    def describe(self) -> dict:
        d = {"name": self.name, "graph": self.graph.name, "noise": self.noise.to_dict(), "length": self.length}
        if self.chain is not None:
            d["vocab"] = self.chain.num_tokens
        return d


def markov_teacher(
    graph: str = "absorb",
    noise: Optional[str] = None,
    vocab: int = 16,
    length: int = 32,
    seed: int = 0,
) -> Teacher:
    """The exact synthetic teacher (default: V 16, L 32, chain seed 0)."""
    g = graphs_lib.get_graph(graph, vocab)
    n = noise_lib.get_noise(noise or DEFAULT_NOISE[g.name])
    chain = markov.make_chain(vocab, length, seed=seed)
    return Teacher(chain.score_fn(g), g, n, length, f"markov-v{vocab}-l{length}-s{seed}", chain,
                   letter_decoder(vocab))


def letter_decoder(vocab: int) -> Callable:
    """Token ids -> letters a, b, c, ... ('_' for the mask); numbers past 36 tokens."""
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"

    def decode(tokens) -> str:
        if vocab > len(letters):
            return " ".join(str(int(t)) for t in np.asarray(tokens))
        return "".join(letters[int(t)] if 0 <= int(t) < vocab else "_" for t in np.asarray(tokens))

    return decode
