"""The training loop: optimiser, EMA, jitted step, evaluation, orbax resume, export.

Optimisation: optax AdamW (gradient clipping, linear warm-up, then cosine decay to
`min_lr_ratio` lr or constant), an EMA of the parameters (decay warmed up as
min(ema, (1 + step) / (10 + step))) that is used for validation and exported. Every
random number of step s comes from fold_in(key(seed), s), so a run resumed from an orbax
checkpoint (`resume=True`) reproduces the uninterrupted run exactly. The output files are
listed in `lsd_jax.train`'s docstring.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from lsd_jax import graphs as graphs_lib
from lsd_jax import noise as noise_lib
from lsd_jax import runs, validate
from lsd_jax._compat import optax_update
from lsd_jax.models.dit import DiT, DiTConfig, init_params, score_fn_from
from lsd_jax.train.config import (
    CONFIG_FILE, LOG_FILE, PLOT_FILE, RESUME_MAY_CHANGE, STATE_DIR, TOKENIZER_FILE, VAL_KEY,
    TrainConfig, command_for,
)
from lsd_jax.train.data import make_data
from lsd_jax.train.objective import default_estimator, get_objective, nelbo, prior_kl
from lsd_jax.sharding import is_primary
from lsd_jax.train.plots import plot_curve
from ports import sedd

Array = Any  # a jax array


# ------------------------------------------------------------------------------- parts
def build_graph_noise(cfg: TrainConfig, num_tokens: int):
    """(graph, noise) objects of the config for `num_tokens` data tokens."""
    return graphs_lib.get_graph(cfg.graph, num_tokens), noise_lib.get_noise(cfg.noise_name)


def dit_config(cfg: TrainConfig, num_tokens: int) -> DiTConfig:
    return DiTConfig(
        vocab_size=num_tokens + (cfg.graph == "absorb"), hidden_size=cfg.hidden_size, cond_dim=cfg.cond_dim,
        n_blocks=cfg.n_blocks, n_heads=cfg.n_heads, length=cfg.length, scale_by_sigma=cfg.use_scale_by_sigma,
        family=cfg.family, graph=cfg.graph,
    )


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0 to lr over `warmup` steps, then cosine to min_lr_ratio lr, or constant."""
    warm = optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup, 1))
    if cfg.schedule == "constant":
        rest = optax.constant_schedule(cfg.lr)
    else:
        rest = optax.cosine_decay_schedule(cfg.lr, max(cfg.steps - cfg.warmup, 1), alpha=cfg.min_lr_ratio)
    if cfg.warmup == 0:
        return rest
    return optax.join_schedules([warm, rest], [cfg.warmup])


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW (weight decay on matrices only: kernels, embedding)."""
    decay_mask = lambda params: jax.tree_util.tree_map(lambda a: a.ndim >= 2, params)  # noqa: E731
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(lr_schedule(cfg), b1=0.9, b2=0.999, eps=1e-8,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def ema_decay(cfg: TrainConfig, step: Array) -> Array:
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(cfg.ema, (1.0 + step) / (10.0 + step))


class _Run:
    """The jitted pieces of one config (cached: tests and resumes reuse the compilation)."""

    def __init__(self, cfg: TrainConfig, data):
        self.cfg = cfg
        self.data = data
        self.graph, self.noise = build_graph_noise(cfg, data.num_tokens)
        self.dit = dit_config(cfg, data.num_tokens)
        self.model = DiT(self.dit)
        self.tx = make_optimizer(cfg)
        self.loss = get_objective(cfg.objective)
        self.step = jax.jit(self._step, donate_argnums=(0,))
        self.init_state = jax.jit(self._init_state)
        self.exact_score = None  # the exact model's score (markov / hmm data): the estimator's floor
        if getattr(data, "oracle", None) is not None:
            self.exact_score = jax.tree_util.Partial(data.oracle.score_fn(self.graph))

    def score_fn(self, params):
        """The model's log-score function as a pytree (params are leaves: no recompilation)."""
        return score_fn_from(self.model, params, self.dit)

    def nelbo(self, score_fn, x_val, key, repeats: int = 1) -> dict:
        return nelbo(score_fn, x_val, self.graph, self.noise, key, self.cfg.eval_batch, repeats)

    def _init_state(self) -> dict:
        k_init = jax.random.fold_in(jax.random.PRNGKey(self.cfg.seed), 0)
        params = init_params(self.dit, k_init)
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "ema": jax.tree_util.tree_map(jnp.copy, params), "opt_state": self.tx.init(params)}

    def log_score_fn(self, params):
        """The log concrete score of `params` (the seam every objective sees; mdlm: from the
        posterior, as `score_fn_from`)."""
        return score_fn_from(self.model, params, self.dit)

    def _step(self, state: dict, source) -> tuple[dict, dict]:
        cfg = self.cfg
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 1), state["step"])
        k_data, k_loss = jax.random.split(key)
        x0 = self.data.batch(source, k_data, cfg.batch_size)

        def loss_fn(params):
            per_seq = self.loss(self.log_score_fn(params), self.graph, self.noise, k_loss, x0,
                                sampling_eps=cfg.sampling_eps)
            return per_seq.mean()

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = optax_update(self.tx, grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        d = ema_decay(cfg, state["step"])
        ema = jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, state["ema"], params)
        new = {"step": state["step"] + 1, "params": params, "ema": ema, "opt_state": opt_state}
        metrics = {"loss": loss / x0.shape[1], "grad_norm": optax.tree.norm(grads)}
        return new, metrics


