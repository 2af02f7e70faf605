"""Training a Di4C student (`lsd-jax distill-student --method di4c`): optax, orbax resume.

One step (`Run.step`, jitted): B clean sequences x0 from the data (the exact chain or HMM
the teacher was trained on: its checkpoint's chain.json / hmm.json), per sequence a branch
(distillation with probability `distil_prob`, t ~ U(eps, delta); else consistency at a
uniformly drawn time t_k of the student's M-step grid, u = t_{k+1}), x_t ~ q(x_t | x0), the
teacher's log p_{0|t} at x_t, the teacher's J = teacher_nfe / M steps from t_k to u, n lambda
draws, `di4c.losses` (the consistency target's student at u: the live params, or an EMA of
them with `ema_target` > 0), AdamW (warm-up, then constant; gradient clipping). Every random
number of step s comes from fold_in(key(seed), s), so a resumed run reproduces the
uninterrupted one.

Output directory: di4c.json (config, teacher, summary), teacher_config.json, student/
(the params), chain.json / hmm.json (copied from the teacher), history.json, loss.png, state/
(orbax training checkpoints, in .gitignore). `lsd-jax sample --checkpoint DIR` samples it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from lsd_jax import grids, samplers, solvers
from lsd_jax._compat import optax_update
from lsd_jax.models.dit import score_fn_from
from lsd_jax.names import CHAIN_FILE, HMM_FILE
from lsd_jax.students import DATA_SCHEDULES, ESTIMATORS, STUDENT_GRIDS, di4c
from lsd_jax.teachers.checkpoint import load_teacher
from lsd_jax.tune import entropy_window
from ports import sedd

Array = Any
STATE_DIR = "state"
HISTORY_FILE = "history.json"
PLOT_FILE = "loss.png"
EVAL_KEY = 7_000_001  # the progress evaluation's samples: independent of the training seed
ENTROPY_BAND = 0.01  # keep_best: only evaluations whose unigram entropy is within 1% of the data's
RESUME_MAY_CHANGE = ("steps", "eval_every", "checkpoint_every", "eval_samples")


@dataclasses.dataclass(frozen=True)
class Di4CConfig:
    """A Di4C training run (defaults: sony/di4c sdtt where it applies, see notes/splits.md)."""

    nfe: int = 8  # M: student steps (its grid: grids.uniform(M, eps))
    teacher_nfe: int = 256  # N: the teacher's step is 1/N; J = N / M steps per student interval
    lambdas: int = 8  # n: lambda draws per sequence (sdtt latent_bsize 16)
    batch_size: int = 16  # B
    steps: int = 1000
    lr: float = 1e-4
    warmup: int = 50
    grad_clip: float = 1.0
    dit_lr_scale: float = 1.0  # the teacher's DiT weights learn at lr x this (1: full fine-tuning, as sony/di4c)
    delta: float = 0.02  # distillation below delta (sdtt distil_delta)
    distil_prob: float = 0.3  # P(distillation branch) (sdtt _sample_t_like)
    data_weight: float = 0.1  # sdtt alpha_const; x sigmoid(20 (t - 1/2)) (alpha_t "sigmoid") or x 1
    data_schedule: str = "sigmoid"  # the data correlation term's weight over t: sigmoid (sdtt) or constant
    estimator: str = "cv"  # the KL estimator: cv (sony/di4c's control variate) or plain (-log mix, the paper's)
    consistency_weight: float = 1.0  # the whole consistency term (0: the data terms alone)
    consistency_marg_weight: float = 1.0  # the consistency term's marginal KL (1: sony/di4c; 0: data_marg anchors them)
    lambda_init_scale: float = 0.0  # std of the lambda path's last kernel at init (0: the student is the teacher)
    ema_target: float = 0.0  # the consistency target's student at u: 0 = the live params (sony/di4c), else EMA
    keep_best: bool = False  # save the params of the best progress evaluation (fixed key; entropy band)
    grid: str = "uniform"  # the student's M-step grid (grids.get_grid family; power: p = 2)
    sampler: str = "tweedie"  # the teacher's small steps and the student's sampling (sdtt: ancestral)
    eps: float = 1e-4  # t_M
    eval_every: int = 100
    eval_samples: int = 256
    checkpoint_every: int = 100
    seed: int = 0

    def problems(self) -> list[str]:
        p = []
        for name, lo in (("nfe", 1), ("teacher_nfe", 1), ("lambdas", 1), ("batch_size", 1), ("steps", 1),
                         ("warmup", 0), ("eval_every", 1), ("eval_samples", 1), ("checkpoint_every", 1),
                         ("seed", 0)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                p.append(f"{name} = {v!r} must be an integer >= {lo}")
        for name, lo, hi in (("lr", 0.0, math.inf), ("grad_clip", 0.0, math.inf), ("dit_lr_scale", 0.0, 1.0),
                             ("consistency_marg_weight", 0.0, math.inf), ("lambda_init_scale", 0.0, math.inf),
                             ("consistency_weight", 0.0, math.inf),
                             ("delta", 0.0, 1.0),
                             ("distil_prob", 0.0, 1.0), ("data_weight", 0.0, math.inf), ("eps", 0.0, 1.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (lo <= v <= hi) or math.isnan(v):
                p.append(f"{name} = {v!r} must be a number in [{lo}, {hi}]")
        if not p and self.teacher_nfe % self.nfe:
            p.append(f"teacher_nfe = {self.teacher_nfe} must be a multiple of nfe = {self.nfe} "
                     "(the teacher takes teacher_nfe / nfe steps per student step)")
        if not p and not self.eps < self.delta:
            p.append(f"delta = {self.delta} must exceed eps = {self.eps}")
        if not isinstance(self.keep_best, bool):
            p.append(f"keep_best = {self.keep_best!r} must be True or False")
        if not (isinstance(self.ema_target, (int, float)) and 0.0 <= self.ema_target < 1.0):
            p.append(f"ema_target = {self.ema_target!r} must be a number in [0, 1)")
        if self.estimator not in ESTIMATORS:
            p.append(f"estimator = {self.estimator!r} is not supported; allowed: {', '.join(ESTIMATORS)}")
        if self.data_schedule not in DATA_SCHEDULES:
            p.append(f"data_schedule = {self.data_schedule!r} is not supported; allowed: {', '.join(DATA_SCHEDULES)}")
        if self.grid not in STUDENT_GRIDS:
            p.append(f"grid = {self.grid!r} is not supported; allowed: {', '.join(STUDENT_GRIDS)}")
        if self.sampler not in solvers.KERNEL_SOLVERS:
            p.append(f"sampler = {self.sampler!r} is not supported; allowed: {', '.join(solvers.KERNEL_SOLVERS)}")
        return p

    def validate(self) -> "Di4CConfig":
        p = self.problems()
        if p:
            raise ValueError("bad Di4C config: " + "; ".join(p))
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Run:
    """The teacher, the student model, the optimiser and the jitted step of one config."""

    def __init__(self, teacher_dir: str, cfg: Di4CConfig):
        self.cfg = cfg.validate()
        self.teacher = load_teacher(teacher_dir)
        model, tparams, self.ckpt_cfg = sedd.load(teacher_dir)
        self.dit = self.ckpt_cfg.dit
        self.graph, self.noise = self.teacher.graph, self.teacher.noise
        di4c.check_teacher(self.dit, self.graph)
        if self.teacher.oracle is None:
            raise ValueError(f"--checkpoint {teacher_dir} has no {CHAIN_FILE} or {HMM_FILE}: Di4C's data terms need "
                             "the data the teacher was trained on (here: its Markov chain or HMM)")
        self.teacher_dir = teacher_dir
        self.teacher_params = tparams
        self.teacher_score = score_fn_from(model, tparams, self.ckpt_cfg)
        self.model = di4c.MixtureDiT(self.dit)
        self.grid = jnp.asarray(grids.get_grid(cfg.grid, cfg.nfe, cfg.eps), jnp.float32)
        def adam(lr):
            warm = optax.linear_schedule(0.0, lr, max(cfg.warmup, 1))
            sched = optax.join_schedules([warm, optax.constant_schedule(lr)], [cfg.warmup]) if cfg.warmup else lr
            return optax.adamw(sched, weight_decay=0.0)

        parts = {"lambda_embed": adam(cfg.lr), "dit": adam(cfg.lr * cfg.dit_lr_scale) if cfg.dit_lr_scale > 0
                 else optax.set_to_zero()}
        self.tx = optax.chain(*([optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []),
                              optax.multi_transform(parts, _labels))
        self.step = jax.jit(self._step, donate_argnums=(0,))

    def init_state(self) -> dict:
        params = di4c.init_student(self.dit, self.teacher_params, jax.random.PRNGKey(self.cfg.seed),
                                   self.cfg.lambda_init_scale)
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params)}
        copy = lambda a: jnp.array(a, copy=True)  # noqa: E731
        if self.cfg.ema_target > 0:
            state["target"] = jax.tree_util.tree_map(copy, params)
        if self.cfg.keep_best:  # the params of the best progress evaluation so far, and its score and step
            state["best"] = {"params": jax.tree_util.tree_map(copy, params),
                             "score": jnp.full((), jnp.inf, jnp.float32), "step": jnp.zeros((), jnp.int32)}
        return state

    def terms(self, params: Any, key: Array, target: Any = None) -> dict:
        """The loss terms [B] of one batch (see the module docstring); target: the params of the
        consistency target's student at u (default: params)."""
        cfg, graph, noise, m = self.cfg, self.graph, self.noise, self.cfg.nfe
        b, n, v = cfg.batch_size, cfg.lambdas, graph.num_tokens
        ks = jax.random.split(key, 9)
        x0 = self.teacher.oracle.sample(ks[0], b)  # [B, L]
        length = x0.shape[1]
        distil = jax.random.uniform(ks[1], (b,)) < cfg.distil_prob
        k = jax.random.randint(ks[2], (b,), 0, m)
        t_d = jax.random.uniform(ks[3], (b,), minval=cfg.eps, maxval=cfg.delta)
        t = jnp.where(distil, t_d, self.grid[k])
        u = jnp.where(distil, 0.5 * t_d, self.grid[k + 1])  # (distillation rows: x_u is not used)
        sb_t = noise.total(t)
        x_t = graph.sample_transition(ks[4], x0, sb_t)
        lt = di4c.log_p0(graph, x_t, self.teacher_score(x_t, sb_t))
        x_u = di4c.teacher_jump(self.teacher_score, graph, noise, cfg.sampler, ks[5], x_t, t, u,
                                cfg.teacher_nfe // m)
        rep = lambda a: jnp.repeat(a, n, axis=0)  # noqa: E731  [B, ...] -> [B n, ...]
        tgt = params if target is None else target
        lq = di4c.student_log_p0(self.model, tgt, graph, rep(x_u), rep(noise.total(u)),
                                 jax.random.uniform(ks[6], (b * n,))).reshape(b, n, length, v)
        lq = jax.lax.stop_gradient(lq)
        xhat = jax.random.categorical(ks[7], lq)  # [B, n, L]: one draw of the target per lambda'
        lp = di4c.student_log_p0(self.model, params, graph, rep(x_t), rep(sb_t),
                                 jax.random.uniform(ks[8], (b * n,))).reshape(b, n, length, v)
        w = cfg.data_weight * (jax.nn.sigmoid(20.0 * (t - 0.5)) if cfg.data_schedule == "sigmoid" else 1.0)
        out = di4c.losses(lp, jax.lax.stop_gradient(lt), lq, x0, xhat, distil, w, cfg.consistency_marg_weight,
                          cfg.consistency_weight, cfg.estimator)
        return out | {"distil_branch": distil}

    def _step(self, state: dict, key: Array) -> tuple[dict, dict]:
        def loss_fn(params):
            out = self.terms(params, jax.random.fold_in(key, state["step"]), state.get("target"))
            return out["total"].mean(), out

        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = optax_update(self.tx, grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        d = out.pop("distil_branch")
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "distil": jnp.sum(jnp.where(d, out["distil"], 0.0)) / _count(d),
                   "consistency": jnp.sum(jnp.where(d, 0.0, out["consistency_cor"] + out["consistency_marg"]))
                   / _count(~d),
                   "data_cor": out["data_cor"].mean(), "data_marg": out["data_marg"].mean()}
        new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
        if "best" in state:
            new["best"] = state["best"]
        if "target" in state:
            r = self.cfg.ema_target
            new["target"] = jax.tree_util.tree_map(lambda e, p: r * e + (1.0 - r) * p, state["target"], params)
        return new, metrics

    def evaluate(self, params: Any) -> dict:
        """Exact metrics of eval_samples student samples at M steps (fixed key: comparable over steps)."""
        student = di4c.student_score_fn(self.dit, params, jax.random.PRNGKey(0))
        out = samplers.sample(student, self.graph, self.noise, self.grid, jax.random.PRNGKey(EVAL_KEY),
                              self.cfg.eval_samples, self.dit.length, sampler=self.cfg.sampler)
        return self.teacher.metrics(np.asarray(out.tokens))


def eval_score(ent: dict) -> float:
    """The progress evaluation's headline: exact lag KL (HMM data) or bigram KL (chain)."""
    return float(ent["lag_kl"] if "lag_kl" in ent else ent["bigram_kl"])


def in_entropy_band(ent: dict) -> bool:
    """The evaluation's unigram entropy within ENTROPY_BAND of the data's (True where unknown):
    a sampler that moves the entropy can "win" a divergence it should not."""
    h = ent.get("unigram_entropy")
    lo, hi = entropy_window(ent.get("data_unigram_entropy"), ENTROPY_BAND)
    return h is None or lo <= h <= hi


def _keep_if_best(state: dict, ent: dict) -> dict:
    """state with state["best"] replaced by the current params when ent beats it inside the
    entropy band (keep_best runs)."""
    if "best" not in state or not (eval_score(ent) < float(state["best"]["score"]) and in_entropy_band(ent)):
        return state
    copy = lambda a: jnp.array(a, copy=True)  # noqa: E731 (the step donates state["params"])
    best = {"params": jax.tree_util.tree_map(copy, state["params"]),
            "score": jnp.asarray(eval_score(ent), jnp.float32), "step": jnp.asarray(ent["step"], jnp.int32)}
    return {**state, "best": best}


def _count(mask: Array) -> Array:
    """max(1, number of True entries) as float32 (a mean over a branch's sequences)."""
    return jnp.maximum(mask.sum(), 1).astype(jnp.float32)


def _labels(params: dict) -> dict:
    """Optimiser labels: each top-level part of the student ("dit", "lambda_embed") by name."""
    return {k: jax.tree_util.tree_map(lambda _: k, v) for k, v in params.items()}


@functools.lru_cache(maxsize=2)
def _run_for(teacher_dir: str, cfg: Di4CConfig) -> Run:
    """Cached: a resumed (or repeated) fit reuses the compiled step."""
    return Run(teacher_dir, cfg)


def fit(teacher_dir: str, cfg: Di4CConfig, out_dir: str, *, resume: bool = False, progress: bool = True,
        stop_at: Optional[int] = None, log: Callable[[str], None] = print) -> dict:
    """Trains a Di4C student of the teacher at teacher_dir; writes out_dir; returns the summary.
    stop_at: stop (checkpointed) after this many steps, as if interrupted (tests)."""
    cfg.validate()
    _prepare_out(out_dir, cfg, resume)
    run = _run_for(os.path.abspath(teacher_dir), cfg)
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 1)
    state, history, prev_wall = run.init_state(), [], 0.0
    mngr = ocp.CheckpointManager(os.path.join(os.path.abspath(out_dir), STATE_DIR),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    if resume and mngr.latest_step() is not None:
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
        got = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
        state, history = got["state"], list(got["history"]["history"])
        prev_wall = history[-1]["wall_s"] if history else 0.0
        log(f"resumed from step {int(state['step'])}")
    step, end = int(state["step"]), cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    if step == 0 and not history:
        history.append({"step": 0, "wall_s": 0.0, **run.evaluate(state["params"])})  # = the teacher at M steps
        state = _keep_if_best(state, history[-1])
    bar = tqdm(total=cfg.steps, initial=step, desc="di4c", unit="step", file=sys.stderr,
               dynamic_ncols=True) if progress else None
    t0, acc = time.perf_counter(), []
    while step < end:
        state, metrics = run.step(state, key)
        step += 1
        acc.append(metrics)
        if bar is not None:
            bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            mean = {k: float(np.mean([float(m[k]) for m in acc])) for k in acc[0]}
            ent = {"step": step, "wall_s": prev_wall + time.perf_counter() - t0, **mean,
                   **run.evaluate(state["params"])}
            history.append(ent)
            state = _keep_if_best(state, ent)
            acc = []
            msg = f"step {step}: loss {ent['loss']:.4f}" + "".join(
                f", {k} {ent[k]:.4f}" for k in ("lag_kl", "bigram_kl", "nll", "unigram_entropy") if k in ent)
            (bar.write if bar is not None else log)(msg)
        if step % cfg.checkpoint_every == 0 or step == end:
            if mngr.latest_step() != step:
                mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        history=ocp.args.JsonSave({"history": history})))
                mngr.wait_until_finished()
    if bar is not None:
        bar.close()
    mngr.close()
    summary = {"method": "di4c", "teacher": teacher_dir, "config": cfg.to_dict(),
               "step": step, "finished": step >= cfg.steps, "lambda_seed": 0,
               "train_wall_s": prev_wall + time.perf_counter() - t0, "device": jax.devices()[0].platform,
               "last_eval": history[-1] if history else None}
    params = state["params"]
    if "best" in state:  # keep_best: the student is the best progress evaluation's params
        params = state["best"]["params"]
        summary["best_step"] = int(state["best"]["step"])
        summary["best_eval"] = next((h for h in history if h["step"] == summary["best_step"]), None)
    di4c.save_student(out_dir, params, run.ckpt_cfg.to_dict(), summary)
    for fname in (CHAIN_FILE, HMM_FILE):
        if os.path.exists(os.path.join(teacher_dir, fname)):
            shutil.copyfile(os.path.join(teacher_dir, fname), os.path.join(out_dir, fname))
    with open(os.path.join(out_dir, HISTORY_FILE), "w") as f:
        json.dump(history, f, indent=1)
    plot_history(os.path.join(out_dir, PLOT_FILE), history, f"Di4C M={cfg.nfe} from {os.path.basename(teacher_dir)}")
    summary["params_tree"] = params
    return summary


