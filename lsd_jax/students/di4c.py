"""Di4C mixture students: dimensional correlations distilled into a few-step denoiser.

Di4C (Hayakawa, Takida, Imaizumi, Wakaki, Mitsufuji, "Distillation of Discrete Diffusion
through Dimensional Correlations", ICML 2025, arXiv 2410.08709; code sony/di4c) replaces
the factorised denoiser p_{0|t}(x0 | x_t) = prod_d p^d(x0^d | x_t) of a many-step teacher
by a mixture over a latent lambda ~ U(0, 1),

    p^theta_{0|t}(x0 | x_t) = E_lambda prod_d p^{theta,d}_{0|t}(x0^d | x_t, lambda),

which can represent correlations between positions, so that few steps suffice. Here for
the absorbing graph (masked diffusion, as sony/di4c's sdtt/ code):

- The student (`MixtureDiT`): the teacher's DiT with lambda as an extra input: sinusoidal
  features of 1000 lambda (128) -> Dense(512) -> GELU -> Dense(cond_dim), added to the
  DiT's conditioning vector. The last Dense starts at zero, so at initialisation every
  lambda gives exactly the teacher (`init_student`).
- p_{0|t} from a log score (`log_p0`): the softmax of the score over the data tokens at
  masked positions, a point mass on the token elsewhere.
- Losses per sequence (`losses`), from n lambda draws per sequence: the mixture mix and its
  per-position marginals m_d are the average of the n factorised components.
  distillation (t < delta): mean over lambda of sum_d KL(teacher_d || student_d(lambda));
  consistency (t = t_k of the student's grid): the target q is the teacher's J small steps
  from t_k to u = t_{k+1} followed by the student's denoiser at u (no gradient); KL(q || mix)
  is estimated with samples x ~ q as  -log mix(x) + sum_d log m_d(x^d)  (correlations)
  plus  sum_d KL(q_d || m_d)  (marginals in closed form: sony/di4c's control variate);
  data: the correlation part for clean data x0 weighted w(t) = data_weight sigmoid(20 (t -
  1/2)), plus sum_d KL(teacher_d || m_d).
- Sampling (`student_score_fn`): the library's samplers with a score function that draws
  lambda ~ U(0, 1) per sequence and network call, its mass fixed by the absorbing relation
  s = p_{0|t} / expm1(sigmabar) (`analytic_log_score`), so a Tweedie step reveals each masked
  position with the schedule's probability, as sdtt's ancestral sampler.

The choices where the paper and the code differ or are silent: the closing notes of issue 17
(sessions 1 and 2).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from lsd_jax import solvers
from lsd_jax.graphs import Graph
from lsd_jax.models.dit import DiT, DiTConfig, timestep_embedding
from lsd_jax.noise import Noise
from lsd_jax.students import STUDENT_FILE
from lsd_jax.teachers import Teacher, letter_decoder
from lsd_jax.teachers.checkpoint import exact_oracles
from ports import sedd

Array = Any  # a jax array
NEG = -1e6  # a finite log 0 (as lsd_jax.models.dit.NEG_INF): 0 * NEG = 0, no NaN
LAMBDA_FEATURES = 128  # sony/di4c sdtt: latent_feature_dim
LAMBDA_SCALE = 1000.0  # sony/di4c sdtt: the sinusoidal features of 1000 lambda
TEACHER_CONFIG = "teacher_config.json"  # the teacher's lsd_config.json (graph, noise, DiT)
PARAMS_DIR = "student"  # orbax: {"dit": ..., "lambda_embed": ...}


class LambdaEmbed(nn.Module):
    """lambda [B] in [0, 1] -> [B, cond_dim]: sin/cos features -> Dense -> GELU -> Dense (zero init)."""

    cond_dim: int
    features: int = LAMBDA_FEATURES

    @nn.compact
    def __call__(self, lam: Array) -> Array:
        e = timestep_embedding(LAMBDA_SCALE * lam.astype(jnp.float32), self.features)
        h = nn.gelu(nn.Dense(4 * self.features, dtype=jnp.float32, name="mlp_0")(e))
        zeros = nn.initializers.zeros
        return nn.Dense(self.cond_dim, dtype=jnp.float32, kernel_init=zeros, bias_init=zeros, name="mlp_2")(h)


class MixtureDiT(nn.Module):
    """(x int32 [B, L], sigmabar [B], lambda [B]) -> the DiT's output [B, L, V] given lambda."""

    config: DiTConfig

    @nn.compact
    def __call__(self, x: Array, sigmabar: Array, lam: Array) -> Array:
        offset = LambdaEmbed(self.config.cond_dim, name="lambda_embed")(jnp.asarray(lam))
        return DiT(self.config, name="dit")(x, sigmabar, cond_offset=offset)


