"""LSD and LSD+: learn per-step score coefficients phi (and, for LSD+, the time grid) of an
M-step student so that it follows an N-step teacher. Only the small pytree
`SamplerParams(phi, logits)` is optimised (optax); the score network is frozen and
gradients flow through it into the grid.

How one loss evaluation works (every choice below is ours where the paper is silent):
1. Teacher cache (once per fit, no gradient): the N-step sampler (phi = 1, uniform grid,
   same Euler/Tweedie step as the student) runs from x_T for each training sample; its
   states at all N + 1 grid times are kept (absorbing graph: as the final state plus the
   step at which each position was revealed, `RevealPath`, O(S L) memory; uniform graph:
   the dense [N + 1, S, L] path). At a student time t_k the teacher's state is
   the one at the nearest teacher grid time, and the teacher's score is evaluated there at
   sigmabar(t_k) (so it follows a learned grid).
2. Student start: x_T itself (zeta = 0), or the relaxed start within Hamming distance
   floor(zeta L): on the uniform graph up to that many positions of x_T are redrawn
   uniformly. On the absorbing graph x_T is the all-mask state, there is nothing to
   perturb and zeta has no effect: the student runs its own trajectory from all-mask.
   (We tried continuing the student from the teacher's re-noised state at t_1: that hands
   the student the teacher's consistent reveals of the first step, which rewards a grid
   that puts most reveals into that step -- the loss fell 4x while the exact divergence
   rose 4.6x. The student must live with its own first step, as it does when sampling.)
3. Student pass: the core step (the solver's `kernel` on `apply_phi(score)`, its
   probabilities `solvers.probs(kernel)`), the next state drawn from that same kernel
   (`solvers.draw`; no gradient through the draw). With B L V above REMAT_BYTES each
   step is recomputed in the backward pass (jax.checkpoint) instead of keeping its
   [B, L, V] residuals. Minibatches are split over all devices (`lsd_jax.sharding`).
4. Per-step loss at every step k = 0..M-1 (the last included), per position, between the
   teacher's one-step kernel from its state over [t_k, t_{k+1}] (a target: stop-gradient)
   and the student's kernel from its state:
     kl        KL(teacher || student) of the full transition, stay/mask mass included
               (default; under the linear reading on an exact absorbing teacher its phi
               gradient at phi = 1 is exactly zero);
     token-kl  KL of the kernels renormalised over moves (stay entry removed): the scale of
               phi cancels under the linear reading (zero gradient by construction);
     l2        squared error of scores (phi s - s*)^2 over data tokens.
   Scored positions: masked in both (absorbing), all (uniform).
   Normalisation (anti-gaming): the summed loss over all steps is divided by the number
   of tokens the teacher moves at the scored positions (sum of its move mass): a loss per
   revealed token, so a grid cannot lower it by pushing reveals into a step that is not
   scored or by merely changing how many positions are scored.
5. Guards: phi is projected onto [phi_min, phi_max] after each update; grid logits onto
   [-logit_bound, logit_bound] (largest / smallest step <= exp(2 logit_bound)); a non-finite
   loss or parameter stops the fit with an error naming the epoch.
6. Selection (our guard against a falling loss with worse samples): the per-step losses
   are gameable by LSD+ (measured on the exact teacher: a grid revealing 36% of tokens in
   the first step and 36% in the last lowers the default loss from 4.48 to 2.92 while the
   exact bigram KL rises from 0.130 to 0.600). So the student is sampled (val_samples,
   fixed seed) after epoch 0 (the plain sampler), every val_every-th epoch and the last
   epoch, and scored with a sample-level divergence: the exact bigram KL on an exact
   teacher, else the n-gram divergence against val_samples reference samples of the
   teacher run with min(val_reference_nfe, N) steps; `fit` returns the best validated
   epoch (epoch 0 included), so it never hands back a sampler worse than where it started
   on that divergence. Epochs in between are recorded with val_divergence None.
   Cost, in sequence-forward passes (network calls x samples): about
       (epochs / val_every + 1) * nfe * val_samples      (students; nfe + 1 calls exactly)
     + val_reference_nfe * val_samples                  (n-gram reference, once per fit)
   val_samples "auto" is 1024 on an exact teacher (analytic, cheap; no reference needed)
   and 256 on a network teacher; with the defaults (val_every 1, reference 256 steps) a
   mini SEDD teacher pays 21 * 9 * 256 + 256 * 256 ~ 114k passes instead of the ~1.24M
   that 1024 samples and a 1024-step reference cost; val_every 5 brings it to ~77k.
NFE: the student has M predictor calls plus the final denoise (raw score, no phi), the
same as every sampler it is compared with.

The teacher is any `lsd_jax.teachers.ScoreModel` (score_fn, graph, noise, length); `fit`
returns a `FitResult` (params, history[e] = epoch e, plan, timing). The optimiser is
optax-native (`optimizer`: partition / conditionally_mask / projection_box).
Length: ~710 lines, one method end to end (config, teacher cache, loss, epoch, selection,
checkpoints, fit); the checkpoint helpers are to move to a run module shared with train.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lsd_jax import grids, samplers
from lsd_jax import sampler_params as sp_lib
from lsd_jax import solvers as solvers_lib
from lsd_jax._compat import optax_update
from lsd_jax.divergences import make_divergence
from lsd_jax.eval.sampling import run_sampler
from lsd_jax.graphs import is_token
from lsd_jax.models.dit import for_gradients
from lsd_jax.names import LOSSES, METHODS, SELECT
from lsd_jax.profiling import Phase, memory_report
from lsd_jax.sampler_params import SamplerParams
from lsd_jax.samplers import READINGS, check_choice
from lsd_jax.teachers.base import ScoreModel, check_model, is_exact, with_score_fn

Array = jnp.ndarray

REMAT_BYTES = 64 * 2**20  # student_loss recomputes its steps in the backward pass above this [B, L, V] size
AUTO_VAL_SAMPLES = {"exact": 1024, "network": 256}  # val_samples "auto", by teacher.exact


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Distillation settings; defaults from the paper where it gives them."""

    method: str = "lsd"  # lsd: phi only; lsd+: phi and the time grid
    sampler: str = "euler"  # student (and teacher) step: a one-call solver (solvers.KERNEL_SOLVERS)
    nfe: int = 8  # student steps M
    teacher_nfe: int = 1024  # teacher steps N
    reading: str = "linear"  # linear: phi s; temperature: s^phi
    loss: str = "kl"  # kl | token-kl | l2
    zeta: float = 0.05  # relaxed start: Hamming radius as a fraction of L
    epochs: int = 20
    samples: int = 64  # training trajectories
    batch_size: int = 16
    lr: float = 1e-3
    eps: float = 1e-4  # terminal time
    alternate: bool = False  # lsd+: phi on even epochs, grid on odd epochs
    phi_min: float = 0.05
    phi_max: float = 20.0
    logit_bound: float = 3.0
    select: str = "auto"  # model selection on a sample-level divergence: auto | exact | ngram | none
    # Validation (select != none) costs about (epochs / val_every + 1) * nfe * val_samples
    # sequence-forward passes (network calls x samples) for the students, plus
    # val_reference_nfe * val_samples once for the n-gram reference (network teachers only).
    val_samples: "int | str" = "auto"  # samples per validation; auto: 1024 exact teacher, 256 network teacher
    val_every: int = 1  # validate epoch 0, every val_every-th epoch and the last; the best of those is returned
    val_reference_nfe: int = 256  # steps of the n-gram reference samples (capped at teacher_nfe)
    val_seed: int = 777  # common random numbers: every epoch is validated with this seed
    seed: int = 0
    x64: bool = False

    def validate(self) -> "DistillConfig":
        check_choice("method", self.method, METHODS)
        solvers_lib.get_solver(self.sampler, solvers_lib.KERNEL_SOLVERS)  # one-call kernels: euler | tweedie
        check_choice("reading", self.reading, READINGS)
        check_choice("loss", self.loss, LOSSES)
        check_choice("select", self.select, SELECT)
        ints = {"nfe": 1, "teacher_nfe": 2, "epochs": 1, "samples": 1, "batch_size": 1, "val_every": 1,
                "val_reference_nfe": 1}
        for field, lo in ints.items():
            v = getattr(self, field)
            if not _is_int_at_least(v, lo):
                raise ValueError(f"{field} must be an integer >= {lo}, got {v!r}")
        if self.val_samples != "auto" and not _is_int_at_least(self.val_samples, 1):
            raise ValueError(f"val_samples must be 'auto' or an integer >= 1, got {self.val_samples!r}")
        if self.nfe >= self.teacher_nfe:
            raise ValueError(f"nfe (student steps M = {self.nfe}) must be < teacher_nfe (N = {self.teacher_nfe})")
        if not 0.0 <= self.zeta <= 1.0:
            raise ValueError(f"zeta must be in [0, 1] (a fraction of the length L), got {self.zeta}")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 < self.phi_min < 1.0 < self.phi_max:
            raise ValueError(f"need 0 < phi_min < 1 < phi_max, got {self.phi_min}, {self.phi_max}")
        if self.batch_size > self.samples:
            raise ValueError(f"batch_size ({self.batch_size}) must be <= samples ({self.samples})")
        return self

    def resolved_val_samples(self, teacher) -> int:
        """val_samples as an int: "auto" is 1024 on an exact teacher, 256 on a network teacher."""
        if self.val_samples == "auto":
            return AUTO_VAL_SAMPLES["exact" if is_exact(teacher) else "network"]
        return int(self.val_samples)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_int_at_least(v, lo: int) -> bool:
    if isinstance(v, bool):
        return False
    try:
        return int(v) == v and v >= lo
    except (TypeError, ValueError):
        return False


