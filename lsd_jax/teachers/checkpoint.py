"""A teacher from a SEDD-family checkpoint (HF layout or converted by `lsd-jax convert`)."""

from __future__ import annotations

import os
import sys

import numpy as np

from lsd_jax.teachers import Teacher

GPT2_TOKENS = 50257


def _gpt2_decoder():
    """GPT-2 decode for checkpoints in GPT-2's vocabulary; None when the tokenizer can't be had."""
    try:
        from lsd_jax.data.tokenizers import get_tokenizer

        tok = get_tokenizer("gpt2")
    except Exception as e:  # noqa: BLE001 - decoding is a convenience, never fatal
        print(f"note: no GPT-2 tokenizer for decoding samples ({e})", file=sys.stderr)
        return None
    return lambda ids: tok.decode([int(i) for i in np.asarray(ids) if 0 <= int(i) < GPT2_TOKENS])


def load_teacher(path: str, dtype=None) -> Teacher:
    """Loads the checkpoint, builds its graph and noise, wraps the model as a score function."""
    from lsd_jax.models.dit import score_fn_from
    from ports import sedd

    model, params, cfg = sedd.load(path, dtype)
    graph, noise = sedd.build_core(cfg)
    decode = _gpt2_decoder() if cfg.num_tokens == GPT2_TOKENS else None
    name = f"{cfg.family}-{cfg.graph}:{os.path.basename(os.path.normpath(path))}"
    return Teacher(score_fn_from(model, params, cfg), graph, noise, cfg.length, name, None, decode)
