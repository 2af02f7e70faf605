"""Teacher training: a small SEDD DiT fitted with the denoising score-entropy loss.

Loss (SEDD `losses.py`, `get_loss_fn`): for clean x0 [B, L],
    t ~ U(sampling_eps, 1),  sigmabar = noise.total(t),  x_t ~ graph.sample_transition(x0, sigmabar),
    loss_b = sum_i noise.rate(t) * graph.score_entropy(log_score(x_t, sigmabar), sigmabar, x_t, x0)[b, i],
averaged over the batch (reported per token: divided by L). Over t in (0, 1) its
expectation is the continuous-time diffusion NELBO without the prior term; `nelbo`
estimates that integral on a fixed validation set (absorbing graph: stratified masked
counts, see `masked_count_draw`; uniform: stratified t) and adds the prior term
KL(q(x_1 | x0) || base) (`prior_kl`). So the validation loss is an upper bound on the NLL
per token, in nats (divide by ln 2 for bits: bits per character on the char corpus).
For the Markov chain it must approach `chain.entropy_rate()` from above; with the chain's
exact score it is tight (absorbing: per sequence, so it matches the validation set's own
NLL + prior; uniform with the geometric schedule: it bounds -log of the data smoothed
by sigmabar(0) = sigma_min, equal in expectation but not per rare sequence). The run logs
it on the same draws (`exact_score_nelbo`) as the floor the network's NELBO is compared to.

Data: "markov" draws fresh exact chain samples every step (infinite data; the chain of
`lsd_jax.teachers.markov_teacher()` by default) and holds out a fixed validation set of
`val_size` chain samples drawn from a key independent of the training seed; "text" draws
random rows of the packed training split of `lsd_jax.data.corpus` and validates on
`val_size` evenly spaced rows of its validation split.

Optimisation: optax AdamW (gradient clipping, linear warm-up, then cosine decay to
`min_lr_ratio` lr or constant), an EMA of the parameters (decay warmed up as
min(ema, (1 + step) / (10 + step))) that is used for validation and exported. Every
random number of step s comes from fold_in(key(seed), s), so a run resumed from an orbax
checkpoint (`resume=True`) reproduces the uninterrupted run exactly.

Output directory (`train(cfg, out_dir)` / `lsd-jax train-teacher --out DIR`):
    lsd_config.json, params/   the EMA model, loadable by `ports.sedd.load(DIR)` (and so by
                               `lsd-jax sample --checkpoint DIR`, `load_teacher(DIR)`)
    chain.json                 markov data only: `MarkovChain.to_dict()` of the data chain
    tokenizer.json             text data only: {"tokenizer": name (get_tokenizer), "seq_len"}
    train_config.json          the TrainConfig (checked on --resume)
    train_log.json             history (train loss, validation NELBO per token, nats and
                               bits), summary, command, device, wall time
    val_curve.png              validation NELBO (EMA and raw params) and train loss vs step
    state/                     orbax training checkpoints (params, EMA, optimizer, step);
                               listed in DIR/.gitignore (4x the model size)
jax runs on the GPU automatically when it sees one.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Callable, Optional

import numpy as np

# jax (and the modules that import it) are imported inside the functions, so that
# `register` (run whenever the lsd-jax parser is built) stays cheap.
Array = Any  # a jax array

GRAPHS = ("absorb", "uniform")  # = lsd_jax.graphs.GRAPHS
NOISES = ("loglinear", "geometric")  # = lsd_jax.noise.NOISES

DATA = ("markov", "text")
SCHEDULES = ("cosine", "constant")
TOKENIZERS = ("char", "text8", "gpt2")
DEFAULT_NOISE = {"absorb": "loglinear", "uniform": "geometric"}  # SEDD's recipes
VAL_KEY = 20240601  # the validation set and its noise do not depend on the training seed
CHAIN_FILE = "chain.json"
TOKENIZER_FILE = "tokenizer.json"  # text data: {"tokenizer": name for get_tokenizer, "seq_len"}
CONFIG_FILE = "train_config.json"
LOG_FILE = "train_log.json"
PLOT_FILE = "val_curve.png"
STATE_DIR = "state"
# Fields that may differ when resuming (they do not change the optimisation path up to
# the saved step; a new `steps` changes the cosine schedule from there on).
RESUME_MAY_CHANGE = ("steps", "eval_every", "checkpoint_every", "final_repeats")


# ------------------------------------------------------------------------------ config
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (hashable: the jitted step is cached on it).

    data: "markov" (exact chain samples; vocab, chain_seed, length) or "text" (corpus rows
    of `tokenizer`, seq_len = length). graph: absorb | uniform; noise: loglinear |
    geometric (None: loglinear for absorb, geometric for uniform, as SEDD).
    scale_by_sigma: None = on for absorb (SEDD), off for uniform (not allowed there).
    """

    data: str = "markov"
    graph: str = "absorb"
    noise: Optional[str] = None
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
        return self.graph == "absorb" if self.scale_by_sigma is None else bool(self.scale_by_sigma)

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
        choice("schedule", SCHEDULES)
        if self.data == "text":
            choice("tokenizer", TOKENIZERS)
        for name, lo in (("hidden_size", 2), ("n_blocks", 1), ("n_heads", 1), ("cond_dim", 1), ("length", 2),
                         ("vocab", 2), ("batch_size", 1), ("steps", 1), ("warmup", 0), ("eval_every", 1),
                         ("val_size", 1), ("eval_batch", 1), ("checkpoint_every", 1), ("final_repeats", 1),
                         ("chain_seed", 0),
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


# ------------------------------------------------------------------------------- parts
def build_graph_noise(cfg: TrainConfig, num_tokens: int):
    """(graph, noise) objects of the config for `num_tokens` data tokens."""
    from lsd_jax import graphs as graphs_lib
    from lsd_jax import noise as noise_lib

    return graphs_lib.get_graph(cfg.graph, num_tokens), noise_lib.get_noise(cfg.noise_name)


def dit_config(cfg: TrainConfig, num_tokens: int):
    from lsd_jax.models.dit import DiTConfig

    return DiTConfig(
        vocab_size=num_tokens + (cfg.graph == "absorb"), hidden_size=cfg.hidden_size, cond_dim=cfg.cond_dim,
        n_blocks=cfg.n_blocks, n_heads=cfg.n_heads, length=cfg.length, scale_by_sigma=cfg.use_scale_by_sigma,
        family="sedd", graph=cfg.graph,
    )


def score_entropy_loss(
    log_score_fn: Callable[[Array, Array], Array],
    graph,
    noise,
    key: Array,
    x0: Array,
    t: Optional[Array] = None,
    sampling_eps: float = 1e-3,
) -> Array:
    """SEDD's training loss per sequence [B]: sum over positions of rate(t) * DSE.

    log_score_fn(x_t [B, L], sigmabar [B]) -> log concrete score [B, L, dim]; t [B]
    defaults to U(sampling_eps, 1) draws (SEDD's). Divide by L for a per-token value.
    """
    import jax

    k_t, k_x = jax.random.split(key)
    if t is None:
        t = (1.0 - sampling_eps) * jax.random.uniform(k_t, (x0.shape[0],)) + sampling_eps
    sigma = noise.total(t)
    x_t = graph.sample_transition(k_x, x0, sigma)
    log_score = log_score_fn(x_t, sigma)
    se = graph.score_entropy(log_score, sigma, x_t, x0)  # [B, L]
    return (noise.rate(t)[:, None] * se).sum(-1)


def stratified_times(key: Array, n: int) -> Array:
    """n draws in (0, 1), one in each stratum [j / n, (j + 1) / n), in random order (so
    that which sequence gets which stratum changes from one key to the next)."""
    import jax
    import jax.numpy as jnp

    k_u, k_p = jax.random.split(key)
    u = jax.random.uniform(k_u, (n,), minval=1e-6, maxval=1.0)
    return jax.random.permutation(k_p, (jnp.arange(n) + u) / n)


def _lazy_jit(fn, **jit_kwargs):
    """jax.jit(fn, **jit_kwargs), built on the first call (jax is imported lazily here)."""
    compiled = []

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if not compiled:
            import jax

            compiled.append(jax.jit(fn, **jit_kwargs))
        return compiled[0](*args, **kwargs)

    return call


_stratified_times_jit = _lazy_jit(stratified_times, static_argnums=1)


def prior_kl(graph, noise) -> float:
    """KL(q(x_1 | x0) || base) per token, nats (float64), the prior term of the NELBO.

    uniform: base = uniform over the V tokens. absorbing: the forward process leaves a
    token clean with probability p = exp(-sigmabar(1)) (loglinear: p = eps), so the
    all-mask limit is never reached exactly; base = mask with probability 1 - p, else a
    uniform token, giving p log V (0.0028 nats/token for eps = 1e-3, V = 16). The samplers
    start from all masks, which differs from this base in that mass p per token.
    """
    import jax.numpy as jnp

    sbar = float(noise.total(jnp.asarray(1.0, jnp.float32)))
    v = graph.num_tokens
    p = math.exp(-sbar)
    if graph.is_absorbing:
        return p * math.log(v)
    move = -math.expm1(-sbar) / v
    stay = p + move
    return stay * math.log(stay * v) + (v - 1) * move * math.log(move * v)


# ------------------------------------------------------------------------------ data
class MarkovData:
    """Fresh exact samples of a chain each step; a fixed validation set."""

    def __init__(self, cfg: TrainConfig):
        from lsd_jax.teachers import markov

        self.chain = markov.make_chain(cfg.vocab, cfg.length, seed=cfg.chain_seed)
        self.num_tokens = cfg.vocab
        self.decode = None
        self.source: Any = None  # nothing to pass into the jitted step

    def batch(self, source, key: Array, n: int) -> Array:
        del source
        return self.chain.sample(key, n)

    def validation(self, cfg: TrainConfig) -> np.ndarray:
        import jax

        if getattr(self, "_val", None) is None or self._val.shape[0] != cfg.val_size:
            key = jax.random.fold_in(jax.random.PRNGKey(VAL_KEY), cfg.chain_seed)
            self._val = np.asarray(jax.jit(self.chain.sample, static_argnums=1)(key, cfg.val_size))
        return self._val

    def describe(self) -> dict:
        return {"kind": "markov", "vocab": self.num_tokens, "length": self.chain.length,
                "entropy_rate": self.chain.entropy_rate()}


class TextData:
    """Random rows of the packed training split; `val_size` evenly spaced validation rows."""

    def __init__(self, cfg: TrainConfig):
        import jax.numpy as jnp

        from lsd_jax.data.corpus import load_corpus

        corpus = load_corpus(cfg.tokenizer, cfg.length, verbose=False)
        self.corpus = corpus
        self.num_tokens = int(corpus.tokenizer.vocab_size)
        self.decode = corpus.tokenizer.decode
        self.source = jnp.asarray(corpus.train, jnp.int32)
        self.chain = None

    def batch(self, source, key: Array, n: int) -> Array:
        import jax

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


def make_data(cfg: TrainConfig):
    return MarkovData(cfg) if cfg.data == "markov" else TextData(cfg)


# ---------------------------------------------------------------------------- training
def lr_schedule(cfg: TrainConfig):
    """Linear warm-up from 0 to lr over `warmup` steps, then cosine to min_lr_ratio lr, or constant."""
    import optax

    warm = optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup, 1))
    if cfg.schedule == "constant":
        rest = optax.constant_schedule(cfg.lr)
    else:
        rest = optax.cosine_decay_schedule(cfg.lr, max(cfg.steps - cfg.warmup, 1), alpha=cfg.min_lr_ratio)
    if cfg.warmup == 0:
        return rest
    return optax.join_schedules([warm, rest], [cfg.warmup])


