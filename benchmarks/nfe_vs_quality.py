"""Samplers at equal NFE: Euler, Tweedie, trapezoidal, first-hitting, temperature-matched Euler,
JYS grid, best fixed grid, tuned grid, LSD, LSD+, teacher.

Every row is evaluated on held-out sampling seeds (mean +- std over seeds) with the
teacher's metrics: on the exact Markov teacher (or a network trained on it, with its
chain.json) the exact NLL per token, the bigram KL against the chain and the unigram
entropy; otherwise the unigram entropy and the n-gram divergence against the teacher's
own many-step samples. Grids and learned parameters are chosen on other seeds.

    python benchmarks/nfe_vs_quality.py --graph absorb --name exact-absorb
    python benchmarks/nfe_vs_quality.py --checkpoint checkpoints/chain-absorb --name net-chain-absorb
    python benchmarks/nfe_vs_quality.py --teacher hmm --graph absorb --name hmm-absorb

Writes benchmarks/results/<name>.json, .md and .png. On a text checkpoint, follow with
``text_eval.py --results <name>`` for the evaluators' NLL per character with paired
intervals against Euler and the anchor rows (``--genppl`` here is per-token gen-PPL only,
which does not rank samplers on character-level text).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench_teacher, provenance, write_results  # noqa: E402

from lsd_jax import distill, grids, tune  # noqa: E402
from lsd_jax._compat import enable_x64  # noqa: E402
from lsd_jax.divergences import make_divergence, ngram_divergence  # noqa: E402
from lsd_jax.names import GRAPHS, NOISES  # noqa: E402
from lsd_jax.samplers import SAMPLERS  # noqa: E402
from lsd_jax.eval.sampling import HELD_OUT_SEED0, gap_closed, mean_std, run_sampler  # noqa: E402
from lsd_jax.eval.text_metrics import unigram_entropy  # noqa: E402
from lsd_jax.names import TEACHERS  # noqa: E402

LSD_VARIANTS = {  # name -> (method, loss, reading)
    "lsd": ("lsd", "kl", "linear"),
    "lsd+": ("lsd+", "kl", "linear"),
    "lsd-temp": ("lsd", "kl", "temperature"),
    "lsd+-temp": ("lsd+", "kl", "temperature"),
    "lsd+-tokenkl-temp": ("lsd+", "token-kl", "temperature"),
    "lsd+-l2": ("lsd+", "l2", "linear"),
}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="network teacher directory (else the exact --teacher)")
    p.add_argument("--teacher", choices=TEACHERS, default="markov", help="the exact teacher (default markov)")
    p.add_argument("--graph", choices=GRAPHS, default="absorb")
    p.add_argument("--noise", choices=NOISES, default=None)
    p.add_argument("--sampler", choices=SAMPLERS, default="euler", help="step of the learned samplers")
    p.add_argument("--nfe", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--learn-nfe", type=int, nargs="*", default=None,
                   help="NFE values that get the best-fixed, tuned and LSD rows (default: all of --nfe)")
    p.add_argument("--teacher-nfe", type=int, default=1024, help="teacher steps (distillation and the ceiling row)")
    p.add_argument("--teacher-rows", type=int, nargs="*", default=[256], help="extra teacher rows (steps)")
    p.add_argument("--ref-nfe", type=int, default=None,
                   help="steps of the teacher's reference samples for the n-gram / MMD tuning divergences "
                        "(default --teacher-nfe)")
    p.add_argument("--val-samples", type=int, default=1024, help="samples per epoch for LSD's selection")
    p.add_argument("--seeds", type=int, default=3, help="held-out evaluation seeds")
    p.add_argument("--samples", type=int, default=1024, help="samples per evaluation seed")
    p.add_argument("--crn-seeds", type=int, default=2, help="tuning seeds (common random numbers) per candidate")
    p.add_argument("--variants", default="lsd,lsd+,lsd-temp,lsd+-temp,lsd+-tokenkl-temp,lsd+-l2",
                   help=f"comma list of {', '.join(LSD_VARIANTS)} (empty: none)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--tune-budget", type=int, default=120, help="CMA-ES evaluations of the tuned grid (0: skip)")
    p.add_argument("--tune-divergences", default="auto",
                   help="comma list of exact, ngram, mmd: one tuned row each (auto: exact where the teacher "
                        "has a chain, else ngram)")
    p.add_argument("--genppl", default=None,
                   help="evaluator for gen-PPL of decoded samples: 'smollm2' or a HF causal-LM directory")
    p.add_argument("--genppl-samples", type=int, default=64, help="samples per seed scored by the evaluator")
    p.add_argument("--show-samples", type=int, default=3, help="decoded samples kept per row (first seed)")
    p.add_argument("--eps", type=float, default=1e-4)
    p.add_argument("--di4c", nargs="*", default=[],
                   help="Di4C student directories (lsd-jax distill-student): rows at their own NFE")
    p.add_argument("--no-solver-rows", dest="solver_rows", action="store_false",
                   help="skip the trapezoidal, first-hitting, temperature-matched Euler and JYS-grid rows")
    p.add_argument("--name", required=True)
    args = p.parse_args(argv)
    if args.learn_nfe is None:
        args.learn_nfe = list(args.nfe)
    return args


class Evaluator:
    """Held-out evaluation of a sampler: per seed, the teacher's metrics, the n-gram
    divergence against the teacher's own held-out samples (network teachers), gen-PPL of
    decoded text (with --genppl), and a few decoded samples; mean and std over seeds."""

    def __init__(self, teacher, args):
        self.teacher, self.args = teacher, args
        self.seeds = [HELD_OUT_SEED0 + i for i in range(args.seeds)]
        self.reference = None  # {seed: tokens} of the teacher row, set by set_reference
        self.lm = None
        if args.genppl:
            from lsd_jax.eval.genppl import load_evaluator

            if teacher.decode is None:
                raise ValueError("--genppl needs a teacher whose tokens decode to text (a text checkpoint)")
            self.lm = load_evaluator(args.genppl)

    def tokens(self, grid, seed, **kw) -> np.ndarray:
        return run_sampler(self.teacher, grid, seed=seed, num_samples=self.args.samples, **kw)

    def __call__(self, grid, **kw) -> tuple[dict, dict]:
        toks = {s: self.tokens(grid, s, **kw) for s in self.seeds}
        return self.summarize(toks), toks

    def summarize(self, toks: dict) -> dict:
        """Metrics of samples {seed: tokens [B, L]}: per seed, then mean and std over seeds."""
        per_seed = []
        for s, tok in toks.items():
            m = dict(self.teacher.metrics(tok))
            if self.reference is not None:
                others = [r for k, r in self.reference.items() if k != s]  # never the same seed's draw
                m["ngram"] = ngram_divergence(tok, np.concatenate(others), self.teacher.graph.num_tokens)
            if self.lm is not None:
                texts = [self.teacher.decode(t) for t in tok[: self.args.genppl_samples]]
                g = self.lm.gen_ppl(texts, progress=False)
                m["genppl"], m["genppl_per_sample"] = g.ppl, g.ppl_per_sample_mean
            per_seed.append(m)
        out = {"seeds": list(toks), "num_samples": self.args.samples, **mean_std(per_seed)}
        if self.teacher.decode is not None and self.args.show_samples > 0:
            out["decoded"] = [self.teacher.decode(t) for t in toks[self.seeds[0]][: self.args.show_samples]]
        return out


def main(argv=None) -> int:
    args = parse(argv)
    teacher = bench_teacher(args.checkpoint, args.graph, args.noise, args.teacher)
    t_start = time.perf_counter()
    ev = Evaluator(teacher, args)
    seeds = ev.seeds
    crn = tuple(range(args.crn_seeds))

    # the reference for choosing grids (tuning seed 1 = never a held-out or CRN-scored draw of a student)
    ref_nfe = args.ref_nfe or args.teacher_nfe
    ref = run_sampler(teacher, grids.uniform(ref_nfe, args.eps), seed=1, num_samples=args.samples)
    ref_entropy = unigram_entropy(ref, mode="pooled")
    names = args.tune_divergences.split(",") if args.tune_divergences != "auto" else \
        (["exact"] if teacher.exact else ["ngram"])
    tune_divs = {n: make_divergence(n, teacher, ref) for n in names if n}
    sel_name = "exact" if teacher.exact else "ngram"
    select_div = tune_divs.get(sel_name) or make_divergence(sel_name, teacher, ref)

    rows = []
    main_keys = ("nll",) + exact_divergence_keys(teacher) + ("unigram_entropy",) if teacher.exact else \
        ("ngram", "unigram_entropy") + (("genppl",) if args.genppl else ())

    def add(sampler, nfe, res, extra=None):
        row = {"sampler": sampler, "nfe": nfe, **{k: v for k, v in res.items() if k != "per_seed"}, **(extra or {})}
        rows.append(row)
        print(f"  {sampler:<22} nfe {nfe:>5}: " + "  ".join(f"{k} {row[k]:.4f}+-{row[k + '_std']:.4f}"
                                                          for k in main_keys if k in row), flush=True)

    print(f"teacher {teacher.name}; held-out seeds {seeds} x {args.samples} samples; tuning reference "
          f"{ref_nfe} steps (entropy {ref_entropy:.4f}); tuned by {', '.join(tune_divs)}", flush=True)
    teacher_toks = {s: ev.tokens(grids.uniform(args.teacher_nfe, args.eps), s) for s in seeds}
    if not teacher.exact:  # the teacher's held-out samples are the evaluation reference (leave-one-seed-out)
        ev.reference = teacher_toks
    teacher_res = ev.summarize(teacher_toks)
    add("teacher (euler)", args.teacher_nfe, teacher_res)
    for n in sorted(set(args.teacher_rows) - {args.teacher_nfe}):
        add("teacher (euler)", n, ev(grids.uniform(n, args.eps))[0])
    variants = [v for v in args.variants.split(",") if v]
    for m in args.nfe:
        print(f"NFE {m}", flush=True)
        uni = grids.uniform(m, args.eps)
        add("euler", m, ev(uni, sampler="euler")[0])
        add("tweedie", m, ev(uni, sampler="tweedie")[0])
        if args.solver_rows:
            solver_rows(ev, add, teacher, m, args, ref, ref_entropy, crn, first=m == min(args.nfe))
        if m == min(args.nfe) and teacher.exact:
            with enable_x64():
                add("euler (float64 draws)", m, ev(uni, sampler="euler", x64=True)[0])
        if m not in args.learn_nfe:  # the best fixed grid is the baseline of the learned rows
            continue
        t0 = time.perf_counter()
        best_grid, table = tune.best_fixed_grid(teacher, m, select_div, sampler=args.sampler, eps=args.eps,
                                                crn_seeds=crn, num_samples=args.samples)
        best_name = min(table, key=lambda r: r["divergence"])["grid"]
        add("best fixed grid", m, ev(best_grid, sampler=args.sampler)[0],
            {"grid_name": best_name, "seconds": time.perf_counter() - t0, "chosen_by": sel_name})
        for dname, div in (tune_divs.items() if args.tune_budget > 0 else ()):
            t0 = time.perf_counter()
            params, hist = tune.search(teacher, m, div, sampler=args.sampler, eps=args.eps, budget=args.tune_budget,
                                       init_grid=best_grid, crn_seeds=crn, num_samples=args.samples,
                                       entropy_ref=ref_entropy, progress=False)
            add(f"tuned grid ({dname})", m, ev(params.grid(), sampler=args.sampler)[0],
                {"seconds": time.perf_counter() - t0, "budget": args.tune_budget,
                 "grid": np.asarray(params.grid()).tolist(),
                 "rejected": sum(bool(h.get("rejected")) for h in hist if "eval" in h)})
        for v in variants:
            method, loss, reading = LSD_VARIANTS[v]
            cfg = distill.DistillConfig(method=method, sampler=args.sampler, nfe=m, teacher_nfe=args.teacher_nfe,
                                        loss=loss, reading=reading, epochs=args.epochs, eps=args.eps,
                                        val_samples=args.val_samples)
            t0 = time.perf_counter()
            params, hist = distill.fit(teacher, cfg, progress=False)
            secs = time.perf_counter() - t0
            sel = min((h["val_divergence"], h["epoch"]) for h in hist if h.get("val_divergence") is not None)[1]
            add(v, m, ev(params.grid(), sampler=args.sampler, phi=params.phi, reading=reading)[0],
                {"seconds": secs, "selected_epoch": sel, "phi": np.asarray(params.phi).tolist(),
                 "grid": np.asarray(params.grid()).tolist()})
            last = hist[-1]
            if sel != last["epoch"]:  # what the raw loss led to, without selection
                add(v + " (last epoch)", m, ev(np.asarray(last["grid"]), sampler=args.sampler,
                                               phi=np.asarray(last["phi"]), reading=reading)[0],
                    {"phi": last["phi"], "grid": last["grid"]})

    for d in args.di4c:
        di4c_rows(d, args, add, select_div, crn)

    # share of the Euler -> teacher gap closed: by the exact (headline) divergence where there
    # is one, else by the n-gram divergence against the teacher's held-out samples
    key = exact_divergence_keys(teacher)[0] if teacher.exact else "ngram"
    ceiling = rows[0][key]
    for r in rows:
        base = [e for e in rows if e["sampler"] == "euler" and e["nfe"] == r["nfe"]]
        r["gap_closed"] = gap_closed(r[key], base[0][key], ceiling) if base else None

    prov = provenance()
    payload = {"provenance": prov, "teacher": teacher.describe(), "seeds": seeds, "samples": args.samples,
               "selection_divergence": sel_name, "tune_divergences": list(tune_divs), "crn_seeds": list(crn),
               "reference_nfe": ref_nfe, "reference_entropy": ref_entropy, "gap_key": key,
               "genppl": ({"evaluator": ev.lm.name, "samples_per_seed": args.genppl_samples} if ev.lm else None),
               "rows": rows, "seconds": time.perf_counter() - t_start}
    md = markdown(payload, teacher)
    jpath, mpath = write_results(args.name, payload, md)
    plot(payload, os.path.splitext(jpath)[0] + ".png", teacher)
    print(md)
    print(f"wrote {jpath}, {mpath}")
    return 0


def di4c_rows(path: str, args, add, select_div, crn) -> None:
    """Rows of a Di4C student (its own sampler and NFE): on the grid it was trained for, and on the best
    fixed grid chosen for the student on the tuning seeds (the student as a teacher object).
    Training cost: the student's train_wall_s."""
    import json

    from lsd_jax.students import STUDENT_FILE
    from lsd_jax.teachers.checkpoint import load_teacher

    with open(os.path.join(path, STUDENT_FILE)) as f:
        meta = json.load(f)
    cfg = meta["config"]
    m, sampler = cfg["nfe"], cfg["sampler"]
    student = load_teacher(path)
    ev = Evaluator(student, args)
    extra = {"student": path, "train_seconds": meta["train_wall_s"], "train_steps": meta["step"],
             "seconds": meta["train_wall_s"]}
    own = cfg.get("grid", "uniform")  # the grid the student was trained for
    add(f"di4c ({sampler}, {own} grid)", m, ev(grids.get_grid(own, m, cfg["eps"]), sampler=sampler)[0], extra)
    t0 = time.perf_counter()
    best_grid, table = tune.best_fixed_grid(student, m, select_div, sampler=sampler, eps=cfg["eps"], crn_seeds=crn,
                                            num_samples=args.samples)
    add(f"di4c + best fixed grid ({sampler})", m, ev(best_grid, sampler=sampler)[0],
        {**extra, "grid_name": min(table, key=lambda r: r["divergence"])["grid"],
         "seconds": meta["train_wall_s"] + time.perf_counter() - t0})


