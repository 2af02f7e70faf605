"""Tests of lsd_jax.eval: unigram entropy (exact) and gen-PPL arithmetic against
transformers' own loss on a tiny random GPT-2 with a tiny byte-level BPE tokenizer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lsd_jax.eval import score_windows, unigram_entropy

# ------------------------------------------------------------------ unigram entropy


def test_unigram_entropy_exact():
    x = np.array([[0, 0, 1, 1], [3, 3, 3, 3], [0, 1, 2, 3]])
    assert math.isclose(unigram_entropy(x), (math.log(2) + 0.0 + math.log(4)) / 3, rel_tol=1e-12)
    # pooled counts: 0:3, 1:3, 2:1, 3:5 of 12
    p = np.array([3, 3, 1, 5]) / 12
    assert math.isclose(unigram_entropy(x, mode="pooled"), float(-(p * np.log(p)).sum()), rel_tol=1e-12)
    # excluding id 3 removes row 1 entirely and leaves {0,1,2} in row 2
    assert math.isclose(unigram_entropy(x, exclude_ids=[3]), (math.log(2) + math.log(3)) / 2, rel_tol=1e-12)


def test_unigram_entropy_matches_naive_loop():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 7, size=(9, 13))
    x[2] = 4  # a constant row

    def h(v):
        _, c = np.unique(v, return_counts=True)
        p = c / c.sum()
        return float(-(p * np.log(p)).sum())

    assert math.isclose(unigram_entropy(x), np.mean([h(r) for r in x]), rel_tol=1e-12)
    assert math.isclose(unigram_entropy(x, mode="pooled"), h(x.ravel()), rel_tol=1e-12)
    rows = [r[r != 3] for r in x]
    assert math.isclose(unigram_entropy(x, exclude_ids=[3]), np.mean([h(r) for r in rows if r.size]), rel_tol=1e-12)


def test_unigram_entropy_accepts_jax_and_checks_input():
    jnp = pytest.importorskip("jax.numpy")
    x = jnp.array([[5, 6, 5, 6, 7, 7]], dtype=jnp.int32)
    assert math.isclose(unigram_entropy(x), math.log(3), rel_tol=1e-12)
    with pytest.raises(ValueError, match=r"shape \[B, L\]"):
        unigram_entropy(np.zeros(4, int))
    with pytest.raises(ValueError, match="mode must be one of"):
        unigram_entropy(np.zeros((1, 4), int), mode="bigram")
    with pytest.raises(ValueError, match="integer"):
        unigram_entropy(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="no tokens left"):
        unigram_entropy(np.zeros((2, 3), int), exclude_ids=[0])


# ------------------------------------------------------------------------- windows


@pytest.mark.parametrize("n,C,S", [(1, 8, 4), (2, 8, 4), (8, 8, 4), (9, 8, 4), (30, 8, 3), (30, 8, 8), (17, 8, 1)])
def test_score_windows_cover_targets(n, C, S):
    wins = score_windows(n, C, S)
    targets = [t for b, e, f in wins for t in range(f, e)]
    assert all(e - b <= C and b < f for b, e, f in wins)
    assert len(targets) == len(set(targets))
    if S < C:
        assert targets == list(range(1, n))  # every token but the first, once
    else:  # disjoint windows: the first token of each window is not scored
        assert targets == [t for t in range(1, n) if t % C]
    if n <= C:
        assert len(wins) == (1 if n >= 2 else 0)


def test_score_windows_rejects_bad_stride():
    with pytest.raises(ValueError, match="stride must be in"):
        score_windows(10, 8, 9)


# -------------------------------------------------------------- gen-PPL vs transformers


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A random 2-layer GPT-2 (context 16) and a byte-level BPE tokenizer with 3 merges."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    raw = tmp_path_factory.mktemp("raw_tok")
    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = ["\u0120 t", "h e", "\u0120t he"]
    for m in merges:
        vocab["".join(m.split())] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (raw / "vocab.json").write_text(json.dumps(vocab))
    (raw / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = transformers.GPT2TokenizerFast.from_pretrained(str(raw))
    assert len(tok) == 260 and tok("the the")["input_ids"] == [116, 257, 258]
    cfg = transformers.GPT2Config(vocab_size=260, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                  bos_token_id=259, eos_token_id=259)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    out = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _hf_reference(model, ids: list[int], C: int, S: int) -> tuple[float, int]:
    """Summed NLL and target count by the transformers perplexity guide's loop."""
    import torch

    x = torch.tensor([ids])
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), S):
        end = min(begin + C, len(ids))
        trg_len = end - prev_end
        inp = x[:, begin:end]
        labels = inp.clone()
        labels[:, :-trg_len] = -100
        n_valid = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            loss = model(inp, labels=labels).loss
        nll += float(loss) * n_valid
        count += n_valid
        prev_end = end
        if end == len(ids):
            break
    return nll, count


