"""Shared bits of the benchmark scripts: provenance and result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def provenance() -> dict:
    """Machine, commit, command and date of this run."""
    import jax

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        if dirty:
            commit += "+dirty"
    except OSError:
        commit = "unknown"
    d = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python"] + sys.argv),
        "commit": commit,
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, jax {jax.__version__} on "
                   f"{d.platform} ({d.device_kind}) x{jax.device_count()}",
    }


def bench_teacher(checkpoint=None, graph: str = "absorb", noise=None, kind: str = "markov"):
    """The teacher of a benchmark: a checkpoint directory, else the default exact teacher
    `kind` on `graph`: markov (V 16, L 32, chain seed 0) or hmm (H 16, V 32, L 32, seed 0)."""
    if checkpoint:
        from lsd_jax.teachers.checkpoint import load_teacher

        return load_teacher(checkpoint)
    from lsd_jax.teachers import hmm_teacher, markov_teacher

    return (hmm_teacher if kind == "hmm" else markov_teacher)(graph=graph, noise=noise)


def write_results(name: str, payload: dict, markdown: str) -> tuple[str, str]:
    os.makedirs(RESULTS, exist_ok=True)
    jpath, mpath = os.path.join(RESULTS, name + ".json"), os.path.join(RESULTS, name + ".md")
    with open(jpath, "w") as f:
        json.dump(payload, f, indent=1)
    with open(mpath, "w") as f:
        f.write(markdown)
    return jpath, mpath
