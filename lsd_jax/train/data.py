"""Training batches and the validation set: exact synthetic samples or corpus rows.

"markov" / "hmm" draw fresh exact samples of the synthetic model every step (infinite
data; the chain of `lsd_jax.teachers.markov_teacher()` or the HMM of `hmm_teacher()` for
the same sizes and seed) and hold out a fixed validation set of `val_size` samples drawn
from a key independent of the training seed; "text" draws random rows of the packed
training split of `lsd_jax.data.corpus` and validates on `val_size` evenly spaced rows of
its validation split.

Both expose: num_tokens, decode, oracle (the exact MarkovChain / HMM, or None), source
(the array passed into the jitted step, or None), batch(source, key, n) -> x0 [n, L]
int32, validation(cfg) -> [val_size, L], describe() -> dict.
"""

from __future__ import annotations

from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax.data.corpus import load_corpus
from lsd_jax.teachers import hmm, markov
from lsd_jax.train.config import CHAIN_FILE, HMM_FILE, VAL_KEY, TrainConfig

Array = Any  # a jax array


class ExactData:
    """Fresh exact samples of the Markov chain or HMM each step; a fixed validation set."""

    def __init__(self, cfg: TrainConfig):
        if cfg.data == "hmm":
            self.oracle = hmm.make_hmm(cfg.hmm_states, cfg.vocab, cfg.length, seed=cfg.chain_seed)
            self.file = HMM_FILE  # where export writes oracle.to_dict()
        else:
            self.oracle = markov.make_chain(cfg.vocab, cfg.length, seed=cfg.chain_seed)
            self.file = CHAIN_FILE
        self.kind = cfg.data
        self.num_tokens = cfg.vocab
        self.decode = None
        self.source: Any = None  # nothing to pass into the jitted step
        self._val = None

    def batch(self, source, key: Array, n: int) -> Array:
        del source
        return self.oracle.sample(key, n)

    def validation(self, cfg: TrainConfig) -> np.ndarray:
        if self._val is None or self._val.shape[0] != cfg.val_size:
            key = jax.random.fold_in(jax.random.PRNGKey(VAL_KEY), cfg.chain_seed)
            self._val = np.asarray(jax.jit(self.oracle.sample, static_argnums=1)(key, cfg.val_size))
        return self._val

    def describe(self) -> dict:
        out = {"kind": self.kind, "vocab": self.num_tokens, "length": self.oracle.length,
               "entropy_rate": self.oracle.entropy_rate()}
        if self.kind == "hmm":
            out.update(states=self.oracle.num_states, entropy_rate_se=self.oracle.entropy_rate_se())
        return out


class TextData:
    """Random rows of the packed training split; `val_size` evenly spaced validation rows."""

    def __init__(self, cfg: TrainConfig):
        corpus = load_corpus(cfg.tokenizer, cfg.length, verbose=False)
        self.corpus = corpus
        self.num_tokens = int(corpus.tokenizer.vocab_size)
        self.decode = corpus.tokenizer.decode
        self.source = jnp.asarray(corpus.train, jnp.int32)
        self.oracle = None

    def batch(self, source, key: Array, n: int) -> Array:
        idx = jax.random.randint(key, (n,), 0, source.shape[0])
        return source[idx]

    def validation(self, cfg: TrainConfig) -> np.ndarray:
        rows = self.corpus.validation
        if rows.shape[0] <= cfg.val_size:
            return np.asarray(rows, np.int32)
        idx = np.linspace(0, rows.shape[0] - 1, cfg.val_size).round().astype(np.int64)
        return np.asarray(rows[idx], np.int32)

    def describe(self) -> dict:
        return {"kind": "text", "tokenizer": self.corpus.tokenizer.name, "vocab": self.num_tokens,
                "seq_len": int(self.corpus.train.shape[1]), "train_rows": int(self.corpus.train.shape[0]),
                "validation_rows": int(self.corpus.validation.shape[0])}


def make_data(cfg: TrainConfig) -> Union[ExactData, TextData]:
    return TextData(cfg) if cfg.data == "text" else ExactData(cfg)
