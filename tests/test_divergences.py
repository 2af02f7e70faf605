"""divergences: exact small cases against hand-computed references and their laws."""

import numpy as np
import pytest

from lsd_jax import divergences as dv


def _sym_kl_ref(a, b, alpha):
    p = (np.asarray(a, float) + alpha) / (np.asarray(a, float) + alpha).sum()
    q = (np.asarray(b, float) + alpha) / (np.asarray(b, float) + alpha).sum()
    return 0.5 * sum(pi * np.log(pi / qi) + qi * np.log(qi / pi) for pi, qi in zip(p, q))


def test_counts_exact():
    x = np.array([[0, 1, 1], [2, 0, 1]])
    np.testing.assert_array_equal(dv.unigram_counts(x, 3), [2, 3, 1])
    # pairs (0,1) (1,1) (2,0) (0,1) -> index 3 a + b
    expected = np.zeros(9)
    expected[[1, 4, 6]] = [2, 1, 1]
    np.testing.assert_array_equal(dv.bigram_counts(x, 3), expected)


def test_ngram_divergence_by_hand():
    x = np.array([[0, 1, 1], [2, 0, 1]])
    r = np.array([[0, 0, 1], [1, 2, 2]])
    uni = _sym_kl_ref([2, 3, 1], [2, 2, 2], 0.5)
    bx, br = np.zeros(9), np.zeros(9)
    bx[[1, 4, 6]] = [2, 1, 1]
    br[[0, 1, 5, 8]] = [1, 1, 1, 1]
    bi = _sym_kl_ref(bx, br, 0.5)
    assert dv.ngram_divergence(x, r, 3) == pytest.approx(uni + bi, rel=1e-12)
    assert dv.ngram_divergence(x, r, 3) == pytest.approx(dv.ngram_divergence(r, x, 3), rel=1e-12)  # symmetric
    assert dv.ngram_divergence(x, x, 3) == 0.0


def test_ngram_divergence_rejects_masks_and_bad_shapes():
    with pytest.raises(ValueError, match=r"samples hold ids outside \[0, 3\)"):
        dv.ngram_divergence(np.array([[0, 3]]), np.array([[0, 1]]), 3)
    with pytest.raises(ValueError, match="reference must be a non-empty"):
        dv.ngram_divergence(np.array([[0, 1]]), np.array([0, 1]), 3)


def test_mmd_by_hand():
    x = np.array([[0.0], [1.0]])
    y = np.array([[0.0], [3.0]])
    k = lambda a, b: np.exp(-((a - b) ** 2) / 2.0)  # bandwidth 1
    kxx = k(0, 1)  # one off-diagonal pair, counted twice over n (n - 1) = 2
    kyy = k(0, 3)
    kxy = np.mean([k(a, b) for a in (0, 1) for b in (0, 3)])
    assert dv.mmd(x, y, bandwidth=1.0) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-12)
    # median heuristic: pooled squared distances {1, 0, 9, 1, 4, 9} -> sqrt(median 2.5)
    assert dv.median_bandwidth(np.concatenate([x, y])) == pytest.approx(np.sqrt(2.5))
    assert dv.mmd(x, y) == pytest.approx(dv.mmd(x, y, bandwidth=np.sqrt(2.5)), rel=1e-12)
    with pytest.raises(ValueError, match="mmd needs features"):
        dv.mmd(x[:1], y)


def test_make_divergence_names():
    with pytest.raises(ValueError, match="divergence must be one of exact, ngram, mmd, got 'kl'"):
        dv.make_divergence("kl", None)

    class Model:
        graph = type("G", (), {"num_tokens": 3})()

    with pytest.raises(ValueError, match="needs reference samples"):
        dv.make_divergence("ngram", Model())
    x, r = np.array([[0, 1, 2]]), np.array([[2, 1, 0]])
    assert dv.make_divergence("ngram", Model(), r)(x) == pytest.approx(dv.ngram_divergence(x, r, 3))