def make_optimizer(cfg: TrainConfig):
    """Clip by global norm, then AdamW (weight decay on matrices only: kernels, embedding)."""
    import jax
    import optax

    decay_mask = lambda params: jax.tree_util.tree_map(lambda a: a.ndim >= 2, params)  # noqa: E731
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(lr_schedule(cfg), b1=0.9, b2=0.999, eps=1e-8,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def ema_decay(cfg: TrainConfig, step: Array) -> Array:
    import jax.numpy as jnp

    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(cfg.ema, (1.0 + step) / (10.0 + step))


class _Run:
    """The jitted pieces of one config (cached: tests and resumes reuse the compilation)."""

    def __init__(self, cfg: TrainConfig, data):
        import jax

        from lsd_jax.models.dit import DiT

        self.cfg = cfg
        self.data = data
        self.graph, self.noise = build_graph_noise(cfg, data.num_tokens)
        self.dit = dit_config(cfg, data.num_tokens)
        self.model = DiT(self.dit)
        self.tx = make_optimizer(cfg)
        self.step = jax.jit(self._step, donate_argnums=(0,))
        self._init_jit = None
        self.exact_score = None  # the chain's exact score (markov data): the estimator's floor
        if getattr(data, "chain", None) is not None:
            self.exact_score = jax.tree_util.Partial(data.chain.score_fn(self.graph))

    def score_fn(self, params):
        """The model's log-score function as a pytree (params are leaves: no recompilation)."""
        from lsd_jax.models.dit import score_fn_from

        return score_fn_from(self.model, params, self.dit)

    def nelbo(self, score_fn, x_val, key, repeats: int = 1) -> dict:
        return nelbo(score_fn, x_val, self.graph, self.noise, key, self.cfg.eval_batch, repeats)

    def init_state(self) -> dict:
        import jax

        if self._init_jit is None:
            self._init_jit = jax.jit(self._init_state)
        return self._init_jit()

    def _init_state(self) -> dict:
        import jax
        import jax.numpy as jnp

        from lsd_jax.models.dit import init_params

        k_init = jax.random.fold_in(jax.random.PRNGKey(self.cfg.seed), 0)
        params = init_params(self.dit, k_init)
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "ema": jax.tree_util.tree_map(jnp.copy, params), "opt_state": self.tx.init(params)}

    def log_score_fn(self, params):
        return lambda x, sigma: self.model.apply({"params": params}, x, sigma)

    def _step(self, state: dict, source) -> tuple[dict, dict]:
        import jax
        import optax

        cfg = self.cfg
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 1), state["step"])
        k_data, k_loss = jax.random.split(key)
        x0 = self.data.batch(source, k_data, cfg.batch_size)

        def loss_fn(params):
            per_seq = score_entropy_loss(self.log_score_fn(params), self.graph, self.noise, k_loss, x0,
                                         sampling_eps=cfg.sampling_eps)
            return per_seq.mean()

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        d = ema_decay(cfg, state["step"])
        ema = jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, state["ema"], params)
        new = {"step": state["step"] + 1, "params": params, "ema": ema, "opt_state": opt_state}
        metrics = {"loss": loss / x0.shape[1], "grad_norm": optax.tree.norm(grads)}
        return new, metrics