def _prepare_out(out_dir: str, cfg: Di4CConfig, resume: bool) -> None:
    path = os.path.join(out_dir, "train_config.json")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not resume:
        raise ValueError(f"--out {out_dir} exists and is not empty: pass --resume to continue it, or choose a new --out")
    if resume and os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        diff = [k for k, v in cfg.to_dict().items() if k not in RESUME_MAY_CHANGE and saved.get(k) != v]
        if diff:
            raise ValueError(f"--resume: the config differs from the one saved in {path} in: {', '.join(diff)}")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(cfg.to_dict(), f, indent=1)
    with open(os.path.join(out_dir, ".gitignore"), "w") as f:
        f.write(f"# orbax training state; regenerate with --resume\n{STATE_DIR}/\n")


def plot_history(path: str, history: list, title: str) -> None:
    """Training loss and the student's exact bigram KL at M steps vs step."""
    fig = Figure(figsize=(8.4, 3.4))
    a, b = fig.subplots(1, 2)
    tr = [h for h in history if "loss" in h]
    a.plot([h["step"] for h in tr], [h["loss"] for h in tr], "o-", ms=3, label="total")
    for k in ("consistency", "distil", "data_marg"):
        a.plot([h["step"] for h in tr], [h[k] for h in tr], ":", label=k)
    a.set_xlabel("step")
    a.set_ylabel("loss (nats / sequence)")
    a.legend(fontsize=7)
    ev = [h for h in history if "bigram_kl" in h]
    b.plot([h["step"] for h in ev], [h["bigram_kl"] for h in ev], "o-", ms=3)
    b.set_xlabel("step")
    b.set_ylabel("exact bigram KL of M-step samples")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
