"""Benchmark: sampling speed of lsd_jax against the upstream PyTorch SEDD sampler, the
machine's matmul roofline, and the wall-clock of distillation, all in one run.

    python benchmarks/speed.py --upstream /path/to/Score-Entropy-Discrete-Diffusion
    python benchmarks/speed.py --quick            # a small smoke run (tiny shapes, no file)

What it does, per shape (a "mini" SEDD that fits a CPU and SEDD-small):
1. Builds one random SEDD DiT with the tests' PyTorch reference (tests/sedd_torch_reference.py,
   upstream key names), saves it in HF layout, loads it into lsd_jax (ports.sedd.load) and,
   with --upstream, into upstream's own `model.SEDD` by state dict (strict), and checks that
   both give the same log-score.
2. Times, interleaving ours and upstream's runs (median of --reps): the network forward, one
   whole Euler step (forward + sampler work), and whole samples (Euler, uniform grid, eps 1e-5,
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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the PyTorch reference lives with the tests
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import provenance, write_results  # noqa: E402

EPS = 1e-5  # upstream's default terminal time
NFES = (8, 64)
SHAPES = {
    # name: hidden, blocks, heads, length, batches, whole samples measured?
    "mini": dict(hidden=256, blocks=4, heads=4, length=256, batches=(1, 8), whole=True),
    "small": dict(hidden=768, blocks=12, heads=12, length=1024, batches=(1,), whole=False),
    "tiny": dict(hidden=64, blocks=2, heads=4, length=64, batches=(2,), whole=True),  # --quick
}
TOKENS = 50257  # GPT-2; V = 50258 with the mask


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ------------------------------------------------------------------ upstream, flash-attn
def _flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                      **_):
    """Stand-in for flash_attn's varlen packed attention: qkv [total, 3, H, Dh] -> [total, H, Dh]."""
    import torch
    import torch.nn.functional as F

    total, _, h, d = qkv.shape
    lens = cu_seqlens[1:] - cu_seqlens[:-1]
    if bool((lens == max_seqlen).all()):
        q, k, v = qkv.view(lens.numel(), max_seqlen, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=softmax_scale)
        return out.transpose(1, 2).reshape(total, h, d)
    outs = []
    for s, e in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        q, k, v = qkv[s:e].permute(1, 2, 0, 3).unbind(0)
        o = F.scaled_dot_product_attention(q[None], k[None], v[None], dropout_p=dropout_p, is_causal=causal,
                                           scale=softmax_scale)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs, 0)


def _apply_rotary_emb_qkv_(qkv, cos, sin, cos_k=None, sin_k=None, interleaved=False, **_):
    """Stand-in for flash_attn's in-place rotary on q and k: qkv [B, S, 3, H, Dh], cos/sin [S, Dh/2]."""
    assert not interleaved and cos_k is None and sin_k is None
    half = cos.shape[-1]
    c, s = cos[None, :, None, :].to(qkv.dtype), sin[None, :, None, :].to(qkv.dtype)
    for i in (0, 1):
        t = qkv[:, :, i]
        x1, x2 = t[..., :half].clone(), t[..., half:2 * half].clone()
        t[..., :half] = x1 * c - x2 * s
        t[..., half:2 * half] = x2 * c + x1 * s
    return qkv


def install_flash_attn_stub() -> None:
    fa = types.ModuleType("flash_attn")
    fa.__doc__ = "lsd-jax benchmark stand-in: plain torch, NOT flash-attn"
    iface = types.ModuleType("flash_attn.flash_attn_interface")
    iface.flash_attn_varlen_qkvpacked_func = _flash_attn_varlen_qkvpacked_func
    layers = types.ModuleType("flash_attn.layers")
    rot = types.ModuleType("flash_attn.layers.rotary")
    rot.apply_rotary_emb_qkv_ = _apply_rotary_emb_qkv_
    fa.flash_attn_interface, fa.layers, layers.rotary = iface, layers, rot
    sys.modules.update({"flash_attn": fa, "flash_attn.flash_attn_interface": iface, "flash_attn.layers": layers,
                        "flash_attn.layers.rotary": rot})


