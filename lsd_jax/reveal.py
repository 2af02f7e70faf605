"""Reveal planning for absorbing-graph (masked) samplers: which positions a step reveals.
(Slightly over 500 lines: counts, orders, policies, their loop and the exact likelihood of a
plan are one idea and are read together.)

On the absorbing graph a step of the CTMC sampler (`ctmc`, today's default) reveals a
random subset of the masked positions and draws each revealed token from the model's
posterior, independently of its neighbours revealed in the same step. A time grid only sets
how many positions a step reveals; a reveal policy also chooses which:

  how many  `counts_from_grid`: the CTMC's expected counts L (P_k - P_{k+1}) / P_0 with
            P_k = P(masked at t_k) = 1 - exp(-sigmabar(t_k)), the remainder at t_M put into the
            last step, rounded on the cumulative sum so they sum to L; fixed, tuned and LSD+
            grids carry over. `eb` decides adaptively instead.
  which     a policy (a small frozen dataclass, static under jit):
            random      uniformly among the masked positions (Gumbel top-k);
            planned     a fixed order that spreads simultaneous reveals: 1-D bit-reversal
                        (van der Corput base 2) order; 2-D grids (`shape=(H, W)`) the
                        bit-reversed Morton order (the coarse lattice first, then its
                        midpoints, level by level: a 2-D dilated / Halton-like order);
            confidence  top-k by the probability of the drawn token (MaskGIT / LLaDA);
            margin      top-k by p(top1) - p(top2) of the posterior;
            entropy     top-k by minus the posterior entropy;
            eb          entropy-bounded (EB-sampler, arXiv 2505.24857): the masked positions
                        sorted by entropy, the longest prefix with
                        sum(H) - max(H) <= budget (at least one), until none is masked.
  tokens    drawn from the posterior at the chosen positions with the project's log-space
            kernel and draw (`samplers.denoise_kernel` + `samplers.draw`, kept only there).

`confidence`, `margin` and `entropy` take `spread` >= 0: priority + spread * (1 - rank / L)
with rank the planned order, a mixing weight between the model's ordering and spreading.
`Remask` is a ReMDM-style corrector (arXiv 2503.00307, the confidence variant): after the
reveal steps, each of `steps` extra network calls remasks the `count` revealed positions
drawn by Gumbel top-k of -log p (p: the probability each token had when it was revealed,
divided by `temperature`) and redraws them from the posterior.
Two loops run these policies: `reveal.sample` (its own jitted loop: explicit counts, `eb`'s
adaptive number of calls, the corrector, no call on a step that reveals nothing; what the CLI,
`evaluate.run_sampler`, tune and the benchmarks use) and the solvers' loop through its
`policy=` hook (`samplers.sample(..., policy=Planned())`; fixed-count policies only, a call
every step, M + 1 calls with its final denoise).
NFE: every network call actually made. A step with count 0 makes no call; the final denoise
(`samplers.denoise_kernel`, unchanged) runs only when a position is still masked (never,
when counts sum to L); `eb` reports the calls each sample really used (mean and max).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax import names
from lsd_jax import samplers
from lsd_jax.graphs import Graph
from lsd_jax.noise import Noise

Array = jnp.ndarray
POLICIES = names.REVEAL_POLICIES
PARAM_BOUNDS = {"budget": (0.0, 8.0), "spread": (0.0, 4.0)}  # ranges tuning searches (nats / priority units)


# ------------------------------------------------------------------ counts and orders
def expected_counts(noise: Noise, grid: Array, length: int) -> Array:
    """Unrounded expected reveals per step [M] of the CTMC from all-masked at t_0:
    L (P_k - P_{k+1}) / P_0, P_k = 1 - exp(-sigmabar(t_k)); the mass still masked at t_M
    goes into the last step, so they sum to L."""
    pm = -jnp.expm1(-noise.total(jnp.asarray(grid)))  # [M + 1]
    frac = (pm[0] - pm) / pm[0]
    frac = frac.at[-1].set(1.0)
    return length * jnp.diff(frac)


def counts_from_grid(noise: Noise, grid: Array, length: int) -> Array:
    """int32 [M] reveals per step: `expected_counts` rounded on the cumulative sum
    (floor(x + 1/2)), so they are >= 0 and sum to L exactly. Pure: works under jit."""
    e = expected_counts(noise, grid, length)
    cum = jnp.concatenate([jnp.zeros((1,), e.dtype), jnp.cumsum(e)])
    cum = jnp.floor(cum + 0.5).astype(jnp.int32).at[-1].set(length)
    return jnp.diff(cum)


def _bit_reverse_order(n: int) -> np.ndarray:
    """0..n-1 in bit-reversal (van der Corput base 2) order: the bit-reversal permutation
    of the next power of two, with the entries >= n dropped."""
    bits = max(1, int(np.ceil(np.log2(max(n, 2)))))
    idx = np.arange(1 << bits)
    rev = np.zeros_like(idx)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    return rev[rev < n]


def planned_order(length: int, shape: Optional[tuple] = None) -> np.ndarray:
    """The order in which `planned` reveals positions, [L] int (a permutation).

    1-D: bit-reversal: 0, L/2, L/4, 3L/4, ... every prefix is spread as evenly as a binary
    subdivision allows, and each block of 2^j reveals puts at most one position in each gap
    between the earlier ones (a first-order chain stays exact when the counts respect it).
    2-D (shape (H, W), row-major positions): sorted by the bit-reversed Morton (Z-order)
    code of (row, column): the even-even lattice of every level comes before its midpoints,
    a dilated coarse-to-fine order (the 2-D analogue of van der Corput, like Halton points).
    """
    if shape is None:
        return _bit_reverse_order(length)
    h, w = shape
    if h * w != length:
        raise ValueError(f"planned order shape {shape} has {h * w} cells but the sequence length is {length}")
    bits = max(1, int(np.ceil(np.log2(max(h, w, 2)))))
    r, c = np.divmod(np.arange(length), w)
    morton = np.zeros(length, np.int64)
    for b in range(bits):  # interleave: ... r_b c_b ... r_0 c_0
        morton |= ((c >> b) & 1) << (2 * b) | ((r >> b) & 1) << (2 * b + 1)
    rev = np.zeros(length, np.int64)
    for b in range(2 * bits):
        rev |= ((morton >> b) & 1) << (2 * bits - 1 - b)
    return np.argsort(rev, kind="stable")


def order_rank(order: np.ndarray) -> np.ndarray:
    """rank[i] = the place of position i in `order` (the inverse permutation), int32 [L]."""
    rank = np.empty(len(order), np.int32)
    rank[np.asarray(order)] = np.arange(len(order), dtype=np.int32)
    return rank


# ------------------------------------------------------------------ posterior and selection
def log_posterior(graph: Graph, log_score: Array) -> Array:
    """log P(x_0^i = y | x_t) over data tokens [B, L, V - 1] at masked positions (absorbing:
    the score there is the posterior up to a per-position constant; the mask is the last id)."""
    return jax.nn.log_softmax(log_score[..., : graph.mask_id], axis=-1)


def top_k(priority: Array, masked: Array, count: Array) -> Array:
    """bool [B, L]: the `count` [B] (or scalar) masked positions of highest priority [B, L]
    (ties: the lower index); all masked ones when fewer than `count` are masked."""
    p = jnp.where(masked, priority, -jnp.inf)
    rank = jnp.argsort(jnp.argsort(-p, axis=-1, stable=True), axis=-1, stable=True).astype(jnp.int32)
    count = jnp.asarray(count, jnp.int32)
    return masked & (rank < jnp.reshape(count, jnp.shape(count) + (1,) * (2 - jnp.ndim(count))))


def _entropy(logp: Array) -> Array:
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


# ------------------------------------------------------------------ policies
@dataclasses.dataclass(frozen=True)
class Ctmc:
    """Today's sampler: the CTMC step decides both how many and which (`samplers.sample`)."""

    name: str = dataclasses.field(default="ctmc", init=False)
    param: Optional[str] = dataclasses.field(default=None, init=False)


