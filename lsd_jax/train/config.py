"""The configuration of a teacher training run: `TrainConfig`, its validation, file names.

Imports no jax (the `lsd-jax` parser reads the defaults and choices from here).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from lsd_jax.names import CHAIN_FILE, DEFAULT_NOISE, GRAPHS, HMM_FILE, NOISES, TOKENIZER_FILE  # noqa: F401 - re-exported

DATA = ("markov", "hmm", "text")
SCHEDULES = ("cosine", "constant")
TOKENIZERS = ("char", "text8", "gpt2")
# Training objectives; `lsd_jax.train.objective.OBJECTIVES` maps each name to its loss.
# score-entropy: SEDD (a "sedd" DiT, the concrete score); masked-ce: MDLM's weighted masked
# cross-entropy (an "mdlm" DiT, the posterior; absorbing graph only).
OBJECTIVES = ("score-entropy", "masked-ce")
VAL_KEY = 20240601  # the validation set and its noise do not depend on the training seed
CONFIG_FILE = "train_config.json"
LOG_FILE = "train_log.json"
PLOT_FILE = "val_curve.png"
STATE_DIR = "state"
# Fields that may differ when resuming (they do not change the optimisation path up to
# the saved step; a new `steps` changes the cosine schedule from there on).
RESUME_MAY_CHANGE = ("steps", "eval_every", "checkpoint_every", "final_repeats")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (hashable: the jitted step is cached on it).

    data: "markov" (exact chain samples; vocab, chain_seed, length), "hmm" (exact HMM
    samples; hmm_states, vocab, chain_seed as the HMM's seed, length) or "text" (corpus
    rows of `tokenizer`, seq_len = length). graph: absorb | uniform; noise: loglinear |
    geometric (None: loglinear for absorb, geometric for uniform, as SEDD).
    scale_by_sigma: None = on for absorb with score-entropy (SEDD), off otherwise (not
    allowed for uniform or masked-ce).
    objective: one of OBJECTIVES (the training loss and the model's parametrisation:
    score-entropy -> "sedd" DiT, masked-ce -> "mdlm" DiT; validation is always the NELBO).
    """

    data: str = "markov"
    graph: str = "absorb"
    noise: Optional[str] = None
    objective: str = "score-entropy"
    # model
    hidden_size: int = 128
    n_blocks: int = 4
    n_heads: int = 4
    cond_dim: int = 64
    scale_by_sigma: Optional[bool] = None
    length: int = 32
    # markov data (defaults = lsd_jax.teachers.markov_teacher())
    vocab: int = 16
    chain_seed: int = 0
    # hmm data (lsd_jax.teachers.hmm_teacher() is hmm_states 16, vocab 32, length 32)
    hmm_states: int = 16
    # text data
    tokenizer: str = "char"
    # optimisation
    batch_size: int = 128
    steps: int = 3000
    lr: float = 1e-3
    warmup: int = 200
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.999
    sampling_eps: float = 1e-3
    # evaluation and checkpoints
    eval_every: int = 250
    val_size: int = 2048
    eval_batch: int = 512
    checkpoint_every: int = 500
    final_repeats: int = 8
    seed: int = 0

    # --- derived ---------------------------------------------------------------------
    @property
    def noise_name(self) -> str:
        return self.noise or DEFAULT_NOISE.get(self.graph, "loglinear")

    @property
    def use_scale_by_sigma(self) -> bool:
        if self.scale_by_sigma is None:
            return self.graph == "absorb" and self.objective == "score-entropy"
        return bool(self.scale_by_sigma)

    @property
    def family(self) -> str:
        """The DiT family of the objective's parametrisation (`lsd_jax.models.dit`)."""
        return "mdlm" if self.objective == "masked-ce" else "sedd"

    def problems(self) -> list[str]:
        """One message per bad field, naming it and its allowed values."""
        p = []

        def choice(name, allowed):
            v = getattr(self, name)
            if v not in allowed:
                p.append(f"{name} = {v!r} is not supported; allowed: {', '.join(allowed)}")

        def integer(name, lo):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                p.append(f"{name} = {v!r} must be an integer >= {lo}")

        def real(name, lo, hi, lo_open=False, hi_open=False):
            v = getattr(self, name)
            ok = isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
            if ok:
                ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
            if not ok:
                lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
                p.append(f"{name} = {v!r} must be a number in {lb}{lo}, {hi}{rb}")

        choice("data", DATA)
        choice("graph", GRAPHS)
        if self.noise is not None:
            choice("noise", NOISES)
        choice("objective", OBJECTIVES)
        choice("schedule", SCHEDULES)
        if self.data == "text":
            choice("tokenizer", TOKENIZERS)
        for name, lo in (("hidden_size", 2), ("n_blocks", 1), ("n_heads", 1), ("cond_dim", 1), ("length", 2),
                         ("vocab", 2), ("batch_size", 1), ("steps", 1), ("warmup", 0), ("eval_every", 1),
                         ("val_size", 1), ("eval_batch", 1), ("checkpoint_every", 1), ("final_repeats", 1),
                         ("chain_seed", 0), ("hmm_states", 2),
                         ("seed", 0)):
            integer(name, lo)
        real("lr", 0.0, math.inf, lo_open=True, hi_open=True)
        real("min_lr_ratio", 0.0, 1.0)
        real("weight_decay", 0.0, math.inf, hi_open=True)
        real("grad_clip", 0.0, math.inf, hi_open=True)
        real("ema", 0.0, 1.0, hi_open=True)
        real("sampling_eps", 0.0, 1.0, lo_open=True, hi_open=True)
        d, h = self.hidden_size, self.n_heads
        if isinstance(d, int) and isinstance(h, int) and d > 0 and h > 0:
            if d % h:
                p.append(f"hidden_size = {d} must be divisible by n_heads = {h}")
            elif (d // h) % 2:
                p.append(f"hidden_size / n_heads = {d // h} must be even (rotary embedding)")
        if self.scale_by_sigma and self.graph == "uniform":
            p.append("scale_by_sigma = True is not supported with graph = 'uniform'; allowed: False or None "
                     "(SEDD defines it for the absorbing graph only)")
        if self.objective == "masked-ce" and self.graph != "absorb":
            p.append(f"objective = 'masked-ce' is not supported with graph = {self.graph!r}; allowed: absorb "
                     "(the masked posterior needs the absorbing graph)")
        if self.scale_by_sigma and self.objective == "masked-ce":
            p.append("scale_by_sigma = True is not supported with objective = 'masked-ce'; allowed: False or None")
        if self.scale_by_sigma not in (None, True, False):
            p.append(f"scale_by_sigma = {self.scale_by_sigma!r} must be True, False or None")
        return p

    def validate(self) -> "TrainConfig":
        p = self.problems()
        if p:
            raise ValueError("bad training config: " + "; ".join(p))
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; allowed: {sorted(names)}")
        return cls(**d)


def command_for(cfg: TrainConfig, out_dir: str) -> str:
    """The `lsd-jax train-teacher` command line that reproduces `cfg` (every field explicit)."""
    parts = ["lsd-jax train-teacher"]
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in ("eval_batch", "sampling_eps", "scale_by_sigma") or v is None:
            continue  # not CLI flags (defaults)
        if (f.name == "tokenizer" and cfg.data != "text" or f.name in ("vocab", "chain_seed") and cfg.data == "text"
                or f.name == "hmm_states" and cfg.data != "hmm"):
            continue
        if f.name == "objective" and v == OBJECTIVES[0]:
            continue  # the default; runs from before the field existed print the same command
        parts.append(f"--{f.name.replace('_', '-')} {v}")
    parts.append(f"--out {out_dir}")
    return " ".join(parts)
