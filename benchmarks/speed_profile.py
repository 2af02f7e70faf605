"""Benchmark: where the mini SEDD forward spends its time, and the masked head and step cache
over whole trajectories. Writes benchmarks/results/speed-profile-<backend>.{json,md}.

    python benchmarks/speed_profile.py [--rounds 5] [--batches 1,8] [--traj-nfe 8,1024]

1. Per op class (mini: D 256, 4 blocks, 4 heads, V 50258, L 256, random weights), each a
   jitted piece timed in interleaved rounds with a float32 2048^2 GEMM (the roofline) in
   every round: dense GEMMs of the blocks (qkv, out, MLP with its GELU), attention (rotary +
   softmax(QK^T)V, 4 blocks), the trunk (model.apply(head=False): embedding, blocks, final
   LN), the output head as one [B L, D] x [D, V] GEMM + bias, the sedd output transform on
   [B, L, V], the masked head alone at half the positions masked (tiles + fill + row
   copies), and the whole forward with the full and the masked head. GFLOP/s over the
   roofline of the same round (median over rounds).
2. Trajectories (a smaller shape, so that 1024 steps fit this CPU: D 128, 2 blocks, V 50258,
   L 64, batch 1): Euler, uniform grid, eps 1e-5, at the NFE values of --traj-nfe: sedd
   with the full and the masked head (wall, tokens equal), mdlm without time conditioning
   with the full head, the masked head, and the masked head + step cache (network calls
   made, tokens equal).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import provenance, write_results  # noqa: E402

from lsd_jax import grids, samplers  # noqa: E402
from lsd_jax.graphs import Absorbing  # noqa: E402
from lsd_jax.models import dit  # noqa: E402
from lsd_jax.noise import LogLinear  # noqa: E402

V = 50258
ROOF_N = 2048
MINI = dict(hidden_size=256, cond_dim=128, n_blocks=4, n_heads=4, length=256)
TRAJ = dict(hidden_size=128, cond_dim=128, n_blocks=2, n_heads=2, length=64)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def random_params(cfg: dit.DiTConfig, seed: int = 0, scale: float = 0.02):
    """Fresh params with every leaf perturbed (the zero-initialised output layer included)."""
    params = dit.init_params(cfg, jax.random.PRNGKey(seed))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [a + scale * jax.random.normal(k, a.shape, a.dtype)
                                               for a, k in zip(leaves, keys)])


def half_masked(b: int, length: int, seed: int = 1) -> jnp.ndarray:
    g = np.random.default_rng(seed)
    x = np.full((b, length), V - 1)
    sel = g.random(length) < 0.5
    x[:, sel] = g.integers(0, V - 1, (b, int(sel.sum())))
    return jnp.asarray(x, jnp.int32)


def rounds(fns: dict, n: int, gap: float = 0.3) -> dict:
    """Interleaved rounds: each fn once per round; all runs kept."""
    runs = {k: [] for k in fns}
    for f in fns.values():
        jax.block_until_ready(f())
    for _ in range(n):
        for k, f in fns.items():
            time.sleep(gap)
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            runs[k].append(time.perf_counter() - t0)
    return runs


def op_classes(b: int, n_rounds: int) -> dict:
    cfg = dit.DiTConfig(vocab_size=V, scale_by_sigma=True, **MINI)
    params = random_params(cfg)
    model = dit.DiT(cfg)
    d, length, n = cfg.hidden_size, cfg.length, b * cfg.length
    x = half_masked(b, length)
    sb = jnp.full((b,), 0.7)
    blocks = [params[f"blocks_{i}"] for i in range(cfg.n_blocks)]
    hrows = jax.random.normal(jax.random.PRNGKey(2), (n, d))
    qkv = jax.random.normal(jax.random.PRNGKey(3), (b, length, 3, cfg.n_heads, cfg.head_dim))
    cos, sin = dit.rotary_cos_sin(length, cfg.head_dim)
    lin = params["output_layer"]["linear"]
    logits = jax.random.normal(jax.random.PRNGKey(4), (b, length, V))
    h_in = jax.random.normal(jax.random.PRNGKey(5), (b, length, d))
    roof_a = jax.random.normal(jax.random.PRNGKey(6), (ROOF_N, ROOF_N))

    def dense(h):
        out = 0.0
        for p in blocks:
            q = h @ p["attn_qkv"]["kernel"]
            o = h @ p["attn_out"]["kernel"]
            m = jax.nn.gelu(h @ p["mlp_0"]["kernel"] + p["mlp_0"]["bias"], approximate=True) @ p["mlp_2"]["kernel"]
            out = out + q.sum() + o.sum() + m.sum()
        return out

    def attention(qkv):
        out = 0.0
        for i in range(cfg.n_blocks):
            q, k, v = qkv[:, :, 0] + i, qkv[:, :, 1], qkv[:, :, 2]
            q, k = dit.apply_rotary(q, cos, sin), dit.apply_rotary(k, cos, sin)
            out = out + jax.nn.dot_product_attention(q, k, v).sum()
        return out

    full = jax.jit(dit.score_fn_from(model, params, cfg, head="full"))
    masked = jax.jit(dit.score_fn_from(model, params, cfg, head="masked"))
    pieces = {
        "dense GEMMs (4 blocks)": (jax.jit(dense), (hrows,), 2 * n * 12 * d * d * cfg.n_blocks),
        "attention (4 blocks)": (jax.jit(attention), (qkv,), 4 * b * length * length * d * cfg.n_blocks),
        "trunk (embedding, blocks, final LN)": (jax.jit(lambda x, sb: model.apply({"params": params}, x, sb, head=False)),
                                                (x, sb), None),
        "head GEMM + bias [B L, D] x [D, V]": (jax.jit(lambda h: dit._linear(cfg, lin, h)), (hrows,), 2 * n * d * V),
        "output transform on [B, L, V]": (jax.jit(lambda lg, x, sb: dit.output_transform(cfg, lg, x, sb)),
                                          (logits, x, sb), None),
        "masked head (half masked: tiles, fill, row copies)": (
            jax.jit(lambda h, x, sb: dit.masked_head(cfg, lin, h, x, sb)), (h_in, x, sb), None),
        "forward, full head": (full, (x, sb), None),
        "forward, masked head (half masked)": (masked, (x, sb), None),
        "roofline GEMM": (jax.jit(lambda a: a @ a), (roof_a,), 2 * ROOF_N**3),
    }
    fl_model = 2 * n * (12 * d * d * cfg.n_blocks + d * V) + 4 * b * length * length * d * cfg.n_blocks
    pieces["forward, full head"] = (full, (x, sb), fl_model)
    runs = rounds({k: (lambda f=f, a=a: f(*a)) for k, (f, a, _) in pieces.items()}, n_rounds)
    roof = [2 * ROOF_N**3 / t / 1e9 for t in runs["roofline GEMM"]]
    fwd = statistics.median(runs["forward, full head"])
    rows = []
    for k, (_, _, fl) in pieces.items():
        med = statistics.median(runs[k])
        row = {"piece": k, "median_s": med, "runs_s": [round(t, 4) for t in runs[k]], "share_of_full_forward": med / fwd}
        if fl:
            row["gflop"] = fl / 1e9
            row["gflops"] = fl / med / 1e9
            row["roofline_fraction"] = statistics.median([fl / t / 1e9 / r for t, r in zip(runs[k], roof)])
        rows.append(row)
    return {"batch": b, "rows": rows, "roofline_gflops_per_round": [round(r, 1) for r in roof],
            "model_gflop": fl_model / 1e9}


def trajectory(nfes: tuple, batch: int = 1) -> dict:
    g, noise = Absorbing(V - 1), LogLinear()
    out = []
    length = TRAJ["length"]
    for family, kw in (("sedd", {"scale_by_sigma": True}), ("mdlm", {"time_conditioning": False})):
        cfg = dit.DiTConfig(vocab_size=V, family=family, **TRAJ, **kw)
        params = random_params(cfg, scale=0.05)
        variants = [("full", False), ("masked", False)] + ([("masked", True)] if family == "mdlm" else [])
        fns = {h: dit.score_fn_from(dit.DiT(cfg), params, cfg, head=h) for h in dit.HEADS}
        for nfe in nfes:
            grid = grids.uniform(nfe, 1e-5)
            ref = None
            for head, cache in variants:
                run = lambda: samplers.sample(fns[head], g, noise, grid, jax.random.PRNGKey(nfe), batch, length,  # noqa: E731
                                              reuse=cache)
                jax.block_until_ready(run().tokens)  # compile (shared for every NFE <= 1024)
                t0 = time.perf_counter()
                s = run()
                jax.block_until_ready(s.tokens)
                wall = time.perf_counter() - t0
                tok = np.asarray(s.tokens)
                ref = tok if ref is None else ref
                out.append({"family": family, "head": head, "cache": cache, "nfe": nfe, "wall_s": wall,
                            "network_calls": s.network_calls, "same_tokens": bool(np.array_equal(tok, ref))})
                log("trajectory", out[-1])
    shape = (f"D {TRAJ['hidden_size']}, {TRAJ['n_blocks']} blocks, V {V}, L {length}, batch {batch}; Euler, "
             "uniform grid, eps 1e-5, final denoise; mdlm without time conditioning")
    return {"shape": shape, "rows": out}


def to_markdown(p: dict) -> str:
    pv = p["provenance"]
    lines = ["# Where the mini SEDD forward spends its time; the masked head and the step cache over trajectories", "",
             f"- date: {pv['date']}", f"- command: `{pv['command']}`", f"- commit: {pv['commit']}",
             f"- machine: {pv['machine']}; load average at start {p['load_avg']['start']}, end {p['load_avg']['end']} "
             "(2-core CPU shared with other jobs: compare the pieces of one table, timed in the same rounds)", ""]
    for oc in p["op_classes"]:
        lines += [f"## Mini forward per op class, batch {oc['batch']} (D 256, 4 blocks, V {V}, L 256; model "
                  f"{oc['model_gflop']:.2f} GFLOP per forward; roofline GEMM per round: "
                  f"{', '.join(map(str, oc['roofline_gflops_per_round']))} GFLOP/s)", "",
                  "| piece | median | share of the full-head forward | GFLOP | GFLOP/s | of the roofline (same round) |",
                  "|---|---|---|---|---|---|"]
        for r in oc["rows"]:
            lines.append(f"| {r['piece']} | {r['median_s'] * 1e3:.1f} ms | {100 * r['share_of_full_forward']:.0f}% | "
                         f"{r.get('gflop', float('nan')):.2f} | {r.get('gflops', float('nan')):.1f} | "
                         + (f"{100 * r['roofline_fraction']:.0f}%" if "roofline_fraction" in r else "-") + " |")
        lines.append("")
    tr = p.get("trajectory")
    if tr:
        lines += [f"## Masked head and step cache over whole trajectories ({tr['shape']})", "",
                  "| model | head | step cache | NFE | wall | network calls made | tokens equal to the full head's |",
                  "|---|---|---|---|---|---|---|"]
        for r in tr["rows"]:
            lines.append(f"| {r['family']} | {r['head']} | {'yes' if r['cache'] else 'no'} | {r['nfe']} | "
                         f"{r['wall_s']:.2f} s | {r['network_calls']} | {r['same_tokens']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--traj-nfe", default="8,1024", help="NFE values of the trajectory runs ('' to skip)")
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    payload = {"benchmark": "speed-profile", "provenance": provenance(),
               "load_avg": {"start": [round(x, 2) for x in os.getloadavg()]}, "op_classes": []}
    for b in (int(v) for v in args.batches.split(",") if v):
        log(f"op classes, batch {b}")
        payload["op_classes"].append(op_classes(b, args.rounds))
    if args.traj_nfe:
        payload["trajectory"] = trajectory(tuple(int(v) for v in args.traj_nfe.split(",")))
    payload["load_avg"]["end"] = [round(x, 2) for x in os.getloadavg()]
    jp, mp = write_results(args.name or f"speed-profile-{jax.default_backend()}", payload, to_markdown(payload))
    log("wrote", jp, mp)
    return payload


if __name__ == "__main__":
    main()