def check_teacher(dit: DiTConfig, graph: Graph) -> None:
    """Di4C students here: SEDD-family DiTs on the absorbing graph (else a ValueError)."""
    if dit.family != "sedd" or not graph.is_absorbing:
        raise ValueError(f"Di4C students need a SEDD DiT on the absorbing graph; the teacher is "
                         f"family {dit.family!r} on graph {graph.name!r}")


def init_student(dit: DiTConfig, teacher_params: Any, key: Array, lambda_init_scale: float = 0.0) -> Any:
    """Student params: the teacher's DiT params under "dit" and a fresh lambda embedding whose
    last layer is zero, so the student equals the teacher for every lambda. lambda_init_scale
    > 0: that layer's kernel ~ N(0, scale^2) instead (the components differ from the start, as
    sony/di4c's randomly initialised lambda token; the exact-teacher start is a saddle of the
    correlation terms, whose gradient vanishes while all components agree)."""
    x = jnp.zeros((1, dit.length), jnp.int32)
    k_init, k_kernel = jax.random.split(key)
    fresh = MixtureDiT(dit).init(k_init, x, jnp.ones((1,), jnp.float32), jnp.zeros((1,), jnp.float32))["params"]
    if jax.tree_util.tree_structure(fresh["dit"]) != jax.tree_util.tree_structure(teacher_params):
        raise ValueError("the teacher's params do not match its DiT config (tree structures differ)")
    lam = fresh["lambda_embed"]
    if lambda_init_scale > 0:
        kernel = lam["mlp_2"]["kernel"]
        lam = {**lam, "mlp_2": {**lam["mlp_2"],
                                "kernel": lambda_init_scale * jax.random.normal(k_kernel, kernel.shape, kernel.dtype)}}
    copy = lambda a: jnp.array(a, copy=True)  # noqa: E731 (a donated training state never aliases the teacher)
    return {"dit": jax.tree_util.tree_map(copy, teacher_params), "lambda_embed": lam}


# ---------------------------------------------------------------------- denoisers
def log_p0(graph: Graph, x: Array, log_score: Array) -> Array:
    """log p_{0|t}(x0^d = j | x_t) [B, L, V] over the V data tokens from a log score [B, L, V + 1]
    (absorbing graph): the softmax of the score at masked positions; at unmasked positions a
    point mass on x_t^d (NEG elsewhere)."""
    v = graph.num_tokens
    lp = jax.nn.log_softmax(log_score[..., :v].astype(jnp.float32), axis=-1)
    point = jnp.where(jnp.arange(v).reshape((1,) * x.ndim + (v,)) == x[..., None], 0.0, NEG)
    return jnp.where((x == graph.mask_id)[..., None], lp, point)


def student_log_p0(model: MixtureDiT, params: Any, graph: Graph, x: Array, sigmabar: Array, lam: Array) -> Array:
    """The student's log p_{0|t}(. | x_t, lambda) [B, L, V]; x [B, L], sigmabar, lam [B]."""
    return log_p0(graph, x, model.apply({"params": params}, x, sigmabar, lam))