@dataclasses.dataclass(frozen=True)
class _Ranked:
    """A fixed-count policy: reveals the `count` masked positions of highest `priority`."""

    spread: float = 0.0  # mixing weight towards the planned order (model-ordered policies)
    param: Optional[str] = dataclasses.field(default=None, init=False)

    def priority(self, key: Array, logp: Array, drawn: Array, rank: Array) -> Array:  # [B, L]
        raise NotImplementedError

    def choose(self, key, masked, logp, drawn, rank, count, value=None) -> Array:
        """bool [B, L]; `value` (traced) overrides `spread` (tuning without recompiling)."""
        spread = self.spread if value is None else value
        pr = self.priority(key, logp, drawn, rank)
        if self.param is not None:  # model-ordered: mix in the planned order
            pr = pr + jnp.asarray(spread, pr.dtype) * (1.0 - rank.astype(pr.dtype) / rank.shape[-1])[None, :]
        return top_k(pr, masked, count)


    def __call__(self, key: Array, kern, ctx, graph: Graph, noise: Noise) -> Array:
        """The solvers' reveal hook (`samplers.sample(..., policy=self)`): one grid step from
        ctx.x [B, L] at ctx.t to ctx.t_next [B] with the phi-scaled ctx.log_score. Reveals down to
        round(L P(masked at t_next) / P(masked at 1)) masked positions (= `counts_from_grid` but
        for exact .5 ties; the final denoise takes what t_M leaves) -> x_next [B, L] int32."""
        x, length = ctx.x, ctx.x.shape[-1]
        p_masked = lambda t: -jnp.expm1(-noise.total(t))
        left = jnp.floor(length * p_masked(ctx.t_next) / p_masked(jnp.ones_like(ctx.t)) + 0.5).astype(jnp.int32)
        masked = x == graph.mask_id
        count = jnp.maximum(jnp.sum(masked, -1, dtype=jnp.int32) - left, 0)  # [B]
        rank = jnp.asarray(order_rank(planned_order(length, getattr(self, "shape", None))))
        k1, k2 = jax.random.split(key)
        sb = noise.total(ctx.t)
        drawn = samplers.draw(k1, samplers.denoise_kernel(graph, x, ctx.log_score, sb))
        logp = log_posterior(graph, ctx.log_score)
        return jnp.where(self.choose(k2, masked, logp, drawn, rank, count), drawn, x).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Random(_Ranked):
    name: str = dataclasses.field(default="random", init=False)

    def priority(self, key, logp, drawn, rank):
        return jax.random.gumbel(key, drawn.shape, logp.dtype)