TEXTS = [
    "the cat sat on the mat and the dog barked at the moon all night long, then slept.",  # > 16 tokens
    "hi",
    "the end of the story",
    "",  # nothing to score
    "a",  # one token: nothing to score
    "over the hills and far away, the wind was singing to the trees",
]


@pytest.mark.parametrize("stride", [5, 16])
def test_gen_ppl_matches_transformers_loss(tiny_gpt2, stride):
    from lsd_jax.eval import load_evaluator

    ev = load_evaluator(tiny_gpt2, device="cpu")
    assert ev.context_length == 16 and ev.name == tiny_gpt2.name
    ids = ev.token_ids(TEXTS)
    assert len(ids[0]) > 2 * 16  # windowing is exercised
    ref = [_hf_reference(ev.model, x, 16, stride) if len(x) >= 2 else (0.0, 0) for x in ids]
    res = ev.gen_ppl(TEXTS, stride=stride, batch_tokens=40)  # several padded batches
    nll = np.array([r[0] for r in ref])
    cnt = np.array([r[1] for r in ref])
    assert res.sample_tokens.tolist() == cnt.tolist()
    ok = cnt > 0
    np.testing.assert_allclose(res.sample_nll[ok], nll[ok], rtol=1e-5)
    assert np.isnan(res.sample_nll[~ok]).all()
    assert res.n_tokens == cnt.sum() and res.n_samples == ok.sum() and res.n_skipped == 2
    assert math.isclose(res.ppl, math.exp(nll.sum() / cnt.sum()), rel_tol=1e-5)
    assert math.isclose(res.ppl_per_sample_mean, float(np.mean(np.exp(nll[ok] / cnt[ok]))), rel_tol=1e-5)
    assert res.stride == stride and res.context_length == 16
    d = res.to_dict()
    assert d["evaluator"] == tiny_gpt2.name and "sample_nll" not in d
    # one big batch gives the same numbers
    again = ev.gen_ppl(TEXTS, stride=stride, batch_tokens=10_000)
    assert math.isclose(again.ppl, res.ppl, rel_tol=1e-5)


def test_gen_ppl_with_bos_scores_first_token(tiny_gpt2):
    import torch

    from lsd_jax.eval import gen_ppl, load_evaluator

    ev = load_evaluator(tiny_gpt2, device="cpu", context_length=12)
    res = gen_ppl(["the end"], ev, add_bos=True)
    ids = [259, *ev.token_ids(["the end"])[0]]
    with torch.no_grad():
        loss = float(ev.model(torch.tensor([ids]), labels=torch.tensor([ids])).loss)
    assert res.n_tokens == len(ids) - 1 and res.context_length == 12 and res.stride == 6
    assert math.isclose(res.ppl, math.exp(loss), rel_tol=1e-5)
    with pytest.raises(ValueError, match="exceeds"):
        load_evaluator(tiny_gpt2, context_length=17)
    with pytest.raises(ValueError, match="none of the"):
        ev.gen_ppl(["", "a"])
    with pytest.raises(FileNotFoundError, match="smollm2"):
        load_evaluator(tiny_gpt2 / "missing")