def teacher_jump(score_fn, graph: Graph, noise: Noise, sampler: str, key: Array, x: Array, t: Array, u: Array,
                 steps: int) -> Array:
    """x_u: `steps` equal teacher steps from t [B] to u [B] (a one-call kernel solver, `solvers.draw`)."""
    solver = solvers.get_solver(sampler, allowed=solvers.KERNEL_SOLVERS)

    def body(j, x):
        a = t + (u - t) * (j / steps)
        b = t + (u - t) * ((j + 1) / steps)
        kern = solver.kernel(graph, noise, x, score_fn(x, noise.total(a)), a, b)
        return solvers.draw(jax.random.fold_in(key, j), kern)

    return jax.lax.fori_loop(0, steps, body, x)


# -------------------------------------------------------------------------- losses
def mixture_log_marginal(lp: Array) -> Array:
    """log m_d [B, L, V]: the mixture's marginals from n components lp [B, n, L, V]."""
    return jax.nn.logsumexp(lp, axis=1) - math.log(lp.shape[1])


def mixture_log_pdf(lp: Array, x: Array) -> Array:
    """log mix(x) = log mean_i prod_d p_i(x^d) [B] for x [B, L] int; lp [B, n, L, V]."""
    per = jnp.take_along_axis(lp, x[:, None, :, None], axis=-1)[..., 0]  # [B, n, L]
    return jax.nn.logsumexp(per.sum(-1), axis=1) - math.log(lp.shape[1])


def marginal_log_pdf(lm: Array, x: Array) -> Array:
    """sum_d log m_d(x^d) [B]; lm [B, L, V], x [B, L]."""
    return jnp.take_along_axis(lm, x[..., None], axis=-1)[..., 0].sum(-1)


def kl(la: Array, lb: Array) -> Array:
    """KL(a || b) over the last axis of log-probabilities [..., V] -> [...]."""
    return jnp.sum(jnp.exp(la) * (la - lb), axis=-1)


def correlation_term(lp: Array, x: Array) -> Array:
    """-log mix(x) + sum_d log m_d(x^d) [B]: 0 when the components agree (a factorised mixture)."""
    return -mixture_log_pdf(lp, x) + marginal_log_pdf(mixture_log_marginal(lp), x)


def losses(lp: Array, lt: Array, lq: Array, x0: Array, xhat: Array, distil: Array, w: Array,
           marg_weight: float = 1.0, consistency_weight: float = 1.0, estimator: str = "cv") -> dict:
    """Di4C's loss terms per sequence [B].

    lp [B, n, L, V]: the student's log p_{0|t}(. | x_t, lambda_i) (the only input with a
    gradient); lt [B, L, V]: the teacher's log p_{0|t}(. | x_t); lq [B, n, L, V]: the target's
    components, the student at (x_u, lambda'_i); x0 [B, L]: clean data; xhat [B, k, L]: draws
    of the target; distil [B] bool: t < delta (distillation, else consistency); w [B]: the
    weight of the data correlation term; marg_weight: the weight of consistency_marg in the total
    (its one-x_u estimate is noisy; data_marg anchors the marginals exactly); consistency_weight:
    that of the whole consistency term (0: the data terms alone); estimator: "cv" (sony/di4c's
    control variate: correlation part + marginal KLs in closed form) or "plain" (the paper's
    Monte Carlo KL: -log mix(x) on the draws x of the target and on the data, no marginal terms;
    proper for any n, while the cv form's two parts are estimated from n components each and
    can drift apart). Returns the terms and "total".
    """
    lm = mixture_log_marginal(lp)
    out = {
        "distil": kl(lt[:, None], lp).sum(-1).mean(1),
        "consistency_cor": jax.vmap(lambda xk: correlation_term(lp, xk), in_axes=1, out_axes=1)(xhat).mean(1),
        "consistency_marg": kl(mixture_log_marginal(lq), lm).sum(-1),
        "data_cor": correlation_term(lp, x0),
        "data_marg": kl(lt, lm).sum(-1),
    }
    if estimator == "plain":
        out["consistency_nll"] = jax.vmap(lambda xk: -mixture_log_pdf(lp, xk), in_axes=1, out_axes=1)(xhat).mean(1)
        out["data_nll"] = -mixture_log_pdf(lp, x0)
        consistency, data = consistency_weight * out["consistency_nll"], w * out["data_nll"]
    else:
        consistency = consistency_weight * (out["consistency_cor"] + marg_weight * out["consistency_marg"])
        data = w * out["data_cor"] + out["data_marg"]
    out["total"] = jnp.where(distil, out["distil"], consistency) + data
    return out


