"""Gradient-free tuning of an M-step sampler's time grid (optionally phi) on a divergence
measured on its samples, and the best fixed grid of simple families.

Candidates are compared under common random numbers: every candidate is sampled with
the same seeds (`crn_seeds`), so differences between candidates are not sampling noise.
The optimiser is CMA-ES (the `cmaes` package) over the LSD+ grid logits (and log phi).
Held-out evaluation (other seeds) is the caller's job: `lsd_jax.eval.evaluate_sampler`.
Divergences come from `lsd_jax.divergences.make_divergence`; the model is any `ScoreModel`.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from lsd_jax import grids
from lsd_jax import sampler_params as sp_lib
from lsd_jax.eval.sampling import run_sampler
from lsd_jax.eval.text_metrics import unigram_entropy
from lsd_jax.teachers.base import ScoreModel, check_model

FIXED_FAMILIES = (("uniform", None), ("cosine", None), ("loglinear", None), ("power", 0.5), ("power", 0.75),
                  ("power", 1.25), ("power", 1.5), ("power", 2.0), ("power", 3.0))


def _score(teacher, grid, phi, divergence, *, sampler, reading, crn_seeds, num_samples, x64,
           entropy_ref, entropy_band, entropy_base=None, reveal=None, remask=None) -> tuple[float, dict]:
    vals, ents, calls = [], [], []
    for s in crn_seeds:
        tok, c = run_sampler(teacher, grid, sampler=sampler, phi=phi, reading=reading, seed=s,
                             num_samples=num_samples, x64=x64, reveal=reveal, remask=remask, return_calls=True)
        vals.append(divergence(tok))
        ents.append(unigram_entropy(tok, mode="pooled"))
        calls.append(c)
    value, ent = float(np.mean(vals)), float(np.mean(ents))
    lo, hi = entropy_window(entropy_ref, entropy_band, entropy_base)
    outside = max(lo - ent, ent - hi, 0.0)
    return value, {"divergence": value, "unigram_entropy": ent, "rejected": bool(outside > 0), "outside": outside,
                   "network_calls": float(np.mean(calls))}


def entropy_window(ref: Optional[float], band: float, base: Optional[float] = None) -> tuple[float, float]:
    """Accepted unigram entropies: never sharper than the teacher's by more than `band`
    (the sharpening that gen-PPL-style metrics reward), never noisier than both the band
    and the plain sampler (`base`). No reference: everything is accepted."""
    if ref is None:
        return -np.inf, np.inf
    hi = ref * (1.0 + band)
    if base is not None:
        hi = max(hi, base)
    return ref * (1.0 - band), hi


def best_fixed_grid(teacher: ScoreModel, nfe: int, divergence: Callable, *, sampler: str = "euler", eps: float = 1e-4,
                    crn_seeds: Sequence[int] = (0, 1), num_samples: int = 1024, x64: bool = False,
                    families=FIXED_FAMILIES, reveal=None, remask=None) -> tuple[np.ndarray, list]:
    """Scores each fixed grid family on the tuning seeds (under a reveal policy: the
    grid sets its counts); returns (best grid, table)."""
    check_model(teacher)
    table = []
    for name, p in families:
        g = grids.get_grid(name, nfe, eps, p=p or 2.0, noise=teacher.noise)
        value, info = _score(teacher, g, None, divergence, sampler=sampler, reading="linear", crn_seeds=crn_seeds,
                             num_samples=num_samples, x64=x64, entropy_ref=None, entropy_band=0.0,
                             reveal=reveal, remask=remask)
        table.append({"grid": name if p is None else f"power-{p}", "grid_values": np.asarray(g).tolist(), **info})
    best = min(table, key=lambda r: r["divergence"])
    return np.asarray(best["grid_values"]), table


def search(teacher: ScoreModel, nfe: int, divergence: Callable, *, sampler: str = "euler", eps: float = 1e-4,
           budget: int = 200, tune_phi: bool = False, reading: str = "linear", crn_seeds: Sequence[int] = (0, 1),
           num_samples: int = 1024, x64: bool = False, seed: int = 0, sigma0: float = 0.5,
           entropy_ref: Optional[float] = None, entropy_band: float = 0.01, logit_bound: float = 3.0,
           init_grid=None, progress: bool = True, reveal=None, remask=None,
           tune_reveal_param: bool = False) -> tuple[sp_lib.SamplerParams, list]:
    """CMA-ES over grid logits [M] (and log phi [M]) minimising `divergence(samples)`.

    Under a reveal policy (`lsd_jax.reveal`) the grid sets how many positions each step
    reveals (`reveal.counts_from_grid`); tune_reveal_param adds the policy's own parameter
    (eb budget, spread weight) as one more coordinate, within `reveal.PARAM_BOUNDS`; the
    best value is in the summary entry of the history (`reveal_param`).

    With entropy_ref, candidates outside `entropy_window` are rejected. The search starts
    from `init_grid` [M + 1] when given (else the uniform grid). Returns the best accepted
    candidate (the uniform grid if none beats it) and the history of evaluations.
    """
    from cmaes import CMA

    check_model(teacher)  # a wrong score function fails here, named, before any compile
    if budget < 1:
        raise ValueError(f"budget must be >= 1 evaluation, got {budget}")
    from lsd_jax import reveal as reveal_lib

    n_grid = nfe * (2 if tune_phi else 1)
    extra = []
    if tune_reveal_param:
        if reveal is None or reveal.param is None:
            raise ValueError("tune_reveal_param needs a reveal policy with a parameter (eb, confidence, margin, "
                             "entropy)")
        extra = [list(reveal_lib.PARAM_BOUNDS[reveal.param])]
    dim = n_grid + len(extra)
    bounds = np.array([[-logit_bound, logit_bound]] * nfe + [[np.log(0.05), np.log(20.0)]] * (n_grid - nfe) + extra)
    mean = np.zeros(dim)
    if extra:
        mean[-1] = float(np.clip(getattr(reveal, reveal.param), *extra[0]))
    if init_grid is not None:  # start the search from a given grid (e.g. the best fixed one)
        init_logits = np.asarray(grids.to_logits(jnp.asarray(init_grid), eps), np.float64)
        mean[:nfe] = np.clip(init_logits - init_logits.mean(), -logit_bound, logit_bound)
    opt = CMA(mean=mean, sigma=sigma0, bounds=bounds, seed=seed, population_size=max(6, 4 + int(3 * np.log(dim))))

    def decode(z):
        logits = jnp.asarray(z[:nfe])
        phi = jnp.exp(jnp.asarray(z[nfe:n_grid])) if tune_phi else jnp.ones((nfe,))
        return logits, phi

    def policy_of(z):
        return reveal_lib.with_param(reveal, z[-1]) if extra else reveal

    base_entropy = None

    def evaluate(z):
        logits, phi = decode(z)
        value, info = _score(teacher, grids.from_logits(logits, eps), phi, divergence, sampler=sampler,
                             reading=reading, crn_seeds=crn_seeds, num_samples=num_samples, x64=x64,
                             entropy_ref=entropy_ref, entropy_band=entropy_band, entropy_base=base_entropy,
                             reveal=policy_of(z), remask=remask)
        return (np.inf if info["rejected"] else value), info

    history = []
    t0 = time.perf_counter()
    z0 = np.zeros(dim)
    if extra:
        z0[-1] = mean[-1]
    base_value, base_info = evaluate(z0)
    base_entropy = base_info["unigram_entropy"]
    if base_info["rejected"]:  # only when the plain sampler is sharper than the teacher
        base_value = base_info["divergence"]
    history.append({"eval": 0, "z": z0.tolist(), **base_info})
    best_z, best_value = z0.copy(), base_value
    if init_grid is not None:
        value, info = evaluate(mean)
        history.append({"eval": 1, "z": mean.tolist(), **info})
        if value < best_value:
            best_z, best_value = mean.copy(), value
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=budget, desc=f"tune M={nfe}", unit="eval")
        bar.update(len(history))
    n = len(history)
    while n < budget:
        sols = []
        for _ in range(opt.population_size):
            if n >= budget:
                break
            z = opt.ask()
            value, info = evaluate(z)
            n += 1
            history.append({"eval": n - 1, "z": z.tolist(), **info})
            if value < best_value:
                best_z, best_value = z.copy(), value
            # rejected: a large finite value that still orders by how far outside the window
            sols.append((z, value if np.isfinite(value) else 1e6 * (1.0 + info["outside"])))
            if bar is not None:
                bar.set_postfix(best=f"{best_value:.4g}")
                bar.update(1)
        if len(sols) == opt.population_size:
            opt.tell(sols)
    if bar is not None:
        bar.close()
    logits, phi = decode(best_z)
    params = sp_lib.init(nfe, eps, sampler, reading)
    params = params.replace(logits=logits.astype(params.logits.dtype), phi=phi.astype(params.phi.dtype))
    history.append({"summary": True, "best_divergence": float(best_value), "uniform_divergence": float(base_value),
                    "seconds": time.perf_counter() - t0,
                    **({"reveal": reveal.name} if reveal is not None else {}),
                    **({"reveal_param": float(best_z[-1])} if extra else {})})
    return params, history