def validated_epochs(epochs: int, val_every: int) -> list:
    """Epochs `fit` validates: 0 (the plain sampler), every val_every-th and the last."""
    return sorted(set(range(0, epochs + 1, val_every)) | {epochs})


def _selection_kind(teacher, cfg: DistillConfig) -> str:
    """cfg.select resolved for this teacher (auto: exact on an exact teacher, else ngram);
    errors for a combination that cannot work."""
    kind = cfg.select
    if kind == "auto":
        kind = "exact" if is_exact(teacher) else "ngram"
    if kind == "exact" and not is_exact(teacher):
        raise ValueError("select 'exact' needs an exact teacher (--teacher markov); use 'ngram'")
    if kind == "ngram" and min(cfg.val_reference_nfe, cfg.teacher_nfe) <= cfg.nfe:
        raise ValueError(f"val_reference_nfe ({cfg.val_reference_nfe}, capped at teacher_nfe {cfg.teacher_nfe}) "
                         f"must be > nfe ({cfg.nfe}): the n-gram reference must take more steps than the "
                         "student it judges")
    return kind


def validation_plan(teacher, cfg: DistillConfig) -> dict:
    """What selection will cost for this teacher and config: the divergence, samples per
    validation, reference steps (n-gram only), the validated epochs and the total
    sequence-forward passes (network calls x samples; a student makes nfe + 1 calls)."""
    kind = _selection_kind(teacher, cfg)
    if kind == "none":
        return {"kind": "none", "samples": 0, "reference_nfe": None, "every": cfg.val_every, "epochs": [],
                "forward_passes": 0}
    n = cfg.resolved_val_samples(teacher)
    ref_nfe = min(cfg.val_reference_nfe, cfg.teacher_nfe) if kind == "ngram" else None
    epochs = validated_epochs(cfg.epochs, cfg.val_every)
    passes = len(epochs) * (cfg.nfe + 1) * n + (ref_nfe or 0) * n
    return {"kind": kind, "samples": n, "reference_nfe": ref_nfe, "every": cfg.val_every, "epochs": epochs,
            "forward_passes": passes}


