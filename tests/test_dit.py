"""models/dit: the layers' closed forms and a fresh network's exact score (zero output layer)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax.models import dit


def small(family="sedd", graph="absorb", **kw):
    return dit.DiTConfig(vocab_size=5, hidden_size=8, cond_dim=8, n_blocks=1, n_heads=2, length=4, family=family,
                         graph=graph, **kw)


def test_timestep_embedding_closed_form():
    s = jnp.asarray([0.0, 2.0])
    emb = np.asarray(dit.timestep_embedding(s, dim=5, max_period=100.0))
    f = 100.0 ** (-np.arange(2) / 2)  # half = 2
    ref = np.concatenate([np.cos(np.outer([0.0, 2.0], f)), np.sin(np.outer([0.0, 2.0], f)), np.zeros((2, 1))], 1)
    np.testing.assert_allclose(emb, ref, rtol=1e-6, atol=1e-7)


def test_rotary_tables_and_rotation():
    np.testing.assert_allclose(dit.rotary_inv_freq(4, base=100.0), [1.0, 0.1], rtol=1e-6)
    cos, sin = dit.rotary_cos_sin(3, 4)
    ang = np.outer(np.arange(3), 1.0 / 10000.0 ** (np.arange(0, 4, 2) / 4))
    np.testing.assert_allclose(cos, np.cos(np.concatenate([ang, ang], 1)), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(dit.rotate_half(jnp.asarray([1.0, 2.0, 3.0, 4.0])), [-3.0, -4.0, 1.0, 2.0])
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 2, 4))
    y = dit.apply_rotary(x, cos, sin)  # a rotation of each (i, i + 2) pair: norms kept
    n = lambda a: np.hypot(np.asarray(a)[..., :2], np.asarray(a)[..., 2:])
    np.testing.assert_allclose(n(y), n(x), rtol=1e-5)
    np.testing.assert_allclose(y[:, 0], x[:, 0], rtol=1e-6)  # position 0: angle 0
    np.testing.assert_allclose(dit.modulate(jnp.ones((1, 1, 2)), jnp.full((1, 1, 2), 0.5), jnp.full((1, 1, 2), 1.0)),
                               np.full((1, 1, 2), 2.5))


@pytest.mark.slow
def test_fresh_sedd_score_is_the_uniform_posterior():
    """Output layer zero at init -> logits 0 -> with scale_by_sigma the log score is
    -log expm1(sigmabar) - log(V - 1) off the current token, 0 at it."""
    cfg = small(scale_by_sigma=True)
    params = dit.init_params(cfg, jax.random.PRNGKey(0))
    score = dit.score_fn_from(dit.DiT(cfg), params, cfg)
    x = jnp.asarray([[0, 4, 2, 4], [1, 1, 3, 0]], jnp.int32)
    sb = jnp.asarray([0.5, 2.0])
    out = np.asarray(score(x, sb))
    assert out.shape == (2, 4, 5) and out.dtype == np.float32
    ref = -np.log(np.expm1([0.5, 2.0]))[:, None, None] - math.log(4) + np.zeros((2, 4, 5))
    ref[np.arange(2)[:, None], np.arange(4)[None], np.asarray(x)] = 0.0
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fresh_mdlm_score():
    """mdlm: log p(y | x_t) = -log(V - 1) over the data ids at init; masked positions get
    that minus log expm1(sigmabar) (0 at the mask), unmasked: 0 at x, NEG_INF elsewhere."""
    cfg = small(family="mdlm")
    params = dit.init_params(cfg, jax.random.PRNGKey(1))
    score = dit.score_fn_from(dit.DiT(cfg), params, cfg)
    x = jnp.asarray([[4, 2, 4, 0]], jnp.int32)
    out = np.asarray(score(x, jnp.asarray([1.0])))
    masked = -math.log(4) - math.log(math.expm1(1.0))
    np.testing.assert_allclose(out[0, 0], [masked] * 4 + [0.0], rtol=1e-5)
    np.testing.assert_allclose(out[0, 1], [dit.NEG_INF, dit.NEG_INF, 0.0, dit.NEG_INF, dit.NEG_INF])


def test_config_errors_name_the_field():
    with pytest.raises(dit.ConfigError, match="unknown DiTConfig field"):
        dit.DiTConfig.from_dict({**small().to_dict(), "width": 3})
    with pytest.raises(dit.ConfigError, match="family"):
        small(family="gpt")
    assert dit.DiTConfig.from_dict(small().to_dict()) == small()
    assert small().num_tokens == 4 and small(graph="uniform").num_tokens == 5 and small().head_dim == 4
    with pytest.raises(TypeError, match="config must be a DiTConfig"):
        dit.score_fn_from(dit.DiT(small()), {}, object())