@functools.lru_cache(maxsize=4)
def _run_for(cfg: TrainConfig) -> _Run:
    return _Run(cfg, make_data(cfg))


ESTIMATORS = ("masked", "time")


def default_estimator(graph) -> str:
    return "masked" if graph.is_absorbing else "time"


def masked_count_draw(key: Array, x0: Array, u: Array, graph, noise) -> tuple[Array, Array, Array]:
    """One draw of the masked-count NELBO estimator (absorbing graph): (x_t, sigmabar, weight).

    Conditioned on k masked tokens, the time of the absorbing process has density
    proportional to p^(k-1) (1 - p)^(L-k) in p = 1 - exp(-sigmabar). So draw k = 1 + floor(u L)
    (u stratified), p ~ Beta(k, L - k + 1), a uniform set of k masked positions, and weight
    p L / (k (1 - p) rate(t)) (0 where sigmabar(p) lies outside [sigmabar(0), sigmabar(1)]).
    Then E[weight rate(t) sum_i DSE_i] is the NELBO integral over t in (0, 1) (no masked
    token, no loss), with bounded per-sequence values: the plain t ~ U(0, 1) estimator has
    infinite variance there (a token masked at tiny t weighs ~1 / t) and is skewed low.
    """
    import jax
    import jax.numpy as jnp

    n, length = x0.shape
    k_p, k_m = jax.random.split(key)
    k = jnp.minimum(1 + jnp.floor(u * length), length).astype(jnp.int32)
    kf = k.astype(jnp.float32)
    p = jax.random.beta(k_p, kf, length - kf + 1.0)
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(k_m, (n, length)), axis=-1), axis=-1)
    x_t = jnp.where(ranks < k[:, None], graph.mask_id, x0)
    sbar = -jnp.log1p(-jnp.minimum(p, 1.0 - 1e-7))
    lo, hi = noise.total(jnp.float32(0.0)), noise.total(jnp.float32(1.0))
    valid = (sbar >= lo) & (sbar <= hi) & (p > 0.0)
    sbar = jnp.clip(sbar, jnp.maximum(lo, 1e-12), hi)
    weight = jnp.where(valid, p * length / (kf * (1.0 - p)), 0.0)  # (rate(t) cancels: see above)
    return x_t, sbar, weight


