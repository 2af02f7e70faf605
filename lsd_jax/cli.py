"""`lsd-jax` command line: sample, distill, tune, convert, train-teacher, distill-student.

~880 lines: the parser and the command of each subcommand, which stay thin (the work is in
the library); the allowed values come from `lsd_jax.names`, the flag checks from
`lsd_jax.validate`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Callable, Optional

from lsd_jax import names
from lsd_jax.names import (DIVERGENCES, DTYPES, GRAPHS, GRID_FAMILIES, LOSSES, METHODS, NOISES, READINGS, SELECT,
                           SOLVERS, TEACHER_DEFAULTS, TEACHERS)

DEFAULT_EPS = 1e-4  # terminal time of every sampler (the paper's; SEDD's own uses 1e-5)


def _add_teacher_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--teacher", choices=TEACHERS, default=None,
                     help="exact synthetic teacher: markov (first-order chain, the default) or hmm (hidden "
                          "Markov model with long-range dependence)")
    src.add_argument("--checkpoint", default=None, help="converted or HF-layout SEDD-family checkpoint directory")
    p.add_argument("--graph", choices=GRAPHS, default="absorb", help="graph of the exact teacher")
    p.add_argument("--noise", choices=NOISES, default=None,
                   help="noise schedule of the exact teacher (default: loglinear for absorb, geometric for uniform)")
    dflt = lambda k: ", ".join(f"{t} {d[k]}" for t, d in TEACHER_DEFAULTS.items() if k in d)  # noqa: E731
    p.add_argument("--teacher-vocab", type=int, default=None,
                   help=f"exact teacher: tokens V (default {dflt('vocab')})")
    p.add_argument("--teacher-length", type=int, default=None,
                   help=f"exact teacher: sequence length L (default {dflt('length')})")
    p.add_argument("--teacher-seed", type=int, default=0, help="exact teacher: seed of the chain / HMM")
    p.add_argument("--hmm-states", type=int, default=None, help=f"hmm teacher: hidden states H (default {dflt('states')})")


def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", choices=SOLVERS, default="euler",
                   help="solver (lsd_jax.solvers): euler, tweedie (1 call/step), trapezoidal (2 calls/step), "
                        "fhs (first-hitting, absorbing graph: one call per token, L in all)")
    p.add_argument("--eps", type=float, default=None, help=f"terminal time t_M (default {DEFAULT_EPS})")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the sampler")
    p.add_argument("--x64", action="store_true", help="float64 computation and categorical draws")
    p.add_argument("--distributed", action="store_true",
                   help="several hosts: start jax.distributed first (set JAX_COORDINATOR_ADDRESS=host0:port, "
                        "JAX_NUM_PROCESSES, JAX_PROCESS_ID on every host, or run under SLURM / Open MPI); every "
                        "host runs the same command and the batch is split over the devices of all hosts")


def _add_reveal_args(p: argparse.ArgumentParser, tune: bool = False) -> None:

    p.add_argument("--reveal", choices=list(names.REVEAL_POLICIES), default="ctmc",
                   help="absorbing graph: which positions a step reveals (ctmc: the plain sampler; random, planned "
                        "(bit-reversal order), confidence, margin, entropy: as many as the grid's expected counts; "
                        "eb: entropy-bounded, adaptive number of calls)")
    p.add_argument("--reveal-param", type=float, default=None,
                   help="eb: entropy budget in nats (default 1); confidence/margin/entropy: spread weight towards "
                        "the planned order (default 0)")
    p.add_argument("--reveal-shape", default=None, help="planned: 2-D order for an H,W grid of positions (e.g. 32,32)")
    p.add_argument("--remask-steps", type=int, default=0,
                   help="ReMDM-style corrector: extra network calls after the reveal steps (counted as NFE)")
    p.add_argument("--remask-count", type=int, default=1, help="positions remasked and redrawn per corrector call")
    if not tune:
        p.add_argument("--reveal-counts", choices=list(names.REVEAL_COUNTS), default="auto",
                       help="how many positions each step reveals: grid (the grid's expected CTMC counts), "
                            "screened (planned: the order's own counts, 1,1,2,4,... split to M steps, that keep "
                            "a first-order chain exact); auto: screened for planned unless --grid or "
                            "--sampler-params is given, else grid")
    if tune:
        p.add_argument("--tune-reveal-param", action="store_true",
                       help="also tune the policy's parameter (eb budget / spread weight)")


def reveal_from_args(args, teacher, param_default=None):
    """(policy, remask) from the --reveal flags, checked against the teacher; policy None for ctmc."""
    from lsd_jax import reveal

    name = getattr(args, "reveal", "ctmc")
    if name == "ctmc":
        if args.reveal_param is not None or args.remask_steps:
            raise ValueError("--reveal-param and --remask-steps need a reveal policy (--reveal other than ctmc)")
        return None, None
    if not teacher.graph.is_absorbing:
        raise ValueError(f"--reveal {name} needs the absorbing graph (--graph absorb); the teacher's is "
                         f"{teacher.graph.name}")
    if args.remask_steps < 0 or args.remask_count < 1:
        raise ValueError(f"--remask-steps must be >= 0 and --remask-count >= 1, got {args.remask_steps}, "
                         f"{args.remask_count}")
    shape = None
    if args.reveal_shape:
        try:
            shape = tuple(int(v) for v in args.reveal_shape.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 2 or name != "planned":
            raise ValueError(f"--reveal-shape takes H,W with --reveal planned, got {args.reveal_shape!r} with {name}")
    param = args.reveal_param if args.reveal_param is not None else param_default
    policy = reveal.get_policy(name, param, shape)
    if shape is not None:
        reveal.planned_order(teacher.length, shape)  # checks H * W = L before any work
    return policy, reveal.Remask(args.remask_steps, args.remask_count)


def _params_reveal_param(path: str, name: str):
    """The tuned policy parameter stored in a sampler-params file by `tune --reveal`, if any."""
    if os.path.isdir(path):
        path = os.path.join(path, "sampler_params.json")
    with open(path) as f:
        meta = json.load(f).get("meta") or {}
    return meta.get("reveal_param") if meta.get("reveal") == name else None


def load_teacher(args):
    """Teacher from CLI args: --checkpoint DIR, or the exact teacher --teacher markov|hmm."""
    from lsd_jax import teachers, validate

    if getattr(args, "checkpoint", None):
        from lsd_jax.teachers import checkpoint as ckpt_teacher

        if getattr(args, "hmm_states", None) is not None:
            raise ValueError("--hmm-states applies to --teacher hmm only, not to --checkpoint")
        teacher = ckpt_teacher.load_teacher(args.checkpoint)
        validate.probe_score(teacher)  # shape and finiteness, before any work (3 calls on 2 sequences)
        return teacher
    kind = getattr(args, "teacher", None) or "markov"
    size = dict(TEACHER_DEFAULTS[kind])
    if args.hmm_states is not None:
        if kind != "hmm":
            raise ValueError(f"--hmm-states applies to --teacher hmm only, not to --teacher {kind}")
        size["states"] = args.hmm_states
    for field, key in (("teacher_vocab", "vocab"), ("teacher_length", "length")):
        if getattr(args, field) is not None:
            size[key] = getattr(args, field)
    for key, v in size.items():
        if v < 2:
            flag = "--hmm-states" if key == "states" else f"--teacher-{key}"
            raise ValueError(f"{flag} must be >= 2, got {v}")
    make = teachers.hmm_teacher if kind == "hmm" else teachers.markov_teacher
    return make(graph=args.graph, noise=args.noise, seed=args.teacher_seed, **size)


def _device_info() -> dict:
    import jax

    d = jax.devices()[0]
    return {"platform": d.platform, "device": str(d.device_kind), "count": jax.device_count()}


def _primary() -> bool:
    from lsd_jax.sharding import is_primary

    return is_primary()


def _write_json(path: Optional[str], obj: dict) -> None:
    from lsd_jax.runs import write_json

    if path and _primary():
        write_json(path, obj)


def cmd_sample(args) -> int:
    import jax
    import numpy as np

    from lsd_jax import grids, samplers, sharding

    from lsd_jax.solvers import get_solver

    solver = get_solver(args.sampler)
    steps = solver.steps_for_nfe(args.nfe)  # NFE counts network calls: trapezoidal 8 NFE = 4 steps
    phi, grid, params_info, reading = None, None, None, "linear"
    if args.sampler_params:  # the file first: its errors before the teacher loads
        from lsd_jax import sampler_params as sp

        params = sp.load(args.sampler_params)
        if params.nfe != steps:
            raise ValueError(f"--sampler-params {args.sampler_params} has {params.nfe} steps, but --nfe {args.nfe} "
                             f"with --sampler {args.sampler} is {steps} steps")
        grid, phi, reading = params.grid(), params.phi, params.reading
        params_info = {"file": args.sampler_params, **params.describe()}
        if args.sampler != params.sampler:
            print(f"note: sampler params were learned for {params.sampler}, running {args.sampler}", file=sys.stderr)
    teacher = load_teacher(args)  # the flags were checked by validate.sample_args
    solver.check_graph(teacher.graph)
    policy, remask = reveal_from_args(
        args, teacher, _params_reveal_param(args.sampler_params, args.reveal) if args.sampler_params else None)
    if args.gap and not teacher.exact:
        raise ValueError("--gap needs an exact teacher (--teacher markov): it measures the exact divergence")
    counts = None
    if policy is not None:
        from lsd_jax import reveal

        mode = args.reveal_counts
        if mode == "auto":
            mode = "screened" if policy.name == "planned" and not args.grid_given and grid is None else "grid"
        if mode == "screened":
            if policy.name != "planned":
                raise ValueError(f"--reveal-counts screened needs --reveal planned, got {policy.name}")
            counts = reveal.screened_counts(reveal.planned_order(teacher.length, policy.shape), args.nfe)
    if grid is None and args.grid == "jys":
        from lsd_jax import baselines

        reference = baselines.optional_reference(teacher, eps=args.eps)
        grid = baselines.jys_grid(teacher.score_fn, teacher.graph, teacher.noise, reference, steps, args.eps)
    if grid is None:
        grid = grids.get_grid(args.grid or "uniform", steps, args.eps, p=args.grid_p, noise=teacher.noise)
    t0 = time.perf_counter()
    if policy is None:
        out = samplers.sample(
            teacher.score_fn, teacher.graph, teacher.noise, grid, jax.random.PRNGKey(args.seed), args.num_samples,
            teacher.length, sampler=args.sampler, phi=phi, x64=args.x64, reading=reading,
        )
        calls = out.network_calls
    else:
        out = reveal.sample(teacher.score_fn, teacher.graph, teacher.noise, grid, jax.random.PRNGKey(args.seed),
                            args.num_samples, teacher.length, policy=policy, remask=remask, phi=phi,
                            reading=reading, x64=args.x64, counts=counts)
        calls = float(jax.numpy.mean(out.calls))
    tokens = sharding.to_host(jax.block_until_ready(out.tokens))  # several hosts: gathered on each
    seconds = time.perf_counter() - t0
    if policy is None and out.nfe != args.nfe:
        print(f"note: {args.sampler} made {out.nfe} predictor calls (asked --nfe {args.nfe})", file=sys.stderr)
    result = {
        "nfe": out.nfe if policy is None else args.nfe,
        "network_calls": calls,
        "steps": out.nfe // solver.calls_per_step if policy is None else args.nfe,
        "reveal": args.reveal,
        "sampler": args.sampler,
        "graph": teacher.graph.name,
        "noise": teacher.noise.name,
        "grid": args.grid if not args.sampler_params else "learned",
        "grid_values": [float(v) for v in np.asarray(grid)],
        "eps": params.eps if args.sampler_params else args.eps,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "x64": bool(args.x64),
        "teacher": teacher.describe(),
        **teacher.metrics(tokens),
        "seconds": seconds,
        "device": _device_info(),
    }
    if policy is not None:
        from lsd_jax.reveal import counts_from_grid

        result["reveal_policy"] = {"name": policy.name, "param": getattr(policy, policy.param) if policy.param
                                   else None, "remask_steps": remask.steps, "remask_count": remask.count}
        if policy.name != "eb":
            result["counts"] = [int(c) for c in (counts if counts is not None else
                                                 counts_from_grid(teacher.noise, grid, teacher.length))]
    if params_info:
        result["sampler_params"] = params_info
    if args.gap:
        from lsd_jax.eval.sampling import gap_closed, run_sampler

        base = run_sampler(teacher, grids.uniform(args.nfe, args.eps), sampler="euler", seed=args.seed,
                           num_samples=args.num_samples, x64=args.x64)
        ref = run_sampler(teacher, grids.uniform(1024, args.eps), sampler="euler", seed=args.seed,
                          num_samples=args.num_samples, x64=args.x64)
        key = getattr(getattr(teacher, "oracle", teacher.chain), "HEADLINE", "bigram_kl")  # the exact headline
        d_base, d_ref = teacher.metrics(base)[key], teacher.metrics(ref)[key]
        result.update({f"euler_{key}": d_base, f"teacher1024_{key}": d_ref,
                       "gap_closed": gap_closed(result[key], d_base, d_ref)})
    shown = ("nfe", "network_calls", "reveal", "sampler", "graph", "nll", "data_entropy", "data_entropy_se",
             "unigram_entropy", "bigram_kl", "lag_kl", "gap_closed", "seconds")
    print(" ".join(f"{k}={result[k]:.4g}" if isinstance(result[k], float) else f"{k}={result[k]}"
                   for k in shown if k in result))
    if teacher.decode is not None:
        for row in tokens[: args.show]:
            print("  " + teacher.decode(row))
    _write_json(args.json, result)
    return 0


def plot_sampler_params(path: str, params, title: str, baseline_grid=None) -> None:
    """Two panels: phi per step, and the time grid against the uniform grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from lsd_jax import grids

    phi, grid = np.asarray(params.phi), np.asarray(params.grid())
    m = phi.shape[0]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(np.arange(m), phi, "o-", label="learned phi")
    a.axhline(1.0, color="gray", ls="--", label="phi = 1 (plain sampler)")
    a.set_xlabel("step k")
    a.set_ylabel("phi_k")
    a.legend()
    b.plot(np.arange(m + 1), np.asarray(grids.uniform(m, params.eps)), "s--", color="gray", label="uniform")
    if baseline_grid is not None:
        b.plot(np.arange(m + 1), np.asarray(baseline_grid), "^:", label="best fixed grid")
    b.plot(np.arange(m + 1), grid, "o-", label="learned")
    b.set_xlabel("grid index k")
    b.set_ylabel("t_k")
    b.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    from lsd_jax.runs import save_figure

    save_figure(fig, path, dpi=110)
    plt.close(fig)


