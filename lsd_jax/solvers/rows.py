"""Absorbing-graph steps computed at the masked positions only, tile by tile.

On the absorbing graph an unmasked position never moves: its kernel is a point mass on its
token whatever the score says. A score function that can compute its log score for chosen
rows (`RowScore`: the network's trunk on every position, then the output head on rows; the
masked head of `lsd_jax.models.dit`) lets a one-call step run head, kernel and draw on the
masked positions alone, in tiles of R rows, without any [B, L, V] tensor:

    masked positions (flattened B * L, in order) -> tiles of R rows -> per tile:
    head [R, D] x [D, V] -> log score [R, V] -> kernel [R, V] -> draw -> R tokens written

The tokens are the full step's bit for bit for the same key: the Gumbel noise is drawn for
every position as the full step draws it (`kernel.draw_noise`, O(sqrt V) numbers each) and
gathered at the tile's rows, and every row's arithmetic is the full step's on that row
(tests/test_rows.py). Used by `lsd_jax.samplers` for a `KernelSolver` (whose kernel is
position-wise) with the exact `GumbelDraw`; reveal policies and the step cache keep the
full path.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from lsd_jax.solvers import kernel as K
from lsd_jax.tiles import over_masked_tiles

Array = jnp.ndarray
# (x rows [R, 1], log score rows [R, 1, V], batch index of each row [R]) -> kernel over [R, 1]
RowKernel = Callable[[Array, Array, Array], K.LogKernel]


class RowScore(NamedTuple):
    """A score function split for row-wise steps."""

    trunk: Callable[[Array, Array], Array]  # (x [B, L], sigmabar [B]) -> h [B, L, D]
    rows: Callable[[Array, Array, Array], Array]  # (h [R, D], x [R], sigmabar [R]) -> log score [R, V]
    tile: int  # rows per tile


def row_score(score_fn: Any) -> Optional[RowScore]:
    """The row path of a score function: a `jax.tree_util.Partial` whose func has `row_tile` > 0,
    `trunk(*args, x, sb)` and `rows(*args, h, x, sb)` (`models.dit.score_fn_from(head="masked")`);
    else None."""
    if not isinstance(score_fn, jax.tree_util.Partial) or getattr(score_fn.func, "row_tile", 0) <= 0:
        return None
    f, args = score_fn.func, score_fn.args
    return RowScore(lambda x, sb: f.trunk(*args, x, sb), lambda h, x, sb: f.rows(*args, h, x, sb), f.row_tile)


def masked_rows_step(rs: RowScore, mask_id: int, vocab: int, x: Array, sigmabar: Array, kernel_fn: RowKernel,
                     key: Array, dtype: Any = jnp.float32) -> tuple[Array, Array]:
    """One step at the masked positions of x [B, L]: (x_next [B, L] int32, finite [B] bool: no
    NaN / +inf in a row's log score). kernel_fn builds the step's kernel on rows; the draw is
    `kernel.draw` with the noise of key for all [B, L] positions (so the same tokens as
    drawing the full kernel with key); vocab: the score's last dimension."""
    b, length = x.shape
    n = b * length
    xf = x.reshape(n)
    hf = rs.trunk(x, sigmabar)
    hf = hf.reshape(n, hf.shape[-1])
    sf = jnp.repeat(jnp.asarray(sigmabar), length)  # [n]
    noise = tuple(a.reshape(n, a.shape[-1]) for a in K.draw_noise(key, (b, length), vocab, dtype))

    def tile(rows, safe, carry):
        out, finite = carry
        ls = rs.rows(hf[safe], xf[safe], sf[safe])  # [R, V]
        kern = kernel_fn(xf[safe][:, None], ls[:, None], safe // length)
        tok = K.draw_with(kern, tuple(a[safe][:, None] for a in noise), dtype)[:, 0]
        ok = jnp.all(ls < jnp.inf, axis=-1).astype(jnp.int32)
        return out.at[rows].set(tok, mode="drop"), finite.at[rows // length].min(ok, mode="drop")

    out, finite = over_masked_tiles(xf == mask_id, rs.tile, tile, (xf, jnp.ones((b,), jnp.int32)))
    return out.reshape(b, length), finite > 0
