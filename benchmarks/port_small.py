"""Benchmark: convert a SEDD-small-shaped random checkpoint and time its forward pass.

Builds the model with the tests' PyTorch reference (tests/sedd_torch_reference.py; random
weights, D 768, 12 blocks, 12 heads, cond 128, V 50258, L 1024), saves it in HF layout,
converts it with `ports.sedd.convert` (timed), then times a batch-1 forward through the
Flax DiT in float32 and bfloat16 (compile separately from the steady state, median of
--runs) and the PyTorch reference forward in the same process, and reports peak memory
(ru_maxrss, cumulative over the process) and the float32 parity at full size.
Uses the GPU when jax (and torch) see one. Writes
benchmarks/results/port-small-<backend>.{json,md}.

    python benchmarks/port_small.py [--runs 3] [--length 1024] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the PyTorch reference lives with the tests
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import sedd_torch_reference as ref  # noqa: E402
from ports import sedd  # noqa: E402


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def median_seconds(fn, runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def time_flax(path: str, dtype: str, x: np.ndarray, sigma: np.ndarray, runs: int) -> tuple[dict, np.ndarray]:
    t0 = time.perf_counter()
    model, params, _ = sedd.load(path, dtype=dtype)
    params = jax.block_until_ready(params)
    load_s = time.perf_counter() - t0
    xj, sj = jnp.asarray(x, jnp.int32), jnp.asarray(sigma, jnp.float32)
    t0 = time.perf_counter()
    compiled = jax.jit(model.apply).lower({"params": params}, xj, sj).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled({"params": params}, xj, sj))
    first_s = time.perf_counter() - t0
    med, times = median_seconds(lambda: jax.block_until_ready(compiled({"params": params}, xj, sj)), runs)
    stats = {
        "load_s": round(load_s, 3),
        "compile_s": round(compile_s, 3),
        "first_run_s": round(first_s, 4),
        "steady_median_s": round(med, 4),
        "steady_runs_s": [round(t, 4) for t in times],
        "peak_rss_mib_after": round(peak_rss_mib(), 1),
    }
    return stats, np.asarray(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="steady-state runs per timing (median)")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=50257)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)

    backend = jax.default_backend()
    tdev = "cuda" if torch.cuda.is_available() else "cpu"
    res: dict = {
        "benchmark": "port_small",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT) if sys.argv[0] else "port_small.py"] + list(argv if argv is not None else sys.argv[1:])),
        "git_commit": git_commit() or "none (no commits yet)",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "jax_backend": backend,
            "jax_devices": [str(d) for d in jax.devices()],
            "torch_device": tdev,
            "torch_threads": torch.get_num_threads(),
            "versions": {"jax": jax.__version__, "torch": torch.__version__, "numpy": np.__version__},
        },
        "model": {"family": "sedd", "graph": "absorb", "hidden_size": args.hidden, "n_blocks": args.blocks,
                  "n_heads": args.heads, "cond_dim": 128, "vocab_size": args.tokens + 1, "length": args.length,
                  "batch": 1},
    }
    tmp = tempfile.mkdtemp(prefix="port_small_")
    try:
        cfg = ref.make_config("sedd", tokens=args.tokens, hidden_size=args.hidden, cond_dim=128,
                              n_blocks=args.blocks, n_heads=args.heads, length=args.length)
        t0 = time.perf_counter()
        tmodel = ref.randomize(ref.build("sedd", cfg), seed=0)
        src = ref.save_hf(tmodel, cfg, os.path.join(tmp, "hf"), "safetensors")
        res["build_and_save_hf_s"] = round(time.perf_counter() - t0, 2)
        res["hf_size_mib"] = round(os.path.getsize(os.path.join(src, "model.safetensors")) / 2**20, 1)
        res["peak_rss_mib_after_build"] = round(peak_rss_mib(), 1)
        print("built", res["hf_size_mib"], "MiB", flush=True)

        summary = sedd.convert(src, os.path.join(tmp, "flax"), dtype="float32")
        res["convert"] = {k: summary[k] for k in ("family", "graph", "params", "dtype", "format", "seconds")}
        res["convert"]["peak_rss_mib_after"] = round(peak_rss_mib(), 1)
        print("converted", res["convert"], flush=True)

        g = np.random.default_rng(0)
        x = g.integers(0, args.tokens, (1, args.length))
        x[:, g.random(args.length) < 0.5] = args.tokens  # half the positions masked
        sigma = np.array([1.0], np.float32)

        res["flax_float32"], out32 = time_flax(os.path.join(tmp, "flax"), "float32", x, sigma, args.runs)
        print("flax float32", res["flax_float32"], flush=True)
        res["flax_bfloat16"], out16 = time_flax(os.path.join(tmp, "flax"), "bfloat16", x, sigma, args.runs)
        print("flax bfloat16", res["flax_bfloat16"], flush=True)

        tmodel = tmodel.to(tdev)
        xt, st = torch.as_tensor(x, device=tdev), torch.as_tensor(sigma, device=tdev)

        def torch_fwd():
            with torch.no_grad():
                y = tmodel(xt, st)
            if tdev == "cuda":
                torch.cuda.synchronize()
            return y

        t0 = time.perf_counter()
        want = torch_fwd().cpu().numpy()
        first = time.perf_counter() - t0
        med, times = median_seconds(torch_fwd, args.runs)
        res["torch_float32"] = {"first_run_s": round(first, 4), "steady_median_s": round(med, 4),
                                "steady_runs_s": [round(t, 4) for t in times]}
        res["peak_rss_mib"] = round(peak_rss_mib(), 1)
        res["ratio_torch_over_flax_float32"] = round(med / res["flax_float32"]["steady_median_s"], 3)
        res["ratio_torch_over_flax_bfloat16"] = round(med / res["flax_bfloat16"]["steady_median_s"], 3)
        res["parity_float32_max_abs_diff"] = float(np.abs(out32 - want).max())
        res["bfloat16_vs_float32_max_abs_diff"] = float(np.abs(out16 - out32).max())
        res["output_max_abs"] = float(np.abs(want).max())
        print("torch", res["torch_float32"], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"port-small-{backend}")
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(to_markdown(res))
    print(json.dumps(res, indent=1))
    return res


def to_markdown(r: dict) -> str:
    m, f32, b16, t = r["machine"], r["flax_float32"], r["flax_bfloat16"], r["torch_float32"]
    md = r["model"]
    return "\n".join([
        "# port_small: SEDD-small-shaped checkpoint, convert + forward",
        "",
        f"- date (UTC): {r['date_utc']}",
        f"- command: `{r['command']}`",
        f"- git commit: {r['git_commit']}",
        f"- machine: {m['platform']}, {m['cpu_count']} CPUs, jax {m['versions']['jax']} on {m['jax_backend']} "
        f"({', '.join(m['jax_devices'])}), torch {m['versions']['torch']} on {m['torch_device']} ({m['torch_threads']} threads)",
        f"- model: random SEDD DiT, D {md['hidden_size']}, {md['n_blocks']} blocks, {md['n_heads']} heads, "
        f"cond {md['cond_dim']}, V {md['vocab_size']}, L {md['length']}, batch {md['batch']}; "
        f"{r['convert']['params']:,} params, {r['hf_size_mib']} MiB safetensors",
        "",
        "| step | time |",
        "|---|---|",
        f"| build + save HF checkpoint (torch) | {r['build_and_save_hf_s']} s |",
        f"| convert (read safetensors, map, orbax save) | {r['convert']['seconds']} s |",
        f"| load converted, float32 | {f32['load_s']} s |",
        f"| compile forward, float32 | {f32['compile_s']} s |",
        f"| forward float32, steady median | {f32['steady_median_s']} s |",
        f"| compile forward, bfloat16 | {b16['compile_s']} s |",
        f"| forward bfloat16, steady median | {b16['steady_median_s']} s |",
        f"| PyTorch reference forward float32, steady median | {t['steady_median_s']} s |",
        "",
        f"- torch / flax forward time: {r['ratio_torch_over_flax_float32']} (float32), "
        f"{r['ratio_torch_over_flax_bfloat16']} (bfloat16)",
        f"- float32 parity with the PyTorch reference at full size: max abs diff "
        f"{r['parity_float32_max_abs_diff']:.3e} (outputs up to {r['output_max_abs']:.2f})",
        f"- bfloat16 vs float32 output: max abs diff {r['bfloat16_vs_float32_max_abs_diff']:.3e}",
        f"- peak RSS (process, cumulative): after build {r['peak_rss_mib_after_build']} MiB, after convert "
        f"{r['convert']['peak_rss_mib_after']} MiB, after float32 forward {f32['peak_rss_mib_after']} MiB, "
        f"after bfloat16 forward {b16['peak_rss_mib_after']} MiB, end {r['peak_rss_mib']} MiB",
        "",
    ])


if __name__ == "__main__":
    main()
