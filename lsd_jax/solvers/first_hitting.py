"""First-hitting sampler (Zheng et al., arXiv 2409.02908), absorbing graph: exact reveal times.

With n masked positions at total noise sigmabar, each masked position is still masked at a
smaller noise s with probability (1 - e^{-s}) / (1 - e^{-sigmabar}), independently, so the
next reveal happens at the s where
    1 - e^{-s} = (1 - e^{-sigmabar}) u^{1/n},   u ~ U(0, 1),
and it reveals one masked position chosen uniformly, with a token drawn from the posterior
softmax(log_score) over data tokens at that position (the score's normalising factor
1 / expm1(sigmabar) cancels). Each step is one network call and reveals exactly one token,
so a length-L sequence from all-mask takes L steps and L calls, whatever the grid: only
t_0 (the start) and t_M = eps (the smallest noise fed to the network) are read from it.
With the exact score the law of the output is the data law exactly (no final denoise).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lsd_jax.graphs import id_row
from lsd_jax.solvers import kernel as K
from lsd_jax.solvers.base import DrawContext, Solver, StepModel, StepOut, score_ok

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class FirstHitting(Solver):
    name = "fhs"
    order = 0  # exact: no discretisation error with the exact score
    calls_per_step = 1
    accepts_policy = False
    denoise = False
    accepts_phi = False

    def check_graph(self, graph) -> None:
        if not graph.is_absorbing:
            raise ValueError("sampler 'fhs' (first-hitting) needs the absorbing graph (--graph absorb)")

    def init(self, noise, grid: Array, x: Array):
        """Loop state: (sigmabar [B] of the current time, its floor sigmabar(t_M))."""
        bsz = x.shape[0]
        return (jnp.full((bsz,), noise.total(grid[0])), noise.total(grid[-1]))

    def num_steps(self, m: int, length: int) -> int:
        return length

    def steps_for_nfe(self, nfe: int) -> int:
        return 1  # the grid is read for its ends only; the loop runs L steps (num_steps)

    def kernel(self, graph, x: Array, log_score: Array, chosen: Array) -> K.LogKernel:
        """Reveal the positions `chosen` [B, L] bool (masked) from the posterior; others stay."""
        reg = jnp.where(chosen[..., None] & ~id_row(graph.dim, graph.mask_id, x.ndim + 1), log_score, -jnp.inf)
        return K.LogKernel(reg, jnp.zeros(x.shape, log_score.dtype), x,
                           lambda log_total: jnp.where(jnp.isneginf(log_total), 0.0, -jnp.inf))

    def step(self, model: StepModel, x: Array, t: Array, t_next: Array, key: Array, state) -> StepOut:
        self.check_graph(model.graph)
        sigmabar, floor = state
        k_time, k_pos, k_tok = jax.random.split(key, 3)
        masked = x == model.graph.mask_id
        n = masked.sum(-1)  # [B]
        u = jax.random.uniform(k_time, sigmabar.shape, sigmabar.dtype, minval=jnp.finfo(sigmabar.dtype).tiny)
        p_mask = -jnp.expm1(-sigmabar) * u ** (1.0 / jnp.maximum(n, 1).astype(sigmabar.dtype))
        new_sb = jnp.where(n > 0, -jnp.log1p(-p_mask), sigmabar)
        # one masked position, uniformly: Gumbel-argmax over masked positions
        pick = jnp.argmax(jnp.where(masked, K.gumbel(k_pos, x.shape, jnp.float32), -jnp.inf), axis=-1)
        chosen = (jnp.arange(x.shape[1])[None, :] == pick[:, None]) & masked
        ls = model.score(x, jnp.maximum(new_sb, floor))
        kern = self.kernel(model.graph, x, ls, chosen)
        x_new = model.drawer(k_tok, kern, DrawContext(x, ls, t, t_next), model.graph, model.noise)
        return StepOut(x_new, (new_sb, floor), score_ok(ls))
