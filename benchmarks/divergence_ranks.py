"""Do the teacher-only divergences rank candidate grids like the exact one?

On a teacher with an exact chain (the synthetic teacher, or a network trained on it with
its chain.json), samples K random M-step time grids and scores each by the exact bigram
KL against the chain, the n-gram divergence against the teacher's own many-step samples,
and (network teachers) the MMD on the teacher network's pooled final hidden states.
Reports Spearman and Kendall rank correlations of each with the exact divergence, over
two sets of grids: "broad" (logits ~ N(0, 1.2^2): far apart) and "local" (the best fixed
grid's logits + N(0, 0.3^2): the neighbourhood a tuner searches).

    python benchmarks/divergence_ranks.py --name ranks-exact-uniform --graph uniform
    python benchmarks/divergence_ranks.py --checkpoint checkpoints/chain-absorb --name ranks-net-chain-absorb

Writes benchmarks/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax.numpy as jnp
import numpy as np
from scipy.stats import kendalltau, spearmanr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench_teacher, provenance, write_results  # noqa: E402

from lsd_jax import grids, tune  # noqa: E402
from lsd_jax.divergences import make_divergence  # noqa: E402
from lsd_jax.names import GRAPHS  # noqa: E402
from lsd_jax.eval.sampling import run_sampler  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="network teacher trained on the chain (else the exact one)")
    p.add_argument("--graph", choices=GRAPHS, default="absorb")
    p.add_argument("--nfe", type=int, default=8)
    p.add_argument("--grids", type=int, default=16, help="random grids per set")
    p.add_argument("--samples", type=int, default=512, help="samples per grid (one CRN seed)")
    p.add_argument("--ref-nfe", type=int, default=1024, help="steps of the teacher's reference samples")
    p.add_argument("--eps", type=float, default=1e-4)
    p.add_argument("--name", required=True)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    teacher = bench_teacher(args.checkpoint, args.graph)
    if not teacher.exact:
        raise SystemExit("error: needs a teacher with an exact chain (the markov teacher or a chain checkpoint)")
    t0 = time.perf_counter()
    ref = run_sampler(teacher, grids.uniform(args.ref_nfe, args.eps), seed=1, num_samples=args.samples)
    names = ["exact", "ngram"] + (["mmd"] if teacher.features is not None else [])
    divs = {n: make_divergence(n, teacher, ref) for n in names}
    best_grid, _ = tune.best_fixed_grid(teacher, args.nfe, divs["exact"], eps=args.eps, crn_seeds=(0,),
                                        num_samples=args.samples)
    best_logits = np.asarray(grids.to_logits(jnp.asarray(best_grid), args.eps), np.float64)
    rng = np.random.default_rng(0)
    sets = {"broad": [rng.normal(size=args.nfe) * 1.2 for _ in range(args.grids)],
            "local": [best_logits - best_logits.mean() + rng.normal(size=args.nfe) * 0.3 for _ in range(args.grids)]}
    results = {}
    for set_name, logits in sets.items():
        scores = {n: [] for n in names}
        for z in logits:
            tok = run_sampler(teacher, grids.from_logits(jnp.asarray(z), args.eps), seed=5, num_samples=args.samples)
            for n in names:
                scores[n].append(float(divs[n](tok)))
        corr = {n: {"spearman": float(spearmanr(scores["exact"], scores[n]).correlation),
                    "kendall": float(kendalltau(scores["exact"], scores[n]).correlation),
                    # does the divergence pick a grid the exact one rates well? exact rank of its argmin
                    "exact_rank_of_its_best": int(np.argsort(np.argsort(scores["exact"]))[int(np.argmin(scores[n]))])}
                for n in names if n != "exact"}
        results[set_name] = {"scores": scores, "correlations": corr,
                             "exact_range": [min(scores["exact"]), max(scores["exact"])]}
        print(set_name, {n: round(c["spearman"], 3) for n, c in corr.items()}, flush=True)
    payload = {"provenance": provenance(), "teacher": teacher.describe(), "nfe": args.nfe, "grids": args.grids,
               "samples": args.samples, "ref_nfe": args.ref_nfe, "results": results,
               "seconds": time.perf_counter() - t0}
    lines = [f"# Rank agreement of teacher-only divergences with the exact one: {teacher.name}", "",
             f"- date: {payload['provenance']['date']}; commit {payload['provenance']['commit']}; machine: "
             f"{payload['provenance']['machine']}",
             f"- command: `{payload['provenance']['command']}`",
             f"- {args.grids} random {args.nfe}-step grids per set, {args.samples} samples each (one seed, common to "
             f"all grids); reference: the teacher's {args.ref_nfe}-step samples (another seed); {payload['seconds']:.0f} s",
             "- broad: logits ~ N(0, 1.2^2); local: best fixed grid's logits + N(0, 0.3^2)",
             "- exact rank of its best: the exact divergence's rank (0 = best) of the grid the divergence rates best",
             "", "| set | divergence | Spearman | Kendall | exact rank of its best | exact KL range |",
             "|---|---|---|---|---|---|"]
    for set_name, r in results.items():
        for n, c in r["correlations"].items():
            lines.append(f"| {set_name} | {n} | {c['spearman']:.3f} | {c['kendall']:.3f} | "
                         f"{c['exact_rank_of_its_best']} / {args.grids} | "
                         f"{r['exact_range'][0]:.4f} - {r['exact_range'][1]:.4f} |")
    md = "\n".join(lines) + "\n"
    jpath, mpath = write_results(args.name, payload, md)
    print(md)
    print(f"wrote {jpath}, {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