def _compare(teacher, rows: dict, args) -> dict:
    """Held-out evaluation of named (grid, phi, reading[, reveal policy, remask]) samplers; prints a table."""
    from lsd_jax.eval.sampling import HELD_OUT_SEED0, evaluate_sampler

    seeds = [HELD_OUT_SEED0 + i for i in range(args.eval_seeds)]
    results = {}
    keys = ("nll", "bigram_kl", "unigram_entropy") if teacher.exact else ("unigram_entropy",)
    keys += ("lag_kl",) if teacher.hmm is not None else ()
    keys += ("network_calls",)
    print(f"held-out evaluation: {args.eval_seeds} seeds x {args.eval_samples} samples")
    print("  " + f"{'sampler':<28}" + "".join(f"{k:>22}" for k in keys))
    for name, (grid, phi, reading, *rev) in rows.items():
        r = evaluate_sampler(teacher, grid, sampler=args.sampler, phi=phi, reading=reading, seeds=seeds,
                             num_samples=args.eval_samples, x64=args.x64, reveal=rev[0] if rev else None,
                             remask=rev[1] if len(rev) > 1 else None)
        results[name] = {k: v for k, v in r.items() if k != "per_seed"}
        print("  " + f"{name:<28}" + "".join(f"{r[k]:>14.4f} +- {r[k + '_std']:<5.3f}" for k in keys))
    if teacher.exact:
        print(f"  data entropy rate {teacher.oracle.entropy_rate():.4f}, "
              f"data unigram entropy {teacher.oracle.unigram_entropy():.4f}")
    return results