def _nelbo_chunk(score_fn, x0: Array, u: Array, key: Array, *, graph, noise, estimator: str) -> Array:
    """Sum over the chunk of per-sequence NELBO integrand draws (no prior term).

    score_fn: a pytree callable (jax.tree_util.Partial, e.g. `score_fn_from(...)`), so the
    params are traced arguments. u [B]: stratified uniforms (time, or masked count).
    """
    import jax.numpy as jnp

    if estimator == "time":
        return score_entropy_loss(score_fn, graph, noise, key, x0, t=u).sum()
    x_t, sbar, weight = masked_count_draw(key, x0, u, graph, noise)
    se = graph.score_entropy(score_fn(x_t, sbar), sbar, x_t, x0).sum(-1)
    return jnp.sum(jnp.where(weight > 0, weight * se, 0.0))


nelbo_chunk = _lazy_jit(_nelbo_chunk, static_argnames=("graph", "noise", "estimator"))


def nelbo(score_fn: Callable, x_val: np.ndarray, graph, noise, key: Array, batch: int = 512,
          repeats: int = 1, estimator: Optional[str] = None) -> dict:
    """Validation NELBO per token on x_val [N, L]: an estimate of the integral over t in
    (0, 1) of rate(t) E[sum_i DSE_i] (the continuous-time bound without its prior term) plus
    the prior term `prior_kl`; an upper bound on the NLL per token (see the module docstring).

    estimator: "masked" (absorbing graph, the default there: stratified masked counts, see
    `masked_count_draw`) or "time" (stratified t ~ U(0, 1): the default for the uniform
    graph). One draw has sd ~0.009 (masked) or ~0.012-0.017 (time) nats/token on 2048
    sequences of the V 16 chain: use repeats for final numbers.
    repeats R > 1 averages R independent draws (repeat 0 uses `key` itself, so it equals the
    R = 1 value); with the same key, two score functions see the same draws (paired).
    Returns {"nelbo", "nelbo_bits", "dse", "prior", "per_repeat", "se"} (nats per token
    unless *_bits; se: standard error over repeats, None for R = 1).
    """
    import jax
    import jax.numpy as jnp

    estimator = estimator or default_estimator(graph)
    if estimator not in ESTIMATORS or (estimator == "masked" and not graph.is_absorbing):
        raise ValueError(f"estimator = {estimator!r} is not supported for graph {graph.name!r}; allowed: "
                         + ("masked, time" if graph.is_absorbing else "time"))
    if not isinstance(score_fn, jax.tree_util.Partial):
        score_fn = jax.tree_util.Partial(score_fn)
    n, length = x_val.shape
    per = []
    for r in range(repeats):
        k_u, k_x = jax.random.split(key if r == 0 else jax.random.fold_in(key, r))
        u = np.asarray(_stratified_times_jit(k_u, n))
        total = 0.0
        for i, start in enumerate(range(0, n, batch)):
            stop = min(start + batch, n)
            total += float(nelbo_chunk(score_fn, jnp.asarray(x_val[start:stop]), jnp.asarray(u[start:stop]),
                                       jax.random.fold_in(k_x, i), graph=graph, noise=noise, estimator=estimator))
        per.append(total / (n * length))
    dse = float(np.mean(per))
    prior = prior_kl(graph, noise)
    se = float(np.std(per, ddof=1) / math.sqrt(repeats)) if repeats > 1 else None
    return {"nelbo": dse + prior, "nelbo_bits": (dse + prior) / math.log(2.0), "dse": dse, "prior": prior,
            "per_repeat": [p + prior for p in per], "se": se, "estimator": estimator}


