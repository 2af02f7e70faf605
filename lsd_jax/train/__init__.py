"""Teacher training: a small DiT fitted with SEDD's score entropy or MDLM's masked cross-entropy.

Modules, one idea each:
    config     TrainConfig (+ validation), file names, the reproducing command (no jax)
    objective  the training losses (OBJECTIVES: score entropy, masked CE) and the validation NELBO
    data       batches: exact Markov-chain / HMM samples or packed corpus rows
    loop       optimiser, EMA, jitted step, evaluation, orbax resume, export: `train`
    plots      the validation curve
The `lsd-jax train-teacher` flags live in `lsd_jax.cli`.

Output directory (`train(cfg, out_dir)` / `lsd-jax train-teacher --out DIR`):
    lsd_config.json, params/   the EMA model, loadable by `ports.sedd.load(DIR)` (and so by
                               `lsd-jax sample --checkpoint DIR`, `load_teacher(DIR)`)
    chain.json                 markov data only: `MarkovChain.to_dict()` of the data chain
    hmm.json                   hmm data only: `HMM.to_dict()` of the data HMM
    tokenizer.json             text data only: {"tokenizer": name (get_tokenizer), "seq_len"}
    train_config.json          the TrainConfig (checked on --resume)
    train_log.json             history (train loss, validation NELBO per token, nats and
                               bits), summary, command, device, wall time
    val_curve.png              validation NELBO (EMA and raw params) and train loss vs step
    state/                     orbax training checkpoints (params, EMA, optimizer, step);
                               listed in DIR/.gitignore (4x the model size)
jax runs on the GPU automatically when it sees one.

Every public name of the modules is re-exported here (`from lsd_jax import train;
train.train(...)`). Those of config are imported eagerly; the others on first access
(PEP 562), so that building the `lsd-jax` parser, which reads config, imports no jax.
"""

from __future__ import annotations

import importlib
from typing import Any

from lsd_jax.train.config import (
    CHAIN_FILE, CONFIG_FILE, DATA, DEFAULT_NOISE, GRAPHS, HMM_FILE, LOG_FILE, NOISES, OBJECTIVES, PLOT_FILE,
    RESUME_MAY_CHANGE, SCHEDULES, STATE_DIR, TOKENIZER_FILE, TOKENIZERS, VAL_KEY, TrainConfig, command_for,
)

_LAZY = {
    "objective": ("score_entropy_loss", "masked_ce_loss", "get_objective", "stratified_times", "prior_kl", "ESTIMATORS",
                  "default_estimator", "masked_count_draw", "nelbo_chunk", "nelbo", "Loss"),
    "data": ("ExactData", "TextData", "make_data"),
    "loop": ("build_graph_noise", "dit_config", "lr_schedule", "make_optimizer", "ema_decay", "export", "train"),
    "plots": ("plot_curve",),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}
_SUBMODULES = ("config", *_LAZY)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"lsd_jax.train.{_WHERE[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"lsd_jax.train.{name}")
    raise AttributeError(f"module 'lsd_jax.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | set(_SUBMODULES))


__all__ = [
    "CHAIN_FILE", "CONFIG_FILE", "DATA", "HMM_FILE", "DEFAULT_NOISE",
    "GRAPHS", "LOG_FILE", "NOISES", "OBJECTIVES", "PLOT_FILE",
    "RESUME_MAY_CHANGE", "SCHEDULES", "STATE_DIR", "TOKENIZER_FILE", "TOKENIZERS", "VAL_KEY", "TrainConfig",
    "command_for", *_WHERE,
]
