import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lsd_jax._compat import enable_x64
from scipy.linalg import expm

from lsd_jax.graphs import Absorbing, Uniform, get_graph

GRAPHS = [Absorbing(5), Uniform(6)]


def full(fn, graph, *args):
    """Stacks fn(x) over all states x: [dim, dim] with row x."""
    xs = jnp.arange(graph.dim)
    return np.asarray(fn(xs, *[jnp.full((graph.dim,), a) for a in args]))


def q_matrix(graph):
    return full(graph.rate, graph)


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.name)
def test_rate_rows_sum_to_zero_and_transp_is_column(graph):
    with enable_x64():
        q = q_matrix(graph)
        np.testing.assert_allclose(q.sum(1), 0.0, atol=1e-12)
        assert np.all(q - np.diag(np.diag(q)) >= 0)
        np.testing.assert_allclose(full(graph.transp_rate, graph), q.T, atol=1e-12)


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.name)
@pytest.mark.parametrize("sigma", [0.01, 0.3, 2.0])
def test_transition_is_matrix_exponential(graph, sigma):
    with enable_x64():
        p = full(graph.transition, graph, sigma)
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
        np.testing.assert_allclose(p, expm(sigma * q_matrix(graph)), atol=1e-12)
        np.testing.assert_allclose(full(graph.transp_transition, graph, sigma), p.T, atol=1e-12)


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.name)
def test_transition_semigroup(graph):
    with enable_x64():
        s, t = 0.37, 1.21
        ps, pt, pst = (full(graph.transition, graph, v) for v in (s, t, s + t))
        np.testing.assert_allclose(ps @ pt, pst, atol=1e-12)


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.name)
def test_reverse_rate_matches_definition(graph):
    """R[x, y] = Q[y, x] s[y] off the diagonal, rows sum to 0."""
    with enable_x64():
        key = jax.random.PRNGKey(0)
        score = jnp.exp(jax.random.normal(key, (graph.dim, graph.dim), jnp.float64))
        xs = jnp.arange(graph.dim)
        rev = np.asarray(graph.reverse_rate(xs, score))
        q = q_matrix(graph)
        expect = q.T * np.asarray(score)
        np.fill_diagonal(expect, 0.0)
        np.fill_diagonal(expect, -expect.sum(1))
        np.testing.assert_allclose(rev, expect, atol=1e-12)


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.name)
def test_staggered_score_definition(graph):
    """staggered_score(s, d) = exp(-d Q)^T s: the Tweedie denoiser's score transform."""
    with enable_x64():
        d = 0.4
        score = np.exp(np.random.default_rng(0).normal(size=(3, graph.dim)))
        got = np.asarray(graph.staggered_score(jnp.asarray(score), jnp.full((3,), d)))
        expect = score @ expm(-d * q_matrix(graph))
        np.testing.assert_allclose(got, expect, rtol=1e-10)


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.name)
def test_sample_transition_matches_transition(graph):
    key = jax.random.PRNGKey(1)
    x0 = jnp.zeros((20000, 1), jnp.int32) + 2
    sigma = jnp.full((20000,), 0.7)
    xt = np.asarray(graph.sample_transition(key, x0, sigma))[:, 0]
    freq = np.bincount(xt, minlength=graph.dim) / xt.size
    expect = full(graph.transition, graph, 0.7)[2]
    np.testing.assert_allclose(freq, expect, atol=0.015)


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.name)
def test_score_entropy_zero_at_true_score_and_positive_elsewhere(graph):
    """Denoising score entropy is minimised (in expectation over x0) by the true ratio;
    for a single x0 the minimiser is p_t(y|x0)/p_t(x|x0), where the loss is exactly 0."""
    with enable_x64():
        sigma = jnp.asarray([0.8])
        x0 = jnp.asarray([[1]])
        p = full(graph.transition, graph, 0.8)[1]  # p_t(. | x0)
        for x in range(graph.dim):
            if p[x] == 0:
                continue
            xt = jnp.asarray([[x]])
            true = np.log(p / p[x] + 1e-300)
            if graph.is_absorbing and x != graph.mask_id:
                continue  # loss is only defined at masked positions
            loss_true = float(graph.score_entropy(jnp.asarray(true)[None, None], sigma, xt, x0)[0, 0])
            loss_off = float(graph.score_entropy(jnp.asarray(true + 0.3)[None, None], sigma, xt, x0)[0, 0])
            assert abs(loss_true) < 1e-10
            assert loss_off > 1e-3


def test_get_graph_errors():
    with pytest.raises(ValueError, match="allowed: absorb, uniform"):
        get_graph("gaussian", 4)
    assert get_graph("absorb", 4).mask_id == 4
