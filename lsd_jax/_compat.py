"""Small shims over JAX versions."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp


def x64_enabled() -> bool:
    """True when float64 arrays are really float64 (global flag or an x64 context)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64


@contextlib.contextmanager
def enable_x64():
    """Context manager turning on float64 (jax.experimental.enable_x64 on older JAX)."""
    try:
        from jax.experimental import enable_x64 as ctx  # jax < 0.8
    except ImportError:
        ctx = None
    if ctx is not None:
        with ctx():
            yield
    else:
        with jax.enable_x64(True):
            yield


def optax_update(tx, grads, opt_state, params, **extra):
    """`tx.update(grads, opt_state, params)` under standard dtype promotion: optax's bias
    corrections and schedules combine python floats with int32 step counts, which strict
    promotion (the test suite's setting) rejects. Same numbers as a plain call."""
    with jax.numpy_dtype_promotion("standard"):
        return tx.update(grads, opt_state, params, **extra)
