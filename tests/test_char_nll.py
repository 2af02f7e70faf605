"""NLL per character, paired t intervals and anchor texts (lsd_jax.eval.char_nll, anchors)
against hand computations; the evaluator is a tiny fake bigram LM (torch, no download)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lsd_jax.eval.anchors import CharBigram, anchor_texts, shuffle_words
from lsd_jax.eval.char_nll import mean_interval, paired_difference, t_quantile

LN2 = math.log(2.0)


class _FakeTokenizer:
    """ids: 0 BOS, 1 "a", 2 "b", 3 "ab"; greedy longest match."""

    bos_token_id, eos_token_id = 0, None

    def __call__(self, texts, add_special_tokens=False, verbose=False):
        out = []
        for t in texts:
            ids, i = [], 0
            while i < len(t):
                if t.startswith("ab", i):
                    ids.append(3)
                    i += 2
                else:
                    ids.append({"a": 1, "b": 2}[t[i]])
                    i += 1
            out.append(ids)
        return {"input_ids": out}


def _fake_evaluator():
    torch = pytest.importorskip("torch")
    from lsd_jax.eval import CausalLMEvaluator

    # p(next | previous): every row [1/8, 1/2, 1/8, 1/4] except after "ab" (id 3): uniform
    probs = torch.tensor([[1 / 8, 1 / 2, 1 / 8, 1 / 4]] * 3 + [[1 / 4] * 4], dtype=torch.float64)

    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(probs.log().float(), requires_grad=False)
            self.config = type("Cfg", (), {"max_position_embeddings": 8})()

        def forward(self, input_ids, attention_mask=None):
            return type("Out", (), {"logits": self.table[input_ids]})()

    return CausalLMEvaluator(Bigram(), _FakeTokenizer(), "fake-bigram", device="cpu")


def test_score_texts_per_character_by_hand():
    from lsd_jax.eval.char_nll import score_texts

    ev = _fake_evaluator()
    # "aab" -> BOS a ab: -log(1/2) - log(1/4) = 3 ln2 over 3 chars (1 bit/char; 2 tokens)
    # "abab" -> BOS ab ab: -log(1/4) - log(1/4) = 4 ln2 over 4 chars (2 tokens)
    # "b" -> BOS b: -log(1/8) = 3 ln2 over 1 char (1 token)
    s = score_texts(ev, ["aab", "abab", "b"])
    np.testing.assert_allclose(s.nll, [3 * LN2, 4 * LN2, 3 * LN2], rtol=1e-6)
    np.testing.assert_array_equal(s.tokens, [2, 2, 1])
    np.testing.assert_array_equal(s.chars, [3, 4, 1])
    np.testing.assert_allclose(s.nll_per_char, [LN2, LN2, 3 * LN2], rtol=1e-6)
    row = s.summary()
    assert math.isclose(row["nll_per_char"], 10 * LN2 / 8, rel_tol=1e-6)
    assert math.isclose(row["bits_per_char"], 1.25, rel_tol=1e-6)
    assert math.isclose(row["genppl"], 4.0, rel_tol=1e-6)  # exp(10 ln2 / 5 tokens)
    assert math.isclose(row["genppl_per_sample"], (2 ** 1.5 + 4 + 8) / 3, rel_tol=1e-6)
    assert math.isclose(row["chars_per_token"], 8 / 5, rel_tol=1e-12)
    # the per-token convention with BOS agrees with gen_ppl's
    assert math.isclose(ev.gen_ppl(["aab", "abab", "b"], add_bos=True).ppl, 4.0, rel_tol=1e-6)


def test_score_texts_checks_input():
    from lsd_jax.eval.char_nll import score_texts

    ev = _fake_evaluator()
    with pytest.raises(ValueError, match="non-empty sequence"):
        score_texts(ev, "aab")
    with pytest.raises(ValueError, match="text 1 is empty"):
        score_texts(ev, ["a", ""])
    with pytest.raises(ValueError, match="more than its context 8"):
        score_texts(ev, ["a" * 8])  # 8 tokens + BOS


def test_paired_difference_by_hand():
    # d = [1, 2, 2, 3]: mean 2, sd sqrt(2/3), half width t_{0.975, 3} sd / 2
    iv = paired_difference([1, 2, 3, 4], [0, 0, 1, 1])
    assert iv.n == 4 and iv.mean == 2.0
    assert math.isclose(iv.std, math.sqrt(2 / 3), rel_tol=1e-12)
    assert math.isclose(iv.half_width, 3.182446305284263 * math.sqrt(2 / 3) / 2, rel_tol=1e-9)
    assert iv.excludes_zero() and math.isclose(iv.low, 2 - iv.half_width)
    wide = mean_interval([-1.0, 1.0, -1.0, 1.0], level=0.9)  # mean 0, sd 2/sqrt(3)
    assert not wide.excludes_zero()
    assert math.isclose(wide.half_width, 2.353363434801823 * (2 / math.sqrt(3)) / 2, rel_tol=1e-9)
    assert math.isclose(t_quantile(0.975, 127), 1.978819535, rel_tol=1e-8)
    with pytest.raises(ValueError, match="same shape"):
        paired_difference([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        mean_interval([1.0])
    with pytest.raises(ValueError, match="finite"):
        mean_interval([1.0, float("nan")])


def test_char_bigram_fit_and_sample_exact():
    # stream 0 1 0 1 1: pairs (0,1) x2, (1,0) x1, (1,1) x1; unigram 0 x2, 1 x3; alpha 0.5
    m = CharBigram.fit(np.array([0, 1, 0, 1, 1]), vocab=2, alpha=0.5)
    np.testing.assert_allclose(np.exp(m.log_trans), [[0.5 / 3, 2.5 / 3], [0.5, 0.5]], rtol=1e-12)
    np.testing.assert_allclose(np.exp(m.log_start), [2.5 / 6, 3.5 / 6], rtol=1e-12)
    assert math.isclose(m.log_prob(np.array([[0, 1, 1]]))[0], math.log(2.5 / 6 * 2.5 / 3 * 0.5), rel_tol=1e-12)
    # a deterministic chain (alpha ~ 0): samples alternate exactly
    alt = CharBigram.fit(np.array([0, 1, 2] * 50), vocab=3, alpha=1e-12).sample(5, 9, seed=3)
    np.testing.assert_array_equal((alt[:, 1:] - alt[:, :-1]) % 3, 1)
    with pytest.raises(ValueError, match=r"ids in \[0, 2\)"):
        CharBigram.fit(np.array([0, 2]), vocab=2)


def test_anchor_texts_shapes_and_shuffle():
    alphabet = " abc"
    decode = lambda ids: "".join(alphabet[i] for i in ids)  # noqa: E731
    rows = np.array([[1, 2, 0, 3, 3, 0, 1, 1], [2, 0, 1, 1, 0, 3, 0, 2], [3, 3, 3, 0, 1, 0, 2, 2]])
    a = anchor_texts(rows.ravel(), rows, decode, vocab=4, num=2, seed=0)
    assert list(a) == ["real", "words shuffled", "char bigram", "random chars"]
    assert a["real"] == [decode(rows[0]), decode(rows[2])]
    for name, texts in a.items():
        assert len(texts) == 2 and all(len(t) == 8 for t in texts), name
    for t, s in zip(a["real"], a["words shuffled"]):
        assert sorted(t.split(" ")) == sorted(s.split(" "))
    assert shuffle_words(["x y z"], seed=1) == shuffle_words(["x y z"], seed=1)
    with pytest.raises(ValueError, match="N >= 5"):
        anchor_texts(rows.ravel(), rows, decode, vocab=4, num=5)