def _against_plain(teacher, args, params, name: str, plain_name: str) -> dict:
    """Held-out comparison of learned sampler params with the plain sampler on the uniform grid."""
    from lsd_jax import grids

    return _compare(teacher, {
        plain_name: (grids.uniform(params.nfe, params.eps), None, "linear"),
        name: (params.grid(), params.phi, params.reading),
    }, args)


def cmd_distill_reveal(args) -> int:
    """distill --reveal P: LSD / LSD+ with the policy in the student (lsd_jax.reveal_distill)."""
    from lsd_jax import reveal_distill
    from lsd_jax import sampler_params as sp_lib

    if args.resume:
        raise ValueError("--resume is not supported with --reveal (the fit is short: run it again)")
    if os.path.isdir(args.out) and os.listdir(args.out):
        raise ValueError(f"--out {args.out} exists and is not empty: choose a new --out")
    teacher = load_teacher(args)
    policy, remask = reveal_from_args(args, teacher)
    if remask.steps:
        raise ValueError("--remask-steps is not part of the distilled student; sample with it afterwards")
    params, history = reveal_distill.fit(teacher, policy, nfe=args.nfe, method=args.method, reading=args.reading,
                                         epochs=args.epochs, batch=args.batch_size, lr=args.lr, eps=args.eps,
                                         seed=args.seed, progress=not args.no_progress)
    os.makedirs(args.out, exist_ok=True)
    meta = {"method": args.method, "reveal": policy.name, "reveal_param": getattr(policy, policy.param)
            if policy.param else None, "teacher": teacher.describe()}
    sp_lib.save(params, os.path.join(args.out, "sampler_params.json"), meta=meta)
    _write_json(os.path.join(args.out, "history.json"), {"history": history})
    print(f"wrote {args.out}/sampler_params.json, history.json; selected val bigram KL "
          f"{history[-1]['selected_val_bigram_kl']}")
    return 0


