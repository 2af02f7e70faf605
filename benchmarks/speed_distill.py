"""Distillation wall-clock for `benchmarks/speed.py`: LSD+ at the paper's defaults.

- `distill_markov`: `lsd-jax distill` end to end on the default synthetic teacher.
- `distill_mini`: the mini SEDD teacher is too slow for this CPU end to end; its pieces
  (teacher steps, one minibatch of an epoch) are measured in a fresh process (this file
  run as a program, so its peak memory is its own) and the rest extrapolated
  (`mini_extrapolation`).

    python benchmarks/speed_distill.py --checkpoint DIR [--teacher-steps 2]
prints the measured pieces of the teacher at DIR as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the PyTorch reference lives with the tests
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lsd_jax import distill, grids, profiling, samplers, solvers  # noqa: E402
from lsd_jax.teachers.checkpoint import load_teacher  # noqa: E402
from ports import sedd  # noqa: E402

TOKENS = 50257  # GPT-2; V = 50258 with the mask


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def measure_pieces(ckpt: str, k_steps: int) -> dict:
    """Measured pieces of paper-default LSD+ (M 8 from N 1024, 64 samples, batch 16) on the
    teacher at `ckpt`: teacher compile and step time, one epoch minibatch, memory."""
    out: dict = {}
    teacher = load_teacher(ckpt)
    cfg = distill.DistillConfig(method="lsd+", nfe=8, teacher_nfe=1024, samples=64, batch_size=16, epochs=20)
    length, s, n = teacher.length, cfg.samples, cfg.teacher_nfe
    # 1. teacher trajectory: the N-step teacher on S samples, compiled once for any step count
    c0, t0 = profiling.compile_clock(), time.perf_counter()
    full = np.asarray(grids.uniform(n, cfg.eps))
    o = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, full[:2], jax.random.PRNGKey(0), s, length,
                        denoise=False, return_reveal=True)
    jax.block_until_ready(o.tokens)
    out["teacher_first_call_s"] = time.perf_counter() - t0
    out["teacher_compile_s"] = profiling.compile_clock() - c0
    t0 = time.perf_counter()
    o = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, full[: k_steps + 1], jax.random.PRNGKey(0), s,
                        length, denoise=False, return_reveal=True)
    jax.block_until_ready(o.tokens)
    out["teacher_steps_measured"] = k_steps
    out["teacher_first_steps_s"] = (time.perf_counter() - t0) / k_steps  # all positions masked
    # mid-trajectory (t = 1/2: half the positions masked, the trajectory's average, where the
    # masked head and the row path compute half the rows): the step time the extrapolation uses
    rng = np.random.default_rng(0)
    half = np.where(rng.random((s, length)) < 0.5, teacher.graph.mask_id,
                    rng.integers(0, teacher.graph.num_tokens, (s, length)))
    solver, fn = solvers.get_solver(cfg.sampler), samplers.as_pytree_fn(teacher.score_fn)
    model = lambda f: samplers.step_model(f, teacher.graph, teacher.noise, solvers.GumbelDraw(), rows=True)  # noqa: E731
    step = jax.jit(lambda f, x, key, t, tn: solver.step(model(f), x, t, tn, key, ()).x)  # the loop's step
    x = jnp.asarray(half, jnp.int32)
    tt = [jnp.full((s,), full[n // 2 + j], jnp.float32) for j in range(k_steps + 1)]
    jax.block_until_ready(step(fn, x, jax.random.PRNGKey(0), tt[0], tt[1]))  # compile
    t0 = time.perf_counter()
    for j in range(k_steps):
        jax.block_until_ready(step(fn, x, jax.random.PRNGKey(j), tt[j], tt[j + 1]))
    out["teacher_step_s"] = (time.perf_counter() - t0) / k_steps
    log("teacher step: first (all masked)", out["teacher_first_steps_s"], "mid-trajectory", out["teacher_step_s"])
    # 2. one epoch minibatch (B = 16, M = 8, LSD+, value and grad through the network)
    rng = np.random.default_rng(0)
    path = distill.RevealPath(jnp.asarray(rng.integers(0, teacher.graph.num_tokens, (s, length)), jnp.int32),
                              jnp.asarray(rng.integers(1, n + 1, (s, length)), jnp.int32))
    cache = distill.TeacherCache(path, jnp.full((s, length), teacher.graph.mask_id, jnp.int32))
    one = distill.DistillConfig(**{**cfg.to_dict(), "samples": cfg.batch_size})
    rows = jnp.arange(cfg.batch_size)
    fn = distill.make_epoch_fn(teacher, one, distill.TeacherCache(distill.path_rows(cache.path, rows),
                                                                  cache.x_start[: cfg.batch_size]))
    state = distill.init_state(one, jax.random.PRNGKey(1))
    t0 = time.perf_counter()
    compiled = fn.jitted.lower(*fn.args(state)).compile()
    out["epoch_compile_s"] = time.perf_counter() - t0
    try:
        out["epoch_temp_bytes"] = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        pass
    t0 = time.perf_counter()
    _, stats = compiled(*fn.args(state))
    float(stats["loss"])
    out["minibatch_s"] = time.perf_counter() - t0
    log("minibatch", out["minibatch_s"])
    out.update(profiling.memory_report())
    out["teacher_cache_bytes_reveal"] = 2 * s * length * 4
    out["teacher_cache_bytes_dense_path"] = (n + 1) * s * length * 4
    return out


def distill_markov(tmp: str) -> dict:
    """`lsd-jax distill` end to end on the default synthetic teacher, paper defaults, LSD+."""
    out_dir = os.path.join(tmp, "distill-markov")
    cmd = [sys.executable, "-m", "lsd_jax.cli", "distill", "--teacher", "markov", "--method", "lsd+", "--out", out_dir,
           "--eval-seeds", "0", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"error": p.stderr[-2000:]}
    with open(os.path.join(out_dir, "history.json")) as f:
        hist = json.load(f)
    with open(os.path.join(out_dir, "result.json")) as f:
        result = json.load(f)
    timing = hist[0]["timing"]
    return {"command": "lsd-jax distill --teacher markov --method lsd+ --out DIR --eval-seeds 0 --no-progress",
            "process_wall_s": round(wall, 2), "fit_s": round(result["fit_seconds"], 2), "timing": timing,
            "startup_and_outputs_s": round(wall - result["fit_seconds"], 2),
            "config": {k: result["config"][k] for k in ("method", "nfe", "teacher_nfe", "samples", "batch_size",
                                                        "epochs", "select", "loss")},
            "teacher": result["teacher"]["name"]}


def distill_mini(shape: dict, tmp: str, k_steps: int) -> dict:
    """Mini SEDD teacher, paper defaults: measured pieces in a fresh process, extrapolated."""
    import sedd_torch_reference as ref  # torch: only for building the teacher

    cfg = ref.make_config("sedd", tokens=TOKENS, hidden_size=shape["hidden"], cond_dim=128, n_blocks=shape["blocks"],
                          n_heads=shape["heads"], length=shape["length"])
    hf = ref.save_hf(ref.randomize(ref.build("sedd", cfg), seed=0), cfg, os.path.join(tmp, "distill-hf"))
    ckpt = os.path.join(tmp, "distill-flax")
    sedd.convert(hf, ckpt)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--checkpoint", ckpt, "--teacher-steps",
                        str(k_steps)], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        return {"error": p.stderr[-3000:]}
    m = json.loads(p.stdout.strip().splitlines()[-1])
    m["process_wall_s"] = round(time.perf_counter() - t0, 1)
    est = mini_extrapolation(m)
    return {"measured": m, "extrapolated": est, "vocab": TOKENS + 1,
            "shape": {k: shape[k] for k in ("hidden", "blocks", "heads", "length")},
            "method": (f"teacher: {k_steps} steps of the 1024-step teacher on 64 x L {shape['length']} at t = 1/2 "
                       "(half the positions masked, the trajectory's average) timed after compile, x 1024; "
                       "epochs: one minibatch (16 trajectories, 8 student steps, value and grad) "
                       "timed after compile, x 4 minibatches x 20 epochs (synthetic teacher path of the same "
                       "shape: the cost does not depend on its content); validation from the per-sequence step "
                       "cost, linear in batch, at the network-teacher defaults of DistillConfig")}


def mini_extrapolation(m: dict) -> dict:
    """Paper-default distillation time on the mini SEDD from its measured pieces (`m`).

    Validation (select auto = n-gram on a network teacher) at DistillConfig's defaults:
    val_samples auto (256 on a network teacher), a reference of val_reference_nfe (256)
    teacher steps drawn once, val_every 1 (every epoch and epoch 0); also val_every 5 and,
    for comparison, the defaults before (1024 samples, a reference at the full 1024 steps).
    """
    d = distill.DistillConfig(method="lsd+")
    n, s, b, e, mm = d.teacher_nfe, d.samples, d.batch_size, d.epochs, d.nfe
    val_samples = d.resolved_val_samples(types.SimpleNamespace(exact=False))  # auto on a network teacher
    ref_nfe = min(d.val_reference_nfe, n)
    per_seq_step = m["teacher_step_s"] / s  # teacher-style step cost per sequence (linear in batch on a CPU)

    def validation_s(samples, reference_nfe, every):
        # the reference once + (validated epochs) students of M + 1 calls, all on `samples` sequences
        return per_seq_step * samples * (reference_nfe + len(distill.validated_epochs(e, every)) * (mm + 1))

    est = {
        "teacher_trajectory_s": n * m["teacher_step_s"],
        "student_epochs_s": e * (s // b) * m["minibatch_s"],
        "compile_s": m["teacher_compile_s"] + m["epoch_compile_s"],
        "validation_samples": val_samples,
        "validation_reference_nfe": ref_nfe,
        "validation_reference_s": per_seq_step * val_samples * ref_nfe,
        "validation_ngram_s": validation_s(val_samples, ref_nfe, d.val_every),  # val_every 1 (default)
        "validation_ngram_every5_s": validation_s(val_samples, ref_nfe, 5),
        "validation_ngram_previous_defaults_s": validation_s(1024, n, 1),
    }
    est["total_select_none_s"] = est["teacher_trajectory_s"] + est["student_epochs_s"] + est["compile_s"]
    est["total_default_s"] = est["total_select_none_s"] + est["validation_ngram_s"]
    est["total_val_every5_s"] = est["total_select_none_s"] + est["validation_ngram_every5_s"]
    return est


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="measured pieces of paper-default LSD+ on a checkpoint teacher")
    ap.add_argument("--checkpoint", required=True, help="teacher checkpoint directory")
    ap.add_argument("--teacher-steps", type=int, default=2, help="teacher steps timed")
    args = ap.parse_args(argv)
    print(json.dumps(measure_pieces(args.checkpoint, args.teacher_steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