@dataclasses.dataclass(frozen=True)
class Planned(_Ranked):
    shape: Optional[tuple] = None  # (H, W) for 2-D grids; None: 1-D
    name: str = dataclasses.field(default="planned", init=False)

    def priority(self, key, logp, drawn, rank):
        return jnp.broadcast_to(-rank.astype(logp.dtype), drawn.shape)


@dataclasses.dataclass(frozen=True)
class Confidence(_Ranked):
    name: str = dataclasses.field(default="confidence", init=False)
    param: Optional[str] = dataclasses.field(default="spread", init=False)

    def priority(self, key, logp, drawn, rank):
        return jnp.take_along_axis(logp, drawn[..., None], -1)[..., 0]


@dataclasses.dataclass(frozen=True)
class Margin(_Ranked):
    name: str = dataclasses.field(default="margin", init=False)
    param: Optional[str] = dataclasses.field(default="spread", init=False)

    def priority(self, key, logp, drawn, rank):
        top2 = jax.lax.top_k(jnp.exp(logp), 2)[0]
        return top2[..., 0] - top2[..., 1]


@dataclasses.dataclass(frozen=True)
class Entropy(_Ranked):
    name: str = dataclasses.field(default="entropy", init=False)
    param: Optional[str] = dataclasses.field(default="spread", init=False)

    def priority(self, key, logp, drawn, rank):
        return -_entropy(logp)