def load_upstream(path: str | None, commit: str | None = None):
    """The upstream modules, or (None, reason). commit: recorded as given (for a checkout
    extracted without .git), else read with git."""
    if not path:
        return None, "not available: no --upstream checkout given"
    if not os.path.isfile(os.path.join(path, "sampling.py")) or not os.path.isdir(os.path.join(path, "model")):
        return None, f"not available: {path} is not a Score-Entropy-Discrete-Diffusion checkout"
    try:
        import flash_attn  # noqa: F401

        stub = False
    except ImportError:
        install_flash_attn_stub()
        stub = True
    sys.path.insert(0, os.path.abspath(path))
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*autocast.*")
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    try:
        import graph_lib
        import noise_lib
        import sampling
        from model import SEDD
    except Exception as e:  # noqa: BLE001
        return None, f"not available: importing upstream from {path} failed: {type(e).__name__}: {e}"
    with contextlib.suppress(Exception):
        commit = commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    up = types.SimpleNamespace(SEDD=SEDD, sampling=sampling, graph_lib=graph_lib, noise_lib=noise_lib,
                               flash_attn_stub=stub, path=os.path.abspath(path), commit=commit)
    return up, None


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
    ours = types.SimpleNamespace(score_fn=score_fn_from(model, params, ccfg), graph=graph, noise=noise, cfg=ccfg,
                                 hf=hf)
    theirs = None
    g = np.random.default_rng(0)
    x = g.integers(0, TOKENS, (2, shape["length"]))
    x[:, g.random(shape["length"]) < 0.5] = TOKENS
    sig = np.array([0.5, 2.0], np.float32)
    want = np.asarray(jax.jit(ours.score_fn)(jnp.asarray(x, jnp.int32), jnp.asarray(sig)))
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
    del tmodel
    return ours, theirs, parity


