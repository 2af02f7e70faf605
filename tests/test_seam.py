"""The model seam: any object with score_fn, graph, noise, length distils, tunes, samples and
is evaluated; a wrong score function gets one named error before anything compiles."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsd_jax
from lsd_jax import distill, divergences, grids, samplers, tune
from lsd_jax.teachers import ScoreModel, markov_teacher
from lsd_jax.teachers.base import check_model, check_score_fn, with_score_fn

_COMPILES = {"n": 0}


def _count(event, duration, **_):
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES["n"] += 1


jax.monitoring.register_event_duration_secs_listener(_count)


def plain(vocab=6, length=8, graph="absorb"):
    """The markov teacher's parts in a SimpleNamespace: no Teacher class, no metrics."""
    t = markov_teacher(graph=graph, vocab=vocab, length=length)
    return types.SimpleNamespace(score_fn=t.score_fn, graph=t.graph, noise=t.noise, length=t.length), t


def test_protocol_is_satisfied_by_teacher_and_namespace():
    ns, t = plain()
    assert isinstance(t, ScoreModel) and isinstance(ns, ScoreModel)
    assert not isinstance(types.SimpleNamespace(score_fn=t.score_fn, graph=t.graph), ScoreModel)
    bound = with_score_fn(ns, jnp.negative)
    assert bound.graph is ns.graph and bound.score_fn is jnp.negative and ns.score_fn is t.score_fn  # no mutation


def test_namespace_samples_like_the_teacher():
    ns, t = plain()
    g = grids.uniform(4, 1e-4)
    a = lsd_jax.sample(ns, g, jax.random.PRNGKey(3), 64).tokens
    b = samplers.sample(t.score_fn, t.graph, t.noise, g, jax.random.PRNGKey(3), 64, t.length).tokens
    np.testing.assert_array_equal(a, b)
    r = lsd_jax.eval.evaluate_sampler(ns, g, seeds=(1, 2), num_samples=32)
    assert set(r) >= {"unigram_entropy", "unigram_entropy_std"} and 0 < r["unigram_entropy"] <= np.log(6)


@pytest.mark.slow
def test_namespace_distils_with_epoch_indexed_history():
    ns, _ = plain()
    cfg = distill.DistillConfig(nfe=2, teacher_nfe=16, samples=8, batch_size=8, epochs=2, select="none")
    res = lsd_jax.fit(ns, cfg, progress=False)
    assert isinstance(res, distill.FitResult)
    assert [h["epoch"] for h in res.history] == [0, 1, 2] and res.history[0]["loss"] is None
    assert res.plan["kind"] == "none" and res.timing["total_s"] > 0
    params, history = res  # unpacks as (params, history)
    np.testing.assert_allclose(params.phi, history[-1]["phi"], rtol=1e-6)
    # auto selection on a model without exact metrics: the n-gram divergence
    assert distill.validation_plan(ns, distill.DistillConfig(nfe=2, teacher_nfe=16))["kind"] == "ngram"


def test_namespace_tunes():
    ns, _ = plain()
    g = grids.uniform(16, 1e-4)
    ref = lsd_jax.eval.run_sampler(ns, g, num_samples=64, seed=1)
    div = divergences.make_divergence("ngram", ns, ref)
    params, hist = tune.search(ns, 2, div, budget=3, num_samples=32, crn_seeds=(0,), progress=False)
    assert params.nfe == 2 and hist[-1]["summary"] and np.isfinite(hist[-1]["best_divergence"])
    with pytest.raises(ValueError, match="needs an exact teacher"):
        divergences.make_divergence("exact", ns)
    with pytest.raises(ValueError, match="needs a network teacher"):
        divergences.make_divergence("mmd", ns, ref)


def wide_score(x, sigmabar):
    return jnp.zeros(x.shape + (5,))  # the absorbing graph over 6 tokens has dim 7


@pytest.mark.parametrize("call", ["sample", "fit", "search"])
def test_wrong_width_is_named_before_any_compile(call):
    ns, _ = plain()
    bad = types.SimpleNamespace(score_fn=wide_score, graph=ns.graph, noise=ns.noise, length=8)
    grid, key = grids.uniform(2, 1e-4), jax.random.PRNGKey(0)
    before = _COMPILES["n"]
    with pytest.raises(ValueError) as e:
        if call == "sample":
            lsd_jax.sample(bad, grid, key, 4)
        elif call == "fit":
            lsd_jax.fit(bad, distill.DistillConfig(nfe=2, teacher_nfe=16, samples=8, batch_size=8), progress=False)
        else:
            tune.search(bad, 2, lambda tok: 0.0, budget=2, progress=False)
    msg = str(e.value)
    assert "test_seam.wide_score" in msg and "[2, 8, 7]" in msg and "[2, 8, 5]" in msg, msg
    assert _COMPILES["n"] == before  # nothing was compiled


def test_check_score_fn_reports_what_went_wrong():
    g = markov_teacher(vocab=6, length=8).graph
    with pytest.raises(ValueError, match=r"must return a float log score .*it returned int32 \[2, 8, 7\]"):
        check_score_fn(lambda x, sb: jnp.zeros(x.shape + (7,), jnp.int32), g, 8)
    with pytest.raises(ValueError, match=r"failed on x int32 \[2, 8\].*TypeError"):
        check_score_fn(lambda x: x, g, 8)  # one argument too few
    with pytest.raises(ValueError, match="lacks noise, length"):
        check_model(types.SimpleNamespace(score_fn=wide_score, graph=g))
    with pytest.raises(ValueError, match="model.length must be an integer >= 1, got 0"):
        check_model(types.SimpleNamespace(score_fn=wide_score, graph=g, noise=markov_teacher().noise, length=0))


def test_check_runs_once_per_function():
    g = markov_teacher(vocab=6, length=8).graph
    calls = []

    def score(x, sb):
        calls.append(1)
        return jnp.zeros(x.shape + (7,))

    for _ in range(3):
        check_score_fn(score, g, 8)
    assert len(calls) == 1
    check_score_fn(score, g, 9)  # another length: checked again
    assert len(calls) == 2
