"""theta-trapezoidal tau-leaping (Ren et al., arXiv 2502.00234): second order, 2 calls per step.

A step from t to t_next = t - dt, with t_theta = t - theta dt and the reverse rates
R_t(x)[y] = sigma(t) exp(move_logits(x, score(x, sigmabar(t)))[y]):
  stage 1: from x, rates R_t(x) over theta dt                 -> y*
  stage 2: from y*, rates (a1 R_theta(y*) - a2 R_t(x))_+ over (1 - theta) dt -> x_next
with a1 = 1 / (2 theta (1 - theta)), a2 = ((1 - theta)^2 + theta^2) / (2 theta (1 - theta)).
Per position each stage is a first-jump kernel: stay e^-T, moves in proportion to their rates
(T = the stage's total rate mass); a categorical stay 1 - T would leave an O(dt^2) error in
the stay-then-move term and the method would be first order. Where stage 1 moved a position,
the old rate is not a rate of the new token: stage 2 uses a1 R_theta(y*) alone there (this is
what makes the two-jump probability dt^2 / 2 R R exact to second order; our reading where
the paper's jump-vector notation does not say). tests/test_solvers.py checks the order on the
uniform graph by exact enumeration.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lsd_jax.solvers import kernel as K
from lsd_jax.solvers.base import DrawContext, Solver, StepModel, StepOut, move_logits, rate_kernel, score_ok

Array = jnp.ndarray


def _log_sub(a: Array, b: Array) -> Array:
    """log(max(e^a - e^b, 0)), elementwise (-inf where a <= b or a = -inf)."""
    ok = a > b
    diff = jnp.where(ok, b - jnp.where(ok, a, 0.0), -1.0)
    return jnp.where(ok, a + jnp.log(-jnp.expm1(diff)), -jnp.inf)


@dataclasses.dataclass(frozen=True)
class Trapezoidal(Solver):
    theta: float = 0.5

    name = "trapezoidal"
    order = 2
    calls_per_step = 2
    accepts_policy = False

    def __post_init__(self):
        if not 0.0 < self.theta < 1.0:
            raise ValueError(f"trapezoidal theta must be in (0, 1), got {self.theta}")

    @property
    def alphas(self) -> tuple[float, float]:
        th = self.theta
        return 1.0 / (2 * th * (1 - th)), ((1 - th) ** 2 + th**2) / (2 * th * (1 - th))

    def t_theta(self, t: Array, t_next: Array) -> Array:
        return t - self.theta * (t - t_next)

    def stage1_kernel(self, graph, noise, x: Array, log_score: Array, t: Array, t_next: Array) -> K.LogKernel:
        """First-jump kernel of R_t(x) over theta dt; log_score at (x, sigmabar(t))."""
        log_c = jnp.log(self.theta * (t - t_next) * noise.rate(t))
        return rate_kernel(graph, x, log_score, log_c, stay=K.stay_first_jump)

    def stage2_kernel(self, graph, noise, x: Array, y_star: Array, log_score: Array, log_score_star: Array,
                      t: Array, t_next: Array) -> K.LogKernel:
        """First-jump kernel of (a1 R_theta(y*) - a2 R_t(x))_+ over (1 - theta) dt from y*."""
        a1, a2 = self.alphas
        lr_t = jnp.log(noise.rate(t))[:, None, None]
        lr_th = jnp.log(noise.rate(self.t_theta(t, t_next)))[:, None, None]
        new = move_logits(graph, y_star, log_score_star) + lr_th + jnp.log(a1)
        old = move_logits(graph, x, log_score) + lr_t + jnp.log(a2)
        reg = jnp.where((y_star == x)[..., None], _log_sub(new, old), new)
        shift = jnp.broadcast_to(jnp.log((1.0 - self.theta) * (t - t_next))[:, None], x.shape)
        return K.LogKernel(reg, shift.astype(reg.dtype), y_star, K.stay_first_jump)

    def step(self, model: StepModel, x: Array, t: Array, t_next: Array, key: Array, state) -> StepOut:
        g, nz = model.graph, model.noise
        k1, k2 = jax.random.split(key)
        ls = model.score(x, nz.total(t))
        kern1 = self.stage1_kernel(g, nz, x, ls, t, t_next)
        t_th = self.t_theta(t, t_next)
        y_star = model.drawer(k1, kern1, DrawContext(x, ls, t, t_th), g, nz)
        ls_star = model.score(y_star, nz.total(t_th))
        kern2 = self.stage2_kernel(g, nz, x, y_star, ls, ls_star, t, t_next)
        x_new = model.drawer(k2, kern2, DrawContext(y_star, ls_star, t_th, t_next), g, nz)
        return StepOut(x_new, state, score_ok(ls) & score_ok(ls_star))