def our_step_fn(ours):
    """One jitted Euler step of lsd_jax (the body of samplers._run): forward + kernel + draw."""
    from lsd_jax import samplers

    graph, noise = ours.graph, ours.noise

    @jax.jit
    def step(fn, x, key, t, t_next):
        tb, tnb = jnp.full((x.shape[0],), t), jnp.full((x.shape[0],), t_next)
        ls = fn(x, noise.total(tb))
        return samplers.draw(key, samplers.step_kernel(graph, noise, "euler", x, ls, tb, tnb))

    @jax.jit
    def before(fn, x, key, t, t_next):  # the step as lsd_jax ran it before: probabilities + flat Gumbel-max
        tb, tnb = jnp.full((x.shape[0],), t), jnp.full((x.shape[0],), t_next)
        ls = fn(x, noise.total(tb))
        return samplers.categorical(key, samplers.step_probs(graph, noise, "euler", x, ls, tb, tnb))

    fwd = jax.jit(lambda fn, x, t: fn(x, noise.total(jnp.full((x.shape[0],), t))))
    return step, fwd, before


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
    step, fwd, before = our_step_fn(ours)
    fn = samplers.as_pytree_fn(ours.score_fn)
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
        jax.block_until_ready(before(fn, xj, key, t_, tn_))
        r["ours_compile_fwd_and_step_s"] = round(time.perf_counter() - c0, 2)
        lowered = step.lower(fn, xj, key, t_, tn_).compile()
        with contextlib.suppress(Exception):
            ma = lowered.memory_analysis()
            r["ours_step_temp_bytes"] = int(ma.temp_size_in_bytes)
        fns = {"ours_forward": lambda: jax.block_until_ready(fwd(fn, xj, t_)),
               "ours_step": lambda: jax.block_until_ready(step(fn, xj, key, t_, tn_))}
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
        fns["before_step"] = lambda: jax.block_until_ready(before(fn, xj, key, t_, tn_))
        reps = args.reps if shape["whole"] or bsz == 1 else max(2, args.reps - 1)
        log(f"[{name} B={bsz}] timing forward and step ({reps} interleaved rounds)")
        r["timings"] = interleaved(fns, reps)
        tm = {k: v["median_s"] for k, v in r["timings"].items()}
        log(f"[{name} B={bsz}] " + ", ".join(f"{k} {v:.3f} s" for k, v in tm.items()))
        r["before_sampler_work_s"] = tm["before_step"] - tm["ours_forward"]
        r["speedup_step_vs_before"] = tm["before_step"] / tm["ours_step"]
        for who in ("ours", "upstream"):
            if f"{who}_step" not in tm:
                continue
            r[f"{who}_sampler_work_s"] = tm[f"{who}_step"] - tm[f"{who}_forward"]
            r[f"{who}_sampler_share"] = r[f"{who}_sampler_work_s"] / tm[f"{who}_step"]
            flops = fl["total"] * bsz
            r[f"{who}_forward_gflops"] = flops / tm[f"{who}_forward"] / 1e9
            r[f"{who}_step_gflops"] = flops / tm[f"{who}_step"] / 1e9
        # whole samples
        whole: dict = {}
        if shape["whole"]:
            grid = {m: grids.uniform(m, EPS) for m in args.nfe}
            run_ours = lambda m: jax.block_until_ready(samplers.sample(  # noqa: E731
                ours.score_fn, ours.graph, ours.noise, grid[m], key, bsz, L, sampler="euler").tokens)
            c0 = time.perf_counter()
            run_ours(args.nfe[0])
            whole["ours_first_call_s"] = round(time.perf_counter() - c0, 2)  # compile + run
            for m in args.nfe:
                fns = {"ours": lambda m=m: run_ours(m)}
                if theirs is not None:
                    sampler = up.sampling.get_pc_sampler(theirs.graph, theirs.noise, (bsz, L), "euler", m,
                                                         denoise=True, eps=EPS, device=dev)
                    fns["upstream"] = lambda s=sampler: (s(theirs.model), sync_torch())
                log(f"[{name} B={bsz}] whole samples at NFE {m}")
                w = interleaved(fns, 1 if m >= 32 or bsz > 1 else 2)
                whole[str(m)] = {k: v["median_s"] for k, v in w.items()}
                log(f"[{name} B={bsz}] NFE {m}: " + ", ".join(f"{k} {v:.2f} s" for k, v in whole[str(m)].items()))
            lo, hi = str(min(args.nfe)), str(max(args.nfe))
            span = max(args.nfe) - min(args.nfe)
            for who in whole[lo]:
                whole[f"{who}_per_nfe_s"] = (whole[hi][who] - whole[lo][who]) / span
            whole["method"] = "measured; per-NFE = slope between the two NFE values"
        else:
            for m in args.nfe:
                whole[str(m)] = {who: (m + 1) * tm[f"{who}_step"] for who in ("ours", "upstream")
                                 if f"{who}_step" in tm}
            for who in ("ours", "upstream"):
                if f"{who}_step" in tm:
                    whole[f"{who}_per_nfe_s"] = tm[f"{who}_step"]
            whole["method"] = "extrapolated: (NFE + 1) x measured step (predictor steps + the final denoise)"
        r["whole"] = whole
        if theirs is not None:
            r["ratio_per_nfe"] = whole["upstream_per_nfe_s"] / whole["ours_per_nfe_s"]
            r["ratio_step"] = tm["upstream_step"] / tm["ours_step"]
            r["ratio_forward"] = tm["upstream_forward"] / tm["ours_forward"]
            r["ratio_sampler_work"] = _work_ratio(r)
            for m in args.nfe:
                r[f"ratio_whole_nfe{m}"] = whole[str(m)]["upstream"] / whole[str(m)]["ours"]
        for m in args.nfe:
            r[f"ours_tokens_per_s_nfe{m}"] = bsz * L / whole[str(m)]["ours"]
            if theirs is not None:
                r[f"upstream_tokens_per_s_nfe{m}"] = bsz * L / whole[str(m)]["upstream"]
        r["ours_tokens_per_s_per_nfe"] = bsz * L / whole["ours_per_nfe_s"]
        res["batches"][str(bsz)] = r
    return res