@functools.lru_cache(maxsize=4)
def _run_for(cfg: TrainConfig) -> _Run:
    return _Run(cfg, make_data(cfg))


# ------------------------------------------------------------------------- checkpoints
def _manager(out_dir: str) -> runs.Checkpoints:
    """out_dir/state/step_NNNN (orbax) + step_NNNN.history.json: the two newest complete steps
    (`lsd_jax.runs.Checkpoints`, shared with distill: an interrupted save is skipped)."""
    return runs.Checkpoints(os.path.join(os.path.abspath(out_dir), STATE_DIR), prefix="step_", keep=2)


def _save_state(mngr: runs.Checkpoints, state: dict, history: list) -> None:
    step = int(state["step"])
    if mngr.latest() == step:
        return
    mngr.save(step, state, {"history": history}, primary=is_primary())


def _restore_state(mngr: runs.Checkpoints, like: dict) -> tuple[dict, list]:
    state, side = mngr.restore(mngr.latest(), like)
    return state, list(side["history"])


def export(out_dir: str, run: _Run, params: Any) -> None:
    """Writes the model (EMA params) as a converted directory (+ chain.json / hmm.json)."""
    cfg = sedd.CheckpointConfig(run.dit.family, run.dit.graph, run.dit.num_tokens, run.dit.length,
                                run.noise.to_dict(), run.dit, source="lsd-jax train-teacher")
    params_dir = os.path.join(out_dir, sedd.PARAMS_DIR)
    if os.path.exists(params_dir):
        shutil.rmtree(params_dir)
    sedd.save_converted(out_dir, jax.device_get(params), cfg)
    if run.data.oracle is not None:
        runs.write_json(os.path.join(out_dir, run.data.file), run.data.oracle.to_dict(), indent=None)
    else:
        runs.write_json(os.path.join(out_dir, TOKENIZER_FILE), {"tokenizer": run.cfg.tokenizer,
                                                                "seq_len": run.cfg.length}, indent=None)


def _prepare_out(cfg: TrainConfig, out_dir: str, resume: bool) -> None:
    cfg_path = os.path.join(out_dir, CONFIG_FILE)
    validate.output_dir(out_dir, "--out", resume=resume)
    if resume and os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            saved = TrainConfig.from_dict(json.load(f))
        diff = runs.config_diff(saved.to_dict(), cfg.to_dict(), RESUME_MAY_CHANGE)
        if diff:
            raise ValueError(f"--resume: the config differs from the one saved in {cfg_path}: " + ", ".join(diff))
    runs.write_json(cfg_path, cfg.to_dict(), indent=1)
    runs.write_text(os.path.join(out_dir, ".gitignore"),
                    f"# orbax training state (optimizer moments: 4x the model); regenerate with --resume\n{STATE_DIR}/\n")


# ------------------------------------------------------------------------------- train
def _device() -> dict:
    d = jax.devices()[0]
    return {"platform": d.platform, "device": str(d.device_kind), "count": jax.device_count()}


def train(cfg: TrainConfig, out_dir: Optional[str] = None, *, resume: bool = False, **kwargs) -> dict:
    """`_train` (below: what it does) with out_dir locked for this run (`lsd_jax.runs.RunLock`:
    a second live run on it is refused, a dead run's lock is taken over)."""
    if out_dir is None:
        return _train(cfg, out_dir, resume=resume, **kwargs)
    cfg.validate()
    validate.output_dir(out_dir, "--out", resume=resume)
    with runs.RunLock(out_dir, enabled=is_primary()):
        return _train(cfg, out_dir, resume=resume, **kwargs)