class RevealPath(NamedTuple):
    """The whole absorbing-graph teacher path in O(S L): the final state and, per position,
    the first step k after which it is unmasked (N + 1: never). State k is
    where(reveal <= k, final, mask): on the absorbing graph a token is revealed once and
    never changes (both Euler and Tweedie keep unmasked tokens), so this is exact."""

    final: Array  # [S, L] int32 state after N steps (no denoise)
    reveal: Array  # [S, L] int32


class TeacherCache(NamedTuple):
    path: "Array | RevealPath"  # absorbing: RevealPath; uniform: [N + 1, S, L] states at the teacher's grid times
    x_start: Array  # [S, L] the teacher's x_T


def teacher_state(path, j: Array, graph) -> Array:
    """Teacher state [S, L] after j steps (j may be traced)."""
    if isinstance(path, RevealPath):
        return jnp.where(path.reveal <= j, path.final, graph.mask_id)
    return path[j]


def path_rows(path, rows: Array):
    """The cache restricted to trajectories `rows` (a minibatch)."""
    if isinstance(path, RevealPath):
        return RevealPath(path.final[rows], path.reveal[rows])
    return path[:, rows]


def teacher_cache(teacher, cfg: DistillConfig, key: Array, mesh="auto") -> TeacherCache:
    """Runs the N-step teacher for cfg.samples trajectories and keeps what the loss needs:
    every state, which on the absorbing graph is the final state plus one reveal step per
    position (O(S L) instead of O(N S L)); the uniform graph keeps the dense path."""
    absorbing = teacher.graph.is_absorbing
    out = samplers.sample(
        teacher.score_fn, teacher.graph, teacher.noise, grids.uniform(cfg.teacher_nfe, cfg.eps), key,
        cfg.samples, teacher.length, sampler=cfg.sampler, denoise=False, x64=cfg.x64,
        return_path=not absorbing, return_reveal=absorbing, mesh=mesh,
    )
    if absorbing:
        x_start = teacher.graph.sample_limit(key, (cfg.samples, teacher.length))
        return TeacherCache(RevealPath(out.tokens, out.reveal), x_start)
    return TeacherCache(out.path, out.path[0])


