"""Solvers of the reverse CTMC: one small object per family, one log-space kernel per step.

    euler        Euler (categorical tau-leaping), order 1, 1 call per step
    tweedie      Tweedie tau-leaping (SEDD's analytic step), order 1, 1 call per step
    trapezoidal  theta-trapezoidal (Ren et al. 2025), order 2, 2 calls per step
    fhs          first-hitting (Zheng et al. 2025), absorbing graph, exact, L calls in all

`get_solver(name)` looks one up; `SOLVERS` lists the names (the CLI's --sampler choices).
The interface is documented in `lsd_jax.solvers.base`.
"""

from __future__ import annotations

from typing import Union

from lsd_jax import names

from lsd_jax.solvers.base import (DrawContext, Drawer, GumbelDraw, KernelSolver, Solver, StepModel, StepOut,
                                  denoise_kernel, move_logits, rate_kernel)
from lsd_jax.solvers.euler import Euler, Tweedie
from lsd_jax.solvers.first_hitting import FirstHitting
from lsd_jax.solvers.kernel import FLAT_VOCAB_MAX, LogKernel, block_size, categorical, draw, probs
from lsd_jax.solvers.trapezoidal import Trapezoidal

REGISTRY = {s.name: s for s in (Euler(), Tweedie(), Trapezoidal(), FirstHitting())}
SOLVERS = names.SOLVERS  # the allowed names live in lsd_jax.names (jax-free, for the CLI's parser)
if tuple(REGISTRY) != SOLVERS:
    raise ImportError(f"lsd_jax.names.SOLVERS {SOLVERS} does not list the registry {tuple(REGISTRY)}")
KERNEL_SOLVERS = tuple(n for n, s in REGISTRY.items() if isinstance(s, KernelSolver))  # one-call kernels: distill


def get_solver(solver: Union[str, Solver], allowed: tuple = SOLVERS, field: str = "sampler") -> Solver:
    """The solver object for a name (or the object itself); ValueError naming the allowed ones."""
    if isinstance(solver, Solver):
        name = solver.name
    else:
        name = solver
    if name not in allowed:
        raise ValueError(f"{field} {name!r} is not supported; allowed: {', '.join(allowed)}")
    return solver if isinstance(solver, Solver) else REGISTRY[name]


__all__ = ["DrawContext", "Drawer", "Euler", "FirstHitting", "FLAT_VOCAB_MAX", "GumbelDraw", "KERNEL_SOLVERS",
           "KernelSolver", "LogKernel", "REGISTRY", "SOLVERS", "Solver", "StepModel", "StepOut", "Trapezoidal",
           "Tweedie", "block_size", "categorical", "denoise_kernel", "draw", "get_solver", "move_logits", "probs",
           "rate_kernel"]