# ------------------------------------------------------------------ score function
def lambdas_for(key: Array, x: Array, sigmabar: Array) -> Array:
    """lambda [B] ~ U(0, 1) for one network call, from a counter-based PRNG keyed on (key,
    row b, sigmabar_b, a hash of the row's tokens): the score-function seam has no key
    argument, and every step has a new (sigmabar, state), so each call draws anew."""
    b, length = x.shape
    mult = jnp.uint32(0x9E3779B1)  # golden-ratio multiplier: a polynomial hash mod 2^32
    powers = jnp.cumprod(jnp.full((length,), mult, jnp.uint32), dtype=jnp.uint32)
    h = jnp.sum(x.astype(jnp.uint32) * powers[None, :], axis=1, dtype=jnp.uint32)
    s = jax.lax.bitcast_convert_type(jnp.asarray(sigmabar, jnp.float32), jnp.uint32)

    def one(row, hh, ss):
        k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, row), hh), ss)
        return jax.random.uniform(k, ())

    return jax.vmap(one)(jnp.arange(b, dtype=jnp.uint32), h, s)


def analytic_log_score(x: Array, log_score: Array, sigmabar: Array) -> Array:
    """The absorbing graph's exact score-denoiser relation imposed on a network's log score
    [B, L, V + 1] (mask id V): at masked positions log s(y) = log p_{0|t}(y) - log expm1(sigmabar)
    with p_{0|t} the softmax over the V data tokens (`log_p0`); elsewhere unchanged. The total
    mass, and so the reveal probability of a Tweedie / Euler step, is then the noise schedule's
    (sdtt's ancestral sampler), not whatever the network's unnormalised output says: Di4C's
    losses see only p_{0|t}, so nothing else would hold the student's mass."""
    v = log_score.shape[-1] - 1
    lp = jax.nn.log_softmax(log_score[..., :v].astype(jnp.float32), axis=-1)
    lp = (lp - jnp.log(jnp.expm1(jnp.asarray(sigmabar, jnp.float32)))[:, None, None]).astype(log_score.dtype)
    tokens = jnp.where((x == v)[..., None], lp, log_score[..., :v])
    return jnp.concatenate([tokens, log_score[..., v:]], axis=-1)


@dataclasses.dataclass(frozen=True)
class _StudentScore:
    """Hashable part of the student's score function; params and the lambda key are leaves."""

    model: MixtureDiT

    def __call__(self, params: Any, key: Array, x: Array, sigmabar: Array) -> Array:
        out = self.model.apply({"params": params}, x, sigmabar, lambdas_for(key, x, sigmabar))
        return analytic_log_score(x, out, sigmabar)


@dataclasses.dataclass(frozen=True)
class _MarginalScore:
    """Hashable part of the marginal (factorised) score of a mixture student; params a leaf."""

    model: MixtureDiT
    lambdas: int

    def __call__(self, params: Any, x: Array, sigmabar: Array) -> Array:
        n, b = self.lambdas, x.shape[0]
        lam = jnp.repeat((jnp.arange(n, dtype=jnp.float32) + 0.5) / n, b)  # [n B]: fixed quantiles
        out = self.model.apply({"params": params}, jnp.tile(x, (n, 1)), jnp.tile(sigmabar, n), lam)
        v = out.shape[-1] - 1
        lp = jax.nn.log_softmax(out[..., :v].astype(jnp.float32), axis=-1).reshape((n, b) + out.shape[1:-1] + (v,))
        lm = jax.nn.logsumexp(lp, axis=0) - math.log(n)  # [B, L, V]: log of the mixture's marginals
        return analytic_log_score(x, jnp.concatenate([lm, out[:b, :, v:]], axis=-1), sigmabar)


