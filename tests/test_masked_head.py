"""The masked-position head (models/dit.masked_head) and the sampler's step cache: exact.

A random (non-zero) tiny DiT: the head "masked" gives the same log score as "full" at every
masked position, bit for bit, for every mask count (all masked: every tile runs); the same
tokens over a whole trajectory; and the step cache of a time-independent network (mdlm
without time conditioning) gives the same samples with fewer network calls.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax import grids, samplers
from lsd_jax.graphs import Absorbing
from lsd_jax.models import dit
from lsd_jax.noise import LogLinear

V, L = 37, 16


def random_net(family="sedd", tile=None, **kw):
    cfg = dit.DiTConfig(vocab_size=V, hidden_size=32, cond_dim=16, n_blocks=1, n_heads=2, length=L, family=family,
                        graph="absorb", **kw)
    params = dit.init_params(cfg, jax.random.PRNGKey(0))
    leaves, tree = jax.tree_util.tree_flatten(params)  # zero-initialised layers made random: a real head
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [a + 0.3 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    return cfg, jax.tree_util.tree_unflatten(tree, leaves)


def masked_x(key, b, frac):
    x = jax.random.randint(key, (b, L), 0, V - 1)
    return jnp.where(jax.random.uniform(jax.random.fold_in(key, 1), (b, L)) < frac, V - 1, x).astype(jnp.int32)


@pytest.fixture(autouse=True)
def tile_of_eight(monkeypatch):
    monkeypatch.setattr(dit, "HEAD_TILE", 8)  # 2 x 16 positions: 4 tiles, partial ones included


@pytest.mark.slow  # default suite: test_losses_differentiate_the_full_head compares the two heads (sedd)
@pytest.mark.parametrize("family,kw", [("sedd", {"scale_by_sigma": True}), ("mdlm", {}), ("radd", {})])
def test_masked_head_equals_full_head_at_masked_positions(family, kw):
    cfg, params = random_net(family, **kw)
    full = jax.jit(dit.score_fn_from(dit.DiT(cfg), params, cfg, head="full"))
    masked = jax.jit(dit.score_fn_from(dit.DiT(cfg), params, cfg, head="masked"))
    sb = jnp.asarray([0.3, 2.5])
    for i, frac in enumerate([0.0, 0.1, 0.3, 0.6, 0.9, 1.0]):  # 1.0: all masked, every tile runs
        x = masked_x(jax.random.PRNGKey(10 + i), 2, frac)
        a, b = np.asarray(full(x, sb)), np.asarray(masked(x, sb))
        m = np.asarray(x) == V - 1
        # the per-tile GEMM vs one [B L, D] GEMM: equal to float32 rounding at these tiny sizes
        np.testing.assert_allclose(b[m], a[m], rtol=2e-6, atol=2e-5)
        ref_unmasked = np.where(np.arange(V) == np.asarray(x)[..., None], 0.0, dit.NEG_INF)
        np.testing.assert_array_equal(b[~m], ref_unmasked[~m])
        if family != "sedd":  # mdlm / radd: the whole score is the full head's, unmasked rows included
            np.testing.assert_array_equal(b[~m], a[~m])


def test_masked_rows_do_not_depend_on_the_other_positions():
    """For one Linear input h, a masked row's value is the same bits whether it is the only
    masked position or all are (every tile runs): the same tile GEMM either way, which is
    what makes the masked head exact wherever the one-piece GEMM is row-independent."""
    cfg, params = random_net("sedd", scale_by_sigma=True)
    head = jax.jit(lambda h, x, sb: dit.masked_head(cfg, params["output_layer"]["linear"], h, x, sb))
    sb = jnp.asarray([0.4, 1.5])
    h = jax.random.normal(jax.random.PRNGKey(3), (2, L, 32))
    x_all = jnp.full((2, L), V - 1, jnp.int32)
    every = np.asarray(head(h, x_all, sb))
    for i, frac in enumerate([0.05, 0.3, 0.7]):
        x = masked_x(jax.random.PRNGKey(20 + i), 2, frac)
        m = np.asarray(x) == V - 1
        assert 0 < m.sum() < 2 * L
        np.testing.assert_array_equal(np.asarray(head(h, x, sb))[m], every[m])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sedd", "mdlm"])
def test_same_tokens_over_a_whole_trajectory(family):
    cfg, params = random_net(family)
    g, n = Absorbing(V - 1), LogLinear()
    for nfe in (8, 64):
        out = {h: samplers.sample(dit.score_fn_from(dit.DiT(cfg), params, cfg, head=h), g, n,
                                  grids.uniform(nfe, 1e-3), jax.random.PRNGKey(nfe), 2, L, return_path=True,
                                  reuse=False)
               for h in dit.HEADS}
        np.testing.assert_array_equal(out["masked"].path, out["full"].path)
        np.testing.assert_array_equal(out["masked"].tokens, out["full"].tokens)


def test_head_option_is_checked():
    cfg = dit.DiTConfig(vocab_size=V, hidden_size=32, cond_dim=16, n_blocks=1, n_heads=2, length=L, graph="uniform")
    with pytest.raises(ValueError, match="head 'masked' needs the absorbing graph"):
        dit.score_fn_from(dit.DiT(cfg), None, cfg, head="masked")
    with pytest.raises(ValueError, match="allowed: full, masked"):
        dit.score_fn_from(dit.DiT(cfg), None, cfg, head="rows")


@pytest.mark.slow
@pytest.mark.parametrize("head", dit.HEADS)
def test_step_cache_is_exact_and_counts_the_calls_made(head):
    """mdlm without time conditioning: with the cache, the same path bit for bit and fewer
    calls; the count is the number of distinct consecutive states the net was run at."""
    cfg, params = random_net("mdlm", time_conditioning=False)
    fn = dit.score_fn_from(dit.DiT(cfg), params, cfg, head=head)
    assert samplers.reusable(fn)
    g, n = Absorbing(V - 1), LogLinear()
    for nfe in (8, 64):
        run = lambda reuse: samplers.sample(fn, g, n, grids.uniform(nfe, 1e-3), jax.random.PRNGKey(nfe), 1, L,
                                            return_path=True, reuse=reuse)
        plain, cached = run(False), run(True)
        np.testing.assert_array_equal(cached.path, plain.path)
        np.testing.assert_array_equal(cached.tokens, plain.tokens)
        assert plain.network_calls == nfe + 1
        path = np.asarray(plain.path)  # [nfe + 1, 1, L]: the states the steps (and the denoise) score
        distinct = 1 + int(np.sum(np.any(path[1:] != path[:-1], axis=(1, 2))))
        assert cached.network_calls == distinct and cached.nfe == nfe
        if nfe == 64:
            assert cached.network_calls < nfe  # L 16 tokens over 64 steps: many steps reveal nothing


@pytest.mark.slow
def test_time_conditioned_nets_are_not_reused():
    for family, kw in (("sedd", {}), ("mdlm", {"time_conditioning": True})):
        cfg, params = random_net(family, **kw)
        fn = dit.score_fn_from(dit.DiT(cfg), params, cfg)
        assert not samplers.reusable(fn)
        out = samplers.sample(fn, Absorbing(V - 1), LogLinear(), grids.uniform(8, 1e-3), jax.random.PRNGKey(0), 1, L)
        assert out.network_calls == 9


@pytest.mark.slow
def test_gradient_in_phi_passes_the_masked_head():
    """The distillation loss differentiates in phi through apply_phi(score_fn(x)), under
    jax.checkpoint (student_loss, as it remats large vocabularies): the tile loop has a static trip count."""
    cfg, params = random_net("sedd", scale_by_sigma=True)
    x = masked_x(jax.random.PRNGKey(5), 2, 0.5)
    sb = jnp.asarray([0.7, 0.7])

    def loss(phi, head):
        fn = dit.score_fn_from(dit.DiT(cfg), params, cfg, head=head)
        body = jax.checkpoint(lambda p: jnp.sum(jnp.exp(samplers.apply_phi(x, fn(x, sb), p))), prevent_cse=False)
        return body(phi)

    grad = float(jax.jit(jax.grad(loss), static_argnums=1)(jnp.float32(0.8), "masked"))
    # d/dphi of sum phi exp(ls) off the current token: exp(ls) summed there (unmasked rows: exp(NEG_INF) = 0)
    m = np.asarray(x) == V - 1
    ls = np.asarray(dit.score_fn_from(dit.DiT(cfg), params, cfg, head="masked")(x, sb))
    want = np.sum(np.where(np.arange(V) == np.asarray(x)[..., None], 0.0, np.exp(ls)) * m[..., None])  # d/dphi
    assert want > 0
    np.testing.assert_allclose(grad, want, rtol=1e-4)


def test_losses_differentiate_the_full_head():
    """`for_gradients`: the LSD losses differentiate a masked-head score through the full
    head (the tile loop is slow under reverse mode); same values at masked positions, and
    a score function that is not a masked-head DiT passes through unchanged."""
    cfg, params = random_net("sedd", scale_by_sigma=True)
    masked = dit.score_fn_from(dit.DiT(cfg), params, cfg, head="masked")
    full = dit.for_gradients(masked)
    assert full.func.head == "full" and dit.for_gradients(full) is full
    plain = lambda x, sb: x  # noqa: E731
    assert dit.for_gradients(plain) is plain
    x, sb = masked_x(jax.random.PRNGKey(4), 2, 0.5), jnp.asarray([0.5, 1.0])
    m = np.asarray(x) == V - 1
    np.testing.assert_allclose(np.asarray(full(x, sb))[m], np.asarray(masked(x, sb))[m], rtol=2e-6, atol=2e-5)
