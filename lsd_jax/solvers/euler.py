"""One-call solvers: Euler (first-order tau-leaping, categorical) and Tweedie tau-leaping."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from lsd_jax.solvers import kernel as K
from lsd_jax.solvers.base import KernelSolver, rate_kernel, tweedie_kernels

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class Euler(KernelSolver):
    """x -> y with (t - t_next) sigma(t) R[y]; stay with 1 - sum (clipped, renormalised)."""

    name = "euler"
    order = 1

    def kernel(self, graph, noise, x: Array, log_score: Array, t: Array, t_next: Array) -> K.LogKernel:
        return rate_kernel(graph, x, log_score, jnp.log((t - t_next) * noise.rate(t)))


@dataclasses.dataclass(frozen=True)
class Tweedie(KernelSolver):
    """SEDD's analytic (Tweedie tau-leaping) step from sigmabar(t) to sigmabar(t_next)."""

    name = "tweedie"
    order = 1

    def kernel(self, graph, noise, x: Array, log_score: Array, t: Array, t_next: Array) -> K.LogKernel:
        return tweedie_kernels[graph.name](graph, x, log_score, noise.total(t) - noise.total(t_next))
