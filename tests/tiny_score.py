"""A tiny time-conditioned Flax score network for tests (random weights, no training)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from lsd_jax.graphs import is_token


class TinyScore(nn.Module):
    dim: int
    width: int = 16

    @nn.compact
    def __call__(self, x, sigmabar):  # x [B, L] int32, sigmabar [B] -> log-score [B, L, dim]
        h = nn.Embed(self.dim, self.width)(x)
        h = h + jnp.roll(h, 1, axis=1) + jnp.roll(h, -1, axis=1)  # neighbours matter
        c = nn.Dense(self.width)(jnp.log(sigmabar)[:, None])[:, None, :]
        h = nn.tanh(nn.Dense(self.width)(h) + c)
        # roughly calibrated: sum_y s[y] ~ 1 / expm1(sigmabar) at a masked position, with errors
        out = 0.5 * nn.Dense(self.dim)(h) - jnp.log(jnp.expm1(sigmabar))[:, None, None] - jnp.log(self.dim)
        return jnp.where(is_token(x, self.dim), 0.0, out)


def make(dim, length, seed=0):
    model = TinyScore(dim)
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, length), jnp.int32), jnp.ones((1,)))["params"]
    return model, params
