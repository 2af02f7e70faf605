"""Reveal policies against the plain sampler at equal NFE: share of the Euler@M -> teacher gap
closed on held-out seeds, unigram entropy beside it (and the network calls really made).

Teachers: the exact chain (any chain seed), a network checkpoint (exact metrics when it was
trained on a chain), or the exact HMM oracle (`--hmm`, when lsd_jax.teachers.hmm exists).
Divergence: the exact bigram KL on chain teachers; otherwise the n-gram divergence against the
teacher's own many-step samples (seed 1). The ceiling is the teacher's `--teacher-nfe`-step
sampler on the same held-out seeds. The teacher's many-step runs (ceiling and n-gram reference)
are cached per (teacher, steps, seed, samples) under `--cache-dir`, so reruns and other policy
sets reuse them. Text teachers: `--evaluator smollm2` adds the evaluator's NLL per character
(`lsd_jax.eval.char_nll`) of every row's decoded samples (all seeds), its share of the gap, and
the paired difference against Euler at the same M; `--show-samples k` puts k decoded samples per
policy side by side in the markdown. The results files are rewritten after every row.

    python benchmarks/reveal_policies.py --teacher-seed 0 --name reveal-exact-s0
    python benchmarks/reveal_policies.py --checkpoint checkpoints/chain-absorb --samples 256 --name reveal-net-chain
    python benchmarks/reveal_policies.py --checkpoint checkpoints/text-char-absorb --samples 32 --teacher-nfe 256 \
        --evaluator smollm2 --show-samples 2 --name reveal-text-char-absorb
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import provenance, write_results  # noqa: E402
from lsd_jax import divergences, grids, reveal, tune  # noqa: E402
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
    p.add_argument("--evaluator", default=None, help="text teachers: causal LM for NLL per character (smollm2, ...)")
    p.add_argument("--cache-dir", default="runs/reveal-cache", help="teacher runs (and evaluator scores) cached here")
    p.add_argument("--name", required=True)
    return p.parse_args(argv)


def teacher_slug(args) -> str:
    """Names the teacher in cache file names."""
    if args.checkpoint:
        return os.path.basename(os.path.normpath(args.checkpoint))
    return f"{'hmm' if args.hmm else 'markov'}-s{args.teacher_seed}"


def teacher_tokens(teacher, args, seed: int) -> np.ndarray:
    """[samples, L] from the teacher's `--teacher-nfe`-step Euler sampler, cached on disk."""
    path = os.path.join(args.cache_dir, f"{teacher_slug(args)}-euler{args.teacher_nfe}-seed{seed}-n{args.samples}.npy")
    if os.path.isfile(path):
        return np.load(path)
    tok = run_sampler(teacher, grids.uniform(args.teacher_nfe, EPS), seed=seed, num_samples=args.samples)
    os.makedirs(args.cache_dir, exist_ok=True)
    np.save(path + ".tmp.npy", tok)
    os.replace(path + ".tmp.npy", path)
    return tok


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
    return "ngram", divergences.make_divergence("ngram", teacher, teacher_tokens(teacher, args, 1))


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


def evaluate_row(teacher, grid, policy, remask, counts, seeds, args, div, ceiling: bool = False):
    toks, calls = [], []
    for s in seeds:
        if ceiling:
            t, c = teacher_tokens(teacher, args, s), float(args.teacher_nfe + 1)
        elif counts is not None:
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
    if args.evaluator:  # every sample of every seed, for the evaluator (seed-major: paired by seed and index)
        res["texts"] = [teacher.decode(r) for t in toks for r in t]
    return res


