"""A teacher from a SEDD-family checkpoint (HF layout or converted by `lsd-jax convert`)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from lsd_jax.teachers import Teacher, letter_decoder
from lsd_jax.teachers.markov import MarkovChain
# written by train-teacher: chain.json (networks trained on a Markov chain), tokenizer.json (text teachers)
from lsd_jax.names import CHAIN_FILE, TOKENIZER_FILE

GPT2_TOKENS = 50257


def _gpt2_decoder():
    """GPT-2 decode for checkpoints in GPT-2's vocabulary; None when the tokenizer can't be had."""
    try:
        from lsd_jax.data.corpus import get_tokenizer

        tok = get_tokenizer("gpt2")
    except Exception as e:  # noqa: BLE001 - decoding is a convenience, never fatal
        print(f"note: no GPT-2 tokenizer for decoding samples ({e})", file=sys.stderr)
        return None
    return lambda ids: tok.decode([int(i) for i in np.asarray(ids) if 0 <= int(i) < GPT2_TOKENS])


def _named_decoder(tok_file: str, num_tokens: int):
    """Decode with the tokenizer named in a train-teacher tokenizer.json (ids >= num_tokens,
    i.e. the mask, are dropped)."""
    from lsd_jax.data.corpus import get_tokenizer

    with open(tok_file) as f:
        name = json.load(f)["tokenizer"]
    tok = get_tokenizer(name)
    if tok.vocab_size != num_tokens:
        raise ValueError(f"{tok_file}: tokenizer {name!r} has {tok.vocab_size} tokens, the checkpoint {num_tokens}")
    return lambda ids: tok.decode([int(i) for i in np.asarray(ids) if 0 <= int(i) < num_tokens])


def load_teacher(path: str, dtype=None) -> Teacher:
    """Loads the checkpoint, builds its graph and noise, wraps the model as a score function."""
    from lsd_jax.models.dit import score_fn_from
    from ports import sedd

    model, params, cfg = sedd.load(path, dtype)
    graph, noise = sedd.build_core(cfg)
    decode = _gpt2_decoder() if cfg.num_tokens == GPT2_TOKENS else None
    tok_file = os.path.join(path, TOKENIZER_FILE)
    if os.path.exists(tok_file):  # a text teacher trained in the project: its own tokenizer
        decode = _named_decoder(tok_file, graph.num_tokens)
    name = f"{cfg.family}-{cfg.graph}:{os.path.basename(os.path.normpath(path))}"
    chain = None
    chain_file = os.path.join(path, CHAIN_FILE)
    if os.path.exists(chain_file):  # a network trained on the synthetic chain: exact metrics apply
        with open(chain_file) as f:
            chain = MarkovChain.from_dict(json.load(f))
        if chain.num_tokens != graph.num_tokens or chain.length != cfg.length:
            raise ValueError(f"{chain_file}: chain V={chain.num_tokens}, L={chain.length} does not match the "
                             f"checkpoint's V={graph.num_tokens}, L={cfg.length}")
        decode = letter_decoder(chain.num_tokens)
    return Teacher(score_fn_from(model, params, cfg), graph, noise, cfg.length, name, chain, decode,
                   _pooled_features(model, params, noise))


def _pooled_features(model, params, noise, t: float = 1e-4, chunk: int = 256):
    """tokens [B, L] -> [B, D]: the network's final hidden states at t (nearly clean), mean-pooled."""
    import jax.numpy as jnp

    from lsd_jax.models.dit import features_fn_from

    feats = features_fn_from(model, params)

    def features(tokens) -> np.ndarray:
        x = jnp.asarray(np.asarray(tokens), jnp.int32)
        sb = noise.total(jnp.full((min(chunk, x.shape[0]),), t))
        out = [np.asarray(feats(x[i:i + chunk], sb[: x[i:i + chunk].shape[0]])) for i in range(0, x.shape[0], chunk)]
        return np.concatenate(out)

    return features

