"""Solvers: convergence order by exact enumeration (no sampling noise), first-hitting exactness,
trapezoidal and fhs through the sampling loop, the non-finite guard, SamplerParams in sample."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax import grids, samplers, solvers
from lsd_jax import sampler_params as sp_lib
from lsd_jax._compat import enable_x64
from lsd_jax.graphs import Absorbing, Uniform
from lsd_jax.noise import LogLinear
from lsd_jax.solvers import exact
from lsd_jax.teachers import markov_teacher
from lsd_jax.teachers.markov import MarkovChain, make_chain

# a gentle schedule (sigma(t) <= 4) on [0.5, 1] and a chain whose positions are coupled but not
# so strongly that trapezoidal's positive part (a1 R(y*) - a2 R(x))_+ is ever active: there it is
# second order. (On the sticky make_chain(3, 3) down to t = 0.05 the positive part is active on
# O(dt)-probability events -- another position moved in stage 1 -- and the measured TV slope is
# about -1.2; notes/solvers.md.)
ORDER_NOISE = LogLinear(0.2)
ORDER_EPS = 0.5
MILD = MarkovChain(np.array([0.5, 0.3, 0.2]), np.array([[0.5, 0.3, 0.2], [0.3, 0.45, 0.25], [0.25, 0.25, 0.5]]), 3)


def _errors(solver, chain, graph, ms, eps=ORDER_EPS):
    """(total variation, KL(exact || solver)) at t = eps for each M, from the exact p_1."""
    xs = exact.states(graph.dim, chain.length)
    score_fn = chain.score_fn(graph)
    p_start = exact.marginal(chain, graph, float(ORDER_NOISE.total(1.0)), xs)
    p_end = exact.marginal(chain, graph, float(ORDER_NOISE.total(eps)), xs)
    tv, kl = [], []
    for m in ms:
        q = exact.law(solver, score_fn, graph, ORDER_NOISE, np.linspace(1.0, eps, m + 1), p_start, xs)
        tv.append(0.5 * np.abs(q - p_end).sum())
        kl.append(float(np.sum(p_end * (np.log(p_end) - np.log(q)))))
    return np.asarray(tv), np.asarray(kl)


def _slope(ms, err):
    return float(np.polyfit(np.log(ms), np.log(err), 1)[0])


@pytest.mark.parametrize("solver,order", [(solvers.Euler(), 1), (solvers.Tweedie(), 1), (solvers.Trapezoidal(), 2)],
                         ids=["euler", "tweedie", "trapezoidal"])
def test_convergence_order_uniform_graph(solver, order):
    """V 3, L 3, uniform graph: exact law of the solver composed over M steps against the exact
    marginal; total variation falls as M^-order and KL as M^-2 order."""
    with enable_x64():
        chain, graph = MILD, Uniform(3)
        ms = np.asarray([16, 32, 64])
        tv, kl = _errors(solver, chain, graph, ms)
        print(solver.name, "TV", tv, "KL", kl, "slopes", _slope(ms, tv), _slope(ms, kl))
        assert abs(_slope(ms, tv) + order) < 0.25, (tv, _slope(ms, tv))
        assert abs(_slope(ms, kl) + 2 * order) < 0.5, (kl, _slope(ms, kl))
        assert solver.order == order


def test_trapezoidal_beats_euler_at_equal_nfe_sticky_chain():
    """Sticky chain down to t = 0.05, uniform graph, exact enumeration: at 16 and 32 network
    calls the trapezoidal law (8 / 16 steps) is closer to the exact marginal than Euler's
    (16 / 32 steps). (On the absorbing graph it is not at 8 / 16 calls: benchmarks/results/solver-order.md.)"""
    with enable_x64():
        chain, graph = make_chain(3, 3, seed=0), Uniform(3)
        for nfe in (16, 32):
            _, kl_e = _errors(solvers.Euler(), chain, graph, [nfe], eps=0.05)
            _, kl_t = _errors(solvers.Trapezoidal(), chain, graph, [nfe // 2], eps=0.05)
            assert kl_t[0] < 0.5 * kl_e[0], (nfe, kl_t, kl_e)


def test_first_hitting_is_exact():
    """With the exact score the first-hitting law from all-mask is the chain's law (KL ~ 0)."""
    with enable_x64():
        chain, graph = make_chain(3, 3, seed=0), Absorbing(3)
        clean, q = exact.first_hitting_law(chain.score_fn(graph), graph, 3)
        p = np.exp(chain.log_prob(clean))
        np.testing.assert_allclose(q.sum(), 1.0, atol=1e-12)
        np.testing.assert_allclose(q, p, rtol=1e-9, atol=1e-14)