def solver_rows(ev, add, teacher, m, args, ref, ref_entropy, crn, first: bool) -> None:
    """Rows of the solvers issue at NFE m: trapezoidal (m / 2 steps of 2 calls), first-hitting
    (absorbing graph, once: its NFE is L), Euler at one global temperature matched to the
    teacher's unigram entropy (chosen on the tuning seeds), Euler on the JYS grid."""
    from lsd_jax import baselines

    if m % 2 == 0:
        add("trapezoidal", m, ev(grids.uniform(m // 2, args.eps), sampler="trapezoidal")[0], {"steps": m // 2})
    if first and teacher.graph.is_absorbing:
        res = ev(grids.uniform(1, args.eps), sampler="fhs")[0]
        add("first-hitting", teacher.length, res, {"steps": teacher.length})
    uni = grids.uniform(m, args.eps)
    target = teacher.oracle.unigram_entropy() if teacher.exact else ref_entropy
    t0 = time.perf_counter()
    phi, hist = baselines.temperature_matched_euler(teacher, uni, target, seeds=crn, num_samples=args.samples)
    add("euler, temperature-matched", m, ev(uni, sampler="euler", phi=np.full(m, phi), reading="temperature")[0],
        {"temperature_phi": phi, "target_entropy": target, "seconds": time.perf_counter() - t0,
         "search": hist})
    t0 = time.perf_counter()
    g = baselines.jys_grid(teacher.score_fn, teacher.graph, teacher.noise, ref[:256], m, args.eps)
    add("euler, JYS grid", m, ev(g, sampler="euler")[0],
        {"grid": np.asarray(g).tolist(), "seconds": time.perf_counter() - t0})


# --- exact teachers: the divergences of a row and the header of the table -----------------
DIVERGENCE_LABELS = {"bigram_kl": "bigram KL", "lag_kl": "lag KL (mean of 1, 2, 4, 8)", "lag_kl_8": "lag-8 KL",
                     "ngram": "n-gram div."}


def exact_divergence_keys(teacher) -> tuple:
    """The exact divergences a row reports; the first is the headline (gap closed, plot).
    HMM: the mean lag-1/2/4/8 pair KL (it sees the long-range dependence bigram KL cannot),
    then bigram KL (comparable with the chain's tables) and lag-8 KL; chain: bigram KL."""
    head = teacher.oracle.HEADLINE
    return (head,) + tuple(k for k in ("bigram_kl", "lag_kl_8") if k != head and teacher.hmm is not None)


def exact_header_lines(teacher, samples: int) -> list:
    """What the exact teacher is, its entropies and the sampling floors of its divergences."""
    o = teacher.oracle
    v, length = o.num_tokens, o.length
    floor = lambda lag: (v * v - 1) / (2 * samples * (length - lag))  # noqa: E731
    if teacher.hmm is None:
        return [f"- chain entropy rate {o.entropy_rate():.4f} nats/token, unigram entropy "
                f"{o.unigram_entropy():.4f}; bigram KL floor at this sample size ~{floor(1):.4f}",
                "- gap closed = (KL_euler - KL) / (KL_euler - KL_teacher) at the same NFE (exact bigram KL)"]
    lags = [d for d in (1, 2, 4, 8) if d < length]
    mi = ", ".join(f"{o.mutual_information(d):.3f}" for d in lags)
    return [f"- HMM H {o.num_states}, V {v}, L {length}: entropy rate {o.entropy_rate():.4f} ± "
            f"{o.entropy_rate_se():.4f} nats/token (Monte Carlo over exact samples), unigram entropy "
            f"{o.unigram_entropy():.4f}; mutual information between tokens at lags {lags}: {mi} nats",
            f"- lag-d KL = KL(empirical || exact) of position-averaged pairs (x_i, x_i+d); floors at this sample "
            f"size ~{floor(1):.4f} (lag 1) to ~{floor(lags[-1]):.4f} (lag {lags[-1]}); lag KL = their mean "
            f"over d in {lags}, the headline",
            "- gap closed = (KL_euler - KL) / (KL_euler - KL_teacher) at the same NFE (exact lag KL)"]


def markdown(payload: dict, teacher) -> str:
    p = payload["provenance"]
    exact = teacher.exact
    gp = payload.get("genppl")
    lines = [f"# NFE vs quality: {teacher.name}", "",
             f"- date: {p['date']}; commit {p['commit']}; machine: {p['machine']}",
             f"- command: `{p['command']}`",
             f"- held-out seeds {payload['seeds']} x {payload['samples']} samples; mean ± std over seeds; "
             f"grids and learned parameters chosen on other seeds ({payload.get('crn_seeds')}); the best fixed "
             f"grid by {payload['selection_divergence']}, tuned grids by the divergence in their name, against "
             f"the teacher's {payload.get('reference_nfe')}-step samples (seed 1, unigram entropy "
             f"{payload.get('reference_entropy', float('nan')):.4f}) with the ±1% entropy guard",
             "- NFE = predictor steps M; every sampler also makes the final denoise call (M + 1 calls in all)",
             "- time: wall seconds of choosing the grid / tuning / distilling on this machine",
             ]
    if exact:
        lines += exact_header_lines(teacher, payload["samples"])
    else:
        lines.append("- n-gram = symmetric unigram + bigram KL (add-0.5) against the teacher's held-out samples "
                     "of the other seeds; gap closed is measured by it (no exact divergence for this teacher)")
    if gp:
        lines.append(f"- gen-PPL under {gp['evaluator']} of the first {gp['samples_per_seed']} decoded samples "
                     "per seed: exp(mean token NLL) / mean of per-sample PPL. Lower gen-PPL at lower entropy "
                     "is sharpening, not quality: read it with the entropy column")
    lines.append("")
    div_keys = exact_divergence_keys(teacher) if exact else ("ngram",)
    cols = ["sampler", "NFE"] + (["NLL/token"] if exact else []) + [DIVERGENCE_LABELS[k] for k in div_keys]
    cols += ["gap closed", "unigram entropy"]
    if gp:
        cols += ["gen-PPL", "gen-PPL (per-sample mean)"]
    cols.append("time (s)")
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    pm = lambda r, k, f=".4f": f"{r[k]:{f}} ± {r[k + '_std']:{f}}"
    for r in payload["rows"]:
        cells = [r["sampler"] + (f" ({r['grid_name']})" if "grid_name" in r else ""), str(r["nfe"])]
        cells += ([pm(r, "nll")] if exact else []) + [pm(r, k) for k in div_keys]
        cells.append("" if r.get("gap_closed") is None else f"{100 * r['gap_closed']:.0f}%")
        cells.append(pm(r, "unigram_entropy"))
        if gp:
            cells += [pm(r, "genppl", ".1f"), pm(r, "genppl_per_sample", ".1f")]
        cells.append(f"{r['seconds']:.0f}" if "seconds" in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    shown = [r for r in payload["rows"] if r.get("decoded")]
    if shown and not exact:  # text teachers: what the numbers look like
        m0 = min(r["nfe"] for r in payload["rows"] if r["sampler"] == "euler")
        pick = [r for r in shown if r["sampler"].startswith("teacher")][:1]
        pick += [r for r in shown if r["nfe"] == m0 and (r["sampler"] in ("euler", "best fixed grid", "lsd+")
                                                         or r["sampler"].startswith("tuned"))]
        lines += ["", f"## Decoded samples (first held-out seed, first {len(shown[0]['decoded'])})", ""]
        for r in pick:
            lines.append(f"**{r['sampler']} @ {r['nfe']}**" + "".join(f"\n\n    {_one_line(t)}" for t in r["decoded"]))
            lines.append("")
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return text.replace("\n", " ⏎ ")


def plot(payload: dict, path: str, teacher) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = payload.get("gap_key") or (exact_divergence_keys(teacher)[0] if teacher.exact else "ngram")
    keys = [key, "unigram_entropy"] + (["genppl"] if payload.get("genppl") else [])
    rows = [r for r in payload["rows"] if not r["sampler"].startswith("teacher") and "last epoch" not in r["sampler"]
            and "float64" not in r["sampler"]]
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4))
    for name in names:
        rs = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["nfe"])
        x = [r["nfe"] for r in rs]
        for ax, k in zip(axes, keys):
            ax.errorbar(x, [r[k] for r in rs], yerr=[r[k + "_std"] for r in rs], marker="o", capsize=2, label=name)
    teach = [r for r in payload["rows"] if r["sampler"].startswith("teacher")]
    for ax, k in zip(axes, keys):
        for r in teach:
            if k in r:
                ax.axhline(r[k], ls="--", lw=0.8, color="gray")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("NFE")
        ax.set_ylabel(k)
    if teacher.exact:
        axes[1].axhline(teacher.oracle.unigram_entropy(), color="k", lw=0.8, label="data")
    axes[0].set_yscale("log")
    axes[0].set_ylabel(key + " (log)")
    axes[1].set_ylabel("unigram entropy (nats)")
    axes[0].legend(fontsize=7)
    steps = ", ".join(str(r["nfe"]) for r in teach)
    fig.suptitle(f"{teacher.name}: quality vs NFE (dashed: teacher at {steps} steps)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
