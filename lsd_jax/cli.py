"""`lsd-jax` command line: sample (more subcommands register below)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Optional

DEFAULT_EPS = 1e-4  # terminal time of every sampler (the paper's; SEDD's own uses 1e-5)


def _add_teacher_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--teacher", choices=["markov"], default=None, help="exact synthetic teacher (default)")
    src.add_argument("--checkpoint", default=None, help="converted or HF-layout SEDD-family checkpoint directory")
    p.add_argument("--graph", choices=["absorb", "uniform"], default="absorb", help="graph of the markov teacher")
    p.add_argument("--noise", choices=["loglinear", "geometric"], default=None,
                   help="noise schedule of the markov teacher (default: loglinear for absorb, geometric for uniform)")
    p.add_argument("--teacher-vocab", type=int, default=16, help="markov teacher: tokens V")
    p.add_argument("--teacher-length", type=int, default=32, help="markov teacher: sequence length L")
    p.add_argument("--teacher-seed", type=int, default=0, help="markov teacher: seed of the chain")


def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", choices=["euler", "tweedie"], default="euler")
    p.add_argument("--eps", type=float, default=DEFAULT_EPS, help="terminal time t_M")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the sampler")
    p.add_argument("--x64", action="store_true", help="float64 computation and categorical draws")


def load_teacher(args):
    """Teacher from CLI args: --checkpoint DIR or the markov chain."""
    from lsd_jax import teachers

    if getattr(args, "checkpoint", None):
        from lsd_jax.teachers import checkpoint as ckpt_teacher

        return ckpt_teacher.load_teacher(args.checkpoint)
    for field in ("teacher_vocab", "teacher_length"):
        if getattr(args, field) < 2:
            raise ValueError(f"--{field.replace('_', '-')} must be >= 2, got {getattr(args, field)}")
    return teachers.markov_teacher(
        graph=args.graph, noise=args.noise, vocab=args.teacher_vocab, length=args.teacher_length, seed=args.teacher_seed
    )


def _device_info() -> dict:
    import jax

    d = jax.devices()[0]
    return {"platform": d.platform, "device": str(d.device_kind), "count": jax.device_count()}


def _write_json(path: Optional[str], obj: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)


def cmd_sample(args) -> int:
    import jax
    import numpy as np

    from lsd_jax import grids, samplers

    if args.nfe < 1:
        raise ValueError(f"--nfe must be >= 1, got {args.nfe}")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    if not 0.0 < args.eps < 1.0:
        raise ValueError(f"--eps must be in (0, 1), got {args.eps}")
    teacher = load_teacher(args)
    phi, grid, params_info, reading = None, None, None, "linear"
    if args.sampler_params:
        from lsd_jax import sampler_params as sp

        params = sp.load(args.sampler_params)
        if params.nfe != args.nfe:
            raise ValueError(f"--sampler-params {args.sampler_params} has nfe {params.nfe}, but --nfe is {args.nfe}")
        grid, phi, reading = params.grid(), params.phi, params.reading
        params_info = {"file": args.sampler_params, **params.describe()}
        if args.sampler != params.sampler:
            print(f"note: sampler params were learned for {params.sampler}, running {args.sampler}", file=sys.stderr)
    if grid is None:
        grid = grids.get_grid(args.grid, args.nfe, args.eps, p=args.grid_p, noise=teacher.noise)
    t0 = time.perf_counter()
    out = samplers.sample(
        teacher.score_fn, teacher.graph, teacher.noise, grid, jax.random.PRNGKey(args.seed), args.num_samples,
        teacher.length, sampler=args.sampler, phi=phi, x64=args.x64, reading=reading,
    )
    tokens = np.asarray(jax.block_until_ready(out.tokens))
    seconds = time.perf_counter() - t0
    result = {
        "nfe": out.nfe,
        "network_calls": out.network_calls,
        "sampler": args.sampler,
        "graph": teacher.graph.name,
        "noise": teacher.noise.name,
        "grid": args.grid if not args.sampler_params else "learned",
        "eps": params.eps if args.sampler_params else args.eps,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "x64": bool(args.x64),
        "teacher": teacher.describe(),
        **teacher.metrics(tokens),
        "seconds": seconds,
        "device": _device_info(),
    }
    if params_info:
        result["sampler_params"] = params_info
    shown = ("nfe", "sampler", "graph", "nll", "data_entropy", "unigram_entropy", "bigram_kl", "seconds")
    print(" ".join(f"{k}={result[k]:.4g}" if isinstance(result[k], float) else f"{k}={result[k]}"
                   for k in shown if k in result))
    if teacher.decode is not None:
        for row in tokens[: args.show]:
            print("  " + teacher.decode(row))
    _write_json(args.json, result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsd-jax", description="Learnable sampler distillation in JAX")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("sample", help="sample from a teacher and report quality (exact metrics on the markov teacher)")
    _add_teacher_args(p)
    _add_sampler_args(p)
    p.add_argument("--nfe", type=int, required=True, help="predictor steps M (the final denoise adds one call)")
    p.add_argument("--num-samples", type=int, default=1024)
    p.add_argument("--grid", choices=["uniform", "power", "cosine", "loglinear"], default="uniform")
    p.add_argument("--grid-p", type=float, default=2.0, help="exponent of the power grid")
    p.add_argument("--sampler-params", default=None, help="learned sampler parameters (from distill or tune)")
    p.add_argument("--show", type=int, default=3, help="decoded samples to print")
    p.add_argument("--json", default=None, help="write the result as JSON to this path")
    p.set_defaults(func=cmd_sample)

    for name, register in _EXTRA.items():
        register(sub)
    return parser


# Other modules register subcommands here: name -> function(subparsers).
_EXTRA: dict[str, Callable] = {}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "x64", False):
        import jax

        jax.config.update("jax_enable_x64", True)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"lsd-jax {args.cmd}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
