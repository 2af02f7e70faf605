"""Benchmark: sampling speed of lsd_jax against the upstream PyTorch SEDD sampler, the
machine's matmul roofline, and the wall-clock of distillation, all in one run.

    python benchmarks/speed.py --upstream /path/to/Score-Entropy-Discrete-Diffusion
    python benchmarks/speed.py --quick            # a small smoke run (tiny shapes, no file)

What it does, per shape (a "mini" SEDD that fits a CPU and SEDD-small):
1. Builds one random SEDD DiT with the tests' PyTorch reference (tests/sedd_torch_reference.py,
   upstream key names), saves it in HF layout, loads it into lsd_jax (ports.sedd.load) and,
   with --upstream, into upstream's own `model.SEDD` by state dict (strict), and checks that
   both give the same log-score.
2. Times, interleaving ours and upstream's runs (--rounds rounds; a float32 2048^2 GEMM, the
   roofline, is timed in every round too; ratios and roofline fractions are medians of the
   per-round values): the network forward, one whole Euler step (forward + sampler work) at a
   state with half the positions masked (the average over a uniform-grid trajectory), ours
   with the masked head (as checkpoint teachers run) and with the full head, and whole samples (Euler, uniform grid, eps 1e-5,
   final denoise, all-mask start) at NFE 8 and 64 with upstream's `sampling.get_pc_sampler`
   and `lsd_jax.samplers.sample`. Per-NFE time is the slope (T(64) - T(8)) / 56 where whole
   samples are measured; for SEDD-small (a forward takes seconds on 2 CPU cores) only
   forward and step are measured and whole samples are extrapolated as (NFE + 1) x step,
   which the results say.
3. Counts the model's FLOPs (dense layers, attention, output projection) and compares the
   achieved FLOP/s with a matmul roofline measured here, in this run (best of a JAX and a
   torch float32 GEMM; bfloat16 where the model runs in bfloat16).
4. Memory per step: the [B, L, V]-sized tensors upstream allocates (torch profiler on CPU,
   peak allocated on CUDA) and the temporary memory of our compiled step (XLA analysis).
5. Distillation wall-clock (`lsd-jax distill`, LSD+, paper defaults: teacher 1024 NFE,
   64 samples, 20 epochs, 8-NFE student), split into compile, teacher trajectory, student
   epochs and validation, for the default synthetic teacher (run end to end) and for the
   mini SEDD (too slow for this CPU end to end: teacher steps and one minibatch of an epoch
   are measured and the rest extrapolated), each in its own process (peak memory). The
   mini SEDD's validation is extrapolated at DistillConfig's network-teacher defaults
   (val_samples 256, a reference of val_reference_nfe 256 teacher steps, val_every 1),
   and also for val_every 5.

flash-attn is not installable without CUDA: when `import flash_attn` fails the benchmark
puts a plain-torch stand-in for its two functions into sys.modules
(`flash_attn_varlen_qkvpacked_func` -> torch scaled_dot_product_attention,
`apply_rotary_emb_qkv_` -> the rotate-half rotary in place) and records that it did.
Upstream runs as its code does on this device: float32 on CPU (its CUDA autocast is off),
bfloat16 blocks on CUDA; ours runs float32 on CPU and bfloat16 on a GPU (--dtype auto).
Writes benchmarks/results/speed-<backend>.{json,md}.

Modules: speed_upstream.py (importing upstream, the flash-attn stand-ins), speed_distill.py
(item 5; run as its own program for the mini teacher's measured pieces), speed_report.py
(the markdown).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the PyTorch reference lives with the tests
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import provenance, write_results  # noqa: E402
from speed_distill import TOKENS, distill_markov, distill_mini  # noqa: E402
from speed_report import to_markdown, work_ratio  # noqa: E402
from speed_upstream import load_upstream  # noqa: E402

EPS = 1e-5  # upstream's default terminal time
NFES = (8, 64)
SHAPES = {
    # name: hidden, blocks, heads, length, batches, whole samples measured?
    "mini": dict(hidden=256, blocks=4, heads=4, length=256, batches=(1, 8), whole=True),
    "small": dict(hidden=768, blocks=12, heads=12, length=1024, batches=(1,), whole=False),
    "tiny": dict(hidden=64, blocks=2, heads=4, length=64, batches=(2,), whole=True),  # --quick
}


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ----------------------------------------------------------------------------- helpers
def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync_torch():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


GAP_S = 0.5  # idle time before each timed run: torch's OpenMP and XLA's worker threads spin-wait
# for a while after a call and would otherwise steal the cores from the next (interleaved) run


def interleaved(fns: dict, reps: int) -> dict:
    """Runs each fn once per round, rounds in sequence (ours, theirs, ours, ...): medians."""
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            time.sleep(GAP_S)
            times[k].append(timed(fn))
    return {k: {"median_s": statistics.median(v), "runs_s": [round(x, 4) for x in v]} for k, v in times.items()}


def per_round(timings: dict, flops_full: float, flops_masked: float) -> dict:
    """Per-round ratios (runs of one round are minutes apart at most), and their medians.

    Each round: upstream / ours for forward and step, the roofline GEMM's GFLOP/s and the
    fraction of it our forward reached in the same round (full head: the model's FLOPs;
    masked head: the FLOPs it computes)."""
    runs = {k: v["runs_s"] for k, v in timings.items()}
    n = len(runs["roofline_gemm"])
    out: dict = {k: [] for k in ("ratio_forward", "ratio_step", "roofline_gflops", "forward_full_roofline_fraction",
                                 "forward_masked_roofline_fraction", "masked_step_speedup", "rows_step_speedup")}
    for i in range(n):
        roof = 2 * ROOF_N**3 / runs["roofline_gemm"][i] / 1e9
        out["roofline_gflops"].append(roof)
        out["forward_full_roofline_fraction"].append(flops_full / runs["ours_forward_full"][i] / 1e9 / roof)
        out["forward_masked_roofline_fraction"].append(flops_masked / runs["ours_forward"][i] / 1e9 / roof)
        out["masked_step_speedup"].append(runs["ours_step_full"][i] / runs["ours_step"][i])
        out["rows_step_speedup"].append(runs["ours_step_rows_off"][i] / runs["ours_step"][i])
        if "upstream_step" in runs:
            out["ratio_forward"].append(runs["upstream_forward"][i] / runs["ours_forward"][i])
            out["ratio_step"].append(runs["upstream_step"][i] / runs["ours_step"][i])
    return {**{k: [round(x, 4) for x in v] for k, v in out.items()},
            "median": {k: statistics.median(v) for k, v in out.items() if v}}


def dit_flops(hidden: int, blocks: int, length: int, vocab: int, cond: int = 128, freq: int = 256) -> dict:
    """FLOPs (2 per multiply-add) of one SEDD DiT forward on one sequence of `length` tokens."""
    d, L = hidden, length
    dense = blocks * 2 * L * 12 * d * d  # qkv 3d^2, out d^2, mlp 8d^2
    attn = blocks * 4 * L * L * d  # q k^T and att v
    head = 2 * L * d * vocab
    small = 2 * (freq * cond + cond * cond) + blocks * 2 * cond * 6 * d + 2 * cond * 2 * d
    return {"dense": dense, "attention": attn, "output_projection": head, "conditioning": small,
            "total": dense + attn + head + small}


def roofline(dtype: str, quick: bool) -> dict:
    """Best matmul FLOP/s of JAX and torch on this machine, now (square GEMMs; best of 3)."""
    import torch

    sizes = (1024,) if quick else (2048, 3072)
    out = {"sizes": list(sizes), "dtype": dtype, "jax_gflops": 0.0, "torch_gflops": 0.0,
           "time": time.strftime("%H:%M:%S")}
    jd = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    td = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    dev = torch_device()
    f = jax.jit(lambda a, b: a @ b)
    for n in sizes:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jd)
        f(a, a).block_until_ready()
        t = min(timed(lambda: f(a, a).block_until_ready()) for _ in range(3))
        out["jax_gflops"] = max(out["jax_gflops"], round(2 * n**3 / t / 1e9, 2))
        at = torch.randn(n, n, device=dev, dtype=td)
        (at @ at)
        sync_torch()
        t = min(timed(lambda: (at @ at, sync_torch())) for _ in range(3))
        out["torch_gflops"] = max(out["torch_gflops"], round(2 * n**3 / t / 1e9, 2))
    out["roofline_gflops"] = max(out["jax_gflops"], out["torch_gflops"])
    return out


def best_roofline(samples: list) -> dict:
    """The roofline of the run: the best of its measurements (taken at several points of the
    run, since other jobs share the machine)."""
    best = max(samples, key=lambda r: r["roofline_gflops"])
    return {**{k: best[k] for k in ("sizes", "dtype")}, "jax_gflops": max(r["jax_gflops"] for r in samples),
            "torch_gflops": max(r["torch_gflops"] for r in samples),
            "roofline_gflops": max(r["roofline_gflops"] for r in samples), "measurements": samples}


# --------------------------------------------------------------------------- the models
def build_models(shape: dict, up, dtype: str, tmp: str):
    """(ours, theirs or None, parity): one random SEDD, HF layout, loaded both ways."""
    import sedd_torch_reference as ref
    import torch

    from lsd_jax.models.dit import score_fn_from
    from ports import sedd

    cfg = ref.make_config("sedd", tokens=TOKENS, hidden_size=shape["hidden"], cond_dim=128, n_blocks=shape["blocks"],
                          n_heads=shape["heads"], length=shape["length"])
    tmodel = ref.randomize(ref.build("sedd", cfg), seed=0)
    hf = ref.save_hf(tmodel, cfg, os.path.join(tmp, "hf"), "safetensors")
    model, params, ccfg = sedd.load(hf, dtype=dtype)
    graph, noise = sedd.build_core(ccfg)
    # ours: as `lsd_jax.teachers.checkpoint.load_teacher` builds it (the masked head on the absorbing graph);
    # score_full: the head over every position (what every step computed before)
    ours = types.SimpleNamespace(score_fn=score_fn_from(model, params, ccfg, head="masked"), graph=graph, noise=noise,
                                 cfg=ccfg, hf=hf, score_full=score_fn_from(model, params, ccfg, head="full"))
    theirs = None
    g = np.random.default_rng(0)
    x = g.integers(0, TOKENS, (2, shape["length"]))
    x[:, g.random(shape["length"]) < 0.5] = TOKENS
    sig = np.array([0.5, 2.0], np.float32)
    want = np.asarray(jax.jit(ours.score_full)(jnp.asarray(x, jnp.int32), jnp.asarray(sig)))
    got_masked = np.asarray(jax.jit(ours.score_fn)(jnp.asarray(x, jnp.int32), jnp.asarray(sig)))
    masked = x == TOKENS
    head_parity = {"masked_head_bitwise_at_masked_positions": bool(np.array_equal(got_masked[masked], want[masked]))}
    parity = {}
    if up is not None:
        from omegaconf import OmegaConf

        dev = torch_device()
        umodel = up.SEDD(OmegaConf.create(cfg))
        missing = umodel.load_state_dict(tmodel.state_dict(), strict=True)
        umodel = umodel.to(dev).eval()
        ocfg = OmegaConf.create(cfg)
        theirs = types.SimpleNamespace(model=umodel, graph=up.graph_lib.get_graph(ocfg, dev),
                                       noise=up.noise_lib.get_noise(ocfg).to(dev), cfg=ocfg)
        with torch.no_grad():
            got = umodel(torch.as_tensor(x, device=dev), torch.as_tensor(sig, device=dev)).float().cpu().numpy()
        parity = {"max_abs_diff": float(np.abs(got - want).max()), "output_max_abs": float(np.abs(want).max()),
                  "load_state_dict": str(missing)}
    parity.update(head_parity)
    del tmodel
    return ours, theirs, parity


def our_step_fn(ours):
    """One jitted Euler step of lsd_jax as samplers._run takes it (`KernelSolver.step`): with the
    masked head's row path (head, kernel and draw at the masked positions only) when rows=True
    and the score function has one, else forward + kernel + draw over [B, L, V]."""
    from lsd_jax import samplers, solvers

    graph, noise = ours.graph, ours.noise
    euler, drawer = solvers.Euler(), solvers.GumbelDraw()

    @functools.partial(jax.jit, static_argnames=("rows",))
    def step(fn, x, key, t, t_next, rows=True):
        tb, tnb = jnp.full((x.shape[0],), t), jnp.full((x.shape[0],), t_next)
        return euler.step(samplers.step_model(fn, graph, noise, drawer, rows=rows), x, tb, tnb, key, ()).x

    fwd = jax.jit(lambda fn, x, t: fn(x, noise.total(jnp.full((x.shape[0],), t))))
    return step, fwd


ROOF_N = 2048  # the in-round roofline GEMM: float32 [n, n] x [n, n]


def roofline_gemm(dtype: str):
    """A jitted square GEMM timed in every round beside the models (the same minutes)."""
    jd = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    a = jnp.asarray(np.random.default_rng(0).standard_normal((ROOF_N, ROOF_N)), jd)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    return lambda: jax.block_until_ready(f(a))


def masked_flops(fl: dict, masked: int, length: int, tile: int) -> float:
    """FLOPs of a masked-head forward on one sequence: the trunk, and the output projection
    on the masked rows rounded up to whole tiles of the head."""
    rows = min(length, -(-masked // tile) * tile)
    return fl["total"] - fl["output_projection"] * (1 - rows / length)


def upstream_memory(theirs, x, t, dt, big: int) -> dict:
    """[B, L, V]-sized allocations of one upstream Euler step (count, bytes)."""
    import torch

    pred = theirs.up.sampling.get_predictor("euler")(theirs.graph, theirs.noise)
    score_fn = theirs.up.mutils.get_score_fn(theirs.model, train=False, sampling=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            pred.update_fn(score_fn, x, t, dt)
        torch.cuda.synchronize()
        return {"peak_step_bytes": int(torch.cuda.max_memory_allocated() - base), "method": "torch.cuda peak"}
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                 profile_memory=True) as prof:
        pred.update_fn(score_fn, x, t, dt)
    allocs = [e.cpu_memory_usage for e in prof.events()
              if e.name in ("aten::empty", "aten::empty_strided") and e.cpu_memory_usage >= big]
    return {"bvl_allocations": len(allocs), "bvl_bytes": int(sum(allocs)), "method": "torch.profiler, aten::empty*"}


def bench_shape(name: str, shape: dict, up, args, dtype: str, tmp: str) -> dict:
    import torch

    from lsd_jax import grids, samplers

    res: dict = {"shape": {k: v for k, v in shape.items() if k != "whole"}, "vocab": TOKENS + 1}
    t0 = time.perf_counter()
    ours, theirs, parity = build_models(shape, up, dtype, tmp)
    if theirs is not None:
        theirs.up = up
        from model import utils as mutils  # upstream's

        up.mutils = mutils
    res["build_s"] = round(time.perf_counter() - t0, 1)
    res["parity"] = parity
    log(f"[{name}] built and loaded ({res['build_s']} s); parity {parity}")
    L, V = shape["length"], TOKENS + 1
    fl = dit_flops(shape["hidden"], shape["blocks"], L, V)
    res["flops_per_sequence"] = fl
    from lsd_jax.models import dit

    step, fwd = our_step_fn(ours)
    fn = samplers.as_pytree_fn(ours.score_fn)
    fn_full = samplers.as_pytree_fn(ours.score_full)
    roof = roofline_gemm(dtype)
    dev = torch_device()
    res["batches"] = {}
    for bsz in shape["batches"]:
        r: dict = {}
        g = np.random.default_rng(1)
        xn = np.full((bsz, L), TOKENS, np.int64)  # half the positions masked, as mid-trajectory
        sel = g.random(L) < 0.5
        xn[:, sel] = g.integers(0, TOKENS, (bsz, int(sel.sum())))
        xj = jnp.asarray(xn, jnp.int32)
        key = jax.random.PRNGKey(0)
        t_, tn_ = 0.5, 0.5 - (1 - EPS) / 64
        # compile ours (timed), then steady state
        c0 = time.perf_counter()
        jax.block_until_ready(fwd(fn, xj, t_))
        jax.block_until_ready(step(fn, xj, key, t_, tn_))
        r["ours_compile_fwd_and_step_s"] = round(time.perf_counter() - c0, 2)
        jax.block_until_ready(fwd(fn_full, xj, t_))
        jax.block_until_ready(step(fn_full, xj, key, t_, tn_))
        jax.block_until_ready(step(fn, xj, key, t_, tn_, rows=False))
        lowered = step.lower(fn, xj, key, t_, tn_).compile()
        with contextlib.suppress(Exception):
            ma = lowered.memory_analysis()
            r["ours_step_temp_bytes"] = int(ma.temp_size_in_bytes)
        fns = {"ours_forward": lambda: jax.block_until_ready(fwd(fn, xj, t_)),
               "ours_step": lambda: jax.block_until_ready(step(fn, xj, key, t_, tn_))}
        ours_full = {"ours_forward_full": lambda: jax.block_until_ready(fwd(fn_full, xj, t_)),
                     "ours_step_full": lambda: jax.block_until_ready(step(fn_full, xj, key, t_, tn_)),
                     "ours_step_rows_off": lambda: jax.block_until_ready(step(fn, xj, key, t_, tn_, rows=False))}
        np.testing.assert_array_equal(np.asarray(step(fn, xj, key, t_, tn_)),  # the row path: the same tokens
                                      np.asarray(step(fn_full, xj, key, t_, tn_)))
        if theirs is not None:
            xt = torch.as_tensor(xn, device=dev)
            tt = torch.full((bsz, 1), t_, device=dev)
            pred = up.sampling.get_predictor("euler")(theirs.graph, theirs.noise)
            score_fn = up.mutils.get_score_fn(theirs.model, train=False, sampling=True)

            def up_fwd():
                with torch.no_grad():
                    sigma, _ = theirs.noise(tt)
                    theirs.model(xt, sigma.reshape(-1))
                sync_torch()

            def up_step():
                with torch.no_grad():
                    pred.update_fn(score_fn, xt, tt, (1 - EPS) / 64)
                sync_torch()

            up_step()  # warm
            fns = {"ours_forward": fns["ours_forward"], "upstream_forward": up_fwd,
                   "ours_step": fns["ours_step"], "upstream_step": up_step}
            r["upstream_step_memory"] = upstream_memory(theirs, xt, tt, (1 - EPS) / 64, bsz * L * V * 4)
        fns.update(ours_full)
        fns["roofline_gemm"] = roof
        reps = args.rounds
        log(f"[{name} B={bsz}] timing forward and step ({reps} interleaved rounds, roofline GEMM in each)")
        r["timings"] = interleaved(fns, reps)
        tm = {k: v["median_s"] for k, v in r["timings"].items()}
        log(f"[{name} B={bsz}] " + ", ".join(f"{k} {v:.3f} s" for k, v in tm.items()))
        n_masked = int((xn == TOKENS).sum(1).max())
        r["masked_positions"] = n_masked
        r["masked_flops_per_sequence"] = masked_flops(fl, n_masked * bsz, L * bsz, dit.HEAD_TILE)
        r["rounds"] = per_round(r["timings"], fl["total"] * bsz, r["masked_flops_per_sequence"] * bsz)
        r["masked_head_saving_step_s"] = tm["ours_step_full"] - tm["ours_step"]
        for who in ("ours", "upstream"):
            if f"{who}_step" not in tm:
                continue
            r[f"{who}_sampler_work_s"] = tm[f"{who}_step"] - tm[f"{who}_forward"]
            r[f"{who}_sampler_share"] = r[f"{who}_sampler_work_s"] / tm[f"{who}_step"]
            flops = fl["total"] * bsz
            r[f"{who}_forward_gflops"] = flops / tm[f"{who}_forward"] / 1e9
            r[f"{who}_step_gflops"] = flops / tm[f"{who}_step"] / 1e9
        r["ours_forward_full_gflops"] = fl["total"] * bsz / tm["ours_forward_full"] / 1e9
        # whole samples
        whole: dict = {}
        if shape["whole"] and (args.whole_batches is None or bsz in args.whole_batches):
            grid = {m: grids.uniform(m, EPS) for m in args.nfe}
            run_ours = lambda m, f=ours.score_fn: jax.block_until_ready(samplers.sample(  # noqa: E731
                f, ours.graph, ours.noise, grid[m], key, bsz, L, sampler="euler").tokens)
            c0 = time.perf_counter()
            run_ours(args.nfe[0])
            whole["ours_first_call_s"] = round(time.perf_counter() - c0, 2)  # compile + run
            run_ours(args.nfe[0], ours.score_full)
            for m in args.nfe:
                fns = {"ours": lambda m=m: run_ours(m), "ours_full": lambda m=m: run_ours(m, ours.score_full)}
                if theirs is not None:
                    sampler = up.sampling.get_pc_sampler(theirs.graph, theirs.noise, (bsz, L), "euler", m,
                                                         denoise=True, eps=EPS, device=dev)
                    fns["upstream"] = lambda s=sampler: (s(theirs.model), sync_torch())
                log(f"[{name} B={bsz}] whole samples at NFE {m}")
                w = interleaved(fns, args.whole_rounds if bsz == 1 else 1)
                whole[str(m)] = {k: v["median_s"] for k, v in w.items()}
                log(f"[{name} B={bsz}] NFE {m}: " + ", ".join(f"{k} {v:.2f} s" for k, v in whole[str(m)].items()))
            lo, hi = str(min(args.nfe)), str(max(args.nfe))
            span = max(args.nfe) - min(args.nfe)
            for who in whole[lo]:
                whole[f"{who}_per_nfe_s"] = (whole[hi][who] - whole[lo][who]) / span
            whole["method"] = "measured; per-NFE = slope between the two NFE values"
        else:
            steps = {"ours": tm["ours_step"], "ours_full": tm["ours_step_full"], "upstream": tm.get("upstream_step")}
            for m in args.nfe:
                whole[str(m)] = {who: (m + 1) * v for who, v in steps.items() if v is not None}
            for who in ("ours", "ours_full", "upstream"):
                key_ = "ours_step_full" if who == "ours_full" else f"{who}_step"
                if key_ in tm:
                    whole[f"{who}_per_nfe_s"] = tm[key_]
            whole["method"] = "extrapolated: (NFE + 1) x measured step (predictor steps + the final denoise)"
        r["whole"] = whole
        if theirs is not None:
            r["ratio_per_nfe"] = whole["upstream_per_nfe_s"] / whole["ours_per_nfe_s"]
            r["ratio_step"] = tm["upstream_step"] / tm["ours_step"]
            r["ratio_forward"] = tm["upstream_forward"] / tm["ours_forward"]
            r["ratio_sampler_work"] = work_ratio(r)
            for m in args.nfe:
                r[f"ratio_whole_nfe{m}"] = whole[str(m)]["upstream"] / whole[str(m)]["ours"]
        for m in args.nfe:
            r[f"ours_tokens_per_s_nfe{m}"] = bsz * L / whole[str(m)]["ours"]
            if theirs is not None:
                r[f"upstream_tokens_per_s_nfe{m}"] = bsz * L / whole[str(m)]["upstream"]
        r["ours_tokens_per_s_per_nfe"] = bsz * L / whole["ours_per_nfe_s"]
        if theirs is not None:
            r["ratio_per_nfe_rounds"] = r["rounds"]["median"]["ratio_step"]
        res["batches"][str(bsz)] = r
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", default=None, help="path of a louaaron/Score-Entropy-Discrete-Diffusion checkout")
    ap.add_argument("--upstream-commit", default=None, help="its commit, when the checkout has no .git")
    ap.add_argument("--render", default=None, metavar="JSON", help="only rewrite the markdown of a results JSON")
    ap.add_argument("--shapes", default="mini,small", help="comma list of: " + ", ".join(SHAPES))
    ap.add_argument("--nfe", default=",".join(map(str, NFES)), help="NFE values of the whole-sample runs")
    ap.add_argument("--rounds", "--reps", dest="rounds", type=int, default=5,
                    help="interleaved rounds for forward / step timings (ours, upstream, the roofline GEMM in each; "
                         "ratios are medians of the per-round ratios)")
    ap.add_argument("--whole-batches", default=None,
                    help="comma list: batch sizes whose whole samples are measured (default all of a shape that "
                         "measures them; the others are extrapolated as (NFE + 1) x step)")
    ap.add_argument("--whole-rounds", type=int, default=2,
                    help="interleaved rounds of whole samples at batch 1 (batch 8: 1; a round at NFE 64 takes minutes)")
    ap.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                    help="our model's compute dtype (auto: float32 on CPU, bfloat16 on GPU, as upstream's autocast)")
    ap.add_argument("--distill", choices=["all", "markov", "none"], default="all")
    ap.add_argument("--teacher-steps", type=int, default=2, help="mini distillation: teacher steps timed")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, no distillation, nothing written")
    ap.add_argument("--name", default=None, help="results file stem (default speed-<backend>)")
    args = ap.parse_args(argv)
    args.nfe = tuple(int(v) for v in args.nfe.split(","))
    args.whole_batches = None if args.whole_batches is None else {int(v) for v in args.whole_batches.split(",") if v}
    if args.render:
        with open(args.render) as f:
            payload = json.load(f)
        md = os.path.splitext(args.render)[0] + ".md"
        with open(md, "w") as f:
            f.write(to_markdown(payload))
        log("wrote", md)
        return payload
    shapes = ["tiny"] if args.quick else [s for s in args.shapes.split(",") if s]
    import torch

    backend = jax.default_backend()
    dtype = args.dtype if args.dtype != "auto" else ("float32" if backend == "cpu" else "bfloat16")
    up, why = load_upstream(args.upstream, args.upstream_commit)
    payload: dict = {
        "benchmark": "speed", "provenance": provenance(), "dtype": dtype, "nfe": list(args.nfe),
        "load_avg": {"start": [round(x, 2) for x in os.getloadavg()]},
        "torch": {"version": torch.__version__, "device": str(torch_device()), "threads": torch.get_num_threads()},
        "upstream": {"status": why or (f"louaaron/Score-Entropy-Discrete-Diffusion at {up.commit or '?'} ({up.path}); "
                                       + ("flash-attn NOT installed: plain-torch stand-ins for "
                                          "flash_attn_varlen_qkvpacked_func (scaled_dot_product_attention) and "
                                          "apply_rotary_emb_qkv_ (rotate-half rotary) supplied by this benchmark"
                                          if up.flash_attn_stub else "real flash-attn"))},
        "notes": [],
    }
    log("upstream:", payload["upstream"]["status"])
    rl = [roofline(dtype, args.quick)]
    log("roofline", rl[-1])
    payload["roofline"] = best_roofline(rl)
    payload["shapes"] = {}
    tmp = tempfile.mkdtemp(prefix="lsd_speed_")
    try:
        for name in shapes:
            payload["shapes"][name] = bench_shape(name, SHAPES[name], up, args, dtype, os.path.join(tmp, name))
            rl.append(roofline(dtype, args.quick))
            log("roofline", rl[-1])
            payload["roofline"] = best_roofline(rl)
        if not args.quick and args.distill != "none":
            payload["distill"] = {}
            log("distill: synthetic teacher, end to end")
            payload["distill"]["markov"] = distill_markov(tmp)
            log("distill markov", json.dumps(payload["distill"]["markov"].get("timing", payload["distill"]["markov"])))
            if args.distill == "all":
                log("distill: mini SEDD, measured pieces")
                payload["distill"]["mini"] = distill_mini(SHAPES["mini"], tmp, args.teacher_steps)
                log("distill mini", json.dumps(payload["distill"]["mini"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    payload["load_avg"]["end"] = [round(x, 2) for x in os.getloadavg()]
    payload["notes"] += [
        "Ratios are upstream time / our time from the same run (runs interleaved); absolute times are inflated "
        "by other jobs sharing the 2 cores (see load average).",
        "forward = the network alone (for upstream, model(x, sigma) as its score_fn calls it, without the .exp()); "
        "step = one whole Euler update (forward + sampler work); sampler work = step - forward. Our step "
        "(`KernelSolver.step` as the sampling loop runs it) takes the masked head's row path: the trunk, then head, "
        "kernel and draw per tile of 64 masked rows, never a [B, L, V] tensor (`lsd_jax/solvers/rows.py`; the same "
        "tokens as the full head's step, asserted in this run); our forward is the score function alone, whose "
        "[B, L, V] output the row path never builds, so our step can take less than our forward and our 'sampler "
        "work' is then below timing noise.",
        "Our step draws from the log-space kernel with a two-level Gumbel-max (~2 sqrt(V) uniforms per position); "
        "upstream's step builds one-hot, rate and uniform-noise tensors of [B, L, V] (see the memory rows).",
        "Where whole samples are not run (SEDD-small: a step takes seconds; batches left out of --whole-batches): "
        "(NFE + 1) x the measured step.",
    ]
    if not args.quick:
        stem = args.name or f"speed-{backend}"
        jp, mp = write_results(stem, payload, to_markdown(payload))
        log("wrote", jp, mp)
    else:
        print(to_markdown(payload))
    return payload


if __name__ == "__main__":
    main()
