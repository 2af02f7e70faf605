"""Steps at the masked positions only (lsd_jax/solvers/rows.py): the same tokens as the full step.

A table-driven score (every masked position's log-score row drawn at random) checks the
row-wise step against the full [B, L, V] step of each one-call solver, bit for bit, for the
flat draw (small V) and the two-level draw (V > FLAT_VOCAB_MAX), and its non-finite flag;
a random tiny DiT with the masked head checks whole trajectories through `samplers.sample`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax import grids, samplers, solvers
from lsd_jax.graphs import Absorbing
from lsd_jax.models import dit
from lsd_jax.noise import LogLinear
from lsd_jax.solvers.base import GumbelDraw, StepModel, denoise_kernel
from lsd_jax.solvers.rows import RowScore, masked_rows_step

B, L = 3, 10


def table_score(v, key):
    """(full score_fn, RowScore) of one random table [B, L, v] (v - 1: the mask id)."""
    table = 3.0 * jax.random.normal(key, (B, L, v))
    table = jnp.where(jnp.arange(v).reshape(1, 1, v) == v - 1, 0.0, table)  # the mask entry: log 1 at a masked x

    def full(x, sb):
        point = jnp.where(jnp.arange(v).reshape(1, 1, v) == x[..., None], 0.0, dit.NEG_INF)
        return jnp.where((x == v - 1)[..., None], table - jnp.log(sb)[:, None, None], point)

    flat = table.reshape(B * L, v)
    trunk = lambda x, sb: jnp.arange(B * L, dtype=jnp.float32).reshape(B, L, 1)  # noqa: E731  h = the position
    rows = lambda h, x, sb: flat[h[:, 0].astype(jnp.int32)] - jnp.log(sb)[:, None]  # noqa: E731
    return full, RowScore(trunk, rows, 4)  # tiles of 4 rows: partial tiles, several trips


def state(v, key, frac):
    x = jax.random.randint(key, (B, L), 0, v - 1)
    return jnp.where(jax.random.uniform(jax.random.fold_in(key, 1), (B, L)) < frac, v - 1, x).astype(jnp.int32)


@pytest.mark.parametrize("v,solver", [(23, "euler"), (23, "tweedie"), (5003, "tweedie"),  # 5003: two-level draw
                                      pytest.param(5003, "euler", marks=pytest.mark.slow)])  # (a partial tail block)
def test_row_step_equals_the_full_step(v, solver):
    graph, noise, s = Absorbing(v - 1), LogLinear(), solvers.get_solver(solver)
    full, rs = table_score(v, jax.random.PRNGKey(v))
    t, tn = jnp.asarray([0.9, 0.5, 0.2]), jnp.asarray([0.6, 0.3, 0.05])
    drawer = GumbelDraw()
    step = jax.jit(lambda x, key, use_rows: s.step(StepModel(full, graph, noise, drawer, rs if use_rows else None),
                                                   x, t, tn, key, ()), static_argnums=2)
    for i, frac in enumerate([0.0, 0.2, 0.7, 1.0]):
        x = state(v, jax.random.PRNGKey(i), frac)
        for k in range(3):
            key = jax.random.PRNGKey(100 * i + k)
            a, b = step(x, key, False), step(x, key, True)
            np.testing.assert_array_equal(np.asarray(b.x), np.asarray(a.x))
            np.testing.assert_array_equal(np.asarray(b.finite), np.asarray(a.finite))
            moved = np.asarray(b.x) != np.asarray(x)
            assert not np.any(moved & (np.asarray(x) != v - 1))  # unmasked positions never move
        if frac == 1.0:
            assert np.any(np.asarray(b.x) != v - 1)  # the step revealed something: the draw was exercised


@pytest.mark.slow  # default suite: the denoise runs on the row path in test_sample_with_the_row_path_...
@pytest.mark.parametrize("v", [23, 5003])
def test_row_denoise_equals_the_full_denoise(v):
    graph, noise = Absorbing(v - 1), LogLinear()
    full, rs = table_score(v, jax.random.PRNGKey(7))
    sb = jnp.asarray([1e-3, 2e-3, 1e-4])
    x = state(v, jax.random.PRNGKey(8), 0.5)
    key = jax.random.PRNGKey(9)
    want = solvers.draw(key, denoise_kernel(graph, x, full(x, sb), sb))
    got, finite = masked_rows_step(rs, graph.mask_id, graph.dim, x, sb,
                                   lambda xr, lsr, bi: denoise_kernel(graph, xr, lsr, sb[bi]), key)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert np.all(np.asarray(got) != v - 1) and np.all(np.asarray(finite))


def test_row_step_flags_non_finite_rows_per_sequence():
    v = 23
    graph, noise = Absorbing(v - 1), LogLinear()
    _, rs = table_score(v, jax.random.PRNGKey(1))
    bad = rs._replace(rows=lambda h, x, sb: jnp.where((h[:, :1] == L + 2) & (jnp.arange(v).reshape(1, v) == 0), jnp.inf,
                                                      rs.rows(h, x, sb)))  # row 1 of sequence 1 (flat L + 2)
    x = jnp.full((B, L), v - 1, jnp.int32)
    kern = lambda xr, lsr, bi: solvers.Euler().kernel(graph, noise, xr, lsr, jnp.full(bi.shape, 0.5),  # noqa: E731
                                                      jnp.full(bi.shape, 0.4))
    _, finite = masked_rows_step(bad, graph.mask_id, graph.dim, x, jnp.full((B,), 0.7), kern, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(finite), [True, False, True])


@pytest.mark.parametrize("family,kw,sampler", [("sedd", {"scale_by_sigma": True}, "euler"),
                                               pytest.param("mdlm", {"time_conditioning": True}, "tweedie",
                                                            marks=pytest.mark.slow)])
def test_sample_with_the_row_path_is_the_same_trajectory(family, kw, sampler, monkeypatch):
    monkeypatch.setattr(dit, "HEAD_TILE", 8)
    v, length = 37, 16
    cfg = dit.DiTConfig(vocab_size=v, hidden_size=32, cond_dim=16, n_blocks=1, n_heads=2, length=length,
                        family=family, graph="absorb", **kw)
    params = dit.init_params(cfg, jax.random.PRNGKey(0))
    leaves, tree = jax.tree_util.tree_flatten(params)
    leaves = [a + 0.3 * jax.random.normal(k, a.shape, a.dtype)
              for a, k in zip(leaves, jax.random.split(jax.random.PRNGKey(1), len(leaves)))]
    fn = dit.score_fn_from(dit.DiT(cfg), jax.tree_util.tree_unflatten(tree, leaves), cfg, head="masked")
    phi = jnp.asarray([1.0, 0.8, 1.3, 0.9, 1.1, 1.0, 0.7, 1.2])
    out = {rows: samplers.sample(fn, Absorbing(v - 1), LogLinear(), grids.uniform(8, 1e-3), jax.random.PRNGKey(5), 2,
                                 length, sampler=sampler, phi=phi, return_path=True, rows=rows)
           for rows in (False, True)}
    np.testing.assert_array_equal(out[True].path, out[False].path)
    np.testing.assert_array_equal(out[True].tokens, out[False].tokens)
    assert out[True].network_calls == out[False].network_calls == 9
    assert np.all(np.asarray(out[True].tokens) != v - 1)
