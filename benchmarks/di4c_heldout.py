"""Held-out rows of a Di4C student beside its teacher at the same NFE (a cheap companion of
nfe_vs_quality.py, whose teacher and tuned rows cost more than a shared CPU affords in minutes).

    python benchmarks/di4c_heldout.py --student checkpoints/di4c-chain-absorb-8 \
        --teacher checkpoints/chain-absorb --baseline results/net-chain-absorb.json --name di4c-chain-absorb

Rows on the held-out seeds (exact NLL, bigram KL, unigram entropy; mean +- std over seeds): the teacher at the
student's NFE (its sampler, uniform grid; measured here), the student on the uniform grid and on the grid
named by --grid (not re-chosen for the student). --baseline copies the teacher / Euler / best-fixed-grid / LSD
rows of an nfe_vs_quality result on the same seeds (labelled with its commit) for the gap-closed column.
Writes benchmarks/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import provenance, write_results  # noqa: E402

from lsd_jax import grids  # noqa: E402
from lsd_jax.eval.sampling import HELD_OUT_SEED0, evaluate_sampler, gap_closed  # noqa: E402
from lsd_jax.students import STUDENT_FILE  # noqa: E402
from lsd_jax.teachers.checkpoint import load_teacher  # noqa: E402

KEYS = ("nll", "bigram_kl", "unigram_entropy")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--baseline", default=None, help="an nfe_vs_quality result JSON on the same seeds")
    p.add_argument("--grid", default="power", help="a second grid family for the student (p 2)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--name", required=True)
    a = p.parse_args(argv)
    meta = json.load(open(os.path.join(a.student, STUDENT_FILE)))
    cfg = meta["config"]
    m, sampler, eps = cfg["nfe"], cfg["sampler"], cfg["eps"]
    seeds = [HELD_OUT_SEED0 + i for i in range(a.seeds)]
    teacher, student = load_teacher(a.teacher), load_teacher(a.student)
    rows = []
    if a.baseline:
        base = json.load(open(a.baseline))
        if base["seeds"] != seeds or base["samples"] != a.samples:
            raise ValueError(f"--baseline {a.baseline} is on seeds {base['seeds']} x {base['samples']}, not "
                             f"{seeds} x {a.samples}")
        for r in base["rows"]:
            if r["nfe"] in (m, max(x["nfe"] for x in base["rows"])) and "last epoch" not in r["sampler"]:
                rows.append({**{k: v for k, v in r.items() if k != "gap_closed"},
                             "source": f"{os.path.basename(a.baseline)} (commit {base['provenance']['commit']})"})

    def add(name, model, grid, extra=None):
        res = evaluate_sampler(model, grid, sampler=sampler, seeds=seeds, num_samples=a.samples)
        row = {"sampler": name, "nfe": m, **{k: v for k, v in res.items() if k != "per_seed"}, **(extra or {}),
               "source": "this run"}
        rows.append(row)
        print(f"  {name:<34} " + "  ".join(f"{k} {row[k]:.4f}+-{row[k + '_std']:.4f}" for k in KEYS), flush=True)

    uni = grids.uniform(m, eps)
    add(f"teacher {sampler}", teacher, uni)
    add(f"di4c ({sampler})", student, uni, {"train_seconds": meta["train_wall_s"], "train_steps": meta["step"]})
    g2 = grids.get_grid(a.grid, m, eps, p=2.0, noise=student.noise)
    add(f"di4c ({sampler}) on the {a.grid} grid", student, g2, {"grid": [float(v) for v in g2]})
    ceiling = min((r for r in rows if r["sampler"].startswith("teacher") and r["nfe"] > m), default=None,
                  key=lambda r: -r["nfe"])
    euler = next((r for r in rows if r["sampler"] == "euler" and r["nfe"] == m), None)
    for r in rows:
        r["gap_closed"] = gap_closed(r["bigram_kl"], euler["bigram_kl"], ceiling["bigram_kl"]) \
            if ceiling and euler and r["nfe"] == m else None
    payload = {"provenance": provenance(), "student": a.student, "student_meta": meta, "seeds": seeds,
               "samples": a.samples, "rows": rows}
    pv = payload["provenance"]
    lines = [f"# Di4C student vs its teacher: {student.name}", "",
             f"- date: {pv['date']}; commit {pv['commit']}; machine: {pv['machine']} (2-core CPU shared)",
             f"- command: `{pv['command']}`",
             f"- held-out seeds {seeds} x {a.samples} samples; mean ± std over seeds; rows marked with another "
             "source are copied from that result (same seeds and sample count)",
             f"- student: {cfg['nfe']} steps ({sampler}), {meta['step']} training steps in "
             f"{meta['train_wall_s'] / 60:.1f} min on this CPU; Di4C here also sees the teacher's training data",
             "- gap closed = (KL_euler - KL) / (KL_euler - KL_teacher at its most steps), exact bigram KL", "",
             "| sampler | NFE | NLL/token | bigram KL | gap closed | unigram entropy | source |", "|---|---|---|---|---|---|---|"]
    pm = lambda r, k: f"{r[k]:.4f} ± {r[k + '_std']:.4f}"  # noqa: E731
    for r in rows:
        gc = "" if r.get("gap_closed") is None else f"{100 * r['gap_closed']:.0f}%"
        name = r["sampler"] + (f" ({r['grid_name']})" if "grid_name" in r else "")
        lines.append(f"| {name} | {r['nfe']} | {pm(r, 'nll')} | {pm(r, 'bigram_kl')} | {gc} | "
                     f"{pm(r, 'unigram_entropy')} | {r['source']} |")
    md = "\n".join(lines) + "\n"
    jp, mp = write_results(a.name, payload, md)
    print(md)
    print(f"wrote {jp}, {mp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