# ------------------------------------------------------------------------- checkpoints
def _manager(out_dir: str):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(out_dir), STATE_DIR), options=opts)


def _save_state(mngr, state: dict, history: list) -> None:
    import orbax.checkpoint as ocp

    step = int(state["step"])
    if mngr.latest_step() == step:
        return
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            history=ocp.args.JsonSave({"history": history})))
    mngr.wait_until_finished()


def _restore_state(mngr, like: dict) -> tuple[dict, list]:
    import jax
    import orbax.checkpoint as ocp

    step = mngr.latest_step()
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                     history=ocp.args.JsonRestore()))
    return out["state"], list(out["history"]["history"])


def export(out_dir: str, run: _Run, params: Any) -> None:
    """Writes the model (EMA params) as a converted SEDD directory (+ chain.json)."""
    import jax

    from ports import sedd

    cfg = sedd.CheckpointConfig("sedd", run.dit.graph, run.dit.num_tokens, run.dit.length,
                                run.noise.to_dict(), run.dit, source="lsd-jax train-teacher")
    params_dir = os.path.join(out_dir, sedd.PARAMS_DIR)
    if os.path.exists(params_dir):
        shutil.rmtree(params_dir)
    sedd.save_converted(out_dir, jax.device_get(params), cfg)
    if run.data.chain is not None:
        with open(os.path.join(out_dir, CHAIN_FILE), "w") as f:
            json.dump(run.data.chain.to_dict(), f)
    else:
        with open(os.path.join(out_dir, TOKENIZER_FILE), "w") as f:
            json.dump({"tokenizer": run.cfg.tokenizer, "seq_len": run.cfg.length}, f)


