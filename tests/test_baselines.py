"""Baselines: temperature matching by bisection, the JYS grid minimises its bound."""

import pytest

import numpy as np

from lsd_jax import baselines, grids
from lsd_jax.teachers import markov_teacher


def test_temperature_matched_finds_the_root():
    phi, hist = baselines.temperature_matched(lambda phi: 3.0 - np.log(phi), 3.0 - np.log(1.37), tol=1e-6, iters=40)
    assert abs(phi - 1.37) < 1e-4, (phi, hist)
    phi, _ = baselines.temperature_matched(lambda phi: 3.0 - np.log(phi), 3.0 - np.log(6.0), tol=1e-6, iters=40)
    assert abs(phi - 6.0) < 1e-3  # outside the first bracket: it widens


@pytest.mark.slow
def test_jys_grid_is_a_grid_and_each_split_minimises_its_bound():
    t = markov_teacher(vocab=4, length=6)
    ref = baselines.optional_reference(t, nfe=64, num_samples=64)
    klub = baselines.klub_fn(t.score_fn, t.graph, t.noise, ref)
    g2 = baselines.jys_grid(t.score_fn, t.graph, t.noise, ref, 2, 1e-4, iters=12)
    grids.validate(g2, 1e-4)
    two = lambda u: klub(1.0, u) + klub(u, 1e-4)  # noqa: E731
    assert two(g2[1]) <= min(two(u) for u in np.linspace(0.05, 0.95, 19)) + 1e-3, g2
    g3 = baselines.jys_grid(t.score_fn, t.graph, t.noise, ref, 3, 1e-4, iters=6)  # not a power of two
    grids.validate(g3, 1e-4)
    assert g3.shape == (4,)