def test_trapezoidal_stage_kernels_are_distributions():
    with enable_x64():
        for graph in (Absorbing(5), Uniform(5)):
            k1, k2 = jax.random.split(jax.random.PRNGKey(0))
            x = jax.random.randint(k1, (4, 6), 0, graph.dim)
            y = jnp.where(jax.random.uniform(k2, x.shape) < 0.3, (x + 1) % graph.dim, x)
            ls = jax.random.normal(k1, (4, 6, graph.dim), jnp.float64) + 1.0
            ls_y = jax.random.normal(k2, (4, 6, graph.dim), jnp.float64) + 1.0
            tb, tn = jnp.full((4,), 0.9), jnp.full((4,), 0.1)
            tr = solvers.Trapezoidal()
            for kern in (tr.stage1_kernel(graph, LogLinear(), x, ls, tb, tn),
                         tr.stage2_kernel(graph, LogLinear(), x, y, ls, ls_y, tb, tn)):
                p = np.asarray(solvers.probs(kern))
                assert np.all(p >= 0) and np.all(np.isfinite(p))
                np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_trapezoidal_in_the_loop_counts_two_calls_per_step(graph):
    teacher = markov_teacher(graph=graph, vocab=6, length=8)
    solver = solvers.get_solver("trapezoidal")
    out = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, grids.uniform(solver.steps_for_nfe(8), 1e-4),
                          jax.random.PRNGKey(0), 256, 8, sampler=solver)
    assert (out.nfe, out.network_calls) == (8, 9)
    assert int(np.asarray(out.tokens).max()) < 6
    met = teacher.metrics(out.tokens)
    assert np.isfinite(met["bigram_kl"])
    with pytest.raises(ValueError, match="multiple of 2"):
        solver.steps_for_nfe(7)


def test_fhs_in_the_loop_reveals_one_token_per_call():
    teacher = markov_teacher(vocab=6, length=8)
    out = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, grids.uniform(4, 1e-4),
                          jax.random.PRNGKey(0), 512, 8, sampler="fhs", return_path=True)
    assert (out.nfe, out.network_calls) == (8, 8)  # L calls, no denoise
    path = np.asarray(out.path)
    assert path.shape == (9, 512, 8)
    np.testing.assert_array_equal((path == 6).sum(-1), np.broadcast_to(8 - np.arange(9)[:, None], (9, 512)))
    met = teacher.metrics(out.tokens)
    assert met["bigram_kl"] < 3 * met["bigram_kl_floor"], met
    with pytest.raises(ValueError, match="absorbing graph"):
        u = markov_teacher(graph="uniform", vocab=6, length=8)
        samplers.sample(u.score_fn, u.graph, u.noise, grids.uniform(4, 1e-4), jax.random.PRNGKey(0), 4, 8,
                        sampler="fhs")
    with pytest.raises(ValueError, match="takes no phi"):
        samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, grids.uniform(4, 1e-4),
                        jax.random.PRNGKey(0), 4, 8, sampler="fhs", phi=jnp.ones(4))


def test_non_finite_score_raises_naming_the_step():
    teacher = markov_teacher(vocab=6, length=8)
    nan_after = lambda x, sb: jnp.where((sb < teacher.noise.total(0.6))[:, None, None], jnp.nan,  # noqa: E731
                                        teacher.score_fn(x, sb))
    with pytest.raises(FloatingPointError, match=r"step 2 of 4 \(euler\): non-finite score"):
        samplers.sample(nan_after, teacher.graph, teacher.noise, grids.uniform(4, 1e-4), jax.random.PRNGKey(0), 8, 8)
    with pytest.raises(FloatingPointError, match=r"phi must be finite .*entries \[1\] are \[inf\]"):  # before the run
        samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, grids.uniform(4, 1e-4), jax.random.PRNGKey(0),
                        8, 8, phi=jnp.asarray([1.0, jnp.inf, 1.0, 1.0]))


