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
from lsd_jax.names import DEFAULT_NOISE, TEACHER_DEFAULTS, TEACHERS  # noqa: F401 - re-exported
from lsd_jax.teachers import hmm as hmm_lib
from lsd_jax.teachers import markov
from lsd_jax.teachers.base import ScoreModel, check_model, check_score_fn
EXACT_TEACHERS = TEACHERS


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
    hmm: Optional[hmm_lib.HMM] = None  # exact HMM teachers (and networks trained on one)

    @property
    def oracle(self):
        """The exact data model (MarkovChain or HMM) or None: has evaluate(tokens),
        entropy_rate(), unigram_entropy(), num_tokens, length."""
        return self.chain if self.chain is not None else self.hmm

    @property
    def exact(self) -> bool:
        return self.oracle is not None

    def metrics(self, tokens) -> dict:
        """The exact model's metrics (`evaluate`) for exact teachers; unigram entropy otherwise."""
        if self.oracle is not None:
            return self.oracle.evaluate(tokens)
        return {"unigram_entropy": unigram_entropy(tokens, mode="pooled")}

    def describe(self) -> dict:
        d = {"name": self.name, "graph": self.graph.name, "noise": self.noise.to_dict(), "length": self.length}
        if self.oracle is not None:
            d["vocab"] = self.oracle.num_tokens
        if self.hmm is not None:
            d["states"] = self.hmm.num_states
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


def hmm_teacher(
    graph: str = "absorb",
    states: int = 16,
    vocab: int = 32,
    length: int = 32,
    seed: int = 0,
    noise: Optional[str] = None,
) -> Teacher:
    """The exact HMM teacher with long-range dependence (default: H 16, V 32, L 32, seed 0;
    `hmm.make_hmm`)."""
    g = graphs_lib.get_graph(graph, vocab)
    n = noise_lib.get_noise(noise or DEFAULT_NOISE[g.name])
    model = hmm_lib.make_hmm(states, vocab, length, seed=seed)
    return Teacher(model.score_fn(g), g, n, length, f"hmm-h{states}-v{vocab}-l{length}-s{seed}",
                   decode=letter_decoder(vocab), hmm=model)


def letter_decoder(vocab: int) -> Callable:
    """Token ids -> letters a, b, c, ... ('_' for the mask); numbers past 36 tokens."""
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"

    def decode(tokens) -> str:
        if vocab > len(letters):
            return " ".join(str(int(t)) for t in np.asarray(tokens))
        return "".join(letters[int(t)] if 0 <= int(t) < vocab else "_" for t in np.asarray(tokens))

    return decode