def cmd_distill(args) -> int:
    from lsd_jax import distill
    from lsd_jax.runs import RunLock

    if args.reveal != "ctmc":
        return cmd_distill_reveal(args)

    val_samples = _auto_or_int("--val-samples", args.val_samples)
    for flag, v in (("--val-every", args.val_every), ("--val-reference-nfe", args.val_reference_nfe)):
        if v < 1:
            raise ValueError(f"{flag} must be an integer >= 1, got {v}")
    cfg = distill.DistillConfig(
        method=args.method, sampler=args.sampler, nfe=args.nfe, teacher_nfe=args.teacher_nfe, reading=args.reading,
        loss=args.loss, zeta=args.zeta, epochs=args.epochs, samples=args.samples,
        batch_size=args.batch_size, lr=args.lr, eps=args.eps, alternate=args.alternate,
        select=args.select, val_samples=val_samples, val_every=args.val_every,
        val_reference_nfe=args.val_reference_nfe, seed=args.seed, x64=args.x64,
    ).validate()
    with RunLock(args.out, enabled=_primary()):  # --out was checked by validate.distill_args
        return _distill(args, cfg)


def _distill(args, cfg) -> int:
    import jax

    from lsd_jax import distill
    from lsd_jax import sampler_params as sp_lib
    from lsd_jax.runs import write_json

    out = args.out
    teacher = load_teacher(args)
    print(f"teacher {teacher.name} ({teacher.graph.name}, {teacher.noise.name}); student {cfg.method} "
          f"{cfg.sampler} M={cfg.nfe} from N={cfg.teacher_nfe}; loss {cfg.loss}, reading {cfg.reading}, "
          f"zeta {cfg.zeta}; {jax.devices()[0].platform}")
    plan = distill.validation_plan(teacher, cfg)
    if plan["kind"] != "none":
        ref = f", reference {plan['reference_nfe']} teacher steps" if plan["reference_nfe"] else ""
        print(f"selection: {plan['kind']} divergence on {plan['samples']} samples at epochs "
              f"{_epoch_list(plan['epochs'])}{ref}: ~{plan['forward_passes']:,} sequence-forward passes")
    t0 = time.perf_counter()
    params, history = distill.fit(teacher, cfg, out_dir=out, resume=args.resume, progress=not args.no_progress)
    fit_seconds = time.perf_counter() - t0
    meta = {"method": cfg.method, "teacher": teacher.describe(), "config": cfg.to_dict()}
    if _primary():
        sp_lib.save(params, os.path.join(out, "sampler_params.json"), meta=meta)
        write_json(os.path.join(out, "history.json"), history, indent=1)
        plot_sampler_params(os.path.join(out, "sampler_params.png"), params,
                            f"{cfg.method} ({cfg.loss}, {cfg.reading}) M={cfg.nfe} on {teacher.name}")
    result = {"config": cfg.to_dict(), "teacher": teacher.describe(), "fit_seconds": fit_seconds,
              "final_loss": history[-1]["loss"] if history else None,
              "selected_epoch": _selected_epoch(history), "validation": plan,
              "phi": [float(v) for v in params.phi], "grid": [float(v) for v in params.grid()]}
    if args.eval_seeds > 0:
        result["evaluation"] = _against_plain(teacher, args, params, f"{cfg.method} learned",
                                              f"{cfg.sampler} uniform (phi = 1)")
    _write_json(os.path.join(out, "result.json"), result)
    print(f"wrote {out}/sampler_params.json, history.json, sampler_params.png, result.json "
          f"(fit {fit_seconds:.1f} s); phi in [{float(params.phi.min()):.4f}, {float(params.phi.max()):.4f}]")
    return 0


def cmd_convert(args) -> int:
    from ports.sedd import convert

    print(json.dumps(convert(args.src, args.dst, dtype=args.dtype)))  # CheckpointError -> main: exit 2
    return 0


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a SEDD / MDLM / RADD checkpoint (HF layout) to a Flax directory")
    p.add_argument("src", metavar="SRC", help="HF-layout checkpoint directory or Hugging Face repo id")
    p.add_argument("dst", metavar="DST", help="new (or empty) output directory")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.set_defaults(func=cmd_convert)


def cmd_tune(args) -> int:
    from lsd_jax.runs import RunLock

    with RunLock(args.out, enabled=_primary()):  # the flags and --out were checked by validate.tune_args
        return _tune(args)


