"""The HMM teacher against exact enumeration on tiny models (hidden paths and sequences)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_markov import brute_force_score

from lsd_jax._compat import enable_x64
from lsd_jax.graphs import Absorbing, Uniform
from lsd_jax.teachers import hmm_teacher
from lsd_jax.teachers.hmm import ENTROPY_SAMPLES, HMM, lag_kl, make_hmm


def tiny_hmm(length: int = 4, seed: int = 3) -> HMM:
    """H 2, V 3, random dense parameters and a non-stationary init."""
    rng = np.random.default_rng(seed)
    init = rng.dirichlet(np.ones(2))
    trans = rng.dirichlet(np.ones(2), size=2)
    emit = rng.dirichlet(np.ones(3), size=2)
    return HMM(init, trans, emit, length)


def brute_force_log_prob(hmm: HMM, x: np.ndarray) -> np.ndarray:
    """log P(x) [B] by summing over all H^L hidden paths."""
    total = np.zeros(len(x))
    for z in itertools.product(range(hmm.num_states), repeat=hmm.length):
        p = hmm.init[z[0]] * np.prod([hmm.trans[z[i - 1], z[i]] for i in range(1, hmm.length)])
        total += p * np.prod(hmm.emit[np.array(z)[None, :], x], axis=1)
    return np.log(total)


def all_sequences(hmm: HMM) -> np.ndarray:
    return np.array(list(itertools.product(range(hmm.num_tokens), repeat=hmm.length)))


def test_log_prob_equals_sum_over_hidden_paths():
    hmm = tiny_hmm()
    xs = all_sequences(hmm)
    lp = hmm.log_prob(xs)
    np.testing.assert_allclose(lp, brute_force_log_prob(hmm, xs), rtol=1e-12)
    np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=1e-12)
    assert hmm.log_prob(np.array([[0, 3, 1, 1]]))[0] == -np.inf
    with pytest.raises(ValueError, match=r"tokens \[B, 4\]"):
        hmm.log_prob(np.zeros((2, 3), int))


@pytest.mark.parametrize("graph", [Absorbing(3), Uniform(3)], ids=lambda g: g.name)
@pytest.mark.parametrize("sigmabar", [0.02, 0.7, 4.0])
def test_exact_score_equals_brute_force(graph, sigmabar):
    with enable_x64():
        hmm = tiny_hmm()
        xs, brute = brute_force_score(hmm, graph, sigmabar)
        got = np.exp(np.asarray(hmm.log_score(graph, jnp.asarray(xs), jnp.full((len(xs),), sigmabar))))
        np.testing.assert_allclose(got, brute, rtol=1e-9)


def test_pair_laws_and_unigram_entropy_by_enumeration():
    hmm = tiny_hmm(length=5)
    xs = all_sequences(hmm)
    p = np.exp(hmm.log_prob(xs))
    for lag in (1, 2, 4):
        emp = np.zeros((3, 3))
        for i in range(hmm.length - lag):
            np.add.at(emp, (xs[:, i], xs[:, i + lag]), p / (hmm.length - lag))
        np.testing.assert_allclose(hmm.pair_probs(lag), emp, rtol=1e-12)
    uni = np.array([(p[:, None] * (xs == a)).sum() / hmm.length for a in range(3)])
    assert hmm.unigram_entropy() == pytest.approx(-(uni * np.log(uni)).sum(), rel=1e-12)
    # an HMM whose state is its token is the first-order chain: MI at lag 2 is then the
    # chain's, and the pair law at lag d uses trans^d
    chain = HMM(hmm.init, hmm.trans, np.eye(2), 5)
    m = chain.state_marginals()[:3].mean(0)
    np.testing.assert_allclose(chain.pair_probs(2), m[:, None] * (hmm.trans @ hmm.trans), rtol=1e-12)
    with pytest.raises(ValueError, match="lag"):
        hmm.pair_probs(5)


def test_entropy_rate_monte_carlo_within_its_standard_error():
    hmm = tiny_hmm(length=10)
    xs = all_sequences(hmm)
    lp = hmm.log_prob(xs)
    exact = -(np.exp(lp) * lp).sum() / hmm.length
    se = hmm.entropy_rate_se()
    assert 0 < se < 0.01
    assert abs(hmm.entropy_rate() - exact) < 4 * se


def test_lag_kl_exact_value():
    hmm = tiny_hmm(length=4)
    x = np.array([[0, 1, 2, 0], [1, 1, 0, 2]])
    # lag 2 pairs: (0,2), (1,0), (1,0), (1,2)
    emp = {(0, 2): 0.25, (1, 0): 0.5, (1, 2): 0.25}
    true = hmm.pair_probs(2)
    expect = sum(q * np.log(q / true[a, b]) for (a, b), q in emp.items())
    assert lag_kl(hmm, x, 2) == pytest.approx(expect, rel=1e-12)
    with pytest.raises(ValueError, match="outside"):
        lag_kl(hmm, np.array([[0, 3, 1, 1]]), 1)


def test_samples_match_the_exact_laws():
    hmm = tiny_hmm(length=10)  # the shapes of the entropy test: one compile of the sampler
    n = ENTROPY_SAMPLES
    x = np.asarray(hmm.sample(jax.random.PRNGKey(0), n))
    m = hmm.evaluate(x)
    assert abs(m["nll"] - m["data_entropy"]) < 4 * np.sqrt(2) * m["data_entropy_se"]
    for d in (1, 2, 4, 8):
        assert m[f"lag_kl_{d}"] < 2.5 * (9 - 1) / (2 * n * (10 - d))
    assert m["bigram_kl"] == m["lag_kl_1"]
    assert m["lag_kl"] == pytest.approx(np.mean([m[f"lag_kl_{d}"] for d in (1, 2, 4, 8)]))
    assert abs(m["unigram_entropy"] - m["data_unigram_entropy"]) < 0.01


def test_default_hmm_has_long_range_dependence():
    hmm = make_hmm()
    assert (hmm.num_states, hmm.num_tokens, hmm.length) == (16, 32, 32)
    np.testing.assert_allclose(hmm.init @ hmm.trans, hmm.init, atol=1e-12)  # stationary
    mi = [hmm.mutual_information(d) for d in (1, 8)]
    assert mi[1] > 0.5 * mi[0] > 0
    assert hmm.trans.min() > 0 and hmm.emit.min() > 0
    np.testing.assert_array_equal(hmm.emit, make_hmm().emit)
    assert not np.allclose(hmm.emit, make_hmm(seed=1).emit)


def test_hmm_teacher_shapes_and_metrics():
    t = hmm_teacher("uniform", states=3, vocab=5, length=8, seed=2)
    assert t.exact and t.hmm.emit.shape == (3, 5) and t.graph.dim == 5
    x = jax.random.randint(jax.random.PRNGKey(0), (4, 8), 0, 5)
    s = t.score_fn(x, jnp.full((4,), 0.3))
    assert s.shape == (4, 8, 5) and bool(jnp.isfinite(s).all())
    m = t.metrics(np.asarray(x))
    assert {"nll", "data_entropy", "lag_kl_4", "bigram_kl", "lag_kl"} <= set(m)
    assert "lag_kl_8" not in m  # lag >= L is skipped
    a = hmm_teacher("absorb", states=3, vocab=5, length=8, seed=2)
    assert a.graph.dim == 6 and a.describe()["states"] == 3
    with pytest.raises(ValueError, match="states"):
        hmm_teacher(states=1)


def test_cli_sample_hmm_and_flag_errors(tmp_path, capsys):
    from lsd_jax.cli import main

    out = tmp_path / "r.json"
    assert main(["sample", "--teacher", "hmm", "--hmm-states", "3", "--teacher-vocab", "5", "--teacher-length", "10",
                 "--nfe", "4", "--num-samples", "64", "--json", str(out)]) == 0
    import json

    res = json.loads(out.read_text())
    assert res["teacher"]["states"] == 3 and res["teacher"]["vocab"] == 5 and res["network_calls"] == 5
    assert {"nll", "data_entropy", "data_entropy_se", "bigram_kl", "lag_kl", "lag_kl_8"} <= set(res)
    capsys.readouterr()
    for argv, needle in ((["--teacher", "markov", "--hmm-states", "4"], "--hmm-states applies to --teacher hmm only"),
                         (["--teacher", "hmm", "--hmm-states", "1"], "--hmm-states must be >= 2")):
        assert main(["sample", "--nfe", "4", *argv]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err
