import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax import grids
from lsd_jax.noise import LogLinear


@pytest.mark.parametrize("name", grids.GRID_FAMILIES)
def test_families_are_valid_grids(name):
    g = grids.get_grid(name, 8, 1e-4, p=1.5, noise=LogLinear())
    grids.validate(g, 1e-4)
    assert g.shape == (9,)


def test_uniform_and_power():
    np.testing.assert_allclose(grids.uniform(4, 0.0 + 1e-4), np.linspace(1, 1e-4, 5), rtol=1e-6)
    np.testing.assert_allclose(grids.power(4, 1e-4, 1.0), grids.uniform(4, 1e-4), rtol=1e-6)
    g = np.asarray(grids.power(8, 1e-4, 1.5))
    np.testing.assert_allclose(g[2], 1 - (1 - 1e-4) * (2 / 8) ** 1.5, rtol=1e-6)


def test_logits_parameterisation_round_trip_and_monotone():
    np.testing.assert_allclose(grids.from_logits(jnp.zeros(8), 1e-4), grids.uniform(8, 1e-4), rtol=1e-6)
    g = grids.cosine(8, 1e-4)
    np.testing.assert_allclose(grids.from_logits(grids.to_logits(g, 1e-4), 1e-4), g, rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        grids.validate(grids.from_logits(jnp.asarray(rng.normal(size=8) * 3), 1e-4), 1e-4)


def test_validate_errors():
    with pytest.raises(ValueError, match="must start at t = 1"):
        grids.validate([0.5, 0.1])
    with pytest.raises(ValueError, match="t_1 = 0.5 <= t_2 = 0.6"):
        grids.validate([1.0, 0.5, 0.6])
    with pytest.raises(ValueError, match="end at eps"):
        grids.validate([1.0, 0.5, 0.1], eps=1e-4)
    with pytest.raises(ValueError, match="positive integer"):
        grids.uniform(0, 1e-4)
    with pytest.raises(ValueError, match="allowed"):
        grids.get_grid("random", 8, 1e-4)
