"""The markdown report of `benchmarks/speed.py` (also `speed.py --render JSON`)."""

from __future__ import annotations

from speed_distill import mini_extrapolation

NOISE_SHARE = 0.05  # sampler work (step - forward) at or below this share of the step: timing noise


def work_ratio(r: dict):
    """upstream / ours sampler work; None where either side's sampler work is below timing
    noise (<= 0, or <= NOISE_SHARE of its own step time): step - forward of two medians
    can then come out at any size or sign, and the ratio means nothing."""
    for who in ("ours", "upstream"):
        work, step = r.get(f"{who}_sampler_work_s"), r["timings"].get(f"{who}_step", {}).get("median_s")
        if work is None or step is None or work <= 0 or work <= NOISE_SHARE * step:
            return None
    return r["upstream_sampler_work_s"] / r["ours_sampler_work_s"]


def fmt_s(x):
    return "-" if x is None else (f"{x:.3f} s" if x < 10 else f"{x:.1f} s")


def to_markdown(p: dict) -> str:
    pv = p["provenance"]
    lo, hi = min(p["nfe"]), max(p["nfe"])
    lines = ["# Sampling speed: lsd_jax vs the upstream SEDD sampler, roofline, distillation", "",
             f"- date: {pv['date']}", f"- command: `{pv['command']}`", f"- commit: {pv['commit']}",
             f"- machine: {pv['machine']}; torch {p['torch']['version']} on {p['torch']['device']} "
             f"({p['torch']['threads']} threads); load average at start {p['load_avg']['start']}, "
             f"end {p['load_avg']['end']} (other jobs shared the cores: every ratio below is from this one run, "
             "ours and upstream's runs interleaved)",
             f"- upstream: {p['upstream']['status']}", ""]
    rf = p["roofline"]
    lines += [f"Matmul roofline measured in this run ({rf['dtype']} square GEMMs n = "
              f"{', '.join(map(str, rf['sizes']))}, best of {len(rf['measurements'])} measurements taken at "
              f"{', '.join(r['time'] for r in rf['measurements'])}): JAX {rf['jax_gflops']} GFLOP/s, "
              f"torch {rf['torch_gflops']} GFLOP/s -> roofline {rf['roofline_gflops']} GFLOP/s. The fraction of it "
              "that a model reaches is in the forward GFLOP/s column.", "",
              "Sampler: Euler, uniform grid, eps 1e-5, all-mask start, final denoise (NFE M = M predictor calls; "
              "whole samples make M + 1 network calls in both implementations). Our model: "
              f"{p['dtype']}.", ""]
    lines += ["Per NFE = one Euler step at half the positions masked; ratios are medians over the interleaved "
              f"rounds of the per-round ratio (the whole-sample slope (T({hi}) - T({lo})) / {hi - lo} is shown beside "
              "it as a check where whole samples were measured). Roofline fraction: our forward's GFLOP/s over the GEMM's in the same round (median); full "
              "head: the model's FLOPs; masked head: the FLOPs it computes (the trunk + the output projection on "
              "the masked rows, in whole tiles).", "",
              "| shape | B | per NFE ratio (rounds) | per NFE ratio (whole-sample slope) | forward ratio | "
              "sampler-work ratio | whole @" + f"{lo} ratio | whole @{hi} ratio | forward / roofline: full head, "
              "masked head | masked head: step speed-up | row path: step speed-up | rounds |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in p["shapes"].items():
        for b, r in s["batches"].items():
            if "ratio_per_nfe" not in r:
                continue
            wr = work_ratio(r)
            wr = f"{wr:.1f}x" if wr is not None else "n/a (below timing noise)"
            md = r["rounds"]["median"]
            lines.append(f"| {name} | {b} | **{md['ratio_step']:.2f}x** | {r['ratio_per_nfe']:.2f}x | "
                         f"{md['ratio_forward']:.2f}x | {wr} | "
                         f"{r.get(f'ratio_whole_nfe{lo}', float('nan')):.2f}x | {r.get(f'ratio_whole_nfe{hi}', float('nan')):.2f}x | "
                         f"{100 * md['forward_full_roofline_fraction']:.0f}%, {100 * md['forward_masked_roofline_fraction']:.0f}% | "
                         f"{md['masked_step_speedup']:.2f}x | "
                         + (f"{md['rows_step_speedup']:.2f}x" if "rows_step_speedup" in md else "-")
                         + f" | {len(r['rounds']['ratio_step'])} |")
    lines += [""]
    for name, s in p["shapes"].items():
        sh = s["shape"]
        fl = s["flops_per_sequence"]
        lines += [f"## {name}: D {sh['hidden']}, {sh['blocks']} blocks, {sh['heads']} heads, V {s['vocab']}, "
                  f"L {sh['length']}", "",
                  f"- model FLOPs per sequence per NFE: {fl['total'] / 1e9:.2f} GFLOP (dense {fl['dense'] / 1e9:.2f}, "
                  f"attention {fl['attention'] / 1e9:.2f}, output projection {fl['output_projection'] / 1e9:.2f})",
                  f"- parity of the two loaded models (log-score): {s['parity'] or 'n/a'}", ""]
        lines += [f"| B | who | forward | step | sampler work (share) | per NFE (slope) | whole @{lo} | whole @{hi} | "
                  f"forward GFLOP/s (model FLOPs) | tokens/s @{hi} |", "|---|---|---|---|---|---|---|---|---|---|"]
        for b, r in s["batches"].items():
            tm = {k: v["median_s"] for k, v in r["timings"].items()}
            w = r["whole"]
            for who in ("ours", "upstream"):
                if f"{who}_step" not in tm:
                    continue
                gf = r[f"{who}_forward_gflops"]
                rows = "rows_step_speedup" in r["rounds"]["median"]
                label = ("ours (masked head, row path)" if rows else "ours (masked head)") if who == "ours" else who
                lines.append(
                    f"| {b} | {label} | {fmt_s(tm[who + '_forward'])} | {fmt_s(tm[who + '_step'])} | "
                    f"{fmt_s(r[who + '_sampler_work_s'])} ({100 * r[who + '_sampler_share']:.0f}%) | "
                    f"{fmt_s(w[who + '_per_nfe_s'])} | {fmt_s(w[str(lo)].get(who))} | {fmt_s(w[str(hi)].get(who))} | "
                    f"{gf:.1f} | {r.get(who + f'_tokens_per_s_nfe{hi}', float('nan')):.1f} |")
            lines.append(f"| {b} | ours, full head | {fmt_s(tm['ours_forward_full'])} | {fmt_s(tm['ours_step_full'])} | "
                         f"| {fmt_s(w.get('ours_full_per_nfe_s'))} | {fmt_s(w[str(lo)].get('ours_full'))} | "
                         f"{fmt_s(w[str(hi)].get('ours_full'))} | {r['ours_forward_full_gflops']:.1f} | |")
            if "ours_step_rows_off" in tm:
                lines.append(f"| {b} | ours, masked head, no row path | | {fmt_s(tm['ours_step_rows_off'])} | | | | | | |")
            rd = r["rounds"]
            lines.append(f"| {b} | roofline GEMM, per round | {', '.join(f'{x:.0f}' for x in rd['roofline_gflops'])} "
                         "GFLOP/s | | | | | | | |")
            lines.append(f"| {b} | masked head | {r['masked_positions']} of {sh['length']} positions masked per "
                         f"sequence; saves {fmt_s(r['masked_head_saving_step_s'])} per step | | | | | | | |")
            lines.append(f"| {b} | | whole samples: {r['whole']['method']} | | | | | | | |")
            mem = r.get("upstream_step_memory", {})
            ours_tmp = r.get("ours_step_temp_bytes")
            lines.append(f"| {b} | memory | upstream step: {mem.get('bvl_allocations', '?')} [B, L, V] allocations, "
                         f"{mem.get('bvl_bytes', mem.get('peak_step_bytes', 0)) / 2**20:.0f} MiB; ours: XLA temp "
                         f"{(ours_tmp or 0) / 2**20:.0f} MiB for the whole step | | | | | | | |")
        lines.append("")
    d = p.get("distill", {})
    if d:
        lines += ["## Distillation wall-clock (LSD+, paper defaults: teacher 1024 NFE, 64 samples, 20 epochs, "
                  "batch 16, 8-NFE student)", ""]
        mk = d.get("markov")
        if mk and "timing" in mk:
            t = mk["timing"]
            lines += [f"Default synthetic teacher ({mk['teacher']}), `{mk['command']}`, run end to end: process "
                      f"{mk['process_wall_s']} s, fit {mk['fit_s']} s, peak RSS {t.get('peak_rss_mib')} MiB.", "",
                      "| phase | wall | compile | run |", "|---|---|---|---|"]
            for ph in ("teacher", "epochs", "validation", "checkpoints"):
                x = t[ph]
                lines.append(f"| {ph} ({x['calls']} calls) | {x['wall_s']} s | {x['compile_s']} s | {x['run_s']} s |")
            lines.append(f"| startup, imports, outputs | {mk['startup_and_outputs_s']} s | | |")
            lines.append("")
        elif mk:
            lines += [f"synthetic teacher: {mk}", ""]
        mi = d.get("mini")
        if mi and "measured" in mi:
            m, e = mi["measured"], mi["extrapolated"]
            if "validation_ngram_every5_s" not in e:  # results from before val_every: current defaults
                e = mini_extrapolation(m)
            ms = mi.get("shape") or p["shapes"]["mini"]["shape"]  # results from before "shape": the mini row's
            vocab = mi.get("vocab") or p["shapes"]["mini"]["vocab"]
            lines += [f"Mini SEDD teacher (D {ms['hidden']}, {ms['blocks']} blocks, V {vocab}, L {ms['length']}): "
                      f"{mi['method']}. Process wall-clock {m.get('process_wall_s')} s.", "",
                      "| phase | measured | paper defaults (extrapolated) |", "|---|---|---|",
                      f"| compile: teacher sampler / epoch | {m['teacher_compile_s']:.1f} s / {m['epoch_compile_s']:.1f} s | "
                      f"{e['compile_s']:.0f} s |",
                      f"| teacher trajectory | {m['teacher_step_s']:.2f} s per step (64 x L) | "
                      f"{e['teacher_trajectory_s'] / 60:.1f} min |",
                      f"| student epochs | {m['minibatch_s']:.1f} s per minibatch of 16 | "
                      f"{e['student_epochs_s'] / 60:.1f} min |",
                      f"| validation (select auto = n-gram: {e['validation_samples']} samples, reference at "
                      f"{e['validation_reference_nfe']} teacher steps = {e['validation_reference_s'] / 3600:.1f} h "
                      f"of it), val_every 1 (default) / 5 | - | {e['validation_ngram_s'] / 3600:.1f} h / "
                      f"{e['validation_ngram_every5_s'] / 3600:.1f} h |",
                      f"| validation at the defaults before (1024 samples, reference at 1024 steps, every epoch) "
                      f"| - | {e['validation_ngram_previous_defaults_s'] / 3600:.1f} h |",
                      f"| total, select none / default (val_every 1) / val_every 5 | - | "
                      f"{e['total_select_none_s'] / 60:.0f} min / {e['total_default_s'] / 3600:.1f} h / "
                      f"{e['total_val_every5_s'] / 3600:.1f} h |", "",
                      f"Memory: peak RSS {m.get('peak_rss_mib')} MiB (process); compiled epoch temporaries "
                      f"{m.get('epoch_temp_bytes', 0) / 2**20:.0f} MiB; teacher cache {m['teacher_cache_bytes_reveal'] / 2**10:.0f} KiB "
                      f"(final state + reveal step) instead of {m['teacher_cache_bytes_dense_path'] / 2**20:.0f} MiB "
                      "for the dense [N + 1, S, L] path.", ""]
        elif mi:
            lines += [f"mini SEDD distillation: {mi}", ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in p["notes"]] + [""]
    tr = p.get("trajectory")
    if tr:
        lines += trajectory_markdown(tr)
    lines += [] if tr else []
    return "\n".join(lines)


def trajectory_markdown(tr: dict) -> list:
    """The masked head and the step cache over whole trajectories (`speed_profile.trajectory`)."""
    lines = [f"## Masked head and step cache over whole trajectories ({tr['shape']})", "",
             "| model | head | cache | NFE | wall | network calls (mean over batches) | tokens equal to full head |",
             "|---|---|---|---|---|---|---|"]
    for row in tr["rows"]:
        lines.append(f"| {row['family']} | {row['head']} | {row['cache']} | {row['nfe']} | {fmt_s(row['wall_s'])} | "
                     f"{row['network_calls']} | {row['same_tokens']} |")
    return lines + [""]