@dataclasses.dataclass(frozen=True)
class EB:
    """Entropy-bounded reveals: sorted by entropy, the longest prefix whose entropies minus
    the largest sum to <= budget (nats); at least one position per call."""

    budget: float = 1.0
    name: str = dataclasses.field(default="eb", init=False)
    param: Optional[str] = dataclasses.field(default="budget", init=False)

    def choose(self, key, masked, logp, drawn, rank, count=None, value=None) -> Array:
        budget = self.budget if value is None else value
        h = jnp.where(masked, _entropy(logp), jnp.inf)  # [B, L]
        order = jnp.argsort(h, axis=-1, stable=True)
        hs = jnp.take_along_axis(h, order, -1)
        hs0 = jnp.where(jnp.isfinite(hs), hs, 0.0)
        keep = (jnp.cumsum(hs0, -1) - hs0 <= budget) & jnp.isfinite(hs)  # sorted ascending: max = last
        keep = keep | (jnp.arange(h.shape[-1]) == 0)[None, :] & jnp.isfinite(hs)
        n = jnp.sum(jnp.cumprod(keep.astype(jnp.int32), -1), -1, dtype=jnp.int32)  # [B]: longest accepted prefix
        return top_k(-h, masked, n)


@dataclasses.dataclass(frozen=True)
class Remask:
    """ReMDM-style corrector: `steps` extra calls, each remasking `count` revealed positions
    (Gumbel top-k of -log p_reveal / temperature) and redrawing them."""

    steps: int = 0
    count: int = 1
    temperature: float = 1.0


Policy = Union[Ctmc, Random, Planned, Confidence, Margin, Entropy, EB]


def get_policy(name: str, param: Optional[float] = None, shape: Optional[tuple] = None) -> Policy:
    """A policy by name; `param` is EB's budget or the model-ordered policies' spread."""
    if name not in POLICIES:
        raise ValueError(f"reveal policy {name!r} is not supported; allowed: {', '.join(POLICIES)}")
    if name == "eb":
        budget = 1.0 if param is None else float(param)
        if not budget >= 0:
            raise ValueError(f"the eb budget must be >= 0 nats, got {param}")
        return EB(budget)
    if param is not None and name in ("ctmc", "random", "planned"):
        raise ValueError(f"reveal policy {name!r} has no parameter (got {param})")
    if param is not None and not param >= 0:
        raise ValueError(f"the {name} spread weight must be >= 0, got {param}")
    cls = {"ctmc": Ctmc, "random": Random, "confidence": Confidence, "margin": Margin, "entropy": Entropy}
    if name == "planned":
        return Planned(shape=tuple(shape) if shape else None)
    if shape is not None and name != "planned":
        pass  # the spread term of model-ordered policies uses the 1-D order unless given one
    return cls[name]() if param is None or name == "ctmc" else cls[name](spread=float(param))


def with_param(policy: Policy, value: float) -> Policy:
    """The same policy with its own parameter (EB budget / spread) set to `value`."""
    if policy.param is None:
        raise ValueError(f"reveal policy {policy.name!r} has no parameter to set")
    return dataclasses.replace(policy, **{policy.param: float(value)})


def is_screened(order, counts) -> bool:
    """True when no two positions of a step lie in the same gap of the positions revealed
    before it (gaps: the maximal masked runs, ends included). On a first-order chain with its
    exact posterior such a plan samples the chain's exact law (they are conditionally
    independent given the revealed ones)."""
    order, pos = np.asarray(order), 0
    revealed = np.zeros(len(order), bool)
    for c in np.asarray(counts):
        batch = order[pos: pos + int(c)]
        gap = np.cumsum(revealed)  # masked positions with equal gap ids share a gap
        if len(set(gap[batch].tolist())) < len(batch):
            return False
        revealed[batch] = True
        pos += int(c)
    return True


