"""Draw precision on a 50257-token toy whose exact answer is known.

Independent positions, each with the same Zipf law p(rank r) ~ r^-a over V = 50257 tokens
(token ids a seeded permutation of the ranks, so the draw's blocks mix frequent and rare
tokens as a real vocabulary does). The exact absorbing-graph score of this law is
    masked position: s[y] = p(y) / expm1(sigmabar),  s[mask] = 1
so every sampler at every NFE must reproduce p exactly (no discretisation error: positions
do not interact). Only the draw can bias it.

1. The law of the loop's draw, computed (no sampling): the two-level Gumbel-max draws a block
   (against the stay entry) and then a token in it. An entry whose odds against the others are
   S is drawn with probability p f(S h) where f(a) = a / expm1(a) and h is the resolution of
   E = -log(u) near 0 (Gumbel = -log E): h = 2^-23 for one float32 uniform (the textbook draw),
   2^-46 for `kernel.gumbel`'s two-uniform float32 draw, 2^-52 for float64. (A float32 uniform
   u = j 2^-23 rounds E up to the grid; f follows by summing exp(-E S) over that grid.) Composed
   over the steps of Euler on a uniform grid (stay / reveal per step) and the final denoise,
   this gives the exact tail mass beyond rank 1000 and 10000 under each draw.
2. Optionally (--tokens N) the library's loop is run and the tail masses measured with their
   binomial standard error (z = (measured - exact) / se). On the shared 2-core CPU one
   1024-step run of 512 tokens takes ~9 minutes; a 1% relative standard error needs ~60k tokens.

    python benchmarks/zipf_draw.py --steps 1024

Writes benchmarks/results/zipf-draw.json and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import provenance, write_results  # noqa: E402

from lsd_jax import grids, samplers  # noqa: E402
from lsd_jax._compat import enable_x64  # noqa: E402
from lsd_jax.graphs import Absorbing  # noqa: E402
from lsd_jax.noise import LogLinear  # noqa: E402

V = 50257
TAIL_RANKS = (1000, 10000)


def zipf(v: int = V, a: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(p [V] over token ids, rank [V] of each token id, 1 = most frequent)."""
    pr = np.arange(1, v + 1, dtype=np.float64) ** -a
    pr /= pr.sum()
    perm = np.random.default_rng(seed).permutation(v)  # token id of rank r + 1
    p = np.empty(v)
    p[perm] = pr
    rank = np.empty(v, np.int64)
    rank[perm] = np.arange(1, v + 1)
    return p, rank


def score_fn_for(log_p: jnp.ndarray, graph: Absorbing):
    """Exact log score of independent positions with law exp(log_p) [V] (absorbing graph)."""

    def score_fn(x, sigmabar):
        masked = (x == graph.mask_id)[..., None]
        lp = jnp.concatenate([log_p.astype(sigmabar.dtype), jnp.zeros((1,), sigmabar.dtype)])  # [V + 1]
        at_mask = lp - jnp.log(jnp.expm1(sigmabar))[:, None, None]
        at_mask = jnp.where(jnp.arange(graph.dim) == graph.mask_id, 0.0, at_mask)
        cur = jnp.take(lp, x)[..., None]
        clean = jnp.where(jnp.arange(graph.dim) == graph.mask_id, jnp.log(jnp.expm1(sigmabar))[:, None, None], lp) - cur
        return jnp.where(masked, at_mask, jnp.where(jnp.arange(graph.dim) == x[..., None], 0.0, clean))

    return score_fn


def f_loss(odds: np.ndarray, h: float) -> np.ndarray:
    """Probability factor f(S h) = a / expm1(a) of an entry at odds S under grid resolution h."""
    a = np.asarray(odds, np.float64) * h
    small = a < 1e-12
    return np.where(small, 1.0 - a / 2, a / np.expm1(np.where(small, 1.0, a)))


def level_law(w: np.ndarray, h: float) -> np.ndarray:
    """Law of a Gumbel-max over weights w [..., n] (sum 1) at resolution h: every entry but the
    largest loses its factor, the largest takes the rest."""
    out = w * f_loss((1.0 - w) / np.maximum(w, 1e-300), h)
    top = np.argmax(w, axis=-1)
    np.put_along_axis(out, top[..., None], 0.0, -1)
    np.put_along_axis(out, top[..., None], (1.0 - out.sum(-1))[..., None], -1)
    return out


def computed_tails_flat(steps: int, h: float) -> dict:
    """As `computed_tails` for a flat (one-level) Gumbel-max over all V + 1 entries."""
    p, rank = zipf()
    eps = 1e-3
    g = np.asarray(grids.uniform(steps, 1e-4), np.float64)
    t, s = g[:-1], g[1:]
    r = np.minimum((t - s) * (1 - eps) / (1 - (1 - eps) * t) / np.expm1(-np.log1p(-(1 - eps) * t)), 1.0)
    law, masked = np.zeros(V), 1.0
    for rk in r:
        lk = level_law(np.concatenate([rk * p, [1 - rk]])[None], h)[0]
        law += masked * lk[:V]
        masked *= lk[V]
    law += masked * level_law(p[None], h)[0]
    return {"h": h, **{f"tail_{r0}": float(law[rank > r0].sum()) for r0 in TAIL_RANKS}}


