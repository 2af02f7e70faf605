import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lsd_jax._compat import enable_x64

from lsd_jax.noise import Geometric, LogLinear, from_dict, get_noise

SCHEDULES = [LogLinear(1e-3), LogLinear(1e-2), Geometric(1e-4, 20.0), Geometric(1e-3, 5.0)]


@pytest.mark.parametrize("noise", SCHEDULES, ids=lambda n: str(n.to_dict()))
def test_rate_is_derivative_of_total(noise):
    with enable_x64():
        ts = jnp.linspace(0.01, 0.99, 17, dtype=jnp.float64)
        auto = jax.vmap(jax.grad(noise.total))(ts)
        np.testing.assert_allclose(auto, noise.rate(ts), rtol=1e-12)
        h = 1e-6
        fd = (noise.total(ts + h) - noise.total(ts - h)) / (2 * h)
        np.testing.assert_allclose(fd, noise.rate(ts), rtol=1e-6)


@pytest.mark.parametrize("noise", SCHEDULES, ids=lambda n: str(n.to_dict()))
def test_monotone_and_positive(noise):
    with enable_x64():
        ts = jnp.linspace(0.0, 1.0, 1001, dtype=jnp.float64)
        assert np.all(np.diff(np.asarray(noise.total(ts))) > 0)
        assert np.all(np.asarray(noise.rate(ts)) > 0)


def test_endpoints():
    with enable_x64():
        ll = LogLinear(1e-3)
        assert float(ll.total(0.0)) == 0.0
        # at t = 1 a token is clean with probability eps
        np.testing.assert_allclose(np.exp(-ll.total(1.0)), 1e-3, rtol=1e-12)
        geo = Geometric(1e-4, 20.0)
        np.testing.assert_allclose(geo.total(0.0), 1e-4, rtol=1e-12)
        np.testing.assert_allclose(geo.total(1.0), 20.0, rtol=1e-12)


def test_bad_config_names_field():
    with pytest.raises(ValueError, match="eps"):
        LogLinear(0.0)
    with pytest.raises(ValueError, match="sigma_min"):
        Geometric(1.0, 0.5)
    with pytest.raises(ValueError, match="allowed: loglinear, geometric"):
        get_noise("cosine")
    assert from_dict({"type": "geometric", "sigma_min": 1e-4, "sigma_max": 20}) == Geometric(1e-4, 20.0)