def plot_curve(path: str, history: list, title: str, reference: Optional[float] = None,
               reference_label: str = "", exact: Optional[float] = None) -> None:
    """Validation NELBO (EMA, raw params) and smoothed train loss (nats/token) vs step;
    reference: a horizontal line (the entropy rate); exact: the exact score's NELBO."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = [h for h in history if "val_nelbo" in h]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if ev:
        ax.plot([h["step"] for h in ev], [h["val_nelbo"] for h in ev], "o-", label="validation NELBO (EMA)")
        raw = [h for h in ev if "val_nelbo_raw" in h]
        if raw:
            ax.plot([h["step"] for h in raw], [h["val_nelbo_raw"] for h in raw], "s--", ms=3, alpha=0.7,
                    label="validation NELBO (raw params)")
        tr = [h for h in ev if "train_loss" in h]
        if tr:
            ax.plot([h["step"] for h in tr], [h["train_loss"] for h in tr], ":", color="gray",
                    label="train loss (mean since last eval)")
    if reference is not None:
        ax.axhline(reference, color="k", lw=0.8, ls="--", label=reference_label)
    if exact is not None:
        ax.axhline(exact, color="tab:red", lw=0.8, ls=":", label="validation NELBO of the exact score")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    if ev:
        lo = min(h["val_nelbo"] for h in ev)
        lo = min([lo] + [r for r in (reference, exact) if r is not None])
        hi = max(h["val_nelbo"] for h in ev)
        ax.set_ylim(lo - 0.03 * lo, max(hi * 1.05, lo * 1.1))  # early train-loss spikes are clipped
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------- train
def _device() -> dict:
    import jax

    d = jax.devices()[0]
    return {"platform": d.platform, "device": str(d.device_kind), "count": jax.device_count()}


def train(
    cfg: TrainConfig,
    out_dir: Optional[str] = None,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_at: Optional[int] = None,
    command: Optional[str] = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Trains a SEDD DiT teacher; returns the summary (also written to out_dir/train_log.json).

    out_dir None: nothing is written (no checkpoints). resume: continue from the newest
    checkpoint in out_dir/state (config must match but for RESUME_MAY_CHANGE fields).
    stop_at: stop (checkpointed) after this many total steps, as if interrupted.
    The returned summary also holds the EMA params under "params_tree" (not in the JSON).
    The "train_loss" of the first evaluation after a resume averages only the steps run
    since the resume (the running mean is not checkpointed); everything else matches.
    """
    import jax

    cfg.validate()
    t_start = time.perf_counter()
    prev_wall = 0.0
    if out_dir is not None:
        _prepare_out(cfg, out_dir, resume)
    run = _run_for(cfg)
    x_val = run.data.validation(cfg)
    val_key = jax.random.PRNGKey(VAL_KEY + 1)
    state = run.init_state()
    history: list = []
    mngr = _manager(out_dir) if out_dir is not None else None
    if resume and mngr is not None and mngr.latest_step() is not None:
        state, history = _restore_state(mngr, state)
        prev_wall = next((h["wall_s"] for h in reversed(history) if "wall_s" in h), 0.0)
        log(f"resumed from step {int(state['step'])} ({os.path.join(out_dir, STATE_DIR)})")
    n_params = int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(state["params"])))
    exact_ref = None
    if run.exact_score is not None:
        exact_ref = run.nelbo(run.exact_score, x_val, val_key)["nelbo"]
    log(f"train-teacher: data {cfg.data} ({json.dumps(run.data.describe())}), graph {cfg.graph}, noise "
        f"{cfg.noise_name}; DiT D={cfg.hidden_size} blocks={cfg.n_blocks} heads={cfg.n_heads} "
        f"cond={cfg.cond_dim} ({n_params:,} params); batch {cfg.batch_size} x L {cfg.length}, "
        f"{cfg.steps} steps; {_device()['platform']}")
    if exact_ref is not None:
        log(f"data entropy rate {run.data.chain.entropy_rate():.4f} nats/token; validation NELBO of the exact "
            f"score {exact_ref:.4f} (the estimator's floor)")

    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=int(state["step"]), desc="train-teacher", unit="step",
                   dynamic_ncols=True, file=sys.stderr)
    losses: list = []
    step = int(state["step"])
    t_run = time.perf_counter()

    restore_signals = _interrupt_on_signals()
    try:
        while step < end:
            state, metrics = run.step(state, run.data.source)
            step += 1
            losses.append(metrics["loss"])  # a device scalar: no host sync every step (GPU)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{float(losses[-1]):.4f}", refresh=False)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                ent = _evaluate(run, cfg, state, losses, x_val, val_key, prev_wall + time.perf_counter() - t_run, step)
                losses = []
                history.append(ent)
                msg = (f"step {step}: train {ent.get('train_loss', float('nan')):.4f}, val NELBO {ent['val_nelbo']:.4f} "
                       f"nats/token ({ent['val_nelbo_bits']:.4f} bits), raw params {ent['val_nelbo_raw']:.4f}"
                       + (f" (exact score {exact_ref:.4f})" if exact_ref is not None else ""))
                if bar is not None:
                    bar.write(msg)
                else:
                    log(msg)
            if mngr is not None and (step % cfg.checkpoint_every == 0 or step == end):
                _save_state(mngr, state, history)
    except KeyboardInterrupt:
        if mngr is not None:
            _save_state(mngr, state, history)
            log(f"interrupted at step {step}: checkpoint saved; continue with --resume")
        raise
    finally:
        restore_signals()
        if bar is not None:
            bar.close()
    wall = prev_wall + time.perf_counter() - t_run

    finished = step >= cfg.steps
    last = next((h for h in reversed(history) if "val_nelbo" in h), None)
    summary = {
        "config": cfg.to_dict(),
        "data": run.data.describe(),
        "model": run.dit.to_dict(),
        "params": n_params,
        "noise": run.noise.to_dict(),
        "step": step,
        "finished": finished,
        "train_wall_s": wall,
        "device": _device(),
        "prior_kl_per_token": prior_kl(run.graph, run.noise),
        "val_size": int(x_val.shape[0]),
        "estimator": default_estimator(run.graph),
        # headline numbers: the final evaluation (EMA params, cfg.final_repeats draws) of a
        # finished run, else the last evaluation during training (one draw)
        "val_nelbo": last["val_nelbo"] if last else None,
        "val_nelbo_bits": last["val_nelbo_bits"] if last else None,
        "val_nelbo_se": None,
        "val_repeats": 1,
        "last_eval": dict(last, exact_score_nelbo=exact_ref) if last else None,
        "history": history,
    }
    if finished and history:
        summary.update(_final_eval(run, cfg, state, x_val, val_key, log))
    if cfg.data == "markov":
        h = run.data.chain.entropy_rate()
        summary.update(entropy_rate=h, entropy_rate_bits=h / math.log(2.0),
                       val_data_nll=float(-run.data.chain.log_prob(x_val).mean() / cfg.length))
        if summary["val_nelbo"] is not None:
            summary["val_nelbo_over_entropy_rate"] = summary["val_nelbo"] / h
    else:
        summary["bits_per_token_name"] = "bits per character" if cfg.tokenizer == "char" else "bits per token"
    if command is None and out_dir is not None:
        command = command_for(cfg, out_dir)
    if command:
        summary["command"] = command
    if out_dir is not None:
        export(out_dir, run, state["ema"])
        with open(os.path.join(out_dir, LOG_FILE), "w") as f:
            json.dump(summary, f, indent=1)
        if history:
            ref = summary.get("entropy_rate")
            plot_curve(os.path.join(out_dir, PLOT_FILE), history,
                       f"{cfg.data} {cfg.graph}/{cfg.noise_name}, D{cfg.hidden_size} x{cfg.n_blocks}, "
                       f"B{cfg.batch_size}, seed {cfg.seed}",
                       ref, "data entropy rate" if ref is not None else "", exact_ref)
        mngr.close()
    total = time.perf_counter() - t_start
    log(f"{'done' if finished else 'stopped'} at step {step}: val NELBO "
        f"{summary['val_nelbo'] if summary['val_nelbo'] is not None else float('nan'):.4f} nats/token "
        f"({summary['val_nelbo_bits'] if summary['val_nelbo_bits'] is not None else float('nan'):.4f} bits)"
        + (f", entropy rate {summary['entropy_rate']:.4f}" if "entropy_rate" in summary else "")
        + f"; {total:.0f} s" + (f"; wrote {out_dir}" if out_dir else ""))
    summary["params_tree"] = state["ema"]
    return summary


