"""The solver interface, the graph-specific pieces every kernel is built from, and the draw hook.

A solver is a small frozen (hashable: a static jit argument) dataclass with
    name: str            registry key (`lsd-jax sample --sampler NAME`)
    order: int           convergence order in the step size (tests/test_solvers.py measures it)
    calls_per_step: int  network calls per step (NFE = steps x calls_per_step)
    init(noise, grid, x) -> state            a solver's own loop state (a pytree; () for most)
    num_steps(m, length) -> int              steps the loop runs for a grid of m + 1 times
    step(model, x, t, t_next, key, state) -> StepOut(x, state, finite)
and, for one-call solvers, `kernel(graph, noise, x, log_score, t, t_next) -> LogKernel`: the
step's whole law, from which both the draw and the distillation loss's probabilities come.

`model` (StepModel) is what a step may use: `score(x, sigmabar) -> log score` with phi and its
reading already applied, the graph, the noise, and `drawer(key, kern, ctx) -> x_next`: the one
draw of the step. The default drawer is `GumbelDraw` (`kernel.draw`); a reveal policy
(lsd_jax/reveal.py) is a drawer that chooses which masked positions to reveal on the absorbing
graph (see `Drawer`).

Graph dispatch: `move_log_q[graph.name]` gives log Q[y, x] (the forward rate into the current
token x from y, -inf where 0 and at y = x), so the reverse rate of a move x -> y is
sigma(t) exp(log_score[y] + log Q[y, x]) on every graph, with no branch on the graph type.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Protocol

import jax.numpy as jnp

from lsd_jax.graphs import id_row, is_token
from lsd_jax.solvers import kernel as K
from lsd_jax.solvers.rows import masked_rows_step

Array = jnp.ndarray


# ---------------------------------------------------------------- graph-specific pieces
def _absorb_log_q(graph, x: Array, dtype) -> Array:
    """log Q[y, x] [B, L, V]: 0 for data y at a masked x; -inf elsewhere (unmasked x never moves)."""
    ok = (x == graph.mask_id)[..., None] & ~id_row(graph.dim, graph.mask_id, x.ndim + 1)
    return jnp.where(ok, jnp.asarray(0.0, dtype), -jnp.inf)


def _uniform_log_q(graph, x: Array, dtype) -> Array:
    """log Q[y, x] [B, L, V]: -log(dim) for y != x; -inf at y = x."""
    return jnp.where(~is_token(x, graph.dim), jnp.asarray(-jnp.log(graph.dim), dtype), -jnp.inf)


move_log_q = {"absorb": _absorb_log_q, "uniform": _uniform_log_q}


def move_logits(graph, x: Array, log_score: Array) -> Array:
    """log of the reverse rate per unit sigma of each move x -> y [B, L, V] (-inf: no move)."""
    return log_score + move_log_q[graph.name](graph, x, log_score.dtype)


def rate_kernel(graph, x: Array, log_score: Array, log_c: Array, stay=K.stay_euler) -> K.LogKernel:
    """Moves y with weight c R[y] (R = exp(move_logits)), log_c [B] or [B, L]; the stay entry
    from `stay` (Euler: 1 - total; first-jump: e^-total)."""
    log_c = jnp.asarray(log_c, log_score.dtype)
    shift = jnp.broadcast_to(log_c[:, None] if log_c.ndim == 1 else log_c, x.shape)
    return K.LogKernel(move_logits(graph, x, log_score), shift, x, stay)


def _uniform_tweedie(graph, x: Array, log_score: Array, dsigma: Array) -> K.LogKernel:
    """Uniform graph, Tweedie from sigmabar to sigmabar - dsigma [B]: probs[y] =
    (s[y] / e^{-ds} + a S) trans[y] with a = (e^{-ds} - 1) / (d e^{-ds}), S = sum_y s[y],
    trans = the column of exp(ds Q). Not affine in the score: S takes its own pass."""
    d = float(graph.dim)
    dsigma = dsigma[:, None]
    epow = jnp.exp(-dsigma)
    a = (epow - 1.0) / (d * epow)
    total = jnp.exp(K.logsumexp0(log_score))  # [B, L]
    move = -jnp.expm1(-dsigma) / d
    stag = jnp.exp(log_score) / epow[..., None] + (a * total)[..., None]
    reg = jnp.where(~is_token(x, graph.dim), K.log_clip(stag) + jnp.log(move)[..., None], -jnp.inf)
    s_x = jnp.exp(jnp.take_along_axis(log_score, x[..., None], -1)[..., 0])
    stay = K.log_clip(s_x / epow + a * total) + jnp.log(1.0 - (d - 1.0) * move)
    return K.LogKernel(reg, jnp.zeros(x.shape, log_score.dtype), x, lambda log_total: stay)


def _absorb_tweedie(graph, x: Array, log_score: Array, dsigma: Array) -> K.LogKernel:
    """Absorbing graph, Tweedie: reveal y with expm1(dsigma) s[y], stay 1 - sum (clipped)."""
    return rate_kernel(graph, x, log_score, jnp.log(jnp.expm1(dsigma)))


tweedie_kernels = {"absorb": _absorb_tweedie, "uniform": _uniform_tweedie}


def _never_mask(log_total: Array) -> Array:
    """Denoise stay on the absorbing graph: a masked position (finite total) never stays."""
    return jnp.where(jnp.isneginf(log_total), 0.0, -jnp.inf)


denoise_kernels = {
    "absorb": lambda graph, x, ls, sb: rate_kernel(graph, x, ls, jnp.log(jnp.expm1(sb)), stay=_never_mask),
    "uniform": _uniform_tweedie,
}


def denoise_kernel(graph, x: Array, log_score: Array, sigmabar: Array) -> K.LogKernel:
    """Final denoise from total noise sigmabar [B] to 0 (Tweedie; never emits the mask)."""
    return denoise_kernels[graph.name](graph, x, log_score, sigmabar)


# ---------------------------------------------------------------- the draw hook
class DrawContext(NamedTuple):
    """What a drawer may look at besides the kernel (all traced)."""

    x: Array  # [B, L] state the kernel moves from
    log_score: Array  # [B, L, V] phi-applied log score at x
    t: Array  # [B] time of the step's start
    t_next: Array  # [B] time of its end


class Drawer(Protocol):
    """A frozen, hashable object: `drawer(key, kern, ctx, graph, noise) -> x_next [B, L] int32`.

    GumbelDraw draws the kernel exactly. A reveal policy (absorbing graph) may instead choose
    which masked positions to reveal and how many (e.g. the expected count from
    noise.total(ctx.t), noise.total(ctx.t_next)), and draw their tokens from the posterior
    softmax(kern.reg) at those positions; every other position keeps ctx.x.
    """

    def __call__(self, key: Array, kern: K.LogKernel, ctx: DrawContext, graph, noise) -> Array: ...


@dataclasses.dataclass(frozen=True)
class GumbelDraw:
    """The exact draw of the kernel (`kernel.draw`) with uniforms in float32 or float64."""

    dtype: str = "float32"

    def __call__(self, key: Array, kern: K.LogKernel, ctx: DrawContext, graph, noise) -> Array:
        del ctx, graph, noise
        return K.draw(key, kern, jnp.dtype(self.dtype))


class StepModel(NamedTuple):
    """What the loop hands a step: the (phi-applied) score, graph, noise and drawer; rows: the
    same score split for a step at the masked positions only (`solvers.rows.RowScore`, phi
    applied; None: no row path)."""

    score: Callable[[Array, Array], Array]  # (x [B, L], sigmabar [B]) -> log score [B, L, V]
    graph: Any
    noise: Any
    drawer: Drawer
    rows: Any = None


class StepOut(NamedTuple):
    x: Array  # [B, L] int32 next state
    state: Any  # the solver's loop state
    finite: Array  # bool [B]: every score this step used was free of NaN and +inf, per row


def score_ok(log_score: Array) -> Array:
    """bool [B]: no NaN and no +inf in a row's log score [B, L, V] (-inf is log 0, allowed).
    Per row, so a batch-sharded loop needs no collective."""
    return jnp.all(log_score < jnp.inf, axis=tuple(range(1, log_score.ndim)))


@dataclasses.dataclass(frozen=True)
class Solver:
    """Base of the solver families; subclasses set name, order, calls_per_step and step."""

    name = "solver"
    order = 1
    calls_per_step = 1
    accepts_policy = True  # False: a reveal policy cannot replace its draws (multi-stage or own reveal order)
    denoise = True  # the loop's final denoise applies (first-hitting reveals everything itself)
    accepts_phi = True  # a per-step score coefficient phi [M] applies (LSD)

    def check_graph(self, graph) -> None:
        """Raises ValueError (before any work) if the solver cannot run on `graph`."""

    def init(self, noise, grid: Array, x: Array):
        return ()

    def num_steps(self, m: int, length: int) -> int:
        return m

    def steps_for_nfe(self, nfe: int) -> int:
        """Steps M for a budget of `nfe` predictor calls; a clear error if it does not divide."""
        if nfe % self.calls_per_step:
            raise ValueError(f"sampler {self.name!r} makes {self.calls_per_step} network calls per step: "
                             f"--nfe must be a multiple of {self.calls_per_step}, got {nfe}")
        return nfe // self.calls_per_step


@dataclasses.dataclass(frozen=True)
class KernelSolver(Solver):
    """A one-call solver whose step is `kernel` drawn by the model's drawer."""

    def kernel(self, graph, noise, x: Array, log_score: Array, t: Array, t_next: Array) -> K.LogKernel:
        raise NotImplementedError

    def step(self, model: StepModel, x: Array, t: Array, t_next: Array, key: Array, state) -> StepOut:
        if model.rows is not None and model.graph.is_absorbing and isinstance(model.drawer, GumbelDraw):
            def kern(xr, lsr, bi):
                return self.kernel(model.graph, model.noise, xr, lsr, t[bi], t_next[bi])

            x_new, finite = masked_rows_step(model.rows, model.graph.mask_id, model.graph.dim, x,
                                             model.noise.total(t), kern, key, jnp.dtype(model.drawer.dtype))
            return StepOut(x_new, state, finite)
        ls = model.score(x, model.noise.total(t))
        kern = self.kernel(model.graph, model.noise, x, ls, t, t_next)
        x_new = model.drawer(key, kern, DrawContext(x, ls, t, t_next), model.graph, model.noise)
        return StepOut(x_new, state, score_ok(ls))
