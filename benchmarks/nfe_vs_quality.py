"""Samplers at equal NFE: Euler, Tweedie, best fixed grid, tuned grid, LSD, LSD+, teacher.

Every row is evaluated on held-out sampling seeds (mean +- std over seeds) with the
teacher's metrics: on the exact Markov teacher (or a network trained on it, with its
chain.json) the exact NLL per token, the bigram KL against the chain and the unigram
entropy; otherwise the unigram entropy and the n-gram divergence against the teacher's
own many-step samples. Grids and learned parameters are chosen on other seeds.

    python benchmarks/nfe_vs_quality.py --graph absorb --name exact-absorb
    python benchmarks/nfe_vs_quality.py --checkpoint checkpoints/chain-absorb --name net-chain-absorb

Writes benchmarks/results/<name>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import provenance, write_results  # noqa: E402

from lsd_jax import distill, grids, tune  # noqa: E402
from lsd_jax._compat import enable_x64  # noqa: E402
from lsd_jax.cli import load_teacher  # noqa: E402
from lsd_jax.divergences import ngram_divergence  # noqa: E402
from lsd_jax.evaluate import HELD_OUT_SEED0, evaluate_sampler, gap_closed, run_sampler  # noqa: E402

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
    p.add_argument("--checkpoint", default=None, help="network teacher directory (else the exact markov teacher)")
    p.add_argument("--graph", choices=["absorb", "uniform"], default="absorb")
    p.add_argument("--noise", choices=["loglinear", "geometric"], default=None)
    p.add_argument("--sampler", choices=["euler", "tweedie"], default="euler", help="step of the learned samplers")
    p.add_argument("--nfe", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--teacher-nfe", type=int, default=1024, help="teacher steps (distillation and the ceiling row)")
    p.add_argument("--teacher-rows", type=int, nargs="*", default=[256], help="extra teacher rows (steps)")
    p.add_argument("--val-samples", type=int, default=1024, help="samples per epoch for LSD's selection")
    p.add_argument("--seeds", type=int, default=3, help="held-out evaluation seeds")
    p.add_argument("--samples", type=int, default=1024, help="samples per evaluation seed")
    p.add_argument("--variants", default="lsd,lsd+,lsd-temp,lsd+-temp,lsd+-tokenkl-temp,lsd+-l2",
                   help=f"comma list of {', '.join(LSD_VARIANTS)} (empty: none)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--tune-budget", type=int, default=120, help="CMA-ES evaluations of the tuned grid (0: skip)")
    p.add_argument("--eps", type=float, default=1e-4)
    p.add_argument("--name", required=True)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    ns = argparse.Namespace(checkpoint=args.checkpoint, graph=args.graph, noise=args.noise, teacher_vocab=16,
                            teacher_length=32, teacher_seed=0)
    teacher = load_teacher(ns)
    seeds = [HELD_OUT_SEED0 + i for i in range(args.seeds)]
    t_start = time.perf_counter()
    ev = lambda grid, **kw: evaluate_sampler(teacher, grid, seeds=seeds, num_samples=args.samples, **kw)

    # the reference and the divergence used for choosing grids (never the held-out seeds)
    if teacher.exact:
        div_name, divergence = "bigram_kl", tune.exact_divergence(teacher)
    else:
        ref = run_sampler(teacher, grids.uniform(args.teacher_nfe, args.eps), seed=1, num_samples=args.samples)
        div_name = "ngram"
        divergence = lambda tok: ngram_divergence(tok, ref, teacher.graph.num_tokens)

    rows = []

    def add(sampler, nfe, res, extra=None):
        row = {"sampler": sampler, "nfe": nfe, **{k: v for k, v in res.items() if k != "per_seed"}, **(extra or {})}
        rows.append(row)
        main_keys = ("nll", "bigram_kl", "unigram_entropy") if teacher.exact else ("unigram_entropy",)
        print(f"  {sampler:<22} nfe {nfe:>5}: " + "  ".join(f"{k} {row[k]:.4f}+-{row[k + '_std']:.4f}"
                                                          for k in main_keys), flush=True)

    print(f"teacher {teacher.name}; held-out seeds {seeds} x {args.samples} samples", flush=True)
    for n in sorted({args.teacher_nfe, *args.teacher_rows}):
        add(f"teacher (euler)", n, ev(grids.uniform(n, args.eps)))
    variants = [v for v in args.variants.split(",") if v]
    for m in args.nfe:
        print(f"NFE {m}", flush=True)
        uni = grids.uniform(m, args.eps)
        add("euler", m, ev(uni, sampler="euler"))
        add("tweedie", m, ev(uni, sampler="tweedie"))
        if m == min(args.nfe):
            with enable_x64():
                add("euler (float64 draws)", m, ev(uni, sampler="euler", x64=True))
        best_grid, table = tune.best_fixed_grid(teacher, m, divergence, sampler=args.sampler, eps=args.eps,
                                                num_samples=args.samples)
        best_name = min(table, key=lambda r: r["divergence"])["grid"]
        add(f"best fixed grid", m, ev(best_grid, sampler=args.sampler), {"grid_name": best_name})
        if args.tune_budget > 0:
            t0 = time.perf_counter()
            params, hist = tune.search(teacher, m, divergence, sampler=args.sampler, eps=args.eps,
                                       budget=args.tune_budget, init_grid=best_grid, num_samples=args.samples,
                                       progress=False)
            add(f"tuned grid ({div_name})", m, ev(params.grid(), sampler=args.sampler),
                {"seconds": time.perf_counter() - t0, "grid": np.asarray(params.grid()).tolist()})
        for v in variants:
            method, loss, reading = LSD_VARIANTS[v]
            cfg = distill.DistillConfig(method=method, sampler=args.sampler, nfe=m, teacher_nfe=args.teacher_nfe,
                                        loss=loss, reading=reading, epochs=args.epochs, eps=args.eps,
                                        val_samples=args.val_samples)
            t0 = time.perf_counter()
            params, hist = distill.fit(teacher, cfg, progress=False)
            secs = time.perf_counter() - t0
            sel = min((h["val_divergence"], h["epoch"]) for h in hist)[1]
            add(v, m, ev(params.grid(), sampler=args.sampler, phi=params.phi, reading=reading),
                {"seconds": secs, "selected_epoch": sel, "phi": np.asarray(params.phi).tolist(),
                 "grid": np.asarray(params.grid()).tolist()})
            last = hist[-1]
            if sel != last["epoch"]:  # what the raw loss led to, without selection
                add(v + " (last epoch)", m, ev(np.asarray(last["grid"]), sampler=args.sampler,
                                               phi=np.asarray(last["phi"]), reading=reading),
                    {"phi": last["phi"], "grid": last["grid"]})

    # share of the Euler -> teacher gap closed (by the exact divergence where there is one)
    key = "bigram_kl" if teacher.exact else "unigram_entropy"
    ceiling = [r for r in rows if r["sampler"].startswith("teacher") and r["nfe"] == args.teacher_nfe][0][key]
    for r in rows:
        base = [e for e in rows if e["sampler"] == "euler" and e["nfe"] == r["nfe"]]
        r["gap_closed"] = gap_closed(r[key], base[0][key], ceiling) if (base and teacher.exact) else None

    prov = provenance()
    payload = {"provenance": prov, "teacher": teacher.describe(), "seeds": seeds, "samples": args.samples,
               "selection_divergence": div_name, "rows": rows, "seconds": time.perf_counter() - t_start}
    md = markdown(payload, teacher)
    jpath, mpath = write_results(args.name, payload, md)
    plot(payload, os.path.splitext(jpath)[0] + ".png", teacher)
    print(md)
    print(f"wrote {jpath}, {mpath}")
    return 0


def markdown(payload: dict, teacher) -> str:
    p = payload["provenance"]
    exact = teacher.exact
    lines = [f"# NFE vs quality: {teacher.name}", "",
             f"- date: {p['date']}; commit {p['commit']}; machine: {p['machine']}",
             f"- command: `{p['command']}`",
             f"- held-out seeds {payload['seeds']} x {payload['samples']} samples; mean +- std over seeds; "
             f"grids and learned parameters chosen on other seeds by {payload['selection_divergence']}",
             "- NFE = predictor steps M; every sampler also makes the final denoise call (M + 1 calls in all)",
             ]
    if exact:
        ch = teacher.chain
        lines.append(f"- chain entropy rate {ch.entropy_rate():.4f} nats/token, unigram entropy "
                     f"{ch.unigram_entropy():.4f}; bigram KL floor at this sample size "
                     f"~{(ch.num_tokens ** 2 - 1) / (2 * payload['samples'] * (ch.length - 1)):.4f}")
        lines.append("- gap closed = (KL_euler - KL) / (KL_euler - KL_teacher@1024) at the same NFE")
    lines.append("")
    cols = ["sampler", "NFE"] + (["NLL/token", "bigram KL", "gap closed"] if exact else []) + ["unigram entropy"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in payload["rows"]:
        cells = [r["sampler"] + (f" ({r['grid_name']})" if "grid_name" in r else ""), str(r["nfe"])]
        if exact:
            gc = "" if r.get("gap_closed") is None else f"{100 * r['gap_closed']:.0f}%"
            cells += [f"{r['nll']:.4f} ± {r['nll_std']:.4f}", f"{r['bigram_kl']:.4f} ± {r['bigram_kl_std']:.4f}", gc]
        cells.append(f"{r['unigram_entropy']:.4f} ± {r['unigram_entropy_std']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(payload: dict, path: str, teacher) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "bigram_kl" if teacher.exact else "unigram_entropy"
    rows = [r for r in payload["rows"] if not r["sampler"].startswith("teacher") and "last epoch" not in r["sampler"]
            and "float64" not in r["sampler"]]
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        rs = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["nfe"])
        x = [r["nfe"] for r in rs]
        for ax, k in zip(axes, (key, "unigram_entropy")):
            ax.errorbar(x, [r[k] for r in rs], yerr=[r[k + "_std"] for r in rs], marker="o", capsize=2, label=name)
    teach = [r for r in payload["rows"] if r["sampler"].startswith("teacher")]
    for ax, k in zip(axes, (key, "unigram_entropy")):
        for r in teach:
            ax.axhline(r[k], ls="--", lw=0.8, color="gray")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("NFE")
    if teacher.exact:
        axes[1].axhline(teacher.chain.unigram_entropy(), color="k", lw=0.8, label="data")
    axes[0].set_ylabel(key + (" (log)" if teacher.exact else ""))
    if teacher.exact:
        axes[0].set_yscale("log")
    axes[1].set_ylabel("unigram entropy (nats)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{teacher.name}: quality vs NFE (dashed: teacher at 256 / 1024 steps)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