def computed_tails(steps: int, h: float) -> dict:
    """Tail masses of the loop's output under a draw of resolution h (h = 0: the exact law)."""
    from lsd_jax.solvers.kernel import block_size

    p, rank = zipf()
    noise = LogLinear(1e-3)
    g = np.asarray(grids.uniform(steps, 1e-4), np.float64)
    t, s = g[:-1], g[1:]
    sb = -np.log1p(-(1 - noise.eps) * t)
    r = (t - s) * (1 - noise.eps) / (1 - (1 - noise.eps) * t) / np.expm1(sb)  # Euler reveal probability [M]
    r = np.minimum(r, 1.0)
    k = block_size(V + 1)
    pad = np.zeros(-(-(V + 1) // k) * k)
    pad[:V] = p
    blocks = pad.reshape(-1, k)  # [nb, K] token weights by block (the mask id: weight 0)
    pb = blocks.sum(1)
    keep = pb > 0
    inner = level_law(blocks[keep] / pb[keep, None], h) if h else blocks[keep] / pb[keep, None]
    # per step: level 1 over (blocks, stay)
    w1 = np.concatenate([r[:, None] * pb[None, keep], (1 - r)[:, None]], 1)
    l1 = level_law(w1, h) if h else w1
    masked = np.concatenate([[1.0], np.cumprod(l1[:, -1])])  # P(still masked) before each step, and after
    reveal_b = (masked[:-1, None] * l1[:, :-1]).sum(0)
    den = level_law(pb[None, keep], h)[0] if h else pb[keep]  # final denoise: no stay entry
    law_b = reveal_b + masked[-1] * den
    law = np.zeros_like(pad)
    law.reshape(-1, k)[keep] = law_b[:, None] * inner
    law = law[:V]
    out = {"h": h, "mask_left_before_denoise": float(masked[-1])}
    for r0 in TAIL_RANKS:
        out[f"tail_{r0}"] = float(law[rank > r0].sum())
    return out


def run(steps: int, tokens: int, batch: int, length: int, x64: bool, seed: int = 0) -> dict:
    p, rank = zipf()
    graph, noise = Absorbing(V), LogLinear(1e-3)
    fn = score_fn_for(jnp.asarray(np.log(p)), graph)
    grid = grids.uniform(steps, 1e-4)
    counts = np.zeros(V + 1, np.int64)
    t0 = time.perf_counter()
    n_runs = -(-tokens // (batch * length))
    for r in range(n_runs):
        out = samplers.sample(fn, graph, noise, grid, jax.random.PRNGKey(seed * 100_003 + r), batch, length, x64=x64)
        counts += np.bincount(np.asarray(out.tokens).ravel(), minlength=V + 1)
    n = int(counts.sum())
    res = {"x64": x64, "steps": steps, "tokens": n, "seconds": time.perf_counter() - t0, "mask_left": int(counts[V])}
    for r0 in TAIL_RANKS:
        exact = float(p[rank > r0].sum())
        got = float(counts[:V][rank > r0].sum() / n)
        se = float(np.sqrt(exact * (1 - exact) / n))
        res[f"tail_{r0}"] = {"exact": exact, "measured": got, "se": se, "rel_se": se / exact, "z": (got - exact) / se}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=0, help="also run the loop for this many tokens per draw dtype")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--name", default="zipf-draw")
    args = ap.parse_args(argv)
    draws = {"exact": 0.0, "float32 one uniform (textbook; the draw before this change)": 2.0**-23,
             "float32 two uniforms (kernel.gumbel, default)": 2.0**-46, "float64": 2.0**-52}
    computed = {name: computed_tails(args.steps, h) for name, h in draws.items()}
    computed["flat one-level draw, float32 one uniform (for comparison)"] = computed_tails_flat(args.steps, 2.0**-23)
    for name, c in computed.items():
        print(name, c, flush=True)
    rows = []
    if args.tokens:
        rows.append(run(args.steps, args.tokens, args.batch, args.length, False))
        print(rows[-1], flush=True)
        with enable_x64():
            rows.append(run(args.steps, args.tokens, args.batch, args.length, True))
        print(rows[-1], flush=True)
    payload = {"provenance": provenance(), "V": V, "zipf_a": 1.0, "steps": args.steps, "computed": computed,
               "sampled": rows}
    ex = computed["exact"]
    lines = [f"# Draw precision: {V}-token Zipf toy (a = 1), Euler, {args.steps} steps, final denoise", "",
             f"{payload['provenance']['date']}, commit {payload['provenance']['commit']}, "
             f"`{payload['provenance']['command']}`, {payload['provenance']['machine']}", "",
             "Law of the loop's output under each draw, computed from the draw's resolution (see the script's "
             "docstring); relative error against the exact tail mass.", "",
             "| draw | tail > 1000 | rel. error | tail > 10000 | rel. error |", "|---|---|---|---|---|"]
    for name, c in computed.items():
        lines.append(f"| {name} | {c['tail_1000']:.5f} | {c['tail_1000'] / ex['tail_1000'] - 1:+.2e} | "
                     f"{c['tail_10000']:.5f} | {c['tail_10000'] / ex['tail_10000'] - 1:+.2e} |")
    if rows:
        lines += ["", "Sampled through the library's loop:", "",
                  "| draw | tokens | tail > 1000: exact | measured | z | tail > 10000: exact | measured | z |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            a, b = r["tail_1000"], r["tail_10000"]
            lines.append(f"| {'float64' if r['x64'] else 'float32'} | {r['tokens']} | {a['exact']:.4f} | "
                         f"{a['measured']:.4f} | {a['z']:+.2f} | {b['exact']:.4f} | {b['measured']:.4f} | {b['z']:+.2f} |")
    write_results(args.name, payload, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
