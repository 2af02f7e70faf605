"""Sample statistics in the sampler's own token ids (numpy; accepts jax arrays)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

ENTROPY_MODES = ("per_sample", "pooled")


def unigram_entropy(
    tokens: Any,
    mode: str = "per_sample",
    exclude_ids: Sequence[int] = (),
) -> float:
    """Unigram entropy in nats of integer samples ``tokens`` [B, L].

    mode "per_sample" (default; the convention of Zheng et al. 2024 and ReMDM for
    spotting repetitive samples): the entropy of each row's empirical token
    distribution, averaged over rows. mode "pooled": the entropy of the token
    distribution of all rows together. Tokens in ``exclude_ids`` (e.g. a mask id left
    in a sample) are not counted; a row with no counted token is left out of the mean.
    """
    x = np.asarray(tokens)
    if x.ndim != 2:
        raise ValueError(f"unigram_entropy expects tokens of shape [B, L], got {x.shape}")
    if x.size and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"unigram_entropy expects integer tokens, got dtype {x.dtype}")
    if mode not in ENTROPY_MODES:
        raise ValueError(f"unigram_entropy mode must be one of {ENTROPY_MODES}, got {mode!r}")
    keep = ~np.isin(x, np.asarray(list(exclude_ids), dtype=x.dtype)) if len(exclude_ids) else np.ones(x.shape, bool)
    if mode == "pooled":
        vals = x[keep]
        if vals.size == 0:
            raise ValueError("unigram_entropy: no tokens left after exclude_ids")
        _, counts = np.unique(vals, return_counts=True)
        return float(_entropy(counts.astype(np.float64)))
    # per row: sort each row, count runs of equal ids among the kept positions
    order = np.argsort(x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    ks = np.take_along_axis(keep, order, axis=1)
    new_run = np.ones(x.shape, bool)
    new_run[:, 1:] = xs[:, 1:] != xs[:, :-1]
    run_id = np.cumsum(new_run.ravel()) - 1  # global run index, rows never share a run
    counts = np.bincount(run_id, weights=ks.ravel().astype(np.float64))
    run_row = np.repeat(np.arange(x.shape[0]), new_run.sum(axis=1))
    totals = np.bincount(run_row, weights=counts, minlength=x.shape[0])
    p = counts / np.where(totals[run_row] > 0, totals[run_row], 1.0)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    h = -np.bincount(run_row, weights=plogp, minlength=x.shape[0])
    valid = totals > 0
    if not valid.any():
        raise ValueError("unigram_entropy: no tokens left after exclude_ids")
    return float(h[valid].mean())


def _entropy(counts: np.ndarray) -> float:
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


__all__ = ["unigram_entropy"]