def test_sampler_params_carry_grid_phi_reading_solver():
    teacher = markov_teacher(vocab=6, length=8)
    params = sp_lib.init(4, sampler="tweedie", reading="temperature", grid=grids.power(4, 1e-4, 2.0))
    params = params.replace(phi=jnp.asarray([1.0, 1.2, 0.9, 1.1]))
    a = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, params, jax.random.PRNGKey(1), 64, 8)
    b = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, params.grid(), jax.random.PRNGKey(1), 64, 8,
                        sampler="tweedie", phi=params.phi, reading="temperature")
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert params.solver is solvers.REGISTRY["tweedie"]
    with pytest.raises(ValueError, match="carries grid, phi, reading and sampler"):
        samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, params, jax.random.PRNGKey(1), 4, 8,
                        reading="linear")


def test_gumbel_resolves_the_top_tail():
    """kernel.gumbel's float32 Gumbel reaches far beyond the one-uniform cap (-log(-log(1 - 2^-23))
    ~ 15.9) with distinct values: E = -log1p(-w) resolves w on the 2^-46 grid near 0."""
    from lsd_jax.solvers.kernel import gumbel_from_uniforms

    k = jnp.arange(1, 1001, dtype=jnp.float32)
    g = np.asarray(gumbel_from_uniforms(jnp.zeros(1000, jnp.float32), k * 2.0**-23), np.float64)
    np.testing.assert_allclose(np.exp(-g), np.arange(1, 1001) * 2.0**-46, rtol=1e-5)  # E = w exactly, to float32
    assert g.max() > 31.0 and np.all(np.diff(g) < 0)


@pytest.mark.slow
def test_zipf_toy_tail_mass_of_the_default_draw():
    """50257-token Zipf toy at 1024 steps (benchmarks/zipf_draw.py): the law of the default draw,
    computed from its resolution, keeps the tail beyond ranks 1000 and 10000 within 1e-6 relative
    of the exact law; the one-uniform float32 draw it replaced loses ~0.3%."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "zipf_draw.py")
    spec = importlib.util.spec_from_file_location("zipf_draw", path)
    mod = importlib.util.module_from_spec(spec)
    import sys

    sys.path.insert(0, os.path.dirname(path))
    spec.loader.exec_module(mod)
    ex = mod.computed_tails(1024, 0.0)
    new = mod.computed_tails(1024, 2.0**-46)
    old = mod.computed_tails(1024, 2.0**-23)
    for r0 in mod.TAIL_RANKS:
        key = f"tail_{r0}"
        assert abs(new[key] / ex[key] - 1) < 1e-6, (key, new, ex)
        assert old[key] / ex[key] - 1 < -1e-3, (key, old, ex)


def test_traced_non_finite_phi_is_flagged_by_the_loop():
    """A phi traced inside a caller's jit cannot be checked up front: the loop's flag holds,
    per row, the first bad step and the cause (2: phi)."""
    teacher = markov_teacher(vocab=6, length=8)

    @jax.jit
    def bad_of(phi):
        grid = jnp.concatenate([grids.uniform(4, 1e-4), jnp.full((4,), 1e-4)])
        return samplers._run(samplers.as_pytree_fn(teacher.score_fn), teacher.graph, teacher.noise, grid, phi,
                             jnp.asarray(4, jnp.int32), jax.random.PRNGKey(0), jnp.full((8, 8), 6, jnp.int32),
                             solver=solvers.Euler(), drawer=solvers.GumbelDraw(), reading="linear", denoise=True,
                             return_path=False)[3]

    bad = np.asarray(bad_of(jnp.asarray([1.0, jnp.inf, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])))
    np.testing.assert_array_equal(bad, np.tile([[1, 2]], (8, 1)))
    np.testing.assert_array_equal(np.asarray(bad_of(jnp.ones(8))), np.tile([[-1, 0]], (8, 1)))
