"""Reveal policies against the plain sampler at equal NFE: share of the Euler@M -> teacher gap
closed on held-out seeds, unigram entropy beside it (and the network calls really made).

Teachers: the exact chain (any chain seed), a network checkpoint (exact metrics when it was
trained on a chain), or the exact HMM oracle (`--hmm`, when lsd_jax.teachers.hmm exists).
Divergence: the exact bigram KL on chain teachers; otherwise the n-gram divergence against the
teacher's own many-step samples (seed 1). The ceiling is the teacher's `--teacher-nfe`-step
sampler on the same held-out seeds.

    python benchmarks/reveal_policies.py --teacher-seed 0 --name reveal-exact-s0
    python benchmarks/reveal_policies.py --checkpoint checkpoints/chain-absorb --samples 256 --name reveal-net-chain
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import provenance, write_results  # noqa: E402
from lsd_jax import grids, reveal, tune  # noqa: E402
from lsd_jax.eval.sampling import HELD_OUT_SEED0, evaluate_sampler, gap_closed, run_sampler  # noqa: E402

EPS = 1e-4


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--hmm", action="store_true", help="the exact HMM oracle (lsd_jax.teachers.hmm_teacher)")
    p.add_argument("--teacher-seed", type=int, default=0, help="markov / hmm teacher: seed of the chain")
    p.add_argument("--nfe", type=int, nargs="+", default=[8, 16])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--teacher-nfe", type=int, default=1024)
    p.add_argument("--eb-budgets", type=float, nargs="*", default=[0.05, 0.3, 1.0, 3.0])
    p.add_argument("--best-grid", action="store_true", help="also the best fixed grid (ctmc) chosen on seeds 0, 1")
    p.add_argument("--tuned", default=None, help="comma list NFE:path of tune --reveal planned sampler-params")
    p.add_argument("--show-samples", type=int, default=0, help="decoded samples per row (text teachers)")
    p.add_argument("--ceiling-from", default=None,
                   help="PATH:NFE: take the teacher row (same seeds and samples) from an nfe_vs_quality results JSON "
                        "instead of sampling it again (exact teachers)")
    p.add_argument("--name", required=True)
    return p.parse_args(argv)


def load(args):
    if args.hmm:
        from lsd_jax.teachers import hmm_teacher

        return hmm_teacher(seed=args.teacher_seed)  # the default oracle (H 16, V 32, L 32)
    if args.checkpoint:
        from benchmarks.common import bench_teacher

        return bench_teacher(args.checkpoint)
    from lsd_jax.teachers import markov_teacher

    return markov_teacher(seed=args.teacher_seed)


def divergence_fn(teacher, args):
    """(name, divergence(tokens) -> float); exact bigram KL when the teacher has a chain."""
    if teacher.exact:  # the exact teacher's headline divergence (chain: bigram KL; HMM: lag KL)
        return getattr(getattr(teacher, "oracle", teacher.chain), "HEADLINE", "bigram_kl"), None
    ref = run_sampler(teacher, grids.uniform(args.teacher_nfe, EPS), seed=1, num_samples=args.samples)
    return "ngram", tune.make_divergence("ngram", teacher, ref)


def rows_for(teacher, m: int, args) -> list:
    """(label, grid, policy, remask, counts) rows at M = m steps."""
    u = grids.uniform(m, EPS)
    order = reveal.planned_order(teacher.length)
    rows = [("euler (ctmc)", u, None, None, None)]
    for name in ("random", "planned", "confidence", "margin", "entropy"):
        rows.append((name, u, reveal.get_policy(name), None, None))
    rows.append(("planned, screened counts", u, reveal.Planned(), None, reveal.screened_counts(order, m)))
    if m > 2:  # same calls: M - 2 reveal steps + 2 corrector calls
        r = max(1, teacher.length // (2 * m))
        rows.append((f"planned + remask 2x{r}", grids.uniform(m - 2, EPS), reveal.Planned(), reveal.Remask(2, r),
                     None))
    return rows


def evaluate_row(teacher, grid, policy, remask, counts, seeds, args, div):
    toks, calls = [], []
    for s in seeds:
        if counts is not None:
            import jax

            out = reveal.sample(teacher.score_fn, teacher.graph, teacher.noise, grid, jax.random.PRNGKey(s),
                                args.samples, teacher.length, policy=policy, counts=counts)
            t, c = np.asarray(out.tokens), float(np.mean(np.asarray(out.calls)))
        else:
            t, c = run_sampler(teacher, grid, seed=s, num_samples=args.samples, reveal=policy, remask=remask,
                               return_calls=True)
        toks.append(t)
        calls.append(c)
    per = []
    for t, c in zip(toks, calls):
        m = teacher.metrics(t)
        if div is not None:
            m["ngram"] = div(t)
        per.append({**m, "network_calls": c})
    keys = per[0].keys()
    res = {k: float(np.mean([p[k] for p in per])) for k in keys}
    res.update({k + "_std": float(np.std([p[k] for p in per], ddof=1)) if len(per) > 1 else 0.0 for k in keys})
    res["sample_text"] = [teacher.decode(r) for r in toks[0][: args.show_samples]] if teacher.decode else []
    return res


def ceiling_from(spec: str, seeds, args) -> dict:
    """The `teacher (euler)` row at NFE from an nfe_vs_quality results JSON (same seeds and samples)."""
    import json

    path, nfe = spec.rsplit(":", 1)
    with open(path) as f:
        rows = json.load(f)["rows"]
    row = next((r for r in rows if r["sampler"] == "teacher (euler)" and r["nfe"] == int(nfe)), None)
    if row is None or row["seeds"] != list(seeds) or row["num_samples"] != args.samples:
        raise SystemExit(f"{spec}: no teacher (euler) row at NFE {nfe} with seeds {list(seeds)} x {args.samples}")
    args.teacher_nfe = int(nfe)
    return {**row, "network_calls": int(nfe) + 1, "sample_text": [], "from": spec}


def main(argv=None) -> int:
    args = parse(argv)
    teacher = load(args)
    if not teacher.graph.is_absorbing:
        raise SystemExit("reveal policies need an absorbing-graph teacher")
    seeds = [HELD_OUT_SEED0 + i for i in range(args.seeds)]
    key, div = divergence_fn(teacher, args)
    tuned = dict(item.split(":", 1) for item in args.tuned.split(",")) if args.tuned else {}
    t0 = time.perf_counter()
    if args.ceiling_from:
        ceiling = ceiling_from(args.ceiling_from, seeds, args)
    else:
        ceiling = evaluate_row(teacher, grids.uniform(args.teacher_nfe, EPS), None, None, None, seeds, args, div)
    results = []
    for m in args.nfe:
        rows = rows_for(teacher, m, args)
        if args.best_grid:
            g, table = tune.best_fixed_grid(teacher, m, div or (lambda tok: teacher.metrics(tok)[key]), eps=EPS,
                                            num_samples=args.samples)
            best = min(table, key=lambda r: r["divergence"])["grid"]
            rows.insert(1, (f"euler, best fixed grid ({best})", g, None, None, None))
            rows.insert(4, (f"planned, best fixed grid counts ({best})", g, reveal.Planned(), None, None))
        if str(m) in tuned:
            from lsd_jax import sampler_params as sp

            rows.append(("planned, tuned counts", sp.load(tuned[str(m)]).grid(), reveal.Planned(), None, None))
        base = None
        for label, grid, policy, remask, counts in rows:
            r = evaluate_row(teacher, grid, policy, remask, counts, seeds, args, div)
            base = r if base is None else base
            r.update({"label": label, "nfe": m, "gap_closed": gap_closed(r[key], base[key], ceiling[key]),
                      "counts": (np.asarray(counts).tolist() if counts is not None else
                                 reveal.counts_from_grid(teacher.noise, grid, teacher.length).tolist()
                                 if policy is not None else None)})
            results.append(r)
            print(f"M={m} {label:<40} {key} {r[key]:.4f} gap {r['gap_closed']:.0%} H {r['unigram_entropy']:.4f} "
                  f"calls {r['network_calls']:.2f}", flush=True)
        for b in args.eb_budgets:
            r = evaluate_row(teacher, grids.uniform(m, EPS), reveal.EB(b), None, None, seeds, args, div)
            r.update({"label": f"eb (budget {b})", "nfe": None, "eb_budget": b, "section_nfe": m,
                      "gap_closed": gap_closed(r[key], base[key], ceiling[key])})
            results.append(r)
            print(f"eb {b}: {key} {r[key]:.4f} H {r['unigram_entropy']:.4f} calls {r['network_calls']:.2f}", flush=True)
        args.eb_budgets = []  # eb does not depend on M: once
    payload = {**provenance(), "teacher": teacher.describe(), "divergence": key, "seeds": seeds,
               "samples": args.samples, "teacher_nfe": args.teacher_nfe, "ceiling": ceiling, "rows": results,
               "seconds": time.perf_counter() - t0,
               "data_unigram_entropy": (getattr(teacher, "oracle", teacher.chain).unigram_entropy()
                                        if teacher.exact else None)}
    jpath, mpath = write_results(args.name, payload, markdown(payload))
    plot(payload, os.path.join(os.path.dirname(jpath), args.name + ".png"))
    print("wrote", jpath, mpath)
    return 0


def markdown(p: dict) -> str:
    key = p["divergence"]
    lines = [f"# Reveal policies: {p['teacher']['name']}", "",
             f"- date: {p['date']}; commit {p['commit']}; machine: {p['machine']} (2-core CPU shared)",
             f"- command: `{p['command']}`",
             f"- held-out seeds {p['seeds']} x {p['samples']} samples; mean ± std over seeds",
             f"- divergence: {'n-gram divergence vs the teacher samples (seed 1)' if key == 'ngram' else 'exact ' + key};"
             f" gap closed = (D_euler@M - D) / (D_euler@M - D_teacher@{p['teacher_nfe']})",
             "- calls = network calls per sample actually made (ctmc: M + final denoise; reveal policies with "
             "counts summing to L skip the denoise; eb: adaptive, its mean)", ""]
    ce = p["ceiling"]
    cols = ["policy", "M", "counts", "calls", key, "gap closed", "unigram entropy"] + (["NLL/token"] if "nll" in ce else [])
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def row(r, m):
        counts = ",".join(str(c) for c in r["counts"]) if r.get("counts") else ""
        gap = f"{r['gap_closed']:.0%}" if r.get("gap_closed") is not None else ""
        cells = [r["label"], str(m), counts, f"{r['network_calls']:.2f}", f"{r[key]:.4f} ± {r[key + '_std']:.4f}", gap,
                 f"{r['unigram_entropy']:.4f} ± {r['unigram_entropy_std']:.4f}"]
        if "nll" in ce:
            cells.append(f"{r['nll']:.4f}")
        return "| " + " | ".join(cells) + " |"

    lines.append(row({**ce, "label": f"teacher (euler, {p['teacher_nfe']} steps)", "counts": None}, p["teacher_nfe"]))
    for r in p["rows"]:
        lines.append(row(r, r["nfe"] if r["nfe"] is not None else "adaptive"))
    if p.get("data_unigram_entropy"):
        lines += ["", f"data unigram entropy {p['data_unigram_entropy']:.4f} nats"]
    texts = [r for r in p["rows"] if r.get("sample_text")]
    if texts:
        lines += ["", "## Decoded samples (first held-out seed)", ""]
        for r in texts:
            lines.append(f"**{r['label']}, M={r['nfe']}**")
            lines += ["```"] + [t.replace("```", "'''") for t in r["sample_text"]] + ["```"]
    return "\n".join(lines) + "\n"


def plot(p: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = p["divergence"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    group = lambda label: label.split(" (")[0].split(" 2x")[0]  # one line per policy across M
    labels = sorted({group(r["label"]) for r in p["rows"]})
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    for i, lab in enumerate(labels):
        pts = sorted((r["network_calls"], r[key]) for r in p["rows"] if group(r["label"]) == lab)
        ax.plot(*zip(*pts), "os^vD<>"[i % 7] + "-", color=colors[(2 * i) % 20 + (2 * i) // 20], label=lab)
    ax.axhline(p["ceiling"][key], color="k", ls="--", label=f"teacher ({p['teacher_nfe']} steps)")
    ax.set_xlabel("network calls per sample")
    ax.set_ylabel(key)
    ax.set_yscale("log")
    ax.set_title(f"reveal policies on {p['teacher']['name']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot(name: str) -> None:
    """Re-renders the markdown and plot of a results JSON (no sampling)."""
    import json

    from benchmarks.common import RESULTS

    with open(os.path.join(RESULTS, name + ".json")) as f:
        payload = json.load(f)
    with open(os.path.join(RESULTS, name + ".md"), "w") as f:
        f.write(markdown(payload))
    plot(payload, os.path.join(RESULTS, name + ".png"))


if __name__ == "__main__":
    sys.exit(main())
