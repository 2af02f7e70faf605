"""Test settings: CPU only; strict numerics for the library under test.

Every test runs under jax_numpy_dtype_promotion="strict" (no silent int -> float or
float32 -> float64 promotion) and jax_numpy_rank_promotion="raise" (no implicit
broadcasting between arrays of different rank), so a shape or dtype slip in the library
fails here instead of computing something else. A test that exercises third-party code
that is not strict-clean opts out with @pytest.mark.promotion_standard (say why).

The default run (`pytest -q`) leaves out tests marked slow (pyproject addopts); run them
with `pytest -q -m slow`, everything with `pytest -q -m ""`.
"""

import os

# Tests run on the CPU; keep XLA to the machine's cores and out of the way of each other.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "promotion_standard: run under jax's standard dtype/rank promotion "
                                       "(third-party code that is not strict-clean)")


@pytest.fixture(autouse=True)
def _strict_promotion(request):
    if request.node.get_closest_marker("promotion_standard"):
        yield
        return
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        yield


def pytest_collection_modifyitems(config, items):
    has_gpu = any(d.platform == "gpu" for d in jax.devices()) if os.environ.get("JAX_PLATFORMS") != "cpu" else False
    skip_gpu = pytest.mark.skip(reason="needs a GPU (none visible to jax)")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