def screened_counts(order, m: int) -> np.ndarray:
    """Counts [M] for `order` that keep every step screened (`is_screened`) when M allows:
    greedy maximal screened batches, then the largest split in halves until there are M
    (a subset of a screened batch is screened); with fewer steps than batches the last
    step takes the rest (not screened: the best M can do along this order)."""
    order = np.asarray(order)
    revealed = np.zeros(len(order), bool)
    batches, pos = [], 0
    while pos < len(order):
        gap, seen, n = np.cumsum(revealed), set(), 0
        while pos + n < len(order) and gap[order[pos + n]] not in seen:
            seen.add(gap[order[pos + n]])
            n += 1
        revealed[order[pos: pos + n]] = True
        batches.append(n)
        pos += n
    while len(batches) < m:
        i = int(np.argmax(batches))
        if batches[i] < 2:
            batches.append(0)
            continue
        batches[i: i + 1] = [batches[i] // 2, batches[i] - batches[i] // 2]
    if len(batches) > m:
        batches = batches[: m - 1] + [sum(batches[m - 1:])]
    return np.asarray(batches, np.int32)


def policy_log_prob(score_fn, graph: Graph, noise: Noise, grid, x: Array, *, policy: Policy, counts=None,
                    order: Optional[np.ndarray] = None) -> Array:
    """Exact log-probability [B] that a deterministic policy (planned, margin, entropy, eb)
    samples the complete sequences x [B, L]: replays x's own tokens in the policy's order
    and sums the posterior log-probabilities of each revealed token (their choice depends
    only on what is already revealed, so the path to x is unique). Host loop: for tests
    and exact evaluation on small teachers."""
    if not isinstance(policy, (Planned, Margin, Entropy, EB)):
        raise ValueError(f"policy_log_prob needs a deterministic policy (planned, margin, entropy, eb), "
                         f"got {policy.name!r}")
    x = jnp.asarray(x, jnp.int32)
    bsz, length = x.shape
    g = jnp.asarray(grid)
    m = g.shape[0] - 1
    counts = counts_from_grid(noise, g, length) if counts is None else jnp.asarray(counts, jnp.int32)
    rank = jnp.asarray(order_rank(planned_order(length, getattr(policy, "shape", None)) if order is None else order))
    cur = jnp.full(x.shape, graph.mask_id, jnp.int32)
    total = jnp.zeros((bsz,), g.dtype)
    k = 0
    while bool(jnp.any(cur == graph.mask_id)):
        if isinstance(policy, EB):
            sb = _sigmabar_of_fraction(noise, jnp.mean(cur == graph.mask_id, -1, dtype=g.dtype))
            count = None
        else:
            sb = jnp.full((bsz,), noise.total(g[min(k, m)]))
            count = counts[k] if k < m else length  # leftover: the final denoise reveals the rest
        logp = log_posterior(graph, score_fn(cur, sb).astype(g.dtype))
        chosen = policy.choose(None, cur == graph.mask_id, logp, x, rank, count)
        lp_x = jnp.take_along_axis(logp, x[..., None], -1)[..., 0]
        total = total + jnp.sum(jnp.where(chosen, lp_x, 0.0), -1)
        cur = jnp.where(chosen, x, cur)
        k += 1
    return total


# ------------------------------------------------------------------ the sampler loop
class RevealSamples(NamedTuple):
    tokens: Array  # [B, L] int32
    calls: Array  # [B] int32: network calls each sample used (denoise and corrector included)
    network_calls: Array  # int32 scalar: calls the batch made
    reveal: Optional[Array] = None  # [B, L] int32: step at which each position was (last) revealed


def _sigmabar_of_fraction(noise: Noise, frac: Array) -> Array:
    """The total noise at which a fraction `frac` [B] of tokens is masked, clipped to the
    schedule's [sigmabar(eps-ish), sigmabar(1)] (eb and the corrector have no grid time)."""
    hi = noise.total(jnp.asarray(1.0, frac.dtype))
    sb = -jnp.log1p(-jnp.clip(frac, 0.0, 1.0 - 1e-6))
    return jnp.clip(sb, 1e-4, hi)


def _reveal_step(score_fn, graph, policy, x, sb, phi_k, reading, key, rank, count, draw_dtype, value=None):
    """One call: posterior at x, the policy's choice, tokens drawn there -> (x', chosen, logp of drawn)."""
    ls = samplers.apply_phi(x, score_fn(x, sb), phi_k, reading)
    k1, k2 = jax.random.split(key)
    drawn = samplers.draw(k1, samplers.denoise_kernel(graph, x, ls, sb), draw_dtype)
    masked = x == graph.mask_id
    logp = log_posterior(graph, ls)
    drawn_c = jnp.minimum(drawn, graph.mask_id - 1)
    chosen = policy.choose(k2, masked, logp, drawn_c, rank, count, value)
    lp_drawn = jnp.take_along_axis(logp, drawn_c[..., None], -1)[..., 0]
    return jnp.where(chosen, drawn, x), chosen, lp_drawn


@functools.partial(jax.jit, static_argnames=("graph", "noise", "policy", "remask", "reading", "draw_dtype", "mesh"))
def _run(score_fn, graph, noise, grid, phi, counts, m, rank, value, key, x, *, policy, remask, reading, draw_dtype,
         mesh=None):
    """grid [C + 1], phi [C], counts [C] padded to a capacity C >= m (traced); eb ignores them.
    value: the policy's own parameter (traced: eb budget / spread), so tuning it does not recompile.
    mesh: the batch stays split over its devices (the tokens pinned after every call)."""
    from lsd_jax import sharding as sharding_lib

    pin = (lambda a: sharding_lib.constrain_batch(a, mesh)) if mesh is not None else (lambda a: a)
    x = pin(x)
    bsz, length = x.shape
    mask = graph.mask_id
    zero = jnp.zeros((bsz,), jnp.int32)
    lp0 = jnp.zeros(x.shape, grid.dtype)
    rev0 = jnp.full(x.shape, -1, jnp.int32)

    def apply(state, k, sb, phi_k, count, key_k):
        x, calls, lp, rev = state
        active = jnp.any(x == mask, -1).astype(jnp.int32)  # [B]: samples that still had work for this call
        x_new, chosen, lp_d = _reveal_step(score_fn, graph, policy, x, sb, phi_k, reading, key_k, rank, count,
                                           draw_dtype, value)
        return (pin(x_new), calls + active, jnp.where(chosen, lp_d.astype(lp.dtype), lp), jnp.where(chosen, k, rev))

    if isinstance(policy, EB):
        def cond(c):
            return jnp.any(c[1][0] == mask) & (c[0] < length)

        def body(c):
            k, state = c
            frac = jnp.mean(state[0] == mask, -1, dtype=grid.dtype)
            return k + 1, apply(state, k, _sigmabar_of_fraction(noise, frac), 1.0, None, jax.random.fold_in(key, k))

        k_end, state = jax.lax.while_loop(cond, body, (jnp.asarray(0, jnp.int32), (x, zero, lp0, rev0)))
    else:
        def body(k, state):
            sb = noise.total(jnp.full((bsz,), grid[k]))
            step = lambda s: apply(s, k, sb, phi[k], counts[k], jax.random.fold_in(key, k))
            return jax.lax.cond(counts[k] > 0, step, lambda s: s, state)

        state = jax.lax.fori_loop(0, m, body, (x, zero, lp0, rev0))
        k_end = m
    batch_calls = jnp.max(state[1])

    # final denoise, unchanged (samplers.denoise_kernel at sigmabar(t_M)), only if anything is still masked
    def denoise(s):
        x, calls, lp, rev = s
        sb = noise.total(jnp.full((bsz,), grid[m]))
        active = jnp.any(x == mask, -1).astype(jnp.int32)
        x_new = samplers.draw(jax.random.fold_in(key, k_end), samplers.denoise_kernel(graph, x, score_fn(x, sb), sb),
                              draw_dtype)
        return x_new, calls + active, lp, jnp.where(x != x_new, k_end, rev)

    any_masked = jnp.any(state[0] == mask)
    state = jax.lax.cond(any_masked, denoise, lambda s: s, state)
    batch_calls = batch_calls + any_masked.astype(jnp.int32)

    for j in range(remask.steps):  # ReMDM-style corrector: static count of extra calls
        x, calls, lp, rev = state
        kj = jax.random.fold_in(key, 1_000_003 + j)
        k1, k2 = jax.random.split(kj)
        pr = -lp / remask.temperature + jax.random.gumbel(k1, x.shape, lp.dtype)
        x_rm = jnp.where(top_k(pr, x != mask, remask.count), mask, x)
        frac = jnp.mean(x_rm == mask, -1, dtype=grid.dtype)
        big = jnp.full((bsz,), length, jnp.int32)  # reveal every remasked position
        x_new, chosen, lp_d = _reveal_step(score_fn, graph, Planned(), x_rm, _sigmabar_of_fraction(noise, frac),
                                           1.0, reading, k2, rank, big, draw_dtype)
        state = (x_new, calls + 1, jnp.where(chosen, lp_d.astype(lp.dtype), lp), jnp.where(chosen, k_end + 1 + j, rev))
    batch_calls = batch_calls + remask.steps
    return state[0], state[1], batch_calls, state[3]


def sample(score_fn, graph: Graph, noise: Noise, grid, key: Array, batch_size: int, length: int, *,
           policy: Policy, counts=None, phi=None, reading: str = "linear", remask: Remask = Remask(),
           order: Optional[np.ndarray] = None, x64: bool = False, x_init: Optional[Array] = None,
           mesh="auto") -> RevealSamples:
    """Runs a reveal policy from all-masked on `grid` [M + 1]: step k evaluates the score at
    sigmabar(t_k) and reveals counts[k] positions (default `counts_from_grid`); eb ignores
    the grid's counts (it uses t_M for a leftover denoise only). Compiles once for every
    M <= 1024 (grid, phi and counts padded as in `samplers.sample`). `order` [L] overrides
    the planned order (a permutation of 0..L-1). mesh: as `samplers.sample` ("auto": the
    batch split over all devices when there are several and they divide it; None: one
    device); the samples equal the one-device run's (same key, same random numbers)."""
    from lsd_jax import grids as grids_lib
    from lsd_jax import sharding as sharding_lib
    from lsd_jax._compat import x64_enabled

    if not graph.is_absorbing:
        raise ValueError("reveal policies need the absorbing graph (--graph absorb); uniform-graph tokens can "
                         "move more than once, so there is nothing to plan")
    if isinstance(policy, Ctmc):
        raise ValueError("policy ctmc is the plain sampler: use lsd_jax.samplers.sample")
    if remask.steps < 0 or remask.count < 0 or not remask.temperature > 0:
        raise ValueError(f"remask needs steps >= 0, count >= 0 and temperature > 0, got {remask}")
    g = grids_lib.validate(grid)
    m = g.shape[0] - 1
    phi = jnp.ones((m,)) if phi is None else jnp.asarray(phi)
    if phi.shape != (m,):
        raise ValueError(f"phi must have shape [M] = [{m}] for a grid of {m + 1} times, got {phi.shape}")
    fdt = jnp.float64 if x64_enabled() else jnp.float32
    counts = counts_from_grid(noise, jnp.asarray(g, fdt), length) if counts is None else jnp.asarray(counts, jnp.int32)
    if counts.shape != (m,) or int(jnp.min(counts)) < 0:
        raise ValueError(f"counts must be [M] = [{m}] non-negative integers, got {np.asarray(counts)}")
    if order is None:
        order = planned_order(length, getattr(policy, "shape", None))
    order = np.asarray(order)
    if sorted(order.tolist()) != list(range(length)):
        raise ValueError(f"order must be a permutation of 0..{length - 1}")
    cap = samplers.capacity(m)
    value = getattr(policy, policy.param) if policy.param else 0.0
    static = dataclasses.replace(policy, **{policy.param: 0.0}) if policy.param else policy  # one compilation per kind
    g_pad = jnp.concatenate([jnp.asarray(g, fdt), jnp.full((cap - m,), g[-1], fdt)])
    phi_pad = jnp.concatenate([phi.astype(fdt), jnp.ones((cap - m,), fdt)])
    c_pad = jnp.concatenate([counts, jnp.zeros((cap - m,), jnp.int32)])
    x0 = graph.sample_limit(key, (batch_size, length)) if x_init is None else jnp.asarray(x_init, jnp.int32)
    if isinstance(mesh, str):
        samplers.check_choice("mesh", mesh, ("auto",))
        mesh = sharding_lib.default_mesh(batch_size)
    traced = (samplers.as_pytree_fn(score_fn), g_pad, phi_pad, c_pad, jnp.asarray(m, jnp.int32),
              jnp.asarray(order_rank(order)), jnp.asarray(value, fdt), jax.random.fold_in(key, 1))
    if mesh is not None:
        traced = sharding_lib.replicate(traced, mesh)
        x0 = sharding_lib.shard_batch(x0, mesh)
    tokens, calls, batch_calls, rev = _run(graph=graph, noise=noise, x=x0, policy=static, remask=remask, reading=reading,
                                           draw_dtype=jnp.float64 if x64 else jnp.float32, mesh=mesh,
                                           **dict(zip(("score_fn", "grid", "phi", "counts", "m", "rank", "value", "key"),
                                                      traced)))
    return RevealSamples(tokens, calls, batch_calls, rev)
