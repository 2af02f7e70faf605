"""Static-shape iteration over the masked positions of a batch, a tile of rows at a time.

The masked head (`models.dit.masked_head`) and the row path (`solvers.rows`) both run their
work on the masked positions only: the flat indices of the masked positions (in order) are
split into tiles of R rows; tile j runs (lax.cond) only while j < ceil(count / R), count
traced, with a static trip count (a scan: reverse mode can pass it). Padding rows carry the
index n (out of range: a `mode="drop"` write or a `rows < n` test skips them).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def over_masked_tiles(masked: Array, tile: int, body: Callable[[Array, Array, Any], Any], carry: Any) -> Any:
    """carry after body(rows [R], safe [R], carry) for each tile that holds masked rows.

    masked: bool [n]; R = min(tile, n); rows: the tile's flat indices (n for padding), safe:
    rows clipped to n - 1 (for gathers)."""
    n = masked.shape[0]
    r = min(tile, n)
    tiles = -(-n // r)
    idx = jnp.nonzero(masked, size=tiles * r, fill_value=n)[0]  # [tiles R]: masked rows first, then n
    trips = (jnp.sum(masked, dtype=jnp.int32) + r - 1) // r

    def one(j, c):
        rows = jax.lax.dynamic_slice(idx, (j * r,), (r,))
        return body(rows, jnp.minimum(rows, n - 1), c)

    return jax.lax.fori_loop(0, tiles, lambda j, c: jax.lax.cond(j < trips, one, lambda j, c: c, j, c), carry)
