"""Training objectives and the validation NELBO of a score network.

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
by sigmabar(0) = sigma_min, equal in expectation but not per rare sequence).

Objectives (`OBJECTIVES`, named in `config.OBJECTIVES`): each is a `Loss`, a function
(log_score_fn, graph, noise, key, x0 [B, L], *, sampling_eps) -> per-sequence loss [B]:
"score-entropy" (SEDD, above) and "masked-ce" (MDLM, `masked_ce_loss`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax.graphs import expm1_stable
from lsd_jax.train import config as config_lib

Array = Any  # a jax array
LogScoreFn = Callable[[Array, Array], Array]  # (x_t [B, L] int32, sigmabar [B]) -> log score [B, L, dim]


class Loss(Protocol):
    """A training objective: per-sequence loss [B]; the loop passes sampling_eps by keyword."""

    def __call__(self, log_score_fn: LogScoreFn, graph, noise, key: Array, x0: Array, *,
                 sampling_eps: float = 1e-3) -> Array: ...


def score_entropy_loss(
    log_score_fn: LogScoreFn,
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
    t, sigma, x_t = noised(graph, noise, key, x0, t, sampling_eps)
    log_score = log_score_fn(x_t, sigma)
    se = graph.score_entropy(log_score, sigma, x_t, x0)  # [B, L]
    return (noise.rate(t)[:, None] * se).sum(-1)


def noised(graph, noise, key: Array, x0: Array, t: Optional[Array] = None,
           sampling_eps: float = 1e-3) -> tuple[Array, Array, Array]:
    """The training draw of every objective: (t [B], sigmabar [B], x_t [B, L]); t defaults
    to U(sampling_eps, 1) draws (SEDD's)."""
    k_t, k_x = jax.random.split(key)
    if t is None:
        t = (1.0 - sampling_eps) * jax.random.uniform(k_t, (x0.shape[0],)) + sampling_eps
    sigma = noise.total(t)
    return t, sigma, graph.sample_transition(k_x, x0, sigma)


def masked_ce_loss(
    log_score_fn: LogScoreFn,
    graph,
    noise,
    key: Array,
    x0: Array,
    t: Optional[Array] = None,
    sampling_eps: float = 1e-3,
) -> Array:
    """MDLM's loss per sequence [B] (absorbing graph): the weighted masked cross-entropy
        sum over masked i of  rate(t) / expm1(sigmabar) * -log p(x0^i | x_t),
    with the posterior read through the score seam, log p(y | x_t) = log s[y] +
    log expm1(sigmabar) at masked positions (`score_fn_from` of an "mdlm" DiT). With the
    loglinear schedule the weight is 1 / t: masked discrete flow matching (Gat et al. 2024)
    with the linear schedule. For a score of this posterior form the DSE at a masked
    position is exactly -log p(x0^i | x_t) / expm1(sigmabar), so this equals
    `score_entropy_loss` (same draws) and the validation NELBO is the same bound.
    """
    if not graph.is_absorbing:
        raise ValueError(f"objective 'masked-ce' needs the absorbing graph, got {graph.name!r}")
    t, sigma, x_t = noised(graph, noise, key, x0, t, sampling_eps)
    expm1 = expm1_stable(sigma)  # [B]
    log_s_x0 = jnp.take_along_axis(log_score_fn(x_t, sigma), x0[..., None], -1)[..., 0]  # [B, L]
    ce = jnp.where(x_t == graph.mask_id, -(log_s_x0 + jnp.log(expm1)[:, None]), 0.0)  # -log p(x0^i | x_t)
    return noise.rate(t) / expm1 * ce.sum(-1)


# name -> training loss (named in config.OBJECTIVES); the loop calls
# `get_objective(cfg.objective)` and nothing else.
OBJECTIVES: dict[str, Loss] = {"score-entropy": score_entropy_loss, "masked-ce": masked_ce_loss}
assert tuple(OBJECTIVES) == config_lib.OBJECTIVES, "name each objective in config.OBJECTIVES"


def get_objective(name: str) -> Loss:
    if name not in OBJECTIVES:
        raise ValueError(f"objective = {name!r} is not supported; allowed: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def stratified_times(key: Array, n: int) -> Array:
    """n draws in (0, 1), one in each stratum [j / n, (j + 1) / n), in random order (so
    that which sequence gets which stratum changes from one key to the next)."""
    k_u, k_p = jax.random.split(key)
    u = jax.random.uniform(k_u, (n,), minval=1e-6, maxval=1.0)
    return jax.random.permutation(k_p, (jnp.arange(n, dtype=u.dtype) + u) / n)


_stratified_times_jit = jax.jit(stratified_times, static_argnums=1)


def prior_kl(graph, noise) -> float:
    """KL(q(x_1 | x0) || base) per token, nats (float64), the prior term of the NELBO.

    uniform: base = uniform over the V tokens. absorbing: the forward process leaves a
    token clean with probability p = exp(-sigmabar(1)) (loglinear: p = eps), so the
    all-mask limit is never reached exactly; base = mask with probability 1 - p, else a
    uniform token, giving p log V (0.0028 nats/token for eps = 1e-3, V = 16). The samplers
    start from all masks, which differs from this base in that mass p per token.
    """
    sbar = float(noise.total(jnp.asarray(1.0, jnp.float32)))
    v = graph.num_tokens
    p = math.exp(-sbar)
    if graph.is_absorbing:
        return p * math.log(v)
    move = -math.expm1(-sbar) / v
    stay = p + move
    return stay * math.log(stay * v) + (v - 1) * move * math.log(move * v)


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
    if estimator == "time":
        return score_entropy_loss(score_fn, graph, noise, key, x0, t=u).sum()
    x_t, sbar, weight = masked_count_draw(key, x0, u, graph, noise)
    se = graph.score_entropy(score_fn(x_t, sbar), sbar, x_t, x0).sum(-1)
    return jnp.sum(jnp.where(weight > 0, weight * se, 0.0))


nelbo_chunk = jax.jit(_nelbo_chunk, static_argnames=("graph", "noise", "estimator"))


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