def _interrupt_on_signals() -> Callable[[], None]:
    """SIGTERM (and SIGINT, which a background `nohup ... &` job starts with ignored) raise
    KeyboardInterrupt during training, so the loop checkpoints before exiting. Returns the
    function that restores the previous handlers. A no-op outside the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    return lambda: [signal.signal(sig, h) for sig, h in old.items()] and None


def _final_eval(run: _Run, cfg: TrainConfig, state: dict, x_val, val_key, log) -> dict:
    """NELBO of the EMA model (and, paired, of the exact score: markov) over cfg.final_repeats draws."""
    r = cfg.final_repeats
    m = run.nelbo(run.score_fn(state["ema"]), x_val, val_key, repeats=r)
    out = {"val_nelbo": m["nelbo"], "val_nelbo_bits": m["nelbo_bits"], "val_nelbo_se": m["se"], "val_repeats": r}
    msg = f"final validation NELBO ({r} draws): {m['nelbo']:.4f}" + (f" +- {m['se']:.4f}" if m["se"] else "")
    if run.exact_score is not None:
        e = run.nelbo(run.exact_score, x_val, val_key, repeats=r)
        diff = np.asarray(m["per_repeat"]) - np.asarray(e["per_repeat"])  # paired: same draws
        out.update(exact_score_nelbo=e["nelbo"], exact_score_nelbo_se=e["se"],
                   excess_over_exact_score=float(diff.mean()),
                   excess_over_exact_score_se=float(diff.std(ddof=1) / math.sqrt(r)) if r > 1 else None,
                   excess_over_exact_score_relative=float(diff.mean() / e["nelbo"]))
        msg += (f"; exact score {e['nelbo']:.4f}" + (f" +- {e['se']:.4f}" if e["se"] else "")
                + f"; excess {diff.mean():.4f} ({100 * diff.mean() / e['nelbo']:.2f}%)")
    log(msg + " nats/token")
    return out


def _evaluate(run: _Run, cfg: TrainConfig, state: dict, losses: list, x_val, val_key, wall: float, step: int) -> dict:
    import jax

    ent: dict = {"step": step}
    if losses:
        ent["train_loss"] = float(np.mean(jax.device_get(losses)))
    v = run.nelbo(run.score_fn(state["ema"]), x_val, val_key)
    vr = run.nelbo(run.score_fn(state["params"]), x_val, val_key)
    ent.update(val_nelbo=v["nelbo"], val_nelbo_bits=v["nelbo_bits"], val_dse=v["dse"], val_nelbo_raw=vr["nelbo"],
               wall_s=wall)
    return ent


def _prepare_out(cfg: TrainConfig, out_dir: str, resume: bool) -> None:
    cfg_path = os.path.join(out_dir, CONFIG_FILE)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not resume:
        raise ValueError(f"--out {out_dir} exists and is not empty: pass --resume to continue it, or choose a new --out")
    if resume and os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            saved = TrainConfig.from_dict(json.load(f))
        diff = [f"{k} (saved {getattr(saved, k)!r}, now {getattr(cfg, k)!r})"
                for k in (f.name for f in dataclasses.fields(cfg))
                if k not in RESUME_MAY_CHANGE and getattr(saved, k) != getattr(cfg, k)]
        if diff:
            raise ValueError(f"--resume: the config differs from the one saved in {cfg_path}: " + ", ".join(diff))
    os.makedirs(out_dir, exist_ok=True)
    with open(cfg_path, "w") as f:
        json.dump(cfg.to_dict(), f, indent=1)
    with open(os.path.join(out_dir, ".gitignore"), "w") as f:
        f.write(f"# orbax training state (optimizer moments: 4x the model); regenerate with --resume\n{STATE_DIR}/\n")


# --------------------------------------------------------------------------------- CLI
def register(subparsers) -> None:
    """Adds `train-teacher` to an argparse subparsers object (lsd_jax.cli's _EXTRA)."""
    d = TrainConfig()
    p = subparsers.add_parser("train-teacher", help="train a small SEDD DiT teacher (score entropy) on the "
                              "synthetic Markov chain or the text corpus")
    p.add_argument("--data", choices=DATA, default=d.data)
    p.add_argument("--graph", choices=GRAPHS, default=d.graph)
    p.add_argument("--noise", choices=NOISES, default=None,
                   help="default: loglinear for absorb, geometric for uniform")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="after warm-up")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="cosine: final lr / lr")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW, on matrices")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="global-norm clip (0: off)")
    p.add_argument("--ema", type=float, default=d.ema, help="EMA decay of the parameters")
    p.add_argument("--hidden-size", type=int, default=d.hidden_size)
    p.add_argument("--n-blocks", type=int, default=d.n_blocks)
    p.add_argument("--n-heads", type=int, default=d.n_heads)
    p.add_argument("--cond-dim", type=int, default=d.cond_dim)
    p.add_argument("--length", type=int, default=d.length, help="sequence length (markov: chain length)")
    p.add_argument("--vocab", type=int, default=d.vocab, help="markov: tokens of the chain")
    p.add_argument("--chain-seed", type=int, default=d.chain_seed, help="markov: seed of the chain")
    p.add_argument("--tokenizer", choices=TOKENIZERS, default=d.tokenizer, help="text: tokenizer")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--val-size", type=int, default=d.val_size, help="validation sequences")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--final-repeats", type=int, default=d.final_repeats,
                   help="draws of (t, x_t) averaged for the final validation NELBO")
    p.add_argument("--seed", type=int, default=d.seed, help="init, data and noise seed")
    p.add_argument("--out", required=True, help="output directory (model, chain.json, log, plot, state/)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out/state")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--stop-at", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulated interruption
    p.set_defaults(func=cmd_train_teacher)