def _tune(args) -> int:
    from lsd_jax import grids, tune
    from lsd_jax import sampler_params as sp_lib
    from lsd_jax.divergences import make_divergence
    from lsd_jax.eval.sampling import run_sampler
    from lsd_jax.eval.text_metrics import unigram_entropy

    out = args.out
    teacher = load_teacher(args)
    if args.divergence == "exact" and not teacher.exact or args.divergence == "mmd" and teacher.features is None:
        make_divergence(args.divergence, teacher, None)  # its error names what the divergence needs
    # reference: the teacher's own many-step samples (the ngram target and the entropy guard)
    ref = run_sampler(teacher, grids.uniform(args.teacher_nfe, args.eps), sampler=args.sampler, seed=1,
                      num_samples=args.samples, x64=args.x64)
    ref_entropy = unigram_entropy(ref, mode="pooled")
    divergence = _finite(make_divergence(args.divergence, teacher, ref), args.divergence)
    crn = tuple(range(args.crn_seeds))
    policy, remask = reveal_from_args(args, teacher)
    if args.tune_reveal_param and (policy is None or policy.param is None):
        raise ValueError(f"--tune-reveal-param needs --reveal eb, confidence, margin or entropy, got {args.reveal}")
    t0 = time.perf_counter()
    init_grid, start = None, "uniform"
    if args.start == "best-fixed":  # as the benchmark does: the best of tune.FIXED_FAMILIES on the tuning seeds
        init_grid, table = tune.best_fixed_grid(teacher, args.nfe, divergence, sampler=args.sampler, eps=args.eps,
                                                crn_seeds=crn, num_samples=args.samples, x64=args.x64,
                                                reveal=policy, remask=remask)
        start = "best fixed grid " + min(table, key=lambda r: r["divergence"])["grid"]
    print(f"tuning {args.sampler} M={args.nfe} (reveal {args.reveal}) on {teacher.name} by {args.divergence}; "
          f"entropy guard {ref_entropy:.4f} +- {100 * args.entropy_band:.1f}%; start {start}; budget {args.budget} evaluations")
    params, history = tune.search(
        teacher, args.nfe, divergence, sampler=args.sampler, eps=args.eps, budget=args.budget,
        tune_phi=args.tune_phi, crn_seeds=crn, num_samples=args.samples, x64=args.x64,
        seed=args.seed, entropy_ref=ref_entropy if args.entropy_band > 0 else None,
        entropy_band=args.entropy_band, init_grid=init_grid, progress=not args.no_progress, reveal=policy,
        remask=remask, tune_reveal_param=args.tune_reveal_param,
    )
    seconds = time.perf_counter() - t0
    meta = {"method": "tune", "divergence": args.divergence, "teacher": teacher.describe(), "budget": args.budget,
            "start": start}
    if policy is not None:
        from lsd_jax import reveal

        if args.tune_reveal_param:
            policy = reveal.with_param(policy, history[-1]["reveal_param"])
        meta.update({"reveal": policy.name, "reveal_param": getattr(policy, policy.param) if policy.param else None,
                     "counts": [int(c) for c in reveal.counts_from_grid(teacher.noise, params.grid(),
                                                                         teacher.length)]})
    _write_json(os.path.join(out, "history.json"), {"evaluations": history, "seconds": seconds})
    if _primary():
        sp_lib.save(params, os.path.join(out, "sampler_params.json"), meta=meta)
        plot_sampler_params(os.path.join(out, "sampler_params.png"), params,
                            f"tuned ({args.divergence}) {args.sampler} M={args.nfe} on {teacher.name}")
    summary = history[-1]
    result = {"divergence": args.divergence, "best": summary["best_divergence"],
              "uniform": summary["uniform_divergence"], "start": start, "seconds": seconds,
              "grid": [float(v) for v in params.grid()], "phi": [float(v) for v in params.phi]}
    if policy is not None:
        result.update({k: meta[k] for k in ("reveal", "reveal_param", "counts")})
    if args.eval_seeds > 0 and policy is None:
        result["evaluation"] = _against_plain(teacher, args, params, "tuned", f"{args.sampler} uniform")
    elif args.eval_seeds > 0:
        uniform = grids.uniform(params.nfe, params.eps)
        result["evaluation"] = _compare(teacher, {
            f"{args.sampler} uniform": (uniform, None, "linear"),
            f"{policy.name} uniform counts": (uniform, None, "linear", reveal_from_args(args, teacher)[0], remask),
            f"{policy.name} tuned": (params.grid(), params.phi, params.reading, policy, remask),
        }, args)
    _write_json(os.path.join(out, "result.json"), result)
    print(f"{args.divergence}: uniform {result['uniform']:.4g} -> tuned {result['best']:.4g} "
          f"(tuning seeds) in {seconds:.1f} s; wrote {out}/sampler_params.json, history.json, sampler_params.png")
    return 0


def _finite(divergence: Callable, name: str) -> Callable:
    """The divergence, stopping the search at the first non-finite value (naming the evaluation)."""
    count = [0]

    def guarded(tokens) -> float:
        count[0] += 1
        v = float(divergence(tokens))
        if not math.isfinite(v):
            raise FloatingPointError(f"divergence {name} is non-finite ({v}) at evaluation {count[0]} "
                                     "(a sampler run on the tuning seeds): the search stops here")
        return v

    return guarded


