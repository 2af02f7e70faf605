"""eval.sampling: held-out evaluation is the model's metrics per seed, their mean and spread."""

import jax
import numpy as np
import pytest

from lsd_jax import grids, samplers
from lsd_jax.eval import sampling
from lsd_jax.teachers import markov_teacher


def test_mean_std_and_gap_closed_exact():
    r = sampling.mean_std([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 2.0}])
    assert r == {"a": 2.0, "a_std": pytest.approx(np.sqrt(2.0)), "b": 2.0, "b_std": 0.0}
    assert sampling.mean_std([{"a": 5.0}]) == {"a": 5.0, "a_std": 0.0}
    assert sampling.gap_closed(2.0, 4.0, 0.0) == 0.5 and sampling.gap_closed(1.0, 1.0, 1.0) is None


def test_evaluate_sampler_is_metrics_of_run_sampler_per_seed():
    t = markov_teacher(vocab=6, length=8)
    g = grids.uniform(3, 1e-4)
    r = sampling.evaluate_sampler(t, g, seeds=(5, 6), num_samples=64)
    for s, per in zip((5, 6), r["per_seed"]):
        assert per == {**t.metrics(sampling.run_sampler(t, g, seed=s, num_samples=64)), "network_calls": 4.0}  # M + 1
    vals = [p["bigram_kl"] for p in r["per_seed"]]
    assert r["bigram_kl"] == pytest.approx(np.mean(vals)) and r["bigram_kl_std"] == pytest.approx(np.std(vals, ddof=1))
    assert r["seeds"] == [5, 6] and r["num_samples"] == 64


def test_run_sampler_is_samplers_sample_with_the_seed():
    t = markov_teacher(vocab=6, length=8)
    g = grids.uniform(3, 1e-4)
    got = sampling.run_sampler(t, g, seed=4, num_samples=16)
    ref = samplers.sample(t.score_fn, t.graph, t.noise, g, jax.random.PRNGKey(4), 16, 8).tokens
    np.testing.assert_array_equal(got, np.asarray(ref))
    assert sampling.HELD_OUT_SEED0 == 10_000
