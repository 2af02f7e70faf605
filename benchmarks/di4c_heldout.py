"""Held-out rows of Di4C students beside their teacher's training-free samplers at the same NFE
(a companion of nfe_vs_quality.py, whose teacher / tuned / LSD rows it can copy with --baseline).

    python benchmarks/di4c_heldout.py --teacher checkpoints/hmm-absorb \
        --students checkpoints/di4c-hmm-absorb-4 checkpoints/di4c-hmm-absorb-8 checkpoints/di4c-hmm-absorb-16 \
        --baseline benchmarks/results/net-hmm-absorb.json --seeds 3 --samples 1024 --name di4c-hmm-absorb

Rows per student NFE M, on the held-out seeds (exact divergences of the teacher's data model, unigram
entropy; mean +- std over seeds): from --baseline (same seeds and sample count; labelled with its commit):
the teacher at its many steps, Euler, the best fixed grid, tuned grids, LSD / LSD+; measured here: Euler
(when there is no baseline), the planned reveal policy on the teacher (counts: `reveal.screened_counts`,
as `lsd-jax sample --reveal planned`), the student on its own grid, the student under the planned
policy, the student on the best fixed grid chosen for it on the tuning seed, and (--tune-budget > 0) on
a grid tuned for it by CMA-ES (`tune.search`, started from that best grid, the ±1% entropy guard
against the teacher's many-step samples). Network calls per sample are measured. Writes
benchmarks/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import provenance, write_results  # noqa: E402

from lsd_jax import distill, grids, reveal, tune  # noqa: E402
from lsd_jax.divergences import make_divergence  # noqa: E402
from lsd_jax.eval.sampling import HELD_OUT_SEED0, evaluate_sampler, gap_closed, run_sampler  # noqa: E402
from lsd_jax.eval.text_metrics import unigram_entropy  # noqa: E402
from lsd_jax.students import STUDENT_FILE  # noqa: E402
from lsd_jax.students.di4c import load_student  # noqa: E402
from lsd_jax.teachers.checkpoint import load_teacher  # noqa: E402

MARGINAL_LAMBDAS = 16  # the diagnostic row: the student's marginals over this many lambdas, drawn independently
BASELINE_ROWS = ("teacher (euler)", "euler", "best fixed grid", "tuned grid (exact)", "lsd", "lsd+",
                 "planned reveal (screened counts)")


def divergence_keys(teacher) -> tuple:
    """The headline exact divergence (HMM: mean lag KL; chain: bigram KL), then bigram KL."""
    head = teacher.oracle.HEADLINE
    return (head,) + (("bigram_kl",) if head != "bigram_kl" else ())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="the network teacher the students were distilled from")
    p.add_argument("--students", nargs="*", default=[], help="student directories (lsd-jax distill-student)")
    p.add_argument("--nfe", type=int, nargs="*", default=[], help="teacher rows at these NFE too (without students)")
    p.add_argument("--baseline", nargs="*", default=[],
                   help="result JSONs on the same seeds (nfe_vs_quality, or this script's: its di4c rows too)")
    p.add_argument("--only-students", action="store_true",
                   help="no teacher rows (merge them later with --baseline); the gap column needs them")
    p.add_argument("--teacher-nfe", type=int, default=1024, help="the teacher's many steps (without --baseline)")
    p.add_argument("--tune-budget", type=int, default=0,
                   help="CMA-ES evaluations of a grid tuned for the teacher and for each student")
    p.add_argument("--lsd-plus-epochs", type=int, default=0,
                   help="LSD+ (phi and grid, distill.fit) on the teacher and on each student at --tune-nfe (0: skip)")
    p.add_argument("--tune-nfe", type=int, nargs="*", default=[8], help="the NFE at which grids are tuned")
    p.add_argument("--ref-nfe", type=int, default=64, help="teacher steps of the entropy-guard reference (seed 1)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--name", required=True)
    a = p.parse_args(argv)
    seeds = [HELD_OUT_SEED0 + i for i in range(a.seeds)]
    teacher = load_teacher(a.teacher)
    if not teacher.exact:
        raise ValueError(f"--teacher {a.teacher}: exact divergences need a teacher trained on a chain or HMM")
    keys = divergence_keys(teacher)
    students = []
    for d in a.students:
        with open(os.path.join(d, STUDENT_FILE)) as f:
            students.append((d, json.load(f)))
    nfes = {meta["config"]["nfe"] for _, meta in students} | set(a.nfe)
    students_meta = {d: meta for d, meta in students}
    eps = students[0][1]["config"]["eps"] if students else 1e-4
    rows, t_start = [], time.perf_counter()

    def add(name, m, res, extra=None):
        row = {"sampler": name, "nfe": m, **{k: v for k, v in res.items() if k != "per_seed"}, **(extra or {})}
        rows.append(row)
        print(f"  {name:<40} M {m:>4}: " + "  ".join(f"{k} {row[k]:.4f}+-{row[k + '_std']:.4f}"
                                                    for k in keys + ("unigram_entropy",)), flush=True)

    for path in a.baseline:
        with open(path) as f:
            base = json.load(f)
        if base["seeds"] != seeds or base["samples"] != a.samples:
            raise ValueError(f"--baseline {path} is on seeds {base['seeds']} x {base['samples']}, not "
                             f"{seeds} x {a.samples}")
        src = f"{os.path.basename(path)} (commit {base['provenance']['commit']})"
        top = max((r["nfe"] for r in base["rows"] if r["sampler"] == "teacher (euler)"), default=None)
        for r in base["rows"]:
            if r["sampler"].startswith("di4c"):
                nfes_base = nfes | {r["nfe"]}
                students_meta.update(base.get("student_meta", {}))
            else:
                nfes_base = nfes
            seen = any((e["sampler"], e["nfe"], e.get("student")) == (r["sampler"], r["nfe"], r.get("student"))
                       for e in rows)  # the same row copied through two files
            if not seen and (r["sampler"] in BASELINE_ROWS or r["sampler"].startswith("di4c")) and (
                    r["nfe"] in nfes_base or (r["sampler"] == "teacher (euler)" and r["nfe"] == top)):
                rows.append({**{k: v for k, v in r.items() if k not in ("gap_closed", "source")},
                             "source": r.get("source") if r.get("source", "this run") != "this run" else src})
    if a.only_students:
        pass
    elif not any(r["sampler"] == "teacher (euler)" for r in rows):
        add("teacher (euler)", a.teacher_nfe, evaluate_sampler(teacher, grids.uniform(a.teacher_nfe, eps),
                                                               seeds=seeds, num_samples=a.samples))
    # tuning material (never a held-out seed): seed 0 scores grids, seed 1 is the entropy reference
    select_div = make_divergence("exact", teacher)
    ref_cache = {}

    def ref_entropy() -> float:  # the entropy guard's reference, computed once when a grid is tuned
        if not ref_cache:
            ref = run_sampler(teacher, grids.uniform(a.ref_nfe, eps), seed=1, num_samples=a.samples)
            ref_cache["h"] = unigram_entropy(ref, mode="pooled")
        return ref_cache["h"]

    for m in sorted(nfes):
        print(f"NFE {m}", flush=True)
        uni = grids.uniform(m, eps)
        planned = reveal.get_policy("planned")
        counts = reveal.screened_counts(reveal.planned_order(teacher.length), m)

        def have(name):
            return any(r["sampler"] == name and r["nfe"] == m for r in rows)

        if a.only_students:
            pass
        elif not have("euler"):
            add("euler", m, evaluate_sampler(teacher, uni, seeds=seeds, num_samples=a.samples))
        if not a.only_students and not have("best fixed grid"):
            t0 = time.perf_counter()
            best_t, table = tune.best_fixed_grid(teacher, m, select_div, eps=eps, crn_seeds=(0,),
                                                 num_samples=a.samples)
            add("best fixed grid", m, evaluate_sampler(teacher, best_t, seeds=seeds, num_samples=a.samples),
                {"grid_name": min(table, key=lambda r: r["divergence"])["grid"],
                 "seconds": time.perf_counter() - t0})
        tune_here = a.tune_budget > 0 and m in a.tune_nfe
        if tune_here and not a.only_students and not have("tuned grid (exact)"):
            t0 = time.perf_counter()
            params, _ = tune.search(teacher, m, select_div, eps=eps, budget=a.tune_budget, crn_seeds=(0,),
                                    num_samples=a.samples, entropy_ref=ref_entropy(), progress=False,
                                    init_grid=grids.get_grid("power", m, eps))
            add("tuned grid (exact)", m, evaluate_sampler(teacher, params.grid(), seeds=seeds, num_samples=a.samples),
                {"grid": np.asarray(params.grid()).tolist(), "budget": a.tune_budget,
                 "seconds": time.perf_counter() - t0})
        lsd_here = a.lsd_plus_epochs > 0 and m in a.tune_nfe

        def lsd_plus(model, sampler):  # (row result, extra) of LSD+ fitted on `model` at M = m
            cfg = distill.DistillConfig(method="lsd+", sampler=sampler, nfe=m, teacher_nfe=256, eps=eps,
                                        epochs=a.lsd_plus_epochs, val_samples=256)
            t0 = time.perf_counter()
            params, hist = distill.fit(model, cfg, progress=False)
            res = evaluate_sampler(model, params.grid(), sampler=sampler, phi=params.phi, seeds=seeds,
                                   num_samples=a.samples)
            return res, {"lsd_minutes": (time.perf_counter() - t0) / 60, "epochs": a.lsd_plus_epochs,
                         "phi": np.asarray(params.phi).tolist(), "grid": np.asarray(params.grid()).tolist()}

        if lsd_here and not a.only_students and not have("lsd+"):
            res, info = lsd_plus(teacher, "tweedie")
            add("lsd+", m, res, info)
        if not a.only_students and not have("planned reveal (screened counts)"):
            add("planned reveal (screened counts)", m, _reveal_eval(teacher, uni, planned, counts, seeds, a.samples),
                {"counts": counts.tolist()})
        for d, meta in students:
            cfg = meta["config"]
            if cfg["nfe"] != m:
                continue
            student = load_teacher(d)
            sampler, g_own = cfg["sampler"], grids.get_grid(cfg.get("grid", "uniform"), m, cfg["eps"])
            extra = {"student": d, "train_minutes": meta["train_wall_s"] / 60, "train_steps": meta["step"],
                     "student_grid": cfg.get("grid", "uniform")}
            if lsd_here:
                res, info = lsd_plus(student, sampler)
                add("di4c + lsd+", m, res, {**extra, **info})
            if a.lsd_plus_epochs > 0:  # an LSD+ pass alone: the other student rows come from --baseline
                continue
            add(f"di4c ({cfg.get('grid', 'uniform')} grid)", m,
                evaluate_sampler(student, g_own, sampler=sampler, seeds=seeds, num_samples=a.samples), extra)
            add(f"di4c marginals, factorised ({MARGINAL_LAMBDAS} lambdas per call)", m,
                evaluate_sampler(load_student(d, marginals=MARGINAL_LAMBDAS), g_own, sampler=sampler, seeds=seeds,
                                 num_samples=a.samples), extra)
            add("di4c + planned reveal", m, _reveal_eval(student, g_own, planned, counts, seeds, a.samples),
                {**extra, "counts": counts.tolist()})
            t0 = time.perf_counter()
            best, table = tune.best_fixed_grid(student, m, select_div, sampler=sampler, eps=cfg["eps"],
                                               crn_seeds=(0,), num_samples=a.samples)
            best_name = min(table, key=lambda r: r["divergence"])["grid"]
            add("di4c + best fixed grid", m, evaluate_sampler(student, best, sampler=sampler, seeds=seeds,
                                                              num_samples=a.samples),
                {**extra, "grid_name": best_name, "select_minutes": (time.perf_counter() - t0) / 60})
            if tune_here:
                t0 = time.perf_counter()
                params, _ = tune.search(student, m, select_div, sampler=sampler, eps=cfg["eps"],
                                        budget=a.tune_budget, init_grid=best, crn_seeds=(0,),
                                        num_samples=a.samples, entropy_ref=ref_entropy(), progress=False)
                add("di4c + tuned grid (exact)", m, evaluate_sampler(student, params.grid(), sampler=sampler,
                                                                     seeds=seeds, num_samples=a.samples),
                    {**extra, "grid": np.asarray(params.grid()).tolist(), "budget": a.tune_budget,
                     "tune_minutes": (time.perf_counter() - t0) / 60})

    head = keys[0]
    ceiling = max((r for r in rows if r["sampler"] == "teacher (euler)"), key=lambda r: r["nfe"], default=None)
    for r in rows:
        r.setdefault("source", "this run")
        eul = next((e for e in rows if e["sampler"] == "euler" and e["nfe"] == r["nfe"]), None)
        r["gap_closed"] = gap_closed(r[head], eul[head], ceiling[head]) \
            if eul and ceiling and r is not ceiling else None
    payload = {"provenance": provenance(), "teacher": teacher.describe(), "students": sorted(students_meta),
               "student_meta": students_meta, "seeds": seeds, "samples": a.samples,
               "gap_key": head, "reference_entropy": ref_cache.get("h"), "rows": rows,
               "seconds": time.perf_counter() - t_start}
    md = markdown(payload, teacher, keys)
    jp, mp = write_results(a.name, payload, md)
    print(md)
    print(f"wrote {jp}, {mp}")
    return 0


def _reveal_eval(model, grid, policy, counts, seeds, samples) -> dict:
    """evaluate_sampler under a reveal policy with fixed counts (network calls measured)."""
    from lsd_jax.eval.sampling import mean_std
    from lsd_jax.teachers.base import model_metrics

    per_seed = []
    for s in seeds:
        import jax

        out = reveal.sample(model.score_fn, model.graph, model.noise, grid, jax.random.PRNGKey(s), samples,
                            model.length, policy=policy, counts=counts)
        per_seed.append({**model_metrics(model, np.asarray(out.tokens)),
                         "network_calls": float(np.mean(np.asarray(out.calls)))})
    return {"seeds": list(seeds), "num_samples": samples, "per_seed": per_seed, **mean_std(per_seed)}


def markdown(payload: dict, teacher, keys: tuple) -> str:
    pv, head = payload["provenance"], payload["gap_key"]
    label = {"lag_kl": "lag KL (mean of 1, 2, 4, 8)", "bigram_kl": "bigram KL"}
    metas = payload["student_meta"]
    lines = [f"# Di4C students vs the training-free samplers: {teacher.name}", "",
             f"- date: {pv['date']}; commit {pv['commit']}; machine: {pv['machine']} (2-core CPU shared)",
             f"- command: `{pv['command']}`",
             f"- held-out seeds {payload['seeds']} x {payload['samples']} samples; mean ± std over seeds; rows with "
             "another source are copied from that result (same seeds and sample count)",
             "- students: " + "; ".join(
                 f"{os.path.basename(os.path.normpath(d))}: M {m['config']['nfe']} on the "
                 f"{m['config'].get('grid', 'uniform')} grid, {m['step']} steps, {m['train_wall_s'] / 60:.1f} min"
                 for d, m in metas.items()) + " of training on this CPU; Di4C also sees the teacher's training data",
             f"- gap closed = (D_euler@M - D) / (D_euler@M - D_teacher@many), D = exact {label.get(head, head)}",
             "- calls = network calls per sample actually made (samplers: M + the final denoise; planned reveal: M)",
             "", "| sampler | M | calls | NLL/token | " + " | ".join(label.get(k, k) for k in keys)
             + " | gap closed | unigram entropy | train min | source |",
             "|---|---|---|---|" + "---|" * len(keys) + "---|---|---|---|"]
    pm = lambda r, k: f"{r[k]:.4f} ± {r[k + '_std']:.4f}" if k in r else ""  # noqa: E731
    for r in sorted(payload["rows"], key=lambda r: (r["sampler"] != "teacher (euler)", r["nfe"])):
        gc = "" if r.get("gap_closed") is None else f"{100 * r['gap_closed']:.0f}%"
        name = r["sampler"] + (f" ({r['grid_name']})" if "grid_name" in r else "") + (
            f" [{os.path.basename(os.path.normpath(r['student']))}]" if "student" in r else "")
        calls = f"{r['network_calls']:.0f}" if "network_calls" in r else ""
        train = f"{r['train_minutes']:.0f}" if "train_minutes" in r else ""
        lines.append(f"| {name} | {r['nfe']} | {calls} | {pm(r, 'nll')} | " + " | ".join(pm(r, k) for k in keys)
                     + f" | {gc} | {pm(r, 'unigram_entropy')} | {train} | {r['source']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