def _add_tune(sub) -> None:
    p = sub.add_parser("tune", help="tune the time grid (and phi) of an M-step sampler on a sample divergence")
    _add_teacher_args(p)
    _add_sampler_args(p)
    p.add_argument("--nfe", type=int, default=8, help="sampler steps M")
    p.add_argument("--divergence", choices=DIVERGENCES, default="ngram",
                   help="exact: bigram KL vs the true chain (markov teacher only); ngram (default): symmetric "
                        "unigram + bigram KL vs the teacher's many-step samples (any model); mmd: Gaussian-kernel "
                        "MMD on the teacher network's pooled final hidden states (network teachers)")
    p.add_argument("--budget", type=int, default=150,
                   help="CMA-ES evaluations, the uniform grid's and the start's included")
    p.add_argument("--start", choices=["uniform", "best-fixed"], default="uniform",
                   help="search start: the uniform grid (default), or the best fixed grid of the simple families "
                        "on the tuning seeds (9 more evaluations, outside --budget; the benchmark's start)")
    p.add_argument("--tune-phi", action="store_true", help="also tune phi (log-scale, bounded)")
    p.add_argument("--teacher-nfe", type=int, default=1024, help="steps of the reference teacher samples")
    p.add_argument("--samples", type=int, default=1024, help="samples per candidate and seed")
    p.add_argument("--crn-seeds", type=int, default=2, help="common-random-number seeds per candidate")
    p.add_argument("--entropy-band", type=float, default=0.01,
                   help="reject candidates whose unigram entropy leaves the teacher's by more than this fraction")
    p.add_argument("--out", required=True)
    p.add_argument("--eval-seeds", type=int, default=3, help="held-out seeds for the final comparison (0: skip)")
    p.add_argument("--eval-samples", type=int, default=1024)
    p.add_argument("--no-progress", action="store_true")
    _add_reveal_args(p, tune=True)
    p.set_defaults(func=cmd_tune)