def relaxed_start(graph, key: Array, x: Array, zeta: float) -> Array:
    """x [B, L] with up to floor(zeta L) positions perturbed (Hamming distance <= that).

    Uniform: redraws up to that many positions uniformly. Absorbing: re-masks up to that
    many tokens (a state one step noisier; `fit` does not use it: its start is all-mask).
    """
    bsz, length = x.shape
    r_max = int(math.floor(zeta * length))
    if r_max == 0:
        return x
    k1, k2, k3 = jax.random.split(key, 3)
    r = jax.random.randint(k1, (bsz, 1), 0, r_max + 1)
    rank = jnp.argsort(jax.random.uniform(k2, (bsz, length)), axis=1).argsort(axis=1)
    chosen = rank < r  # r random positions per row
    if graph.is_absorbing:
        return jnp.where(chosen, graph.mask_id, x)
    return jnp.where(chosen, jax.random.randint(k3, x.shape, 0, graph.dim, dtype=x.dtype), x)


def _teacher_index(t: Array, n: int, eps: float) -> Array:
    """Index of the teacher grid time (linspace(1, eps, n + 1)) nearest to t."""
    return jnp.clip(jnp.round((1.0 - t) / (1.0 - eps) * n), 0, n).astype(jnp.int32)


def _xlogy_ratio(p: Array, q: Array) -> Array:
    """p log(p / q) with 0 log 0 = 0; q floored so the student is never log 0."""
    tiny = jnp.finfo(q.dtype).tiny
    return jnp.where(p > 0, p * (jnp.log(jnp.maximum(p, tiny)) - jnp.log(jnp.maximum(q, tiny))), 0.0)


def _renorm_moves(p: Array, x: Array) -> Array:
    """The kernel over moves only: the stay entry removed, renormalised (0 if no move mass)."""
    off = jnp.where(is_token(x, p.shape[-1]), 0.0, p)
    total = off.sum(-1, keepdims=True)
    safe = jnp.where(total > 0, total, 1.0)  # no 0/0 in the backward pass
    return jnp.where(total > 0, off / safe, 0.0)


def position_loss(kind: str, p_t: Array, p_s: Array, x_t: Array, x_s: Array, ls_t: Array, ls_s: Array) -> Array:
    """Per-position loss [B, L] between teacher and student kernels / scores."""
    if kind == "kl":
        return _xlogy_ratio(p_t, p_s).sum(-1)
    if kind == "token-kl":
        return _xlogy_ratio(_renorm_moves(p_t, x_t), _renorm_moves(p_s, x_s)).sum(-1)
    if kind == "l2":
        d = p_t.shape[-1]
        keep = ~is_token(x_t, d) & ~is_token(x_s, d)
        return jnp.where(keep, (jnp.exp(ls_s) - jnp.exp(ls_t)) ** 2, 0.0).sum(-1)
    check_choice("loss", kind, LOSSES)


def student_loss(
    params: SamplerParams,
    path: Array,
    x_start: Array,
    key: Array,
    *,
    teacher,
    cfg: DistillConfig,
) -> tuple[Array, dict]:
    """Loss per revealed token of the student on a batch of teacher trajectories.

    path: teacher states (`RevealPath` or [N + 1, B, L]); x_start [B, L] the student's
    (relaxed) start.
    Returns (loss, aux) with aux: per-step loss sums, teacher move mass, student reveals.
    """
    graph, noise = teacher.graph, teacher.noise
    score_fn = for_gradients(teacher.score_fn)  # a masked head is slow under reverse mode
    solver = solvers_lib.get_solver(cfg.sampler, solvers_lib.KERNEL_SOLVERS)
    grid = params.grid()  # [M + 1]
    m = cfg.nfe
    idx = _teacher_index(jax.lax.stop_gradient(grid[:-1]), cfg.teacher_nfe, cfg.eps)
    bsz = x_start.shape[0]
    k_steps = key

    def body(x_s, inputs):
        k, t, t_next, phi_k, j = inputs
        tb, tnb = jnp.full((bsz,), t), jnp.full((bsz,), t_next)
        sb = noise.total(tb)
        x_t = teacher_state(path, j, graph)
        ls_t = jax.lax.stop_gradient(score_fn(x_t, sb))
        p_t = jax.lax.stop_gradient(solvers_lib.probs(solver.kernel(graph, noise, x_t, ls_t, tb, tnb)))
        ls_s = samplers.apply_phi(x_s, score_fn(x_s, sb), phi_k, cfg.reading)
        p_s = solvers_lib.probs(solver.kernel(graph, noise, x_s, ls_s, tb, tnb))
        if graph.is_absorbing:
            scored = (x_s == graph.mask_id) & (x_t == graph.mask_id)
        else:
            scored = jnp.ones_like(x_s, dtype=bool)
        per_pos = position_loss(cfg.loss, p_t, p_s, x_t, x_s, ls_t, ls_s)
        stay_t = jnp.take_along_axis(p_t, x_t[..., None], -1)[..., 0]
        moved_t = jnp.where(scored, 1.0 - stay_t, 0.0).sum()
        # the student's own next state, drawn from the same kernel (p_s is its probabilities;
        # no [B, L, V] noise above solvers.FLAT_VOCAB_MAX; the same uniforms below it)
        kern = solver.kernel(graph, noise, x_s, jax.lax.stop_gradient(ls_s), tb, tnb)
        x_next = solvers_lib.draw(jax.random.fold_in(k_steps, k), kern)
        reveals = (x_next != x_s).sum()
        return x_next, (jnp.where(scored, per_pos, 0.0).sum(), moved_t, reveals)

    if bsz * x_start.shape[1] * graph.dim * 4 > REMAT_BYTES:
        # large vocabularies: reverse mode would keep ~10 [B, L, V] residuals of every step
        # (15 GiB for B 16, L 64, V 50258); recompute each step in the backward pass instead
        # (one more teacher and student forward per step, memory of one step)
        body = jax.checkpoint(body, prevent_cse=False)
    _, (loss_k, moved_k, reveals_k) = jax.lax.scan(
        body, x_start, (jnp.arange(m), grid[:-1], grid[1:], params.phi, idx)
    )
    loss = loss_k.sum() / jnp.maximum(moved_k.sum(), 1.0)
    return loss, {"step_loss": loss_k, "teacher_moved": moved_k, "student_moved": reveals_k}