def config_from_args(args) -> TrainConfig:
    return TrainConfig(
        data=args.data, graph=args.graph, noise=args.noise, hidden_size=args.hidden_size, n_blocks=args.n_blocks,
        n_heads=args.n_heads, cond_dim=args.cond_dim, length=args.length, vocab=args.vocab,
        chain_seed=args.chain_seed, tokenizer=args.tokenizer, batch_size=args.batch_size, steps=args.steps,
        lr=args.lr, warmup=args.warmup, schedule=args.schedule, min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, ema=args.ema, eval_every=args.eval_every,
        val_size=args.val_size, checkpoint_every=args.checkpoint_every, final_repeats=args.final_repeats,
        seed=args.seed,
    ).validate()


def cmd_train_teacher(args) -> int:
    cfg = config_from_args(args)
    command = command_for(cfg, args.out)
    try:
        s = train(cfg, args.out, resume=args.resume, progress=not args.no_progress, stop_at=args.stop_at,
                  command=command)
    except KeyboardInterrupt:
        print("lsd-jax train-teacher: interrupted; continue with the same command and --resume", file=sys.stderr)
        return 130
    print(f"wrote {args.out}: {ports_files(args.out)}")
    if "entropy_rate" in s and s["val_nelbo"] is not None:
        print(f"validation NELBO {s['val_nelbo']:.4f} nats/token ({s['val_nelbo_bits']:.4f} bits/token) vs "
              f"data entropy rate {s['entropy_rate']:.4f} ({s['entropy_rate_bits']:.4f} bits): "
              f"{100 * (s['val_nelbo'] / s['entropy_rate'] - 1):+.2f}%"
              + (f"; exact score's NELBO on the same draws {s['exact_score_nelbo']:.4f}: excess "
                 f"{s['excess_over_exact_score']:.4f} ({100 * s['excess_over_exact_score_relative']:.2f}%)"
                 if "exact_score_nelbo" in s else ""))
    elif s["val_nelbo"] is not None:
        print(f"validation NELBO {s['val_nelbo']:.4f} nats/token = {s['val_nelbo_bits']:.4f} "
              f"{s['bits_per_token_name']}")
    return 0


def command_for(cfg: TrainConfig, out_dir: str) -> str:
    """The `lsd-jax train-teacher` command line that reproduces `cfg` (every field explicit)."""
    parts = ["lsd-jax train-teacher"]
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in ("eval_batch", "sampling_eps", "scale_by_sigma") or v is None:
            continue  # not CLI flags (defaults)
        if f.name == "tokenizer" and cfg.data != "text" or f.name in ("vocab", "chain_seed") and cfg.data != "markov":
            continue
        parts.append(f"--{f.name.replace('_', '-')} {v}")
    parts.append(f"--out {out_dir}")
    return " ".join(parts)


def ports_files(out_dir: str) -> str:
    return ", ".join(sorted(os.listdir(out_dir)))


def main(argv=None) -> int:
    """`python -m lsd_jax.train [flags]`: the same as `lsd-jax train-teacher [flags]`."""
    parser = argparse.ArgumentParser(prog="python -m lsd_jax.train", description="train a SEDD DiT teacher")
    sub = parser.add_subparsers(dest="cmd")
    register(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["train-teacher"] + argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as e:
        print(f"lsd-jax train-teacher: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
