import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lsd_jax._compat import enable_x64

from lsd_jax.graphs import Absorbing, Uniform
from lsd_jax.eval.text_metrics import unigram_entropy
from lsd_jax.teachers.markov import MarkovChain, bigram_kl, evaluate, make_chain


def brute_force_score(chain, graph, sigmabar):
    """Concrete score of every noisy state by enumerating all V^L clean sequences."""
    v, length = chain.num_tokens, chain.length
    x0s = np.array(list(itertools.product(range(v), repeat=length)))
    p0 = np.exp(chain.log_prob(x0s))
    kern = np.asarray(graph.transition(jnp.arange(v), jnp.full((v,), sigmabar)))  # [V, dim]
    xs = np.array(list(itertools.product(range(graph.dim), repeat=length)))
    pt = np.array([(p0 * np.prod(kern[x0s, x[None, :]], axis=1)).sum() for x in xs])
    index = {tuple(x): k for k, x in enumerate(xs)}
    out = np.zeros((len(xs), length, graph.dim))
    for k, x in enumerate(xs):
        for i in range(length):
            for y in range(graph.dim):
                x2 = x.copy()
                x2[i] = y
                out[k, i, y] = pt[index[tuple(x2)]] / pt[k]
    return xs, out


@pytest.mark.parametrize("graph", [Absorbing(3), Uniform(3)], ids=lambda g: g.name)
@pytest.mark.parametrize("sigmabar", [0.02, 0.7, 4.0])
def test_exact_score_equals_brute_force(graph, sigmabar):
    with enable_x64():
        chain = make_chain(3, 4, seed=3)
        xs, brute = brute_force_score(chain, graph, sigmabar)
        got = np.exp(np.asarray(chain.log_score(graph, jnp.asarray(xs), jnp.full((len(xs),), sigmabar))))
        np.testing.assert_allclose(got, brute, rtol=1e-9)


def test_exact_score_float32_close_to_float64():
    chain = make_chain(16, 32, seed=0)
    graph = Absorbing(16)
    key = jax.random.PRNGKey(0)
    x = jax.random.randint(key, (8, 32), 0, 17)
    sb = jnp.asarray([1e-4, 1e-2, 0.1, 0.5, 1.0, 3.0, 6.0, 6.9])
    f32 = np.asarray(chain.log_score(graph, x, sb))
    with enable_x64():
        f64 = np.asarray(chain.log_score(graph, x, sb.astype(jnp.float64)))
    np.testing.assert_allclose(f32, f64, atol=2e-4, rtol=1e-5)


def test_chain_sampler_and_exact_quantities():
    """Ancestral samples match the chain: NLL ~ entropy rate, bigram KL at its floor."""
    chain = make_chain(8, 12, seed=1)
    x = np.asarray(chain.sample(jax.random.PRNGKey(0), 20000))
    m = evaluate(chain, x)
    assert abs(m["nll"] - m["data_entropy"]) < 0.01 * m["data_entropy"] + 0.005
    assert m["bigram_kl"] < 2.0 * m["bigram_kl_floor"]
    assert abs(m["unigram_entropy"] - m["data_unigram_entropy"]) < 0.01
    # entropy rate by enumeration on a tiny chain
    tiny = make_chain(3, 4, seed=2)
    xs = np.array(list(itertools.product(range(3), repeat=4)))
    lp = tiny.log_prob(xs)
    np.testing.assert_allclose(-(np.exp(lp) * lp).sum() / 4, tiny.entropy_rate(), rtol=1e-12)
    np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=1e-12)


def test_metrics_exact_values():
    chain = MarkovChain(np.array([0.5, 0.5]), np.array([[0.9, 0.1], [0.2, 0.8]]), 3)
    x = np.array([[0, 0, 1], [1, 1, 1]])
    assert unigram_entropy(x, mode="pooled") == pytest.approx(-(1 / 3) * np.log(1 / 3) - (2 / 3) * np.log(2 / 3))
    # empirical pairs: (0,0), (0,1), (1,1), (1,1)
    marg = np.array([[0.5, 0.5], [0.55, 0.45]]).mean(0)
    true = marg[:, None] * chain.trans
    emp = np.array([[0.25, 0.25], [0.0, 0.5]])
    expect = sum(emp[a, b] * np.log(emp[a, b] / true[a, b]) for a in range(2) for b in range(2) if emp[a, b] > 0)
    assert bigram_kl(chain, x) == pytest.approx(expect, rel=1e-12)
    lp = chain.log_prob(x)
    np.testing.assert_allclose(lp, np.log([0.5 * 0.9 * 0.1, 0.5 * 0.8 * 0.8]))
    with pytest.raises(ValueError, match="outside"):
        bigram_kl(chain, np.array([[0, 2, 1]]))


def test_make_chain_is_seeded_and_interesting():
    a, b = make_chain(16, 32, seed=0), make_chain(16, 32, seed=0)
    np.testing.assert_array_equal(a.trans, b.trans)
    assert not np.allclose(a.trans, make_chain(16, 32, seed=1).trans)
    # low entropy rate relative to log V, full support
    assert a.entropy_rate() < 0.4 * np.log(16)
    assert a.trans.min() > 0