class FitState(NamedTuple):
    params: SamplerParams
    opt_state: optax.OptState
    epoch: Array  # int32 scalar: epochs completed
    key: Array


def _leaf_labels(params: SamplerParams) -> SamplerParams:
    return params.replace(phi="phi", logits="logits")


def optimizer(cfg: DistillConfig) -> optax.GradientTransformation:
    """Adam on the leaves this method trains (optax.partition): lsd trains phi and freezes
    the grid logits (set_to_zero); lsd+ trains both; lsd+ with `alternate` trains phi on
    even epochs and the logits on odd ones (optax.transforms.conditionally_mask on the
    update count: a frozen leaf's Adam state, moments and count, is left as it is).
    eps 1e-6 (optax: 1e-8): Adam would blow float32 round-off in an exactly-zero gradient
    up to lr-sized steps; real gradients here are >= 1e-4."""
    adam = optax.adam(cfg.lr, eps=1e-6)
    if cfg.method == "lsd":
        return optax.partition({"phi": adam, "logits": optax.set_to_zero()}, _leaf_labels)
    if not cfg.alternate:
        return adam
    n_batches = cfg.samples // cfg.batch_size  # updates per epoch: the epoch is count // n_batches
    on_parity = lambda parity: lambda count: (count // n_batches) % 2 == parity  # noqa: E731
    return optax.partition({"phi": optax.transforms.conditionally_mask(adam, on_parity(0)),
                            "logits": optax.transforms.conditionally_mask(adam, on_parity(1))}, _leaf_labels)


def project(params: SamplerParams, cfg: DistillConfig) -> SamplerParams:
    """params on the box phi in [phi_min, phi_max], logits in [-logit_bound, logit_bound]."""
    lower = params.replace(phi=cfg.phi_min, logits=-cfg.logit_bound)
    upper = params.replace(phi=cfg.phi_max, logits=cfg.logit_bound)
    return optax.projections.projection_box(params, lower, upper)


def make_epoch_fn(teacher, cfg: DistillConfig, cache: TeacherCache, mesh="auto") -> Callable[[FitState], tuple[FitState, dict]]:
    """A jit-compiled epoch: shuffle the S cached trajectories, scan over minibatches.

    mesh: "auto" (`sharding.default_mesh(cfg.batch_size)`: every device when there are
    several), None (one device) or a Mesh: each minibatch is split over its batch axis,
    the network params, the teacher cache and the sampler params are replicated.
    """
    from lsd_jax import sharding as sharding_lib

    opt = optimizer(cfg)
    n_batches = cfg.samples // cfg.batch_size
    score_arg = samplers.as_pytree_fn(teacher.score_fn)  # network params: an argument, not constants
    if mesh == "auto":
        mesh = sharding_lib.default_mesh(cfg.batch_size)
    if mesh is not None:
        score_arg, cache = sharding_lib.replicate((score_arg, cache), mesh)
    pin = (lambda a, axis=0: sharding_lib.constrain_batch(a, mesh, axis)) if mesh is not None else (lambda a, axis=0: a)

    @jax.jit
    def epoch_fn_(state: FitState, score_fn, cache: TeacherCache) -> tuple[FitState, dict]:
        loss_fn = functools.partial(student_loss, teacher=with_score_fn(teacher, score_fn), cfg=cfg)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        k_epoch = jax.random.fold_in(state.key, state.epoch)
        k_perm, k_start, k_loss = jax.random.split(k_epoch, 3)
        perm = jax.random.permutation(k_perm, cfg.samples)[: n_batches * cfg.batch_size].reshape(n_batches, -1)

        def batch_step(carry, inputs):
            params, opt_state = carry
            b, rows = inputs
            x0 = cache.x_start[rows]
            if not teacher.graph.is_absorbing:
                x0 = relaxed_start(teacher.graph, jax.random.fold_in(k_start, b), x0, cfg.zeta)
            path = path_rows(cache.path, rows)
            path = pin(path) if isinstance(path, RevealPath) else pin(path, 1)
            (loss, aux), g = grad_fn(params, path, pin(x0), jax.random.fold_in(k_loss, b))
            updates, opt_state = optax_update(opt, g, opt_state, params)  # frozen leaves: zero updates (`optimizer`)
            params = project(optax.apply_updates(params, updates), cfg)
            gnorm = optax.tree.norm(g)  # of the whole gradient, frozen leaves included
            return (params, opt_state), (loss, gnorm, aux["student_moved"])

        (params, opt_state), (losses, gnorms, moved) = jax.lax.scan(
            batch_step, (state.params, state.opt_state), (jnp.arange(n_batches), perm)
        )
        new_state = FitState(params, opt_state, state.epoch + 1, state.key)
        stats = {"loss": losses.mean(), "grad_norm": gnorms.mean(), "student_moved": moved.mean(0)}
        return new_state, stats

    def epoch_fn(state: FitState):
        if mesh is not None:
            state = sharding_lib.replicate(state, mesh)
        return epoch_fn_(state, score_arg, cache)

    epoch_fn.jitted = epoch_fn_  # for AOT lowering / memory analysis (benchmarks)
    epoch_fn.args = lambda state: ((sharding_lib.replicate(state, mesh) if mesh is not None else state), score_arg, cache)
    epoch_fn.mesh = mesh
    return epoch_fn


def init_state(cfg: DistillConfig, key: Array, grid=None) -> FitState:
    params = sp_lib.init(cfg.nfe, cfg.eps, cfg.sampler, cfg.reading, grid=grid)
    return FitState(params, optimizer(cfg).init(params), jnp.asarray(0, jnp.int32), key)


def make_validator(teacher, cfg: DistillConfig, mesh="auto") -> tuple[Optional[Callable[[SamplerParams], float]], str]:
    """Sample-level divergence of a student (lower is better) and its name, or None.

    The validator draws cfg.resolved_val_samples(teacher) student samples (seed val_seed);
    the n-gram divergence compares them with as many teacher samples drawn here, once, with
    min(val_reference_nfe, teacher_nfe) steps (attributes: num_samples, reference_nfe,
    reference).
    """
    kind = _selection_kind(teacher, cfg)
    if kind == "none":
        return None, kind
    num_samples = cfg.resolved_val_samples(teacher)
    ref, ref_nfe = None, None
    if kind == "ngram":
        ref_nfe = min(cfg.val_reference_nfe, cfg.teacher_nfe)
        ref = run_sampler(teacher, grids.uniform(ref_nfe, cfg.eps), sampler=cfg.sampler,
                          seed=cfg.val_seed + 1, num_samples=num_samples, x64=cfg.x64, mesh=mesh)
    div = make_divergence(kind, teacher, ref)

    def validate(params: SamplerParams) -> float:
        tok = run_sampler(teacher, params.grid(), sampler=cfg.sampler, phi=params.phi, reading=cfg.reading,
                          seed=cfg.val_seed, num_samples=num_samples, x64=cfg.x64, mesh=mesh)
        return float(div(tok))

    validate.num_samples, validate.reference_nfe, validate.reference = num_samples, ref_nfe, ref
    return validate, kind


# --- checkpoints ------------------------------------------------------------------------
def _ckpt_dir(out_dir: str) -> str:
    return os.path.join(os.path.abspath(out_dir), "checkpoints")


def _checkpoints(out_dir: str):
    from lsd_jax.runs import Checkpoints

    return Checkpoints(_ckpt_dir(out_dir), prefix="epoch_", keep=2)


def save_checkpoint(out_dir: str, state: FitState, history: list, best: SamplerParams) -> None:
    """Orbax checkpoint of (params, optimizer state, epoch, key, best params) + the JSON history
    (`lsd_jax.runs.Checkpoints`: the two newest complete epochs are kept)."""
    from lsd_jax import sharding as sharding_lib

    tree = {"phi": state.params.phi, "logits": state.params.logits, "opt_state": state.opt_state,
            "epoch": state.epoch, "key": jax.random.key_data(state.key) if _is_typed_key(state.key) else state.key,
            "best_phi": best.phi, "best_logits": best.logits}
    tree = sharding_lib.global_tree(tree)  # several hosts: orbax saves global arrays only
    # several hosts share out_dir (orbax needs one directory all of them see): every host
    # writes its part of the checkpoint, process 0 alone writes the history and prunes
    _checkpoints(out_dir).save(int(state.epoch), tree, history, primary=sharding_lib.is_primary())


def _is_typed_key(key) -> bool:
    return jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def latest_checkpoint(out_dir: str) -> Optional[str]:
    """The newest complete checkpoint (an interrupted save's leftovers are skipped)."""
    ck = _checkpoints(out_dir)
    step = ck.latest()
    return None if step is None else ck.path(step)


def restore_checkpoint(path: str, like: FitState) -> tuple[FitState, list, SamplerParams]:
    """Inverse of `save_checkpoint`: (state, history, best params)."""
    from lsd_jax import sharding as sharding_lib
    from lsd_jax.runs import Checkpoints

    target = {"phi": like.params.phi, "logits": like.params.logits, "opt_state": like.opt_state,
              "epoch": like.epoch, "key": like.key, "best_phi": like.params.phi, "best_logits": like.params.logits}
    name = os.path.basename(path)
    ck = Checkpoints(os.path.dirname(path), prefix="epoch_")
    tree, history = ck.restore(int(name[len("epoch_"):]), sharding_lib.global_tree(target))
    params = like.params.replace(phi=tree["phi"], logits=tree["logits"])
    best = like.params.replace(phi=tree["best_phi"], logits=tree["best_logits"])
    return FitState(params, tree["opt_state"], tree["epoch"], tree["key"]), history, best


# --- fit ------------------------------------------------------------------------------
class FitResult(NamedTuple):
    """What `fit` returns. history[e] is epoch e's record (e = 0: the starting sampler,
    validated unless select is "none"); plan is `validation_plan`; timing the wall-clock
    (and compile) split per phase. Unpacks as (params, history)."""

    params: SamplerParams
    history: list
    plan: dict
    timing: dict

    def __iter__(self):  # `params, history = fit(...)`
        return iter((self.params, self.history))


def _record(epoch: int, params: SamplerParams, **fields) -> dict:
    return {"epoch": epoch, **fields, "phi": np.asarray(params.phi).tolist(),
            "grid": np.asarray(params.grid(), np.float64).tolist()}


# --- fit --------------------------------------------------------------------------------
def fit(teacher: ScoreModel, cfg: DistillConfig, key: Optional[Array] = None, *, out_dir: Optional[str] = None,
        resume: bool = False, **kwargs) -> "FitResult":
    """`_fit` (below: what it computes) guarded before any work: the teacher's score is checked
    (`check_model`: shape, before any compile) and probed (finiteness); with out_dir the directory is locked for this run
    (`lsd_jax.runs.RunLock`), a resume must match the configuration saved there (every
    differing field is named; only `epochs` may change) and an interrupted save's leftovers
    are removed, so the run continues from the last complete epoch."""
    from lsd_jax import runs, validate
    from lsd_jax import sharding as sharding_lib

    cfg.validate()
    check_model(teacher)  # a wrong score function fails here, named, before any compile
    validation_plan(teacher, cfg)
    validate.probe_score(teacher)
    if not out_dir:
        return _fit(teacher, cfg, key, out_dir=out_dir, resume=resume, **kwargs)
    primary = sharding_lib.is_primary()
    with runs.RunLock(out_dir, enabled=primary):
        runs.check_config(out_dir, {"config": cfg.to_dict(), "teacher": _describe(teacher)}, resume=resume,
                          may_change=("config.epochs",), write=primary)
        if resume and primary:
            _checkpoints(out_dir).clean()
        return _fit(teacher, cfg, key, out_dir=out_dir, resume=resume, **kwargs)


def _describe(model: ScoreModel) -> dict:
    """model.describe() where the model has one, else its graph, noise and length."""
    if hasattr(model, "describe"):
        return model.describe()
    return {"name": getattr(model, "name", type(model).__name__), "graph": model.graph.name,
            "noise": model.noise.to_dict(), "length": int(model.length)}


def _fit(
    teacher: ScoreModel,
    cfg: DistillConfig,
    key: Optional[Array] = None,
    *,
    out_dir: Optional[str] = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: Optional[int] = None,
    mesh="auto",
) -> FitResult:
    """Distils an M-step student from the N-step teacher (any `ScoreModel`: score_fn, graph,
    noise, length); returns a `FitResult` (params, history, plan, timing).

    The params returned are the best validated epoch on the validation divergence
    (cfg.select; 'none': the last epoch). Validated: epoch 0, every cfg.val_every-th epoch
    and the last (`validated_epochs`); the others have val_divergence None. history[e]
    holds epoch e's loss (None at epoch 0), phi, grid, divergence; history[0] also the plan
    ("validation") and "timing".

    With out_dir, an orbax checkpoint is written every epoch and `resume=True` continues
    from the newest one (same seed -> the same result as an uninterrupted run).
    `stop_after` ends the run after that many epochs of this call (for tests). mesh: "auto"
    (every device when there are several), None (one device) or a Mesh (`make_epoch_fn`).
    """
    plan = validation_plan(teacher, cfg)
    if key is None:
        key = jax.random.PRNGKey(cfg.seed)
    k_teacher, k_fit = jax.random.split(key)
    ph = {name: Phase() for name in ("teacher", "validation", "epochs", "checkpoints")}
    t_all = time.perf_counter()
    with ph["teacher"]:
        cache = teacher_cache(teacher, cfg, k_teacher, mesh=mesh)
        jax.block_until_ready(cache.path)
    state = init_state(cfg, k_fit)
    with ph["validation"]:  # the n-gram validator's reference samples are drawn here
        validator, val_kind = make_validator(teacher, cfg, mesh=mesh)
    due = set(plan["epochs"])  # epochs validated (the last always is: the schedule ignores stop_after)
    best, best_val = state.params, None
    if resume and out_dir and latest_checkpoint(out_dir):
        state, history, best = restore_checkpoint(latest_checkpoint(out_dir), state)
        vals = [h["val_divergence"] for h in history if h.get("val_divergence") is not None]
        best_val = min(vals) if vals else None  # the checkpoint's best params are the first epoch with it
    else:
        if validator is not None:
            with ph["validation"]:
                best_val = validator(state.params)
        history = [_record(0, state.params, loss=None, val_divergence=best_val,
                           **({"val_kind": val_kind} if validator is not None else {}))]
    epoch_fn = make_epoch_fn(teacher, cfg, cache, mesh=mesh)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, initial=int(state.epoch), desc=f"{cfg.method} M={cfg.nfe}", unit="epoch")
    done_now = 0
    while int(state.epoch) < cfg.epochs and (stop_after is None or done_now < stop_after):
        te = time.perf_counter()
        with ph["epochs"]:
            state, stats = epoch_fn(state)
            loss = float(stats["loss"])
        phi = np.asarray(state.params.phi)
        bad = [name for name, v in (("loss", loss), ("phi", phi), ("grid logits", state.params.logits))
               if not np.all(np.isfinite(np.asarray(v)))]
        if bad:  # the teacher's score was finite when probed: the optimisation diverged
            raise FloatingPointError(
                f"non-finite {' and '.join(bad)} at epoch {int(state.epoch)} (loss={loss}, phi={phi}); the teacher's "
                "score was finite when probed before the run, so the updates diverged: lower --lr or use --x64"
            )
        rec = _record(int(state.epoch), state.params, loss=loss, grad_norm=float(stats["grad_norm"]),
                      student_moved=np.asarray(stats["student_moved"]).tolist(), seconds=time.perf_counter() - te)
        validated = validator is not None and rec["epoch"] in due
        if validated:
            with ph["validation"]:
                rec["val_divergence"] = validator(state.params)
            rec["val_kind"] = val_kind
            if best_val is None or rec["val_divergence"] < best_val:  # ties: the earlier epoch
                best, best_val = state.params, rec["val_divergence"]
        else:
            rec["val_divergence"] = None  # not a validated epoch (or select none): never selected
            if validator is None:
                best = state.params
        history.append(rec)
        done_now += 1
        if out_dir:
            with ph["checkpoints"]:
                save_checkpoint(out_dir, state, history, best)
        if bar is not None:
            post = {"loss": f"{loss:.4g}", "phi": f"[{phi.min():.3f}, {phi.max():.3f}]"}
            if validated:
                post[val_kind] = f"{rec['val_divergence']:.4g}"
            bar.set_postfix(post)
            bar.update(1)
    if bar is not None:
        bar.close()
    # wall-clock split (compile = JAX tracing + lowering + XLA compile inside the phase)
    timing = {**{k: p.report() for k, p in ph.items()}, "total_s": round(time.perf_counter() - t_all, 3),
              "devices": jax.device_count(), **memory_report()}
    history[0]["teacher_seconds"] = ph["teacher"].wall
    history[0]["validation"] = plan
    history[0]["timing"] = timing
    return FitResult(best, history, plan, timing)