def _train(
    cfg: TrainConfig,
    out_dir: Optional[str] = None,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_at: Optional[int] = None,
    command: Optional[str] = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Trains a SEDD DiT teacher; returns the summary (also written to out_dir/train_log.json).

    out_dir None: nothing is written (no checkpoints). resume: continue from the newest
    checkpoint in out_dir/state (config must match but for RESUME_MAY_CHANGE fields).
    stop_at: stop (checkpointed) after this many total steps, as if interrupted.
    The returned summary also holds the EMA params under "params_tree" (not in the JSON).
    The "train_loss" of the first evaluation after a resume averages only the steps run
    since the resume (the running mean is not checkpointed); everything else matches.
    """
    cfg.validate()
    t_start = time.perf_counter()
    prev_wall = 0.0
    if out_dir is not None:
        _prepare_out(cfg, out_dir, resume)
    run = _run_for(cfg)
    x_val = run.data.validation(cfg)
    val_key = jax.random.PRNGKey(VAL_KEY + 1)
    state = run.init_state()
    history: list = []
    mngr = _manager(out_dir) if out_dir is not None else None
    if resume and mngr is not None and is_primary():
        mngr.clean()  # an interrupted save's leftovers: resume from the last complete step
    if resume and mngr is not None and mngr.latest() is not None:
        state, history = _restore_state(mngr, state)
        prev_wall = next((h["wall_s"] for h in reversed(history) if "wall_s" in h), 0.0)
        log(f"resumed from step {int(state['step'])} ({os.path.join(out_dir, STATE_DIR)})")
    n_params = int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(state["params"])))
    exact_ref = None
    if run.exact_score is not None:
        exact_ref = run.nelbo(run.exact_score, x_val, val_key)["nelbo"]
    log(f"train-teacher: data {cfg.data} ({json.dumps(run.data.describe())}), graph {cfg.graph}, noise "
        f"{cfg.noise_name}; DiT D={cfg.hidden_size} blocks={cfg.n_blocks} heads={cfg.n_heads} "
        f"cond={cfg.cond_dim} ({n_params:,} params); batch {cfg.batch_size} x L {cfg.length}, "
        f"{cfg.steps} steps; {_device()['platform']}")
    if exact_ref is not None:
        log(f"data entropy rate {run.data.oracle.entropy_rate():.4f} nats/token; validation NELBO of the exact "
            f"score {exact_ref:.4f} (the estimator's floor)")

    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    bar = None
    if progress:
        bar = tqdm(total=cfg.steps, initial=int(state["step"]), desc="train-teacher", unit="step",
                   dynamic_ncols=True, file=sys.stderr)
    losses: list = []
    step = int(state["step"])
    t_run = time.perf_counter()

    restore_signals = _interrupt_on_signals()
    try:
        while step < end:
            state, metrics = run.step(state, run.data.source)
            step += 1
            losses.append(metrics["loss"])  # a device scalar: no host sync every step (GPU)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{float(losses[-1]):.4f}", refresh=False)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                ent = _evaluate(run, cfg, state, losses, x_val, val_key, prev_wall + time.perf_counter() - t_run, step)
                losses = []
                history.append(ent)
                msg = (f"step {step}: train {ent.get('train_loss', float('nan')):.4f}, val NELBO {ent['val_nelbo']:.4f} "
                       f"nats/token ({ent['val_nelbo_bits']:.4f} bits), raw params {ent['val_nelbo_raw']:.4f}"
                       + (f" (exact score {exact_ref:.4f})" if exact_ref is not None else ""))
                if bar is not None:
                    bar.write(msg)
                else:
                    log(msg)
            if mngr is not None and (step % cfg.checkpoint_every == 0 or step == end):
                _save_state(mngr, state, history)
    except KeyboardInterrupt:
        if mngr is not None:
            _save_state(mngr, state, history)
            log(f"interrupted at step {step}: checkpoint saved; continue with --resume")
        raise
    finally:
        restore_signals()
        if bar is not None:
            bar.close()
    wall = prev_wall + time.perf_counter() - t_run

    finished = step >= cfg.steps
    last = next((h for h in reversed(history) if "val_nelbo" in h), None)
    summary = {
        "config": cfg.to_dict(),
        "data": run.data.describe(),
        "model": run.dit.to_dict(),
        "params": n_params,
        "noise": run.noise.to_dict(),
        "step": step,
        "finished": finished,
        "train_wall_s": wall,
        "device": _device(),
        "prior_kl_per_token": prior_kl(run.graph, run.noise),
        "val_size": int(x_val.shape[0]),
        "estimator": default_estimator(run.graph),
        # headline numbers: the final evaluation (EMA params, cfg.final_repeats draws) of a
        # finished run, else the last evaluation during training (one draw)
        "val_nelbo": last["val_nelbo"] if last else None,
        "val_nelbo_bits": last["val_nelbo_bits"] if last else None,
        "val_nelbo_se": None,
        "val_repeats": 1,
        "last_eval": dict(last, exact_score_nelbo=exact_ref) if last else None,
        "history": history,
    }
    if finished and history:
        summary.update(_final_eval(run, cfg, state, x_val, val_key, log))
    if run.data.oracle is not None:
        h = run.data.oracle.entropy_rate()
        summary.update(entropy_rate=h, entropy_rate_bits=h / math.log(2.0),
                       val_data_nll=float(-run.data.oracle.log_prob(x_val).mean() / cfg.length))
        if summary["val_nelbo"] is not None:
            summary["val_nelbo_over_entropy_rate"] = summary["val_nelbo"] / h
    else:
        summary["bits_per_token_name"] = "bits per character" if cfg.tokenizer == "char" else "bits per token"
    if command is None and out_dir is not None:
        command = command_for(cfg, out_dir)
    if command:
        summary["command"] = command
    if out_dir is not None:
        export(out_dir, run, state["ema"])
        runs.write_json(os.path.join(out_dir, LOG_FILE), summary, indent=1)
        if history:
            ref = summary.get("entropy_rate")
            plot_curve(os.path.join(out_dir, PLOT_FILE), history,
                       f"{cfg.data} {cfg.graph}/{cfg.noise_name}, D{cfg.hidden_size} x{cfg.n_blocks}, "
                       f"B{cfg.batch_size}, seed {cfg.seed}",
                       ref, "data entropy rate" if ref is not None else "", exact_ref)
    total = time.perf_counter() - t_start
    log(f"{'done' if finished else 'stopped'} at step {step}: val NELBO "
        f"{summary['val_nelbo'] if summary['val_nelbo'] is not None else float('nan'):.4f} nats/token "
        f"({summary['val_nelbo_bits'] if summary['val_nelbo_bits'] is not None else float('nan'):.4f} bits)"
        + (f", entropy rate {summary['entropy_rate']:.4f}" if "entropy_rate" in summary else "")
        + f"; {total:.0f} s" + (f"; wrote {out_dir}" if out_dir else ""))
    summary["params_tree"] = state["ema"]
    return summary


def _interrupt_on_signals() -> Callable[[], None]:
    """SIGTERM (and SIGINT, which a background `nohup ... &` job starts with ignored) raise
    KeyboardInterrupt during training, so the loop checkpoints before exiting. Returns the
    function that restores the previous handlers. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    return lambda: [signal.signal(sig, h) for sig, h in old.items()] and None


def _final_eval(run: _Run, cfg: TrainConfig, state: dict, x_val, val_key, log) -> dict:
    """NELBO of the EMA model (and, paired, of the exact score: markov) over cfg.final_repeats draws."""
    r = cfg.final_repeats
    m = run.nelbo(run.score_fn(state["ema"]), x_val, val_key, repeats=r)
    out = {"val_nelbo": m["nelbo"], "val_nelbo_bits": m["nelbo_bits"], "val_nelbo_se": m["se"], "val_repeats": r}
    msg = f"final validation NELBO ({r} draws): {m['nelbo']:.4f}" + (f" +- {m['se']:.4f}" if m["se"] else "")
    if run.exact_score is not None:
        e = run.nelbo(run.exact_score, x_val, val_key, repeats=r)
        diff = np.asarray(m["per_repeat"]) - np.asarray(e["per_repeat"])  # paired: same draws
        out.update(exact_score_nelbo=e["nelbo"], exact_score_nelbo_se=e["se"],
                   excess_over_exact_score=float(diff.mean()),
                   excess_over_exact_score_se=float(diff.std(ddof=1) / math.sqrt(r)) if r > 1 else None,
                   excess_over_exact_score_relative=float(diff.mean() / e["nelbo"]))
        msg += (f"; exact score {e['nelbo']:.4f}" + (f" +- {e['se']:.4f}" if e["se"] else "")
                + f"; excess {diff.mean():.4f} ({100 * diff.mean() / e['nelbo']:.2f}%)")
    log(msg + " nats/token")
    return out


def _evaluate(run: _Run, cfg: TrainConfig, state: dict, losses: list, x_val, val_key, wall: float, step: int) -> dict:
    ent: dict = {"step": step}
    if losses:
        ent["train_loss"] = float(np.mean(jax.device_get(losses)))
    v = run.nelbo(run.score_fn(state["ema"]), x_val, val_key)
    vr = run.nelbo(run.score_fn(state["params"]), x_val, val_key)
    ent.update(val_nelbo=v["nelbo"], val_nelbo_bits=v["nelbo_bits"], val_dse=v["dse"], val_nelbo_raw=vr["nelbo"],
               wall_s=wall)
    return ent
