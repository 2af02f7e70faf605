"""Evaluator scores of a text benchmark's rows: NLL per character with paired intervals.

Second step after ``nfe_vs_quality.py`` on a text checkpoint. From the stored results
(``benchmarks/results/<name>.json``) it regenerates every row's held-out samples exactly
(same seeds, grids, phi; checked against the stored decoded samples), adds anchor texts
(held-out corpus text, its words shuffled, a character-bigram model of the corpus,
random characters) and scores all of them under each evaluator:

- NLL per character (nats, and bits) of the evaluator with a BOS in front
  (``lsd_jax.eval.char_nll``), and gen-PPL with the same BOS scoring;
- paired per-sample differences of NLL per character against Euler at the same NFE and
  against Euler at the smallest NFE (samples of the same seed and index share random
  numbers), with 95% Student-t intervals; anchors get the t interval of their mean;
- the rank agreement (Spearman) of the evaluators over the sampler rows.

The evaluators need ``gguf`` and ``accelerate`` (and transformers >= 5 for Gemma-3):
``pip install gguf accelerate -c <(echo torch==2.13.0)``; each is checked on a known
English text at load. The results are added to ``<name>.json`` under ``text_eval`` and
the markdown is re-rendered with the evaluator tables; a later run with other
``--evaluators`` keeps the stored scores of the others (when the texts are the same).

    python benchmarks/text_eval.py --results text-char-absorb --evaluators smollm2 gemma3-270m
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, bench_teacher, provenance, write_results  # noqa: E402

import nfe_vs_quality as nvq  # noqa: E402

from lsd_jax import grids  # noqa: E402
from lsd_jax.eval.anchors import ANCHORS, anchor_texts  # noqa: E402
from lsd_jax.eval.char_nll import mean_interval, paired_difference, score_texts  # noqa: E402
from lsd_jax.eval.sampling import run_sampler  # noqa: E402

LEVEL = 0.95
# scored first (the cache is saved after each group): the rows and anchors the conclusions rest on
FIRST = ("euler @ 8", "euler @ 64", "lsd+ @ 8", "best fixed grid @ 8", "anchor:random chars", "anchor:real",
         "euler @ 16", "euler @ 32", "anchor:words shuffled", "anchor:char bigram", "teacher (euler) @ 1024")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, help="name of a text benchmark under benchmarks/results/")
    p.add_argument("--checkpoint", default=None, help="the teacher (default: checkpoints/<teacher directory>)")
    p.add_argument("--evaluators", nargs="*", default=["smollm2", "gemma3-270m"],
                   help="names (smollm2, gemma3-270m) or HF causal-LM directories (none: only regenerate)")
    p.add_argument("--texts-per-seed", type=int, default=None,
                   help="texts scored per seed and row (default: the run's --genppl-samples)")
    p.add_argument("--anchor-seed", type=int, default=0)
    p.add_argument("--regen-samples", type=int, default=None,
                   help="samples regenerated per seed and row: the first N of the run's (default: all)")
    p.add_argument("--texts-cache", default=None,
                   help="JSON file of regenerated texts, written after each row and read on a rerun")
    p.add_argument("--scores-cache", default=None,
                   help="directory of per-evaluator scores (scores-<name>.json), read and extended")
    p.add_argument("--available-only", action="store_true",
                   help="score only the rows already in --texts-cache into --scores-cache; write no results")
    p.add_argument("--first", nargs="*", default=list(FIRST),
                   help="groups scored first, e.g. 'euler @ 8' 'anchor:real' (default: the ones the conclusions use)")
    p.add_argument("--cached-only", action="store_true",
                   help="load no evaluator and regenerate nothing: results from --texts-cache and "
                        "--scores-cache, rows not in them left out")
    args = p.parse_args(argv)
    path = os.path.join(RESULTS, args.results + ".json")
    if not os.path.isfile(path):
        raise SystemExit(f"--results {args.results}: {path} does not exist (run nfe_vs_quality.py first)")
    return args


def row_sampler(row: dict, run, noise) -> dict:
    """Grid [M + 1], sampler, phi and reading of a stored row (how nfe_vs_quality made it)."""
    name, m = row["sampler"], row["nfe"]
    if name.startswith("teacher") or name in ("euler", "tweedie"):
        return {"grid": grids.uniform(m, run.eps), "sampler": "tweedie" if name == "tweedie" else "euler"}
    if name == "best fixed grid":
        family, _, p = row["grid_name"].partition("-")
        return {"grid": grids.get_grid(family, m, run.eps, p=float(p) if p else 2.0, noise=noise),
                "sampler": run.sampler}
    if name.startswith("tuned grid"):
        return {"grid": np.asarray(row["grid"]), "sampler": run.sampler}
    variant = name.removesuffix(" (last epoch)")
    if variant in nvq.LSD_VARIANTS:
        return {"grid": np.asarray(row["grid"]), "sampler": run.sampler, "phi": np.asarray(row["phi"]),
                "reading": nvq.LSD_VARIANTS[variant][2]}
    raise ValueError(f"row {name!r}: cannot tell how it was sampled")


def regenerate(teacher, payload: dict, run, num: int, cache: str | None = None,
               available_only: bool = False) -> list:
    """Decoded held-out samples [row][seed][sample] of every stored row: the first ``num``
    samples of each seed, sampled as the run did (every draw is indexed by sample, so the
    first ``num`` of a smaller batch are the run's own); raises when a row's first decoded
    samples differ from the stored ones. Rows are made cheapest first and kept in
    ``cache`` (JSON) after each one, so an interrupted run resumes. ``available_only``:
    regenerate nothing, None for the rows not in the cache."""
    done: dict[str, list[list[str]]] = {}
    key = {"results_date": payload["provenance"]["date"], "samples_per_seed": num}
    if cache and os.path.isfile(cache):
        with open(cache) as f:
            stored = json.load(f)
        if {k: stored.get(k) for k in key} == key:
            done = stored["texts"]
            print(f"{len(done)} rows from {cache}", flush=True)
    order = sorted(range(len(payload["rows"])), key=lambda i: payload["rows"][i]["nfe"])
    for i in order:
        r = payload["rows"][i]
        label = f"{r['sampler']} @ {r['nfe']}"
        if label in done or available_only:
            continue
        t0 = time.perf_counter()
        kw = row_sampler(r, run, teacher.noise)
        texts = [[teacher.decode(t) for t in run_sampler(teacher, seed=s, num_samples=num, **kw)]
                 for s in payload["seeds"]]
        stored = (r.get("decoded") or [])[:num]
        if texts[0][: len(stored)] != stored:
            raise RuntimeError(f"row {label}: regenerated samples differ from the stored ones")
        done[label] = texts
        if cache:
            with open(cache, "w") as f:
                json.dump({**key, "texts": done}, f)
        print(f"  regenerated {label} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return [done.get(f"{r['sampler']} @ {r['nfe']}") for r in payload["rows"]]


def text_rows(stored_rows: list[dict], texts: list[list[list[str]]], per_seed: int) -> list[dict]:
    """Per row: its first ``per_seed`` texts of each seed (seed-major) and a key shared by
    rows with identical texts (scored once)."""
    rows, keys = [], {}
    for r, by_seed in zip(stored_rows, texts):
        mine = [t for tt in by_seed for t in tt[:per_seed]]
        digest = _digest(mine)
        label = f"{r['sampler']} @ {r['nfe']}"
        keys.setdefault(digest, label)
        rows.append({"sampler": r["sampler"], "nfe": r["nfe"], "key": keys[digest], "label": label, "texts": mine})
    return rows


def anchors_for(checkpoint: str, teacher, num: int, seed: int) -> dict[str, list[str]]:
    """The anchor texts (lsd_jax.eval.anchors) from the checkpoint's corpus and tokenizer."""
    from lsd_jax.data.corpus import load_corpus

    with open(os.path.join(checkpoint, "tokenizer.json")) as f:
        tok = json.load(f)
    corpus = load_corpus(tok["tokenizer"], tok["seq_len"], verbose=False)
    return anchor_texts(corpus.train.ravel(), corpus.validation, teacher.decode, teacher.graph.num_tokens, num, seed)


def _digest(texts: list[str]) -> str:
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()


def scores(name: str, groups: dict[str, list[str]], cache_dir: str | None, score_missing: bool = True,
           first: tuple[str, ...] = ()) -> tuple[dict | None, dict]:
    """Per-text scores of each group of texts under evaluator ``name``, and the
    evaluator's description. With ``cache_dir``, scores are kept per group of texts in
    ``<cache_dir>/scores-<name>.json`` (saved after each group, groups in ``first`` first)
    and only groups not in it are scored; the evaluator is not loaded when none is
    missing. ``score_missing`` False: missing groups are left out of the result."""
    import transformers

    from lsd_jax.eval.char_nll import TextScores
    from lsd_jax.eval.genppl import load_evaluator

    path = os.path.join(cache_dir, f"scores-{os.path.basename(name)}.json") if cache_dir else None
    store = {"meta": None, "scores": {}}
    if path and os.path.isfile(path):
        with open(path) as f:
            store = json.load(f)
    missing = [k for k, texts in groups.items() if _digest(texts) not in store["scores"]]
    missing.sort(key=lambda k: first.index(k) if k in first else len(first))
    if score_missing and (missing or store["meta"] is None):
        t0 = time.perf_counter()
        ev = load_evaluator(name, check=True)
        print(f"evaluator {ev.name}: known English text gen-PPL {ev.known_text_ppl:.1f}; loaded in "
              f"{time.perf_counter() - t0:.0f} s; scoring {len(missing)} groups", flush=True)
        store["meta"] = store["meta"] or {"evaluator": ev.name, "context_length": ev.context_length,
                                          "known_text_ppl": ev.known_text_ppl,
                                          "transformers": transformers.__version__, "seconds": 0.0}
        for k in missing:
            t0 = time.perf_counter()
            s = score_texts(ev, groups[k])
            store["meta"]["seconds"] += time.perf_counter() - t0
            store["scores"][_digest(groups[k])] = {"nll": s.nll.tolist(), "tokens": s.tokens.tolist(),
                                                   "chars": s.chars.tolist()}
            print(f"  {name}: scored {k} ({int(s.tokens.sum())} tokens, {time.perf_counter() - t0:.0f} s)",
                  flush=True)
            if path:
                os.makedirs(cache_dir, exist_ok=True)
                with open(path + ".tmp", "w") as f:
                    json.dump(store, f)
                os.replace(path + ".tmp", path)
    meta = store["meta"]
    per = {k: TextScores(meta["evaluator"], *(np.asarray(store["scores"][_digest(t)][f], dt)
                                              for f, dt in (("nll", np.float64), ("tokens", np.int64),
                                                            ("chars", np.int64))))
           for k, t in groups.items() if _digest(t) in store["scores"]}
    return meta, per


def evaluate(meta: dict, per: dict, rows: list[dict], anchors: dict[str, list[str]]) -> dict:
    """All results under one evaluator from its per-text scores ``per`` (keyed by row key
    and "anchor:<name>"): row values, paired intervals, anchor intervals."""
    m0 = min(r["nfe"] for r in rows if r["sampler"] == "euler")
    out_rows = []
    for r in rows:
        if r["key"] not in per:  # not scored (--cached-only)
            continue
        sc = per[r["key"]]
        row = {"sampler": r["sampler"], "nfe": r["nfe"], "same_samples_as": None if r["key"] == r["label"] else r["key"],
               **sc.summary(), "nll_per_char_interval": mean_interval(sc.nll_per_char, LEVEL).to_dict()}
        for tag, nfe in (("vs_euler", r["nfe"]), ("vs_euler_min", m0)):
            base = next((b for b in rows if b["sampler"] == "euler" and b["nfe"] == nfe), None)
            if base is not None and base["label"] != r["label"] and base["key"] in per:
                row[tag] = {"baseline": base["label"],
                            **paired_difference(sc.nll_per_char, per[base["key"]].nll_per_char, LEVEL).to_dict()}
        out_rows.append(row)
    out_anchors = [{"anchor": a, **per[f"anchor:{a}"].summary(),
                    "nll_per_char_interval": mean_interval(per[f"anchor:{a}"].nll_per_char, LEVEL).to_dict()}
                   for a in anchors if f"anchor:{a}" in per]
    not_scored = [r["label"] for r in rows if r["key"] not in per] + [a for a in anchors if f"anchor:{a}" not in per]
    return {**meta, "scored_tokens": int(sum(p.tokens.sum() for p in per.values())),
            "rows": out_rows, "anchors": out_anchors, "not_scored": not_scored}


def rank_agreement(results: list[dict]) -> list[dict]:
    """Spearman correlation between each pair of evaluators over the distinct sampler rows."""
    from scipy.stats import spearmanr

    out = []
    for a in range(len(results)):
        for b in range(a + 1, len(results)):
            rb = {(r["sampler"], r["nfe"]): r for r in results[b]["rows"]}
            ra = [r for r in results[a]["rows"] if r["same_samples_as"] is None and (r["sampler"], r["nfe"]) in rb]
            row = {"evaluators": [results[a]["evaluator"], results[b]["evaluator"]], "rows": len(ra)}
            for k in ("nll_per_char", "genppl"):
                row[k] = float(spearmanr([r[k] for r in ra], [rb[(r["sampler"], r["nfe"])][k] for r in ra])[0])
            out.append(row)
    return out


def main(argv=None) -> int:
    args = parse(argv)
    jpath = os.path.join(RESULTS, args.results + ".json")
    with open(jpath) as f:
        payload = json.load(f)
    run = nvq.parse(shlex.split(payload["provenance"]["command"])[2:])  # the run's own arguments
    checkpoint = args.checkpoint or run.checkpoint
    if not checkpoint or not os.path.isfile(os.path.join(checkpoint, "tokenizer.json")):
        raise SystemExit(f"--checkpoint {checkpoint}: not a text checkpoint (no tokenizer.json)")
    per_seed = args.texts_per_seed or run.genppl_samples
    if not 2 <= per_seed <= run.samples:
        raise SystemExit(f"--texts-per-seed must be in [2, {run.samples}], got {per_seed}")
    t_start = time.perf_counter()
    teacher = bench_teacher(checkpoint)
    print(f"regenerating {len(payload['rows'])} rows x {len(payload['seeds'])} seeds x {run.samples} samples",
          flush=True)
    num = args.regen_samples or run.samples
    if not per_seed <= num <= run.samples:
        raise SystemExit(f"--regen-samples must be in [--texts-per-seed {per_seed}, {run.samples}], got {num}")
    cached = args.available_only or args.cached_only
    texts = regenerate(teacher, payload, run, num, args.texts_cache, available_only=cached)
    absent = [f"{r['sampler']} @ {r['nfe']}" for r, t in zip(payload["rows"], texts) if t is None]
    # only the rows regenerated (all unless --available-only / --cached-only); payload["rows"] stays whole
    have = [(r, t) for r, t in zip(payload["rows"], texts) if t is not None]
    check = {"checked_decoded": sum(len((r.get("decoded") or [])[:num]) for r, _ in have),
             "samples_per_seed": num, "not_regenerated": absent}
    rows = text_rows([r for r, _ in have], [t for _, t in have], per_seed)
    anchors = anchors_for(checkpoint, teacher, per_seed * len(payload["seeds"]), args.anchor_seed)
    old = payload.get("text_eval") or {}
    same_texts = (old.get("texts_per_seed"), old.get("anchor_seed")) == (per_seed, args.anchor_seed)
    results = [e for e in old.get("evaluators", []) if same_texts and e.get("name") not in args.evaluators]
    if results:
        print(f"keeping the stored scores of {', '.join(e['name'] for e in results)} (same texts)", flush=True)
    groups = {r["key"]: r["texts"] for r in rows if r["key"] == r["label"]}
    groups.update({f"anchor:{a}": t for a, t in anchors.items()})
    for name in args.evaluators:  # results are written after each evaluator
        meta, per = scores(name, groups, args.scores_cache, score_missing=not args.cached_only,
                           first=tuple(args.first))
        if args.available_only or meta is None:
            continue
        results.append({"name": name, **evaluate(meta, per, rows, anchors)})
        print(markdown_evaluator(results[-1]), flush=True)
        payload["text_eval"] = {
            "provenance": provenance(), "texts_per_seed": per_seed, "level": LEVEL, "anchor_seed": args.anchor_seed,
            "regenerated": check, "evaluators": results, "rank_agreement": rank_agreement(results),
            "anchor_examples": {a: t[:2] for a, t in anchors.items()}, "seconds": time.perf_counter() - t_start,
        }
        md = nvq.markdown(payload, teacher) + markdown_text_eval(payload)
        jpath, mpath = write_results(args.results, payload, md)
        print(f"wrote {jpath}, {mpath}", flush=True)
    return 0


def _pm(iv: dict, f: str = "+.3f") -> str:
    return f"{iv['mean']:{f}} [{iv['low']:{f}}, {iv['high']:{f}}]"


def markdown_evaluator(res: dict) -> str:
    """One evaluator's table: sampler rows, then the anchors."""
    lines = [f"### {res['evaluator']}", "",
             f"transformers {res['transformers']}; context {res['context_length']}; known English text "
             f"(Austen) gen-PPL {res['known_text_ppl']:.1f}; {res['scored_tokens']} tokens scored in "
             f"{res['seconds']:.0f} s", "",
             "| sampler | NFE | NLL/char (nats) [95% CI] | bits/char | Δ vs Euler same NFE [95% CI] | "
             "Δ vs Euler at min NFE [95% CI] | gen-PPL (BOS) | gen-PPL per-sample mean | chars/token |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        same = f" (= {r['same_samples_as']})" if r["same_samples_as"] else ""
        cells = [r["sampler"] + same, str(r["nfe"]), _pm(r["nll_per_char_interval"], ".4f"),
                 f"{r['bits_per_char']:.4f}", _pm(r["vs_euler"], "+.4f") if "vs_euler" in r else "",
                 _pm(r["vs_euler_min"], "+.4f") if "vs_euler_min" in r else "",
                 f"{r['genppl']:.1f}", f"{r['genppl_per_sample']:.1f}", f"{r['chars_per_token']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for a in res["anchors"]:
        cells = [f"*anchor: {a['anchor']}*", "", _pm(a["nll_per_char_interval"], ".4f"), f"{a['bits_per_char']:.4f}",
                 "", "", f"{a['genppl']:.1f}", f"{a['genppl_per_sample']:.1f}", f"{a['chars_per_token']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if res.get("not_scored"):
        lines += ["", f"Not scored under this evaluator (out of CPU time): {', '.join(res['not_scored'])}."]
    return "\n".join(lines) + "\n"


def markdown_text_eval(payload: dict) -> str:
    te = payload["text_eval"]
    p = te["provenance"]
    n = te["texts_per_seed"] * len(payload["seeds"])
    lines = ["", "## Evaluator NLL per character, paired against Euler", "",
             f"- date: {p['date']}; commit {p['commit']}; machine: {p['machine']}",
             f"- command: `{p['command']}`",
             f"- texts: the first {te['texts_per_seed']} held-out samples of each seed {payload['seeds']} per row "
             f"({n} per row), regenerated from the stored grids / phi (the first "
             f"{te['regenerated']['samples_per_seed']} per seed; the {te['regenerated']['checked_decoded']} "
             "stored decoded samples reproduced exactly); rows with identical samples are scored once"
             + (f"; not regenerated (out of CPU time): {', '.join(te['regenerated']['not_regenerated'])}"
                if te["regenerated"].get("not_regenerated") else ""),
             "- NLL/char: the evaluator's total NLL of each text with a BOS in front (every token scored) over "
             "its characters; row value = total NLL / total characters, with the 95% t interval of the "
             "per-text mean; bits = nats / ln 2. gen-PPL here uses the same BOS scoring (the table above: no BOS)",
             "- Δ: mean paired difference of per-text NLL/char (row minus Euler; same seed and index = same "
             "random numbers) with its 95% t interval; negative = the evaluator finds the row more likely",
             f"- anchors ({n} texts each, same length): held-out corpus rows (validation split), the same rows "
             "with words shuffled, draws of a character-bigram model of the training split (add-0.5), "
             "uniformly random characters of the alphabet", ""]
    for res in te["evaluators"]:
        lines.append(markdown_evaluator(res))
    if te["rank_agreement"]:
        lines += ["### Rank agreement of the evaluators (Spearman, distinct sampler rows)", "",
                  "| evaluators | rows | NLL/char | gen-PPL (BOS) |", "|---|---|---|---|"]
        for r in te["rank_agreement"]:
            lines.append(f"| {' vs '.join(r['evaluators'])} | {r['rows']} | {r['nll_per_char']:.2f} | "
                         f"{r['genppl']:.2f} |")
        lines.append("")
    lines += ["### Anchor examples", ""]
    for a in ANCHORS:
        for t in te["anchor_examples"].get(a, []):
            lines.append(f"- {a}: `{t}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
