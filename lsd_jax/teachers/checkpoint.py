"""A teacher from a SEDD-family checkpoint (HF layout or converted by `lsd-jax convert`)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from lsd_jax.teachers import Teacher, letter_decoder
from lsd_jax.teachers.hmm import HMM
from lsd_jax.teachers.markov import MarkovChain
# written by train-teacher: chain.json / hmm.json (networks trained on a Markov chain / an HMM),
# tokenizer.json (text teachers)
from lsd_jax.names import CHAIN_FILE, HMM_FILE, TOKENIZER_FILE

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
    """Loads the checkpoint, builds its graph and noise, wraps the model as a score function.
    A student directory (`lsd-jax distill-student`) loads as its student."""
    from lsd_jax.models.dit import score_fn_from
    from lsd_jax.students import STUDENT_FILE
    from ports import sedd

    if os.path.isfile(os.path.join(path, STUDENT_FILE)):
        from lsd_jax.students.di4c import load_student

        return load_student(path)

    model, params, cfg = sedd.load(path, dtype)
    graph, noise = sedd.build_core(cfg)
    decode = _gpt2_decoder() if cfg.num_tokens == GPT2_TOKENS else None
    tok_file = os.path.join(path, TOKENIZER_FILE)
    if os.path.exists(tok_file):  # a text teacher trained in the project: its own tokenizer
        decode = _named_decoder(tok_file, graph.num_tokens)
    name = f"{cfg.family}-{cfg.graph}:{os.path.basename(os.path.normpath(path))}"
    exact = exact_oracles(path, graph.num_tokens, cfg.length)
    if exact:
        decode = letter_decoder(graph.num_tokens)
    head = "masked" if graph.is_absorbing else "full"  # the Linear only where a token can change: same samples
    return Teacher(score_fn_from(model, params, cfg, head=head), graph, noise, cfg.length, name, decode=decode,
                   features=_pooled_features(model, params, noise), **exact)


def exact_oracles(path: str, num_tokens: int, length: int) -> dict:
    """{"chain": MarkovChain} / {"hmm": HMM} from path/chain.json / hmm.json (the synthetic data a
    network was trained on: exact metrics apply), {} if neither; a ValueError if V or L differ."""
    exact = {}
    for field, fname, cls in (("chain", CHAIN_FILE, MarkovChain), ("hmm", HMM_FILE, HMM)):
        file = os.path.join(path, fname)
        if os.path.exists(file):
            with open(file) as f:
                oracle = cls.from_dict(json.load(f))
            if oracle.num_tokens != num_tokens or oracle.length != length:
                raise ValueError(f"{file}: V={oracle.num_tokens}, L={oracle.length} does not match the "
                                 f"checkpoint's V={num_tokens}, L={length}")
            exact[field] = oracle
    return exact


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

