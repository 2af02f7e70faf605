"""The sampling loop of the reverse CTMC: `sample` runs any solver (lsd_jax.solvers) on a grid.

The score function interface (the seam between models and samplers):
    score_fn(x: int32 [B, L], sigmabar: float [B]) -> log concrete score [B, L, dim]
where entry [b, i, y] approximates log p_t(x with x^i = y) / p_t(x); the entry of the
current token is 0. `apply_phi` scales it by the LSD coefficient of the step.

NFE convention: `nfe` = the predictor's network calls, steps M x solver.calls_per_step
(trapezoidal: 2 per step; fhs: one per revealed token, L from all-mask); the final denoise
(on by default, as SEDD; fhs needs none) is one more call at t_M = eps for every sampler
alike, reported in `network_calls`. It uses the raw score (no phi), so a learned sampler
gets no extra learnable step. With the step cache (`reuse`: a network that does not read
sigmabar, e.g. MDLM without time conditioning) a step whose state did not change since the
last call reuses that call's output exactly and is not counted: `network_calls` is then the
number of calls made (read from the loop's counter), below nfe + 1.

Each step is the solver's `step` (one home per step: lsd_jax.solvers), drawn by the drawer
(`GumbelDraw`: the exact draw of the step's LogKernel; a reveal policy can take its place on
the absorbing graph). Steps run in a `lax.fori_loop` whose trip count is traced and whose
grid/phi are padded to a capacity (a power of two, at least 1024), so NFE values up to 1024
share one compilation. The loop carries a non-finite flag (first bad step and its cause,
reduced once per step, read once at the end): `sample` raises FloatingPointError naming the
step instead of returning garbage tokens. The batch is sharded over all devices when there
are several (`lsd_jax.sharding`).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax import grids as grids_lib
from lsd_jax import validate
from lsd_jax import solvers as solvers_lib
from lsd_jax._compat import x64_enabled
from lsd_jax.graphs import Graph, is_token
from lsd_jax.names import READINGS, SOLVERS
from lsd_jax.noise import Noise
from lsd_jax.solvers import FLAT_VOCAB_MAX, LogKernel, block_size, categorical, draw  # noqa: F401  (re-exported)
from lsd_jax.solvers import rows as rows_lib
from lsd_jax.solvers.base import DrawContext, Drawer, Solver, StepModel, denoise_kernel, score_ok

Array = jnp.ndarray
ScoreFn = Callable[[Array, Array], Array]

SAMPLERS = SOLVERS  # the --sampler names (lsd_jax.names.SOLVERS; the solver registry matches them)
MIN_CAPACITY = 1024  # grid capacity of the compiled loop: NFE <= this shares one compilation


def check_choice(field: str, value: str, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"{field} {value!r} is not supported; allowed: {', '.join(allowed)}")
    return value


def apply_phi(x: Array, log_score: Array, phi: Array, reading: str = "linear") -> Array:
    """Scales the score by the LSD coefficient phi [B] (or scalar) off the current token.

    linear: s[y] -> phi s[y] (the paper's phi * s); temperature: log s[y] -> phi log s[y]
    (the official code's reading). The current-token entry stays log 1 = 0.
    """
    phi = jnp.asarray(phi, log_score.dtype).reshape(jnp.shape(phi) + (1,) * (log_score.ndim - jnp.ndim(phi)))
    if reading == "linear":
        scaled = log_score + jnp.log(phi)
    elif reading == "temperature":
        scaled = log_score * phi
    else:
        check_choice("reading", reading, READINGS)
    return jnp.where(is_token(x, log_score.shape[-1]), 0.0, scaled)


class Samples(NamedTuple):
    tokens: Array  # [B, L] int32
    nfe: int  # predictor network calls of the grid (steps x calls per step)
    network_calls: int  # calls made: nfe + 1 with the final denoise, fewer where the step cache reused an output
    path: Optional[Array] = None  # [S + 1, B, L] states after each of the S steps when asked
    reveal: Optional[Array] = None  # [B, L] int32, absorbing graph, when asked: the first k with path[k] != mask (S + 1: never)


def as_pytree_fn(score_fn: ScoreFn) -> jax.tree_util.Partial:
    """Wraps a score function as a pytree (`jax.tree_util.Partial`) so it can be a traced
    argument of jit: network params inside it stay arguments, not baked-in constants, and
    the jit cache is keyed on the function (a plain closure: compile once per closure)."""
    return score_fn if isinstance(score_fn, jax.tree_util.Partial) else jax.tree_util.Partial(score_fn)


def capacity(m: int) -> int:
    """Grid capacity of the compiled loop for M steps: max(MIN_CAPACITY, next power of two)."""
    return max(MIN_CAPACITY, 1 << max(0, math.ceil(math.log2(max(m, 1)))))


CAUSES = {1: "non-finite score (NaN or +inf in the network's log score)",
          2: "non-finite phi (or phi <= 0 under the linear reading)"}


def _phi_ok(phi_k: Array, reading: str) -> Array:
    return jnp.isfinite(phi_k) & ((phi_k > 0) if reading == "linear" else True)


def reusable(score_fn: ScoreFn) -> bool:
    """True when `score_fn` is split as finish(net(x, sigmabar), x, sigmabar) with a net that
    does not read sigmabar (a `Partial` whose func has `reusable` True, `net(*args, x, sb)`
    and `finish(out, x, sb)`: `models.dit.score_fn_from` of an mdlm without time
    conditioning, or radd). Such a net's output at an unchanged x can be reused exactly."""
    return isinstance(score_fn, jax.tree_util.Partial) and bool(getattr(score_fn.func, "reusable", False))


class StepCache(NamedTuple):
    """The step cache of a reusable score function, carried through the loop."""

    x: Array  # [B, L] int32: the state the cached output was computed at (-1: none yet)
    out: Array  # [B, L, V] the net's output there
    calls: Array  # int32 scalar: network calls made so far


def _cached_score(score_fn, cache: StepCache, x: Array, sb: Array) -> tuple[Array, StepCache]:
    """(log score at x, new cache): the net runs (lax.cond) only if some token of x differs
    from the cached state; else its output is reused (0 network calls)."""
    net = lambda: score_fn.func.net(*score_fn.args, x, sb).astype(cache.out.dtype)  # noqa: E731
    changed = jnp.any(x != cache.x)
    out = jax.lax.cond(changed, net, lambda: cache.out)
    return score_fn.func.finish(out, x, sb), StepCache(x, out, cache.calls + changed.astype(jnp.int32))


def step_model(score_fn: ScoreFn, graph: Graph, noise: Noise, drawer: Drawer, phi_k=1.0, reading: str = "linear",
               rows: bool = False, score: Optional[ScoreFn] = None) -> StepModel:
    """What the sampling loop hands a solver's step (`solvers.base.StepModel`): the score with
    the step's phi applied (or `score`, already phi-applied: the step cache's) and, when rows
    and the score function has a row path (`solvers.rows.row_score`), that path with phi."""
    if score is None:
        score = lambda xx, sb: apply_phi(xx, score_fn(xx, sb), phi_k, reading)  # noqa: E731
    rs = rows_lib.row_score(score_fn) if rows else None
    if rs is not None:  # the same phi-applied score, on rows [R, V]
        base = rs.rows
        rs = rs._replace(rows=lambda h, xr, sb: apply_phi(xr[:, None], base(h, xr, sb)[:, None], phi_k, reading)[:, 0])
    return StepModel(score, graph, noise, drawer, rs)


@functools.partial(
    jax.jit,
    static_argnames=("graph", "noise", "solver", "drawer", "reading", "denoise", "return_path", "return_reveal",
                     "mesh", "reuse", "rows"),
    donate_argnames=("x",),
)
def _run(score_fn, graph, noise, grid, phi, n, key, x, *, solver, drawer, reading, denoise, return_path,
         return_reveal=False, mesh=None, reuse=False, rows=False):
    """grid [C + 1] and phi [C] padded to a capacity C >= the grid's steps; n (traced int32)
    steps of `solver` run. reuse: the step cache (a reusable score_fn, a one-call
    KernelSolver). rows: the steps and the final denoise at masked positions only
    (`solvers.rows`; a score_fn with a row path, a KernelSolver, the exact draw). Returns (tokens, path, reveal, bad [B, 2] int32 = per row (first bad step
    or -1, cause), calls: int32 network calls made, the final denoise included)."""
    from lsd_jax import sharding as sharding_lib

    bsz = x.shape[0]
    pin = (lambda a: sharding_lib.constrain_batch(a, mesh)) if mesh is not None else (lambda a: a)
    x = pin(x)

    def body(k, carry):
        x, state, path, reveal, bad, cache = carry
        t, t_next, phi_k = grid[k], grid[k + 1], phi[k]
        if reuse:  # the one score call of a KernelSolver step, at this x
            ls_x, cache = _cached_score(score_fn, cache, x, noise.total(jnp.full((bsz,), t)))

            def score(xx, sb):
                if xx is not x:
                    raise AssertionError("the step cache needs a solver that scores the loop's state once")
                return apply_phi(xx, ls_x, phi_k, reading)
        else:
            score = None
        model = step_model(score_fn, graph, noise, drawer, phi_k, reading, rows, score)
        out = solver.step(model, x, jnp.full((bsz,), t), jnp.full((bsz,), t_next), jax.random.fold_in(key, k), state)
        x_new = pin(out.x)
        cause = jnp.where(~_phi_ok(phi_k, reading), 2, jnp.where(out.finite, 0, 1)).astype(jnp.int32)  # [B]
        bad = jnp.where(((bad[:, 0] < 0) & (cause > 0))[:, None], jnp.stack([jnp.full_like(cause, k), cause], -1), bad)
        if return_path:
            path = jax.lax.dynamic_update_index_in_dim(path, x_new, k + 1, 0)
        if return_reveal:
            reveal = jnp.where((reveal > n) & (x_new != graph.mask_id), k + 1, reveal)
        return x_new, out.state, path, reveal, bad, cache

    path0 = jnp.zeros((grid.shape[0],) + x.shape, x.dtype).at[0].set(x) if return_path else None
    reveal0 = jnp.full(x.shape, n + 1, jnp.int32) if return_reveal else None
    bad0 = pin(jnp.tile(jnp.asarray([[-1, 0]], jnp.int32), (bsz, 1)))  # [B, 2]: first bad step per row, cause
    cache0 = None
    if reuse:
        shape = jax.eval_shape(score_fn, x, jnp.zeros((bsz,), grid.dtype))
        cache0 = StepCache(jnp.full_like(x, -1), pin(jnp.zeros(shape.shape, shape.dtype)), jnp.int32(0))
    carry0 = (x, solver.init(noise, grid, x), path0, reveal0, bad0, cache0)
    x_last, _, path, reveal, bad, cache = jax.lax.fori_loop(0, n, body, carry0)
    x_out = x_last
    calls = cache.calls if reuse else n * solver.calls_per_step
    if denoise and rows:
        sb = noise.total(jnp.full((bsz,), grid[-1]))
        x_out, finite = rows_lib.masked_rows_step(
            rows_lib.row_score(score_fn), graph.mask_id, graph.dim, x_last, sb,
            lambda xr, lsr, bi: denoise_kernel(graph, xr, lsr, sb[bi]), jax.random.fold_in(key, n),
            jnp.dtype(drawer.dtype))
        x_out = pin(x_out)
        calls = calls + 1
        bad = jnp.where(((bad[:, 0] < 0) & ~finite)[:, None], jnp.stack([n, jnp.int32(1)]), bad)
    elif denoise:
        sb = noise.total(jnp.full((bsz,), grid[-1]))
        if reuse:
            ls, cache = _cached_score(score_fn, cache, x_last, sb)
            calls = cache.calls
        else:
            ls = score_fn(x_last, sb)
            calls = calls + 1
        x_out = pin(drawer(jax.random.fold_in(key, n), denoise_kernel(graph, x_last, ls, sb),
                           DrawContext(x_last, ls, jnp.full((bsz,), grid[-1]), jnp.zeros((bsz,), grid.dtype)),
                           graph, noise))
        bad = jnp.where(((bad[:, 0] < 0) & ~score_ok(ls))[:, None], jnp.stack([n, jnp.int32(1)]), bad)
    return x_out, path, reveal, bad, jnp.asarray(calls, jnp.int32)


def _resolve(grid, phi, reading, sampler):
    """(grid, phi, reading, solver) from a grid or a SamplerParams (which carries all four)."""
    from lsd_jax.sampler_params import SamplerParams

    if isinstance(grid, SamplerParams):
        params = grid
        if phi is not None or reading is not None or sampler is not None:
            raise ValueError("sample(...) got SamplerParams: it carries grid, phi, reading and sampler; "
                             "do not pass phi, reading or sampler as well")
        return params.grid(), params.phi, params.reading, params.solver
    return grid, phi, reading or "linear", sampler or "euler"


def sample(
    score_fn: ScoreFn,
    graph: Graph,
    noise: Noise,
    grid,
    key: Array,
    batch_size: int,
    length: int,
    *,
    sampler: "str | Solver | None" = None,
    phi=None,
    reading: Optional[str] = None,
    denoise: bool = True,
    x64: bool = False,
    x_init: Optional[Array] = None,
    return_path: bool = False,
    return_reveal: bool = False,
    mesh="auto",
    policy: Optional[Drawer] = None,
    reuse: bool = True,
    rows: bool = True,
) -> Samples:
    """Runs the reverse CTMC on `grid` [M + 1] (t_0 = 1 ... t_M = eps) from the limit.

    grid: the time grid, or a `SamplerParams` (grid, phi, reading and sampler together).
    sampler: a solver name (lsd_jax.solvers.SOLVERS, default euler) or a Solver object.
    phi [M] scales the score of each step (default 1: the plain sampler; fhs takes none).
    x64 draws in float64 (needs jax x64 enabled). Compiles once per (score_fn, graph, noise,
    options, shapes) for every M <= 1024: grid, phi, M and key are traced (return_path
    compiles per M: the path has S + 1 rows for S steps).
    return_reveal (absorbing graph): also the step after which each position was first
    unmasked, [B, L] int32 (S + 1: never), which with the final state encodes the whole path.
    mesh: "auto" (`sharding.default_mesh(batch_size)`: all devices when there are several
    and they divide the batch), None (one device) or a `jax.sharding.Mesh` with a "batch"
    axis. Params are replicated and the batch sharded; samples equal the unsharded run's.
    policy: a reveal policy (absorbing graph; a hashable `Drawer`) that replaces the draw of
    each step of a one-call solver (euler, tweedie); the final denoise keeps the exact draw.
    reuse: the step cache, for a score function whose network does not read sigmabar
    (`reusable`: mdlm without time conditioning, radd) and a one-call kernel solver: a step
    whose state equals the previous call's reuses that output (lax.cond; same samples, bit
    for bit) and makes no network call; `network_calls` counts the calls made.
    rows: where the score function has a row path (`solvers.rows.row_score`: the masked head
    of a checkpoint teacher on the absorbing graph) and the step is a one-call kernel with the
    exact draw (no policy, no step cache in use), head, kernel and draw run at the masked
    positions only, in tiles (same tokens, bit for bit); False: always the [B, L, V] path.
    Raises FloatingPointError naming the first step whose score or phi was non-finite.
    """
    from lsd_jax import sharding as sharding_lib
    from lsd_jax.teachers.base import check_score_fn

    check_score_fn(score_fn, graph, length)  # once per function: a named error before any compile
    grid, phi, reading, sampler = _resolve(grid, phi, reading, sampler)
    solver = solvers_lib.get_solver(sampler)
    check_choice("reading", reading, READINGS)
    solver.check_graph(graph)
    g = grids_lib.validate(grid)
    m = g.shape[0] - 1
    if phi is None:
        phi = jnp.ones((m,))
    elif not solver.accepts_phi:
        raise ValueError(f"sampler {solver.name!r} takes no phi (it has no per-step score coefficient)")
    phi = jnp.asarray(phi)
    if phi.shape != (m,):
        raise ValueError(f"phi must have shape [M] = [{m}] for a grid of {m + 1} times, got {phi.shape}")
    validate.phi(phi, reading)  # NaN / <= 0 refused before the run (the loop flags traced ones)
    if x64 and not x64_enabled():
        raise ValueError(
            "x64=True draws in float64 and needs jax x64: wrap the call in "
            "lsd_jax.enable_x64() or set JAX_ENABLE_X64=1 (CLI: --x64)"
        )
    if return_reveal and not graph.is_absorbing:
        raise ValueError("return_reveal needs the absorbing graph (uniform-graph tokens can move more than once)")
    if policy is not None and not (graph.is_absorbing and solver.accepts_policy):
        raise ValueError(f"a reveal policy needs the absorbing graph and a one-call solver "
                         f"({', '.join(n for n, s in solvers_lib.REGISTRY.items() if s.accepts_policy)}); "
                         f"got graph {graph.name!r}, sampler {solver.name!r}")
    drawer = solvers_lib.GumbelDraw("float64" if x64 else "float32")
    k_init, k_run = jax.random.split(key)
    if x_init is None:
        x_init = graph.sample_limit(k_init, (batch_size, length))
    elif tuple(x_init.shape) != (batch_size, length):
        raise ValueError(f"x_init must have shape [batch_size, length] = {[batch_size, length]}, got {x_init.shape}")
    elif validate.is_concrete(x_init) and getattr(x_init, "is_fully_addressable", True):
        validate.tokens(x_init, graph.dim, length, "x_init", batch=batch_size)  # ids in [0, dim): mask included
    steps = solver.num_steps(m, length)
    fdt = jnp.float64 if x64_enabled() else jnp.float32
    cap = steps if return_path else max(capacity(m), m)
    g = jnp.asarray(g, fdt)
    g_pad = jnp.concatenate([g, jnp.full((max(cap - m, 0),), g[-1], fdt)])
    phi_pad = jnp.concatenate([phi.astype(fdt), jnp.ones((max(cap - m, 0),), fdt)])
    if return_path and steps != m:  # fhs: its path has L + 1 rows; the grid is read at its ends only
        g_pad = jnp.concatenate([g[:1], jnp.full((steps,), g[-1], fdt)])
        phi_pad = jnp.ones((steps,), fdt)
    x0 = jnp.array(x_init, jnp.int32, copy=True)  # donated to the loop: never the caller's buffer
    if isinstance(mesh, str):
        check_choice("mesh", mesh, ("auto",))
        mesh = sharding_lib.default_mesh(batch_size)
    fn = as_pytree_fn(score_fn)
    if mesh is not None:
        fn, g_pad, phi_pad, k_run = sharding_lib.replicate((fn, g_pad, phi_pad, k_run), mesh)
        x0 = sharding_lib.shard_batch(x0, mesh)
    do_denoise = bool(denoise and solver.denoise)
    use_reuse = bool(reuse and reusable(fn) and isinstance(solver, solvers_lib.KernelSolver))
    use_rows = bool(rows and not use_reuse and policy is None and graph.is_absorbing
                    and isinstance(solver, solvers_lib.KernelSolver) and rows_lib.row_score(fn) is not None)
    tokens, path, reveal, bad, calls = _run(
        fn, graph, noise, g_pad, phi_pad, jnp.asarray(steps, jnp.int32), k_run, x0,
        solver=solver, drawer=policy if policy is not None else drawer, reading=reading, denoise=do_denoise,
        return_path=return_path, return_reveal=return_reveal, mesh=mesh,
        reuse=use_reuse, rows=use_rows,
    )
    bad = np.asarray(sharding_lib.to_host(bad))  # [B, 2], read once after the loop
    bad_rows = np.flatnonzero(bad[:, 0] >= 0)
    if bad_rows.size:
        bad_step, cause = (int(v) for v in bad[bad_rows[np.argmin(bad[bad_rows, 0])]])
        where = "the final denoise" if (do_denoise and bad_step == steps) else f"step {bad_step} of {steps}"
        raise FloatingPointError(f"sampling produced non-finite values at {where} ({solver.name}): {CAUSES[cause]}")
    nfe = steps * solver.calls_per_step
    return Samples(tokens, nfe, int(np.asarray(sharding_lib.to_host(calls))), path, reveal)