def marginal_score_fn(dit: DiTConfig, params: Any, lambdas: int = 16) -> jax.tree_util.Partial:
    """A diagnostic: the factorised model of the mixture's marginals m_d (mean of p_{0|t} over
    `lambdas` fixed lambdas, each network call is `lambdas` forward passes). Sampled like the
    student, it differs from it only in drawing the positions of one step independently, so
    student minus this is what the mixture's correlations buy."""
    return jax.tree_util.Partial(_MarginalScore(MixtureDiT(dit), lambdas), params)


def student_score_fn(dit: DiTConfig, params: Any, key: Array) -> jax.tree_util.Partial:
    """The mixture student as a score function (x [B, L], sigmabar [B]) -> log score [B, L, V + 1]:
    usable by `samplers.sample`, `distill.fit`, `tune.search` like any teacher's."""
    return jax.tree_util.Partial(_StudentScore(MixtureDiT(dit)), params, key)


# ------------------------------------------------------------------- save / load
def save_student(out_dir: str, params: Any, teacher_config: dict, meta: dict) -> None:
    """out_dir/student (orbax), teacher_config.json (graph, noise, DiT), di4c.json (meta)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(os.path.abspath(out_dir), PARAMS_DIR)
    if os.path.exists(path):
        shutil.rmtree(path)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, jax.device_get(params))
    ckptr.wait_until_finished()
    ckptr.close()
    with open(os.path.join(out_dir, TEACHER_CONFIG), "w") as f:
        json.dump(teacher_config, f, indent=1)
    with open(os.path.join(out_dir, STUDENT_FILE), "w") as f:
        json.dump(meta, f, indent=1)


def load_student(path: str, lambda_seed: Optional[int] = None, marginals: int = 0):
    """A saved student as a `lsd_jax.teachers.Teacher` (score function with lambda drawn
    per call; exact metrics when the teacher had chain.json or hmm.json). marginals > 0:
    the factorised model of its marginals over that many lambdas instead (`marginal_score_fn`)."""
    with open(os.path.join(path, TEACHER_CONFIG)) as f:
        tcfg = sedd.CheckpointConfig.from_dict(json.load(f))
    with open(os.path.join(path, STUDENT_FILE)) as f:
        meta = json.load(f)
    graph, noise = sedd.build_core(tcfg)
    x = jnp.zeros((1, tcfg.dit.length), jnp.int32)
    abstract = jax.eval_shape(lambda k: MixtureDiT(tcfg.dit).init(k, x, jnp.ones((1,)), jnp.zeros((1,))),
                              jax.random.PRNGKey(0))["params"]
    ckptr = ocp.StandardCheckpointer()
    try:
        params = ckptr.restore(os.path.join(os.path.abspath(path), PARAMS_DIR), abstract)
    finally:
        ckptr.close()
    seed = meta.get("lambda_seed", 0) if lambda_seed is None else lambda_seed
    exact = exact_oracles(path, graph.num_tokens, tcfg.length)  # copied from the teacher by fit
    decode = letter_decoder(graph.num_tokens) if exact else None
    name = f"di4c-{tcfg.graph}:{os.path.basename(os.path.normpath(path))}"
    if marginals > 0:
        fn, name = marginal_score_fn(tcfg.dit, params, marginals), f"{name}:marginals-{marginals}"
    else:
        fn = student_score_fn(tcfg.dit, params, jax.random.PRNGKey(seed))
    return Teacher(fn, graph, noise, tcfg.length, name, decode=decode, **exact)
