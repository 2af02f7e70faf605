"""Sampling a score model and its evaluation over held-out seeds: mean and spread of the
model's metrics (exact ones on an exact teacher, else the pooled unigram entropy)."""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np

from lsd_jax import samplers, sharding
from lsd_jax.teachers.base import ScoreModel, check_model, model_metrics

HELD_OUT_SEED0 = 10_000  # evaluation seeds start here, away from training / tuning seeds


def sample(model: ScoreModel, grid, key: jax.Array, num_samples: int, **kwargs) -> samplers.Samples:
    """`samplers.sample` for a score model (any object with score_fn, graph, noise, length):
    samples [num_samples, model.length] on `grid` [M + 1]; kwargs as `samplers.sample`
    (sampler, phi, reading, denoise, x64, mesh, ...)."""
    check_model(model)
    return samplers.sample(model.score_fn, model.graph, model.noise, grid, key, num_samples, model.length, **kwargs)


def run_sampler(model: ScoreModel, grid, *, sampler: str = "euler", phi=None, reading: str = "linear", seed: int = 0,
                num_samples: int = 1024, x64: bool = False, mesh="auto", reveal=None, remask=None,
                return_calls: bool = False):
    """Samples [num_samples, L] (numpy, on the host) from `model` with grid [M + 1] and phi [M]
    (mesh: as `samplers.sample`; None keeps the run on one device).

    reveal: a `lsd_jax.reveal` policy (None or ctmc: the plain sampler), run by `reveal.sample`
    (its batch sharded by `mesh` as the plain sampler's); remask: its corrector. return_calls:
    also the mean network calls per sample actually made."""
    from lsd_jax import reveal as reveal_lib

    if reveal is not None and not isinstance(reveal, reveal_lib.Ctmc):
        check_model(model)
        out = reveal_lib.sample(model.score_fn, model.graph, model.noise, grid, jax.random.PRNGKey(seed),
                                num_samples, model.length, policy=reveal, phi=phi, reading=reading,
                                remask=remask or reveal_lib.Remask(), x64=x64, mesh=mesh)
        tokens, calls = sharding.to_host(out.tokens), float(np.mean(sharding.to_host(out.calls)))
    else:
        out = sample(model, grid, jax.random.PRNGKey(seed), num_samples, sampler=sampler, phi=phi, reading=reading,
                     x64=x64, mesh=mesh)
        tokens, calls = sharding.to_host(out.tokens), float(out.network_calls)  # several hosts: gathered on each
    return (tokens, calls) if return_calls else tokens


def evaluate_sampler(model: ScoreModel, grid, *, sampler: str = "euler", phi=None, reading: str = "linear",
                     seeds: Sequence[int] = (HELD_OUT_SEED0, HELD_OUT_SEED0 + 1, HELD_OUT_SEED0 + 2),
                     num_samples: int = 1024, x64: bool = False, reveal=None, remask=None) -> dict:
    """Metrics per seed (`model.metrics`, else the pooled unigram entropy, and the mean network
    calls per sample), and their mean and standard deviation across seeds."""
    per_seed = []
    for s in seeds:
        tok, calls = run_sampler(model, grid, sampler=sampler, phi=phi, reading=reading, seed=s,
                                 num_samples=num_samples, x64=x64, reveal=reveal, remask=remask, return_calls=True)
        per_seed.append({**model_metrics(model, tok), "network_calls": calls})
    return {"seeds": list(seeds), "num_samples": num_samples, "per_seed": per_seed, **mean_std(per_seed)}


def mean_std(per_seed: Sequence[dict]) -> dict:
    """{k: mean, k + "_std": sample std (0 for one seed)} over per-seed metric dicts."""
    out = {}
    for k in per_seed[0]:
        vals = np.asarray([m[k] for m in per_seed], np.float64)
        out[k] = float(vals.mean())
        out[k + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return out


def gap_closed(value: float, base: float, ceiling: float) -> Optional[float]:
    """Share of the base -> ceiling gap closed by `value` (1 = as good as the ceiling)."""
    if base == ceiling:
        return None
    return (base - value) / (base - ceiling)