class NllScorer:
    """NLL per character under `args.evaluator` of a row's texts (loaded once, on first use)."""

    def __init__(self, name: str):
        self.name, self.ev = name, None

    def __call__(self, row: dict, base: dict | None, ceiling: dict) -> None:
        """Adds nll_per_char (+ interval) to `row`; with `base` (Euler at the same M) also its
        share of the base -> ceiling gap and the paired difference against base."""
        from lsd_jax.eval.char_nll import mean_interval, paired_difference, score_texts
        from lsd_jax.eval.genppl import load_evaluator

        if self.ev is None:
            self.ev = load_evaluator(self.name, check=True)
            print(f"evaluator {self.ev.name}: known English text gen-PPL {self.ev.known_text_ppl:.1f}", flush=True)
        sc = score_texts(self.ev, row["texts"])
        row["nll_per_char"] = sc.summary()["nll_per_char"]
        row["nll_per_char_interval"] = mean_interval(sc.nll_per_char).to_dict()
        row["nll_texts"] = sc.nll_per_char.tolist()
        if base is not None:
            row["nll_gap_closed"] = gap_closed(row["nll_per_char"], base["nll_per_char"], ceiling["nll_per_char"])
            if row is not base:
                row["nll_vs_euler"] = paired_difference(sc.nll_per_char, base["nll_texts"]).to_dict()

    def meta(self) -> dict | None:
        return None if self.ev is None else {"evaluator": self.ev.name, "known_text_ppl": self.ev.known_text_ppl}


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
        ceiling = evaluate_row(teacher, grids.uniform(args.teacher_nfe, EPS), None, None, None, seeds, args, div,
                               ceiling=True)
    nll = NllScorer(args.evaluator) if args.evaluator else None
    if nll:
        nll(ceiling, None, ceiling)
    results = []
    payload = {**provenance(), "teacher": teacher.describe(), "divergence": key, "seeds": seeds,
               "samples": args.samples, "teacher_nfe": args.teacher_nfe, "ceiling": ceiling, "rows": results,
               "data_unigram_entropy": (getattr(teacher, "oracle", teacher.chain).unigram_entropy()
                                        if teacher.exact else None)}

    def save(final: bool = False):
        payload["seconds"], payload["complete"] = time.perf_counter() - t0, final
        jpath, mpath = write_results(args.name, payload, markdown(payload))
        plot(payload, os.path.join(os.path.dirname(jpath), args.name + ".png"))
        return jpath, mpath

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
            if nll:
                nll(r, base, ceiling)
            results.append(r)
            print(f"M={m} {label:<40} {key} {r[key]:.4f} gap {r['gap_closed']:.0%} H {r['unigram_entropy']:.4f} "
                  f"calls {r['network_calls']:.2f}", flush=True)
            save()
        for b in args.eb_budgets:
            r = evaluate_row(teacher, grids.uniform(m, EPS), reveal.EB(b), None, None, seeds, args, div)
            r.update({"label": f"eb (budget {b})", "nfe": None, "eb_budget": b, "section_nfe": m,
                      "gap_closed": gap_closed(r[key], base[key], ceiling[key])})
            if nll:
                nll(r, base, ceiling)
            results.append(r)
            print(f"eb {b}: {key} {r[key]:.4f} H {r['unigram_entropy']:.4f} calls {r['network_calls']:.2f}", flush=True)
            save()
        args.eb_budgets = []  # eb does not depend on M: once
    payload["evaluator"] = nll.meta() if nll else None
    jpath, mpath = save(final=True)
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
    nll = "nll_per_char" in ce
    if nll:
        ev = p.get("evaluator") or {"evaluator": "the evaluator"}
        lines.insert(-1, f"- NLL/char: {ev.get('evaluator', '?')} NLL per character of the decoded samples (nats, BOS in "
                         "front; all seeds), ± 95% t interval; gap closed by it; Δ vs Euler: paired difference "
                         "against Euler at the same M (same seed and index), 95% t interval")
    exact_nll = "nll" in ce  # exact teachers: NLL per token of the samples under the true law
    cols = ["policy", "M", "counts", "calls", key, "gap closed", "unigram entropy"]
    cols += ["NLL/token (exact)"] if exact_nll else []
    cols += ["NLL/char", "gap closed (NLL)", "Δ NLL/char vs Euler"] if nll else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def row(r, m):
        counts = ",".join(str(c) for c in r["counts"]) if r.get("counts") else ""
        gap = f"{r['gap_closed']:.0%}" if r.get("gap_closed") is not None else ""
        cells = [r["label"], str(m), counts, f"{r['network_calls']:.2f}", f"{r[key]:.4f} ± {r[key + '_std']:.4f}", gap,
                 f"{r['unigram_entropy']:.4f} ± {r['unigram_entropy_std']:.4f}"]
        if exact_nll:
            cells.append(f"{r['nll']:.4f}")
        if nll:
            iv, d = r["nll_per_char_interval"], r.get("nll_vs_euler")
            g = r.get("nll_gap_closed")
            cells += [f"{r['nll_per_char']:.3f} ± {iv['half_width']:.3f}", f"{g:.0%}" if g is not None else "",
                      f"{d['mean']:+.3f} [{d['mean'] - d['half_width']:+.3f}, {d['mean'] + d['half_width']:+.3f}]"
                      if d else ""]
        return "| " + " | ".join(cells) + " |"

    lines.append(row({**ce, "label": f"teacher (euler, {p['teacher_nfe']} steps)", "counts": None}, p["teacher_nfe"]))
    for r in p["rows"]:
        lines.append(row(r, r["nfe"] if r["nfe"] is not None else "adaptive"))
    if p.get("data_unigram_entropy"):
        lines += ["", f"data unigram entropy {p['data_unigram_entropy']:.4f} nats"]
    if not p.get("complete", True):
        lines += ["", "**incomplete: the run stopped before all rows were done**"]
    texts = [r for r in p["rows"] if r.get("sample_text")]
    if texts:
        k = max(len(r["sample_text"]) for r in texts)
        cell = lambda t: "`" + t.replace("`", "'").replace("|", "\\|") + "`"  # noqa: E731
        lines += ["", "## Decoded samples side by side (first held-out seed, same sample indices)", "",
                  "| policy | M | " + " | ".join(f"sample {i + 1}" for i in range(k)) + " |", "|" + "---|" * (k + 2)]
        if ce.get("sample_text"):
            lines.append(f"| teacher | {p['teacher_nfe']} | " + " | ".join(cell(t) for t in ce["sample_text"][:k]) + " |")
        for r in texts:
            m = r["nfe"] if r["nfe"] is not None else "adaptive"
            lines.append(f"| {r['label']} | {m} | " + " | ".join(cell(t) for t in r["sample_text"]) + " |")
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