# ------------------------------------------------------------------------ distillation
DISTILL_MINI = r"""
import json, os, sys, time
import numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, {root!r})
from lsd_jax import distill, grids, samplers
from lsd_jax.teachers.checkpoint import load_teacher
out = {{}}
teacher = load_teacher({ckpt!r})
cfg = distill.DistillConfig(method="lsd+", nfe=8, teacher_nfe=1024, samples=64, batch_size=16, epochs=20)
L, S, N = teacher.length, cfg.samples, cfg.teacher_nfe
k_steps = {k_steps}
log = lambda *a: print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)
# 1. teacher trajectory: the N-step teacher on S samples, compiled once for any step count
c0 = distill.compile_clock(); t0 = time.perf_counter()
full = np.asarray(grids.uniform(N, cfg.eps))
o = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, full[:2], jax.random.PRNGKey(0), S, L,
                    denoise=False, return_reveal=True)
jax.block_until_ready(o.tokens)
out["teacher_first_call_s"] = time.perf_counter() - t0
out["teacher_compile_s"] = distill.compile_clock() - c0
g = full[: k_steps + 1]
t0 = time.perf_counter()
o = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, g, jax.random.PRNGKey(0), S, L, denoise=False,
                    return_reveal=True)
jax.block_until_ready(o.tokens)
out["teacher_steps_measured"] = k_steps
out["teacher_step_s"] = (time.perf_counter() - t0) / k_steps
log("teacher step", out["teacher_step_s"])
# 2. one epoch minibatch (B = 16, M = 8, LSD+, value and grad through the network)
rng = np.random.default_rng(0)
cache = distill.TeacherCache(distill.RevealPath(jnp.asarray(rng.integers(0, teacher.graph.num_tokens, (S, L)), jnp.int32),
                                                jnp.asarray(rng.integers(1, N + 1, (S, L)), jnp.int32)),
                             jnp.full((S, L), teacher.graph.mask_id, jnp.int32))
one = distill.DistillConfig(**{{**cfg.to_dict(), "samples": cfg.batch_size}})
fn = distill.make_epoch_fn(teacher, one, distill.TeacherCache(distill.path_rows(cache.path, jnp.arange(16)), cache.x_start[:16]))
state = distill.init_state(one, jax.random.PRNGKey(1))
c0 = distill.compile_clock(); t0 = time.perf_counter()
compiled = fn.jitted.lower(*fn.args(state)).compile()
out["epoch_compile_s"] = time.perf_counter() - t0
try:
    ma = compiled.memory_analysis()
    out["epoch_temp_bytes"] = int(ma.temp_size_in_bytes)
except Exception:
    pass
t0 = time.perf_counter()
st, stats = compiled(*fn.args(state))
float(stats["loss"])
out["minibatch_s"] = time.perf_counter() - t0
log("minibatch", out["minibatch_s"])
out.update(distill.memory_report())
out["teacher_cache_bytes_reveal"] = 2 * S * L * 4
out["teacher_cache_bytes_dense_path"] = (N + 1) * S * L * 4
print(json.dumps(out))
"""


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
    import sedd_torch_reference as ref

    from ports import sedd

    cfg = ref.make_config("sedd", tokens=TOKENS, hidden_size=shape["hidden"], cond_dim=128, n_blocks=shape["blocks"],
                          n_heads=shape["heads"], length=shape["length"])
    hf = ref.save_hf(ref.randomize(ref.build("sedd", cfg), seed=0), cfg, os.path.join(tmp, "distill-hf"))
    ckpt = os.path.join(tmp, "distill-flax")
    sedd.convert(hf, ckpt)
    code = DISTILL_MINI.format(root=ROOT, ckpt=ckpt, k_steps=k_steps)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        return {"error": p.stderr[-3000:]}
    m = json.loads(p.stdout.strip().splitlines()[-1])
    m["process_wall_s"] = round(time.perf_counter() - t0, 1)
    est = mini_extrapolation(m)
    return {"measured": m, "extrapolated": est,
            "method": (f"teacher: {k_steps} steps of the 1024-step teacher on 64 x L {shape['length']} timed after "
                       "compile, x 1024; epochs: one minibatch (16 trajectories, 8 student steps, value and grad) "
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
    from lsd_jax import distill

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


# ------------------------------------------------------------------------------- report
NOISE_SHARE = 0.05  # sampler work (step - forward) at or below this share of the step: timing noise


def _work_ratio(r: dict):
    """upstream / ours sampler work; None where either side's sampler work is below timing
    noise (<= 0, or <= NOISE_SHARE of its own step time): step - forward of two medians
    can then come out at any size or sign, and the ratio means nothing."""
    for who in ("ours", "upstream"):
        work, step = r.get(f"{who}_sampler_work_s"), r["timings"].get(f"{who}_step", {}).get("median_s")
        if work is None or step is None or work <= 0 or work <= NOISE_SHARE * step:
            return None
    return r["upstream_sampler_work_s"] / r["ours_sampler_work_s"]


def fmt_s(x):
    return "-" if x is None else (f"{x:.3f} s" if x < 10 else f"{x:.1f} s")


def to_markdown(p: dict) -> str:
    pv = p["provenance"]
    lines = ["# Sampling speed: lsd_jax vs the upstream SEDD sampler, roofline, distillation", "",
             f"- date: {pv['date']}", f"- command: `{pv['command']}`", f"- commit: {pv['commit']}",
             f"- machine: {pv['machine']}; torch {p['torch']['version']} on {p['torch']['device']} "
             f"({p['torch']['threads']} threads); load average at start {p['load_avg']['start']}, "
             f"end {p['load_avg']['end']} (other jobs shared the cores: every ratio below is from this one run, "
             "ours and upstream's runs interleaved)",
             f"- upstream: {p['upstream']['status']}", ""]
    rf = p["roofline"]
    lines += [f"Matmul roofline measured in this run ({rf['dtype']} square GEMMs n = "
              f"{', '.join(map(str, rf['sizes']))}, best of {len(rf['measurements'])} measurements taken at "
              f"{', '.join(r['time'] for r in rf['measurements'])}): JAX {rf['jax_gflops']} GFLOP/s, "
              f"torch {rf['torch_gflops']} GFLOP/s -> roofline {rf['roofline_gflops']} GFLOP/s. The fraction of it "
              "that a model reaches is in the forward GFLOP/s column.", "",
              "Sampler: Euler, uniform grid, eps 1e-5, all-mask start, final denoise (NFE M = M predictor calls; "
              "whole samples make M + 1 network calls in both implementations). Our model: "
              f"{p['dtype']}.", ""]
    lo, hi = min(p["nfe"]), max(p["nfe"])
    lines += ["| shape | B | NFE ratio (upstream / ours) | step ratio | forward ratio | sampler-work ratio | "
              f"whole @{lo} ratio | whole @{hi} ratio | our step, before / after this change |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, s in p["shapes"].items():
        for b, r in s["batches"].items():
            if "ratio_per_nfe" not in r:
                continue
            wr = _work_ratio(r)
            wr = f"{wr:.1f}x" if wr is not None else "n/a (below timing noise)"
            lines.append(f"| {name} | {b} | **{r['ratio_per_nfe']:.2f}x** | {r['ratio_step']:.2f}x | "
                         f"{r['ratio_forward']:.2f}x | {wr} | "
                         f"{r.get(f'ratio_whole_nfe{lo}', float('nan')):.2f}x | {r.get(f'ratio_whole_nfe{hi}', float('nan')):.2f}x | "
                         f"{r['speedup_step_vs_before']:.2f}x |")
    lines += [""]
    for name, s in p["shapes"].items():
        sh = s["shape"]
        fl = s["flops_per_sequence"]
        lines += [f"## {name}: D {sh['hidden']}, {sh['blocks']} blocks, {sh['heads']} heads, V {s['vocab']}, "
                  f"L {sh['length']}", "",
                  f"- model FLOPs per sequence per NFE: {fl['total'] / 1e9:.2f} GFLOP (dense {fl['dense'] / 1e9:.2f}, "
                  f"attention {fl['attention'] / 1e9:.2f}, output projection {fl['output_projection'] / 1e9:.2f})",
                  f"- parity of the two loaded models (log-score): {s['parity'] or 'n/a'}", ""]
        lines += [f"| B | who | forward | step | sampler work (share) | per NFE | whole @{lo} | whole @{hi} | "
                  f"forward GFLOP/s (roofline) | tokens/s @{hi} |", "|---|---|---|---|---|---|---|---|---|---|"]
        for b, r in s["batches"].items():
            tm = {k: v["median_s"] for k, v in r["timings"].items()}
            for who in ("ours", "upstream"):
                if f"{who}_step" not in tm:
                    continue
                w = r["whole"]
                gf = r[f"{who}_forward_gflops"]
                lines.append(
                    f"| {b} | {who} | {fmt_s(tm[who + '_forward'])} | {fmt_s(tm[who + '_step'])} | "
                    f"{fmt_s(r[who + '_sampler_work_s'])} ({100 * r[who + '_sampler_share']:.0f}%) | "
                    f"{fmt_s(w[who + '_per_nfe_s'])} | {fmt_s(w[str(lo)].get(who))} | {fmt_s(w[str(hi)].get(who))} | "
                    f"{gf:.1f} ({100 * gf / rf['roofline_gflops']:.0f}%) | "
                    f"{r.get(who + f'_tokens_per_s_nfe{hi}', float('nan')):.1f} |")
            lines.append(f"| {b} | ours before (probability space, flat Gumbel-max) | | {fmt_s(tm['before_step'])} | "
                         f"{fmt_s(r['before_sampler_work_s'])} | | | | | |")
            lines.append(f"| {b} | | whole samples: {r['whole']['method']} | | | | | | | |")
            mem = r.get("upstream_step_memory", {})
            ours_tmp = r.get("ours_step_temp_bytes")
            lines.append(f"| {b} | memory | upstream step: {mem.get('bvl_allocations', '?')} [B, L, V] allocations, "
                         f"{mem.get('bvl_bytes', mem.get('peak_step_bytes', 0)) / 2**20:.0f} MiB; ours: XLA temp "
                         f"{(ours_tmp or 0) / 2**20:.0f} MiB for the whole step | | | | | | | |")
        lines.append("")
    d = p.get("distill", {})
    if d:
        lines += ["## Distillation wall-clock (LSD+, paper defaults: teacher 1024 NFE, 64 samples, 20 epochs, "
                  "batch 16, 8-NFE student)", ""]
        mk = d.get("markov")
        if mk and "timing" in mk:
            t = mk["timing"]
            lines += [f"Default synthetic teacher ({mk['teacher']}), `{mk['command']}`, run end to end: process "
                      f"{mk['process_wall_s']} s, fit {mk['fit_s']} s, peak RSS {t.get('peak_rss_mib')} MiB.", "",
                      "| phase | wall | compile | run |", "|---|---|---|---|"]
            for ph in ("teacher", "epochs", "validation", "checkpoints"):
                x = t[ph]
                lines.append(f"| {ph} ({x['calls']} calls) | {x['wall_s']} s | {x['compile_s']} s | {x['run_s']} s |")
            lines.append(f"| startup, imports, outputs | {mk['startup_and_outputs_s']} s | | |")
            lines.append("")
        elif mk:
            lines += [f"synthetic teacher: {mk}", ""]
        mi = d.get("mini")
        if mi and "measured" in mi:
            m, e = mi["measured"], mi["extrapolated"]
            if "validation_ngram_every5_s" not in e:  # results from before val_every: current defaults
                e = mini_extrapolation(m)
            ms = SHAPES["mini"]
            lines += [f"Mini SEDD teacher (D {ms['hidden']}, {ms['blocks']} blocks, V {TOKENS + 1}, L {ms['length']}): "
                      f"{mi['method']}. Process wall-clock {m.get('process_wall_s')} s.", "",
                      "| phase | measured | paper defaults (extrapolated) |", "|---|---|---|",
                      f"| compile: teacher sampler / epoch | {m['teacher_compile_s']:.1f} s / {m['epoch_compile_s']:.1f} s | "
                      f"{e['compile_s']:.0f} s |",
                      f"| teacher trajectory | {m['teacher_step_s']:.2f} s per step (64 x L) | "
                      f"{e['teacher_trajectory_s'] / 60:.1f} min |",
                      f"| student epochs | {m['minibatch_s']:.1f} s per minibatch of 16 | "
                      f"{e['student_epochs_s'] / 60:.1f} min |",
                      f"| validation (select auto = n-gram: {e['validation_samples']} samples, reference at "
                      f"{e['validation_reference_nfe']} teacher steps = {e['validation_reference_s'] / 3600:.1f} h "
                      f"of it), val_every 1 (default) / 5 | - | {e['validation_ngram_s'] / 3600:.1f} h / "
                      f"{e['validation_ngram_every5_s'] / 3600:.1f} h |",
                      f"| validation at the defaults before (1024 samples, reference at 1024 steps, every epoch) "
                      f"| - | {e['validation_ngram_previous_defaults_s'] / 3600:.1f} h |",
                      f"| total, select none / default (val_every 1) / val_every 5 | - | "
                      f"{e['total_select_none_s'] / 60:.0f} min / {e['total_default_s'] / 3600:.1f} h / "
                      f"{e['total_val_every5_s'] / 3600:.1f} h |", "",
                      f"Memory: peak RSS {m.get('peak_rss_mib')} MiB (process); compiled epoch temporaries "
                      f"{m.get('epoch_temp_bytes', 0) / 2**20:.0f} MiB; teacher cache {m['teacher_cache_bytes_reveal'] / 2**10:.0f} KiB "
                      f"(final state + reveal step) instead of {m['teacher_cache_bytes_dense_path'] / 2**20:.0f} MiB "
                      "for the dense [N + 1, S, L] path.", ""]
        elif mi:
            lines += [f"mini SEDD distillation: {mi}", ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in p["notes"]] + [""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", default=None, help="path of a louaaron/Score-Entropy-Discrete-Diffusion checkout")
    ap.add_argument("--upstream-commit", default=None, help="its commit, when the checkout has no .git")
    ap.add_argument("--render", default=None, metavar="JSON", help="only rewrite the markdown of a results JSON")
    ap.add_argument("--shapes", default="mini,small", help="comma list of: " + ", ".join(SHAPES))
    ap.add_argument("--nfe", default=",".join(map(str, NFES)), help="NFE values of the whole-sample runs")
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds for forward / step timings")
    ap.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                    help="our model's compute dtype (auto: float32 on CPU, bfloat16 on GPU, as upstream's autocast)")
    ap.add_argument("--distill", choices=["all", "markov", "none"], default="all")
    ap.add_argument("--teacher-steps", type=int, default=2, help="mini distillation: teacher steps timed")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, no distillation, nothing written")
    ap.add_argument("--name", default=None, help="results file stem (default speed-<backend>)")
    args = ap.parse_args(argv)
    args.nfe = tuple(int(v) for v in args.nfe.split(","))
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
        "step = one whole Euler update (forward + sampler work); sampler work = step - forward.",
        "Our step draws from the log-space kernel with a two-level Gumbel-max (~2 sqrt(V) uniforms per position); "
        "upstream's step builds one-hot, rate and uniform-noise tensors of [B, L, V] (see the memory rows).",
        "SEDD-small: whole samples are not run (a step takes seconds): (NFE + 1) x the measured step.",
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