def _auto_or_int(flag: str, value: str):
    """'auto' or an integer >= 1 (a CLI flag's value), else a one-line error."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{flag} must be 'auto' or an integer >= 1, got {value!r}")
    return n


def _epoch_list(epochs: list) -> str:
    return ", ".join(map(str, epochs)) if len(epochs) <= 8 else f"{epochs[0]}, {epochs[1]}, ..., {epochs[-1]}"


def _selected_epoch(history: list):
    vals = [(h["val_divergence"], h["epoch"]) for h in history if h.get("val_divergence") is not None]
    return min(vals)[1] if vals else (history[-1]["epoch"] if history else None)


def _add_distill(sub) -> None:
    p = sub.add_parser("distill", help="LSD / LSD+: learn phi (and the grid) of an M-step student")
    _add_teacher_args(p)
    _add_sampler_args(p)
    p.add_argument("--method", choices=METHODS, default="lsd")
    p.add_argument("--nfe", type=int, default=8, help="student steps M")
    p.add_argument("--teacher-nfe", type=int, default=1024, help="teacher steps N")
    p.add_argument("--reading", choices=READINGS, default="linear")
    p.add_argument("--loss", choices=LOSSES, default="kl")
    p.add_argument("--zeta", type=float, default=0.05, help="relaxed start radius, fraction of L")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--samples", type=int, default=64, help="training trajectories")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--alternate", action="store_true", help="lsd+: alternate phi and grid updates by epoch")
    p.add_argument("--select", choices=SELECT, default="auto",
                   help="return the best epoch on this sample-level divergence (auto: exact on the markov "
                        "teacher, else n-gram vs teacher samples; none: the last epoch)")
    p.add_argument("--val-samples", default="auto",
                   help="samples per validation (auto: 1024 on the markov teacher, 256 on a network teacher)")
    p.add_argument("--val-every", type=int, default=1,
                   help="validate epoch 0, every k-th epoch and the last; the best of those is returned. Validation "
                        "costs ~ (epochs / k + 1) x nfe x val-samples sequence-forward passes")
    p.add_argument("--val-reference-nfe", type=int, default=256,
                   help="n-gram selection: steps of the teacher's reference samples (capped at --teacher-nfe; "
                        "costs val-reference-nfe x val-samples passes once)")
    p.add_argument("--out", required=True, help="output directory (checkpoints, params, history, plot)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--eval-seeds", type=int, default=3, help="held-out seeds for the final comparison (0: skip)")
    p.add_argument("--eval-samples", type=int, default=1024)
    p.add_argument("--no-progress", action="store_true")
    _add_reveal_args(p)
    p.set_defaults(func=cmd_distill)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsd-jax", description="Learnable sampler distillation in JAX")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("sample", help="sample from a teacher and report quality (exact metrics on the markov teacher)")
    _add_teacher_args(p)
    _add_sampler_args(p)
    p.add_argument("--nfe", type=int, required=True, help="predictor steps M (the final denoise adds one call)")
    p.add_argument("--num-samples", type=int, default=1024)
    p.add_argument("--grid", choices=list(GRID_FAMILIES) + ["jys"], default=None,
                   help="time grid (default uniform); jys: Jump Your Steps (Park et al. 2025), computed with the model "
                        "from 256 of its own 256-step samples (lsd_jax.baselines.jys_grid)")
    p.add_argument("--grid-p", type=float, default=2.0, help="exponent of the power grid")
    p.add_argument("--sampler-params", default=None, help="learned sampler parameters (from distill or tune)")
    p.add_argument("--show", type=int, default=3, help="decoded samples to print")
    p.add_argument("--json", default=None, help="write the result as JSON to this path")
    p.add_argument("--gap", action="store_true",
                   help="exact teacher: also run plain Euler at --nfe and the 1024-step teacher (same seed and "
                        "samples) and report the share of the gap in bigram KL closed")
    _add_reveal_args(p)
    p.set_defaults(func=cmd_sample)

    for name, register in _EXTRA.items():
        register(sub)
    return parser


def train_config_from_args(args):
    """The TrainConfig of parsed `train-teacher` flags, validated (ValueError naming the field)."""
    from lsd_jax.train.config import TrainConfig

    return TrainConfig(
        data=args.data, graph=args.graph, noise=args.noise, objective=args.objective,
        hidden_size=args.hidden_size, n_blocks=args.n_blocks, n_heads=args.n_heads, cond_dim=args.cond_dim,
        length=args.length, vocab=args.vocab, chain_seed=args.chain_seed, hmm_states=args.hmm_states,
        tokenizer=args.tokenizer,
        batch_size=args.batch_size, steps=args.steps, lr=args.lr, warmup=args.warmup, schedule=args.schedule,
        min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay, grad_clip=args.grad_clip, ema=args.ema,
        eval_every=args.eval_every, val_size=args.val_size, checkpoint_every=args.checkpoint_every,
        final_repeats=args.final_repeats, seed=args.seed,
    ).validate()


def cmd_train_teacher(args) -> int:
    from lsd_jax.train import command_for
    from lsd_jax.train.loop import train

    cfg = train_config_from_args(args)
    try:
        s = train(cfg, args.out, resume=args.resume, progress=not args.no_progress, stop_at=args.stop_at,
                  command=command_for(cfg, args.out))
    except KeyboardInterrupt:
        print("lsd-jax train-teacher: interrupted; continue with the same command and --resume", file=sys.stderr)
        return 130
    print(f"wrote {args.out}: {', '.join(sorted(os.listdir(args.out)))}")
    if "entropy_rate" in s and s["val_nelbo"] is not None:
        print(f"validation NELBO {s['val_nelbo']:.4f} nats/token ({s['val_nelbo_bits']:.4f} bits/token) vs "
              f"data entropy rate {s['entropy_rate']:.4f} ({s['entropy_rate_bits']:.4f} bits): "
              f"{100 * (s['val_nelbo'] / s['entropy_rate'] - 1):+.2f}%"
              + (f"; exact score's NELBO on the same draws {s['exact_score_nelbo']:.4f}: excess "
                 f"{s['excess_over_exact_score']:.4f} ({100 * s['excess_over_exact_score_relative']:.2f}%)"
                 if "exact_score_nelbo" in s else ""))
    elif s["val_nelbo"] is not None:
        print(f"validation NELBO {s['val_nelbo']:.4f} nats/token = {s['val_nelbo_bits']:.4f} "
              f"{s['bits_per_token_name']}")
    return 0


def _add_train_teacher(sub) -> None:
    from lsd_jax.train import config as tc  # no jax: the parser stays cheap to build

    d = tc.TrainConfig()
    p = sub.add_parser("train-teacher", help="train a small DiT teacher (SEDD score entropy or MDLM masked "
                       "cross-entropy) on the synthetic Markov chain, the HMM or the text corpus")
    p.add_argument("--data", choices=tc.DATA, default=d.data,
                   help="markov: exact chain samples; hmm: exact HMM samples (the --teacher hmm model for the same "
                        "--hmm-states, --vocab, --length, --chain-seed); text: the corpus")
    p.add_argument("--graph", choices=tc.GRAPHS, default=d.graph)
    p.add_argument("--noise", choices=tc.NOISES, default=None,
                   help="default: loglinear for absorb, geometric for uniform")
    p.add_argument("--objective", choices=tc.OBJECTIVES, default=d.objective,
                   help="score-entropy: SEDD (a sedd DiT: the concrete score); masked-ce: MDLM's weighted masked "
                        "cross-entropy = masked discrete flow matching (an mdlm DiT: the posterior; absorb only)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps")
    p.add_argument("--schedule", choices=tc.SCHEDULES, default=d.schedule, help="after warm-up")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="cosine: final lr / lr")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW, on matrices")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="global-norm clip (0: off)")
    p.add_argument("--ema", type=float, default=d.ema, help="EMA decay of the parameters")
    p.add_argument("--hidden-size", type=int, default=d.hidden_size)
    p.add_argument("--n-blocks", type=int, default=d.n_blocks)
    p.add_argument("--n-heads", type=int, default=d.n_heads)
    p.add_argument("--cond-dim", type=int, default=d.cond_dim)
    p.add_argument("--length", type=int, default=d.length, help="sequence length (markov: chain length)")
    p.add_argument("--vocab", type=int, default=d.vocab, help="markov / hmm: tokens V")
    p.add_argument("--chain-seed", type=int, default=d.chain_seed, help="markov / hmm: seed of the chain / HMM")
    p.add_argument("--hmm-states", type=int, default=d.hmm_states, help="hmm: hidden states H")
    p.add_argument("--tokenizer", choices=tc.TOKENIZERS, default=d.tokenizer, help="text: tokenizer")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--val-size", type=int, default=d.val_size, help="validation sequences")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--final-repeats", type=int, default=d.final_repeats,
                   help="draws of (t, x_t) averaged for the final validation NELBO")
    p.add_argument("--seed", type=int, default=d.seed, help="init, data and noise seed")
    p.add_argument("--out", required=True, help="output directory (model, chain.json / hmm.json, log, plot, state/)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out/state")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--stop-at", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulated interruption
    p.set_defaults(func=cmd_train_teacher)


def cmd_distill_student(args) -> int:
    from lsd_jax.students import fit as fit_lib

    d = fit_lib.Di4CConfig
    cfg = d(nfe=args.nfe, teacher_nfe=args.teacher_nfe, lambdas=args.lambdas, batch_size=args.batch_size,
            steps=args.steps, lr=args.lr, warmup=args.warmup, dit_lr_scale=args.dit_lr_scale, delta=args.delta,
            distil_prob=args.distil_prob,
            data_weight=args.data_weight, data_schedule=args.data_schedule, ema_target=args.ema_target,
            estimator=args.estimator, consistency_weight=args.consistency_weight,
            consistency_marg_weight=args.consistency_marg_weight,
            lambda_init_scale=args.lambda_init_scale, keep_best=args.keep_best,
            grid=args.student_grid, sampler=args.sampler, eps=args.eps, eval_every=args.eval_every,
            eval_samples=args.eval_samples, checkpoint_every=args.checkpoint_every, seed=args.seed).validate()
    try:
        s = fit_lib.fit(args.checkpoint, cfg, args.out, resume=args.resume, progress=not args.no_progress,
                        stop_at=args.stop_at)
    except KeyboardInterrupt:
        print("lsd-jax distill-student: interrupted; continue with the same command and --resume", file=sys.stderr)
        return 130
    last = s["last_eval"] or {}
    print(f"wrote {args.out} ({s['step']} steps, {s['train_wall_s']:.0f} s); sample with: lsd-jax sample "
          f"--checkpoint {args.out} --nfe {cfg.nfe} --sampler {cfg.sampler}"
          + (f" --grid {cfg.grid}" if cfg.grid != "uniform" else "")
          + "".join(f"; {k} {last[k]:.4f}" for k in ("lag_kl", "bigram_kl", "nll", "unigram_entropy") if k in last)
          + (f"; saved the best evaluation, step {s['best_step']}" if "best_step" in s else ""))
    return 0


def _add_distill_student(sub) -> None:
    from lsd_jax.students import DATA_SCHEDULES, ESTIMATORS, METHODS, STUDENT_GRIDS

    p = sub.add_parser("distill-student", help="distil a network teacher into a few-step student network "
                       "(Di4C mixture student)")
    p.add_argument("--method", choices=METHODS, default=METHODS[0])
    p.add_argument("--checkpoint", required=True,
                   help="network teacher directory (absorbing graph, with chain.json or hmm.json)")
    p.add_argument("--nfe", type=int, default=8, help="student steps M")
    p.add_argument("--teacher-nfe", type=int, default=256, help="teacher steps N over (0, 1]: N / M per student step")
    p.add_argument("--lambdas", type=int, default=8, help="lambda draws per sequence (the mixture's Monte Carlo)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--dit-lr-scale", type=float, default=1.0,
                   help="learning rate of the teacher's DiT weights / --lr (1: full fine-tuning; 0: only the lambda path)")
    p.add_argument("--delta", type=float, default=0.02, help="distillation below this time")
    p.add_argument("--distil-prob", type=float, default=0.3, help="share of sequences in the distillation branch")
    p.add_argument("--data-weight", type=float, default=0.1, help="weight of the data correlation term")
    p.add_argument("--data-schedule", choices=DATA_SCHEDULES, default="sigmoid",
                   help="its weight over t: sigmoid(20 (t - 1/2)) (sony/di4c sdtt) or constant")
    p.add_argument("--estimator", choices=ESTIMATORS, default="cv",
                   help="KL estimator: cv (sony/di4c: correlation part + closed-form marginal KLs) or plain "
                        "(-log of the mixture on the target's draws and the data)")
    p.add_argument("--consistency-weight", type=float, default=1.0,
                   help="weight of the consistency term (0: the data terms alone)")
    p.add_argument("--consistency-marg-weight", type=float, default=1.0,
                   help="weight of the consistency term's marginal KL (1: sony/di4c; 0: the teacher's marginals "
                        "at x_t anchor them alone)")
    p.add_argument("--lambda-init-scale", type=float, default=0.0,
                   help="std of the lambda path's last layer at init (0: the student starts as the teacher)")
    p.add_argument("--ema-target", type=float, default=0.0,
                   help="EMA rate of the consistency target's student (0: the live student, as sony/di4c)")
    p.add_argument("--keep-best", action="store_true",
                   help="save the params of the best progress evaluation (exact lag/bigram KL of --eval-samples "
                        "samples on a fixed key, not the benchmarks' held-out seeds; only evaluations whose unigram "
                        "entropy is within 1%% of the data's): early stopping")
    p.add_argument("--student-grid", choices=STUDENT_GRIDS, default="uniform",
                   help="the student's M-step time grid (power: p = 2)")
    p.add_argument("--sampler", choices=SOLVERS, default="tweedie",
                   help="the teacher's small steps and the student's own")
    p.add_argument("--eps", type=float, default=DEFAULT_EPS, help="terminal time t_M")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-samples", type=int, default=256, help="student samples per progress evaluation")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory (student, history, plot, state/)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out/state")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--stop-at", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulated interruption
    p.set_defaults(func=cmd_distill_student)


# Subcommands beyond `sample`: name -> function(subparsers).
_EXTRA: dict[str, Callable] = {"distill": _add_distill, "convert": _add_convert, "tune": _add_tune,
                               "train-teacher": _add_train_teacher, "distill-student": _add_distill_student}


def _preflight(args) -> None:
    """Every check the inputs alone decide, before any work (and before jax.distributed):
    `lsd_jax.validate`, one function per subcommand."""
    from lsd_jax import validate

    args.eps_given, args.grid_given = getattr(args, "eps", None) is not None, getattr(args, "grid", None) is not None
    if hasattr(args, "eps") and args.eps is None:
        args.eps = DEFAULT_EPS
    if hasattr(args, "grid") and args.grid is None:
        args.grid = "uniform"
    check = {"sample": validate.sample_args, "tune": validate.tune_args, "distill": validate.distill_args,
             "train-teacher": lambda a: validate.output_dir(a.out, "--out", resume=a.resume)}.get(args.cmd)
    if check is not None:
        check(args)


def main(argv=None) -> int:
    """Runs a subcommand. Exit status, the same for every subcommand: 0 done; 2 the input
    is refused (a usage error, a bad flag, file or checkpoint; nothing was computed, or the
    input alone decided it); 1 the run failed during the work (a non-finite score or loss
    at a named step, an OS error); 130 interrupted. Errors are one line
    `lsd-jax CMD: error: ...` on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _preflight(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"lsd-jax {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "distributed", False):  # before any other jax use
        from lsd_jax import sharding

        info = sharding.initialize_distributed()
        print(f"distributed: process {info['process_id']} of {info['process_count']}, "
              f"{info['local_devices']} of {info['devices']} devices local", file=sys.stderr)
    if getattr(args, "x64", False):
        import jax

        jax.config.update("jax_enable_x64", True)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"lsd-jax {args.cmd}: error: {msg}", file=sys.stderr)
        return 2
    except (FloatingPointError, OSError) as e:
        print(f"lsd-jax {args.cmd}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lsd-jax {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
