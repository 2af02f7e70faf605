"""LSD / LSD+ with a reveal policy in the student (`lsd-jax distill --reveal P`).

What the paper's loss means here. The LSD loss matches, step by step and position by
position, the student's one-step kernel to the teacher's from the student's own states. Under
a reveal policy a step's kernel at a position is a deterministic choice (reveal, or stay)
followed by a token from the posterior, so only the token part has a teacher counterpart: the
teacher's one-step kernel conditioned on a reveal is its posterior at the same state. The loss
is therefore
    sum_k sum_{i revealed at step k} KL(p_teacher(. | x_k)_i || p_student,phi_k(. | x_k)_i)
divided by the number of revealed tokens, along trajectories the student samples itself (no
gradient through draws or choices). phi scales the score (reading linear: a constant factor,
which the posterior's normalisation removes -- the loss and its gradient are exactly zero;
reading temperature: p^phi renormalised, minimised at phi = 1 when the teacher is the
student's own network). The grid (LSD+) sets the counts by rounding: piecewise constant, no
gradient; it reaches the loss only through sigmabar(t_k) at which the network is evaluated (no
effect on an exact teacher, whose posterior does not depend on sigmabar).
Whether it tracks the samples: it cannot see the error a policy makes, which is the
factorisation error of positions revealed together (each token's marginal is exact), so a
falling loss says nothing about the joint. `fit` records the exact divergence of the samples
beside the loss at every validated epoch and returns the best validated epoch (epoch 0: the
plain policy), as distill.py does.
"""

from __future__ import annotations

import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lsd_jax import grids, reveal, samplers
from lsd_jax import sampler_params as sp_lib
from lsd_jax.models.dit import for_gradients


def loss_fn(params: sp_lib.SamplerParams, key, rank, *, score_fn, graph, noise, policy, reading, batch, length, m):
    """Mean KL per revealed token (see the module docstring) over `batch` student trajectories."""
    grid = params.grid()
    counts = reveal.counts_from_grid(noise, jax.lax.stop_gradient(grid), length)
    x = jnp.full((batch, length), graph.mask_id, jnp.int32)
    total, n = 0.0, 0.0
    for k in range(m):  # M is small and static: unrolled
        sb = noise.total(jnp.full((batch,), grid[k]))
        raw = score_fn(x, sb)
        ls_s = samplers.apply_phi(x, raw, params.phi[k], reading)
        logp_t = reveal.log_posterior(graph, jax.lax.stop_gradient(raw))
        logp_s = reveal.log_posterior(graph, ls_s)
        k1, k2 = jax.random.split(jax.random.fold_in(key, k))
        drawn = samplers.draw(k1, samplers.denoise_kernel(graph, x, jax.lax.stop_gradient(ls_s), sb))
        chosen = policy.choose(k2, x == graph.mask_id, jax.lax.stop_gradient(logp_s), drawn, rank, counts[k])
        kl = jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), -1)
        total = total + jnp.sum(jnp.where(chosen, kl, 0.0))
        n = n + jnp.sum(chosen, dtype=kl.dtype)
        x = jnp.where(chosen, drawn, x)
    return total / jnp.maximum(n, 1.0)


def fit(teacher, policy, *, nfe: int, method: str = "lsd", reading: str = "temperature", epochs: int = 10,
        batch: int = 64, lr: float = 1e-2, eps: float = 1e-4, seed: int = 0, val_samples: int = 1024,
        progress: bool = True) -> tuple[sp_lib.SamplerParams, list]:
    """optax Adam on phi (LSD) or phi and the grid logits (LSD+); validates every epoch by the
    exact bigram KL of `val_samples` samples (exact teachers; else no selection: last epoch)."""
    from lsd_jax.eval.sampling import run_sampler

    if method not in ("lsd", "lsd+"):
        raise ValueError(f"method must be lsd or lsd+, got {method!r}")
    if isinstance(policy, (reveal.Ctmc, reveal.EB)):
        raise ValueError(f"distill --reveal needs a fixed-count policy (random, planned, confidence, margin, "
                         f"entropy), got {policy.name}")
    params = sp_lib.init(nfe, eps, "euler", reading)
    rank = jnp.asarray(reveal.order_rank(reveal.planned_order(teacher.length, getattr(policy, "shape", None))))
    kw = dict(score_fn=for_gradients(teacher.score_fn), graph=teacher.graph, noise=teacher.noise, policy=policy,
              reading=reading, batch=batch, length=teacher.length, m=nfe)
    grad_fn = jax.jit(jax.value_and_grad(lambda p, k: loss_fn(p, k, rank, **kw)))
    opt = optax.adam(lr)
    state = opt.init(params)
    mask = sp_lib.SamplerParams(jnp.ones((nfe,)), jnp.ones((nfe,)) if method == "lsd+" else jnp.zeros((nfe,)),
                                eps=eps, sampler="euler", reading=reading)

    def validate(p) -> Optional[float]:
        if not teacher.exact:
            return None
        tok = run_sampler(teacher, p.grid(), phi=p.phi, reading=reading, seed=seed + 1, num_samples=val_samples,
                          reveal=policy)
        return float(teacher.metrics(tok)["bigram_kl"])

    history, best, best_val = [], params, None
    t0 = time.perf_counter()
    for epoch in range(epochs + 1):
        loss, grads = grad_fn(params, jax.random.PRNGKey(seed * 1000 + epoch))
        val = validate(params)
        history.append({"epoch": epoch, "loss": float(loss), "val_bigram_kl": val,
                        "grad_norm": float(optax.global_norm(grads)), "phi": np.asarray(params.phi).tolist(),
                        "counts": np.asarray(reveal.counts_from_grid(teacher.noise, params.grid(),
                                                                     teacher.length)).tolist()})
        if progress:
            print(f"epoch {epoch}: loss {float(loss):.5f} val bigram KL {val} |grad| {history[-1]['grad_norm']:.3g}",
                  flush=True)
        if val is not None and (best_val is None or val < best_val) or (val is None and epoch == epochs):
            best, best_val = params, val
        if epoch == epochs:
            break
        grads = jax.tree_util.tree_map(lambda g, mk: g * mk, grads, mask)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        params = params.replace(phi=jnp.clip(params.phi, 0.05, 20.0))
    history.append({"summary": True, "selected_val_bigram_kl": best_val, "seconds": time.perf_counter() - t0})
    return best, history
