"""Hostile and unlucky inputs, end to end through the CLI (and a few library calls), with a
table: case, expected outcome, exit code, traceback yes/no, seconds, first error line.

    PYTHONPATH=$PWD python benchmarks/hostile.py [--only SUBSTRING] [--out benchmarks/results/hostile]

Every case runs in its own process (`python -m lsd_jax.cli ...`, or a short library
snippet) on tiny inputs built in a temporary directory: a random tiny SEDD checkpoint in
HF layout (and poisoned copies: one NaN weight, a truncated model.safetensors, a text
pytorch_model.bin, a converted directory with a NaN parameter), sampler-params files with
bad phi / eps / structure, occupied, locked and interrupted output directories.
Expected: `refuse` = exit 2 with one `lsd-jax CMD: error:` line (or, for library cases, a
ValueError naming the input) and no output written; `ok` = exit 0. A case that exits 0
where a refusal was expected is counted as a silent wrong result. Writes JSON + markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TINY_SEDD = {  # the config.json of upstream SEDD (field names as in its training configs), tiny
    "ngpus": 1, "tokens": 12, "training": {"batch_size": 8, "ema": 0.9999},
    "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
    "model": {"name": "tiny", "type": "ddit", "hidden_size": 32, "cond_dim": 16, "length": 8, "n_blocks": 1,
              "n_heads": 2, "dropout": 0.1, "scale_by_sigma": True},
    "graph": {"type": "absorb", "file": "data", "report_all": False},
}
MARKOV = ["--teacher-vocab", "6", "--teacher-length", "8"]


def make_hf(d: str, poison=None) -> str:
    """A random tiny SEDD checkpoint in HF layout (config.json + model.safetensors)."""
    from safetensors.numpy import save_file

    from ports import sedd
    from ports.keymaps import key_table

    cfg = sedd.parse_config(TINY_SEDD)
    rng = np.random.default_rng(0)
    state = {e.key: (rng.normal(0, 0.05, e.shape)).astype(np.float32) for e in key_table(cfg.dit)}
    if poison:
        poison(state)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(TINY_SEDD, f)
    save_file(state, os.path.join(d, "model.safetensors"))
    return d


def params_file(path: str, **edit) -> str:
    """A valid 4-step sampler-params file, with keys replaced by `edit` (a list: the whole doc)."""
    from lsd_jax import sampler_params as sp

    sp.save(sp.init(4), path)
    with open(path) as f:
        doc = json.load(f)
    doc.update({k: v for k, v in edit.items() if k != "whole"})
    with open(path, "w") as f:
        json.dump(edit.get("whole", doc), f)
    return path


def setup(w: str) -> dict:
    """Builds every fixture under w; returns named paths."""
    from ports import sedd

    p = {"w": w}
    p["hf"] = make_hf(os.path.join(w, "hf"))
    p["hf_nan"] = make_hf(os.path.join(w, "hf_nan"), lambda s: s["blocks.0.attn_qkv.weight"].__setitem__((0, 0), np.nan))
    p["hf_trunc"] = make_hf(os.path.join(w, "hf_trunc"))
    st = os.path.join(p["hf_trunc"], "model.safetensors")
    with open(st, "r+b") as f:
        f.truncate(os.path.getsize(st) // 2)
    p["hf_text"] = os.path.join(w, "hf_text")
    os.makedirs(p["hf_text"])
    shutil.copy(os.path.join(p["hf"], "config.json"), p["hf_text"])
    with open(os.path.join(p["hf_text"], "pytorch_model.bin"), "w") as f:
        f.write("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 12\n")  # an LFS pointer
    p["hf_badcfg"] = make_hf(os.path.join(w, "hf_badcfg"))
    with open(os.path.join(p["hf_badcfg"], "config.json"), "w") as f:
        f.write('{"tokens": 12, "model": ')
    p["conv"] = os.path.join(w, "conv")
    sedd.convert(p["hf"], p["conv"])
    import jax

    _, params, cfg = sedd.load(p["conv"])
    leaves, tree = jax.tree_util.tree_flatten(params)
    leaves = [np.array(x, np.float32) for x in leaves]
    leaves[-1].reshape(-1)[0] = np.inf  # one parameter of the converted directory
    params = jax.tree_util.tree_unflatten(tree, leaves)
    p["conv_nan"] = os.path.join(w, "conv_nan")
    sedd.save_converted(p["conv_nan"], params, cfg)
    p["file"] = os.path.join(w, "a_file")
    open(p["file"], "w").close()
    p["dir"] = os.path.join(w, "a_dir")
    os.makedirs(p["dir"])
    for name, edit in {"phi_neg": dict(phi=[-1.0, 1, 1, 1]), "phi_zero": dict(phi=[0.0, 1, 1, 1]),
                       "phi_huge": dict(phi=[1e30, 1, 1, 1]), "phi_nan": dict(phi=["NaN", 1, 1, 1]),
                       "list": dict(whole=[1.0, 1.0, 1.0, 1.0]), "eps_str": dict(eps="abc"),
                       "eps_big": dict(eps=1.5), "eps_neg": dict(eps=-1e-4), "no_phi": dict(phi=None),
                       "grid_edited": dict(grid=[1.0, 0.9, 0.5, 0.1, 1e-4]), "short_logits": dict(logits=[0, 0]),
                       "sampler_unknown": dict(sampler="heun"), "format_other": dict(format="other/9"),
                       "good": {}}.items():
        params_file(os.path.join(w, f"sp_{name}.json"), **edit)
    with open(os.path.join(w, "sp_notjson.json"), "w") as f:
        f.write("{phi: [1, 1]")
    return p


DISTILL = ["distill", *MARKOV, "--nfe", "4", "--teacher-nfe", "16", "--epochs", "3", "--samples", "16",
           "--batch-size", "8", "--eval-seeds", "0", "--select", "none", "--no-progress"]
TUNE = ["tune", *MARKOV, "--nfe", "4", "--teacher-nfe", "16", "--budget", "6", "--samples", "32",
        "--crn-seeds", "1", "--eval-seeds", "0", "--no-progress"]
TRAIN = ["train-teacher", "--steps", "4", "--batch-size", "4", "--hidden-size", "16", "--n-blocks", "1", "--n-heads",
         "2", "--cond-dim", "8", "--length", "8", "--vocab", "6", "--eval-every", "2", "--val-size", "8",
         "--checkpoint-every", "2", "--final-repeats", "1", "--no-progress"]
SAMPLE = ["sample", "--nfe", "4", "--num-samples", "16", "--show", "0"]


def cases(p: dict) -> list:
    """(name, argv or ('py', code), expected 'refuse' | 'ok' | 'fail', prepare callable or None)."""
    w = p["w"]
    sp = lambda n: os.path.join(w, f"sp_{n}.json")  # noqa: E731
    d = lambda n: os.path.join(w, "runs", n)  # noqa: E731

    def occupied(name):
        def prep():
            os.makedirs(d(name), exist_ok=True)
            open(os.path.join(d(name), "keep.txt"), "w").close()
        return prep

    def hold_lock(name):
        def prep():
            os.makedirs(d(name), exist_ok=True)
            code = f"from lsd_jax.runs import RunLock\nimport time\nwith RunLock({d(name)!r}):\n    print('held', flush=True)\n    time.sleep(120)"
            proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                    env={**os.environ, "PYTHONPATH": ROOT})
            proc.stdout.readline()  # the lock is held
            return proc
        return prep

    def stale_lock(name):
        def prep():
            os.makedirs(d(name), exist_ok=True)
            with open(os.path.join(d(name), ".lsd-jax.lock"), "w") as f:
                json.dump({"pid": 999999, "host": "x"}, f)
        return prep

    def killed_in_save(name):
        def prep():  # a finished 2-epoch run, then an orbax temp directory as a kill mid-save leaves it
            run([sys.executable, "-m", "lsd_jax.cli", *DISTILL, "--epochs", "2", "--out", d(name)])
            ck = os.path.join(d(name), "checkpoints")
            shutil.copytree(os.path.join(ck, "epoch_0002"), os.path.join(ck, "epoch_0003.orbax-checkpoint-tmp-1234"))
            os.remove(os.path.join(ck, "epoch_0003.orbax-checkpoint-tmp-1234", "_CHECKPOINT_METADATA"))
        return prep

    def train_stopped(name, plant=False):
        def prep():  # a run stopped (checkpointed) at step 2; plant: then killed while saving step 3
            run([sys.executable, "-m", "lsd_jax.cli", *TRAIN, "--stop-at", "2", "--out", d(name)])
            if plant:
                st = os.path.join(d(name), "state")
                shutil.copytree(os.path.join(st, "step_0002"), os.path.join(st, "step_0003.orbax-checkpoint-tmp-5"))
        return prep

    def done_run(name):
        return lambda: run([sys.executable, "-m", "lsd_jax.cli", *DISTILL, "--out", d(name)])

    lib = ("from lsd_jax import samplers, grids; from lsd_jax.teachers import markov_teacher; import jax, jax.numpy as jnp; "
           "t = markov_teacher(vocab=6, length=8); g = grids.uniform(4, 1e-4); k = jax.random.PRNGKey(0)\n")
    return [
        # sample
        ("sample --nfe 0", [*SAMPLE, "--nfe", "0"], "refuse", None),
        ("sample --eps 2", [*SAMPLE, "--eps", "2"], "refuse", None),
        ("sample --json DIR", [*SAMPLE, "--json", p["dir"]], "refuse", None),
        ("sample --json FILE/sub.json", [*SAMPLE, "--json", os.path.join(p["file"], "sub.json")], "refuse", None),
        ("sample --json unwritable (/proc)", [*SAMPLE, "--json", "/proc/lsd/x.json"], "refuse", None),
        ("sample --teacher-vocab 1", [*SAMPLE, "--teacher-vocab", "1"], "refuse", None),
        ("sample --sampler-params missing", [*SAMPLE, "--sampler-params", os.path.join(w, "nope.json")], "refuse", None),
        *[(f"sample --sampler-params {n}", [*SAMPLE, *MARKOV, "--sampler-params", sp(n)], "refuse", None)
          for n in ("phi_neg", "phi_zero", "phi_huge", "phi_nan", "list", "eps_str", "eps_big", "eps_neg", "no_phi",
                    "grid_edited", "short_logits", "notjson", "sampler_unknown", "format_other")],
        ("sample --sampler-params + --eps", [*SAMPLE, *MARKOV, "--sampler-params", sp("good"), "--eps", "1e-3"],
         "refuse", None),
        ("sample --sampler-params + --grid", [*SAMPLE, *MARKOV, "--sampler-params", sp("good"), "--grid", "cosine"],
         "refuse", None),
        ("sample --sampler-params other nfe", [*SAMPLE, *MARKOV, "--nfe", "8", "--sampler-params", sp("good")],
         "refuse", None),
        ("sample --sampler-params good", [*SAMPLE, *MARKOV, "--sampler-params", sp("good")], "ok", None),
        ("sample markov (control)", [*SAMPLE, *MARKOV, "--json", os.path.join(w, "out", "s.json")], "ok", None),
        ("sample --checkpoint missing", [*SAMPLE, "--checkpoint", os.path.join(w, "nope")], "refuse", None),
        ("sample --checkpoint FILE", [*SAMPLE, "--checkpoint", p["file"]], "refuse", None),
        ("sample --checkpoint bad config.json", [*SAMPLE, "--checkpoint", p["hf_badcfg"]], "refuse", None),
        ("sample --checkpoint NaN weight (HF)", [*SAMPLE, "--checkpoint", p["hf_nan"]], "refuse", None),
        ("sample --checkpoint truncated safetensors", [*SAMPLE, "--checkpoint", p["hf_trunc"]], "refuse", None),
        ("sample --checkpoint text pytorch_model.bin", [*SAMPLE, "--checkpoint", p["hf_text"]], "refuse", None),
        ("sample --checkpoint inf param (converted)", [*SAMPLE, "--checkpoint", p["conv_nan"]], "refuse", None),
        ("sample --checkpoint HF (control)", [*SAMPLE, "--checkpoint", p["hf"]], "ok", None),
        ("sample --checkpoint converted (control)", [*SAMPLE, "--checkpoint", p["conv"]], "ok", None),
        # convert
        ("convert NaN weight", ["convert", p["hf_nan"], d("c_nan")], "refuse", None),
        ("convert truncated safetensors", ["convert", p["hf_trunc"], d("c_trunc")], "refuse", None),
        ("convert text pytorch_model.bin", ["convert", p["hf_text"], d("c_text")], "refuse", None),
        ("convert SRC FILE/sub", ["convert", p["hf"], os.path.join(p["file"], "sub")], "refuse", None),
        ("convert SRC existing non-empty", ["convert", p["hf"], p["conv"]], "refuse", None),
        ("convert missing SRC", ["convert", os.path.join(w, "nope"), d("c_missing")], "refuse", None),
        ("convert (control)", ["convert", p["hf"], d("c_ok")], "ok", None),
        # tune
        ("tune --out FILE", [*TUNE, "--out", p["file"]], "refuse", None),
        ("tune --out non-empty", [*TUNE, "--out", d("t_occ")], "refuse", occupied("t_occ")),
        ("tune --divergence mmd on markov", [*TUNE, "--divergence", "mmd", "--out", d("t_mmd")], "refuse", None),
        ("tune --divergence exact on HF net", [*TUNE[:1], *TUNE[3:], "--checkpoint", p["hf"], "--divergence", "exact",
                                               "--out", d("t_ex")], "refuse", None),
        ("tune --teacher-nfe 2 --nfe 8", [*TUNE, "--teacher-nfe", "2", "--nfe", "8", "--out", d("t_nfe")], "refuse", None),
        ("tune --checkpoint NaN weight", [*TUNE[:1], *TUNE[3:], "--checkpoint", p["hf_nan"], "--out", d("t_nan")],
         "refuse", None),
        ("tune --out locked by a live run", [*TUNE, "--out", d("t_lock")], "refuse", hold_lock("t_lock")),
        ("tune (control)", [*TUNE, "--out", d("t_ok")], "ok", None),
        # distill
        ("distill --out FILE", [*DISTILL, "--out", p["file"]], "refuse", None),
        ("distill --batch-size > --samples", [*DISTILL, "--batch-size", "32", "--out", d("d_bs")], "refuse", None),
        ("distill --checkpoint NaN weight", [*DISTILL[:1], *DISTILL[5:], "--checkpoint", p["hf_nan"], "--out",
                                             d("d_nan")], "refuse", None),
        ("distill (control)", [*DISTILL, "--out", d("d_ok")], "ok", None),
        ("distill again without --resume", [*DISTILL, "--out", d("d_again")], "refuse", done_run("d_again")),
        ("distill --resume other --lr", [*DISTILL, "--lr", "0.01", "--resume", "--out", d("d_lr")], "refuse",
         done_run("d_lr")),
        ("distill --resume other --nfe", [*DISTILL, "--nfe", "3", "--resume", "--out", d("d_nfe")], "refuse",
         done_run("d_nfe")),
        ("distill --resume other --graph/--method", [*DISTILL, "--graph", "uniform", "--method", "lsd+", "--resume",
                                                     "--out", d("d_graph")], "refuse", done_run("d_graph")),
        ("distill --resume after kill mid-save", [*DISTILL, "--resume", "--out", d("d_kill")], "ok",
         killed_in_save("d_kill")),
        ("distill --resume with no earlier run", [*DISTILL, "--epochs", "1", "--resume", "--out", d("d_fresh")], "ok",
         None),
        ("distill --out locked by a live run", [*DISTILL, "--out", d("d_lock")], "refuse", hold_lock("d_lock")),
        ("distill --out with a stale lock", [*DISTILL, "--out", d("d_stale")], "ok", stale_lock("d_stale")),
        # train-teacher
        ("train-teacher --out FILE", ["train-teacher", "--steps", "2", "--out", p["file"]], "refuse", None),
        ("train-teacher --out FILE/sub", ["train-teacher", "--steps", "2", "--out", os.path.join(p["file"], "s")],
         "refuse", None),
        ("train-teacher --steps 0", [*TRAIN, "--steps", "0", "--out", d("tt_0")], "refuse", None),
        ("train-teacher --out locked by a live run", [*TRAIN, "--out", d("tt_lock")], "refuse", hold_lock("tt_lock")),
        ("train-teacher --resume other --lr", [*TRAIN, "--lr", "0.1", "--resume", "--out", d("tt_lr")], "refuse",
         train_stopped("tt_lr")),
        ("train-teacher --resume after kill mid-save", [*TRAIN, "--resume", "--out", d("tt_kill")], "ok",
         train_stopped("tt_kill", plant=True)),
        # library
        ("lib: metrics of tokens of wrong length", ("py", lib + "t.metrics(jnp.zeros((4, 5), jnp.int32))"),
         "refuse", None),
        ("lib: x_init ids out of range", ("py", lib + "samplers.sample(t.score_fn, t.graph, t.noise, g, k, 2, 8, "
                                          "x_init=jnp.full((2, 8), 99, jnp.int32))"), "refuse", None),
        ("lib: phi NaN", ("py", lib + "samplers.sample(t.score_fn, t.graph, t.noise, g, k, 2, 8, "
                          "phi=jnp.array([1, jnp.nan, 1, 1]))"), "refuse", None),
        ("lib: phi negative", ("py", lib + "samplers.sample(t.score_fn, t.graph, t.noise, g, k, 2, 8, "
                               "phi=-jnp.ones(4))"), "refuse", None),
        ("lib: score fn of wrong width", ("py", lib + "samplers.sample(lambda x, s: t.score_fn(x, s)[..., :3], t.graph, "
                                          "t.noise, g, k, 2, 8)"), "refuse", None),
        ("lib: NaN score", ("py", lib + "samplers.sample(lambda x, s: t.score_fn(x, s) * jnp.nan, t.graph, t.noise, "
                            "g, k, 2, 8).tokens.block_until_ready()"), "fail", None),
    ]


def run(cmd: list, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


LIB_WRAP = """
import sys
try:
{body}
except (ValueError, FloatingPointError) as e:
    print(f"library: {{type(e).__name__}}: {{e}}", file=sys.stderr); sys.exit(2 if isinstance(e, ValueError) else 1)
print("library: no error"); sys.exit(0)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="run the cases whose name contains this")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "hostile"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    w = tempfile.mkdtemp(prefix="lsd-hostile-")
    t0 = time.time()
    p = setup(w)
    rows = []
    for name, argv, expect, prep in cases(p):
        if a.only and a.only not in name:
            continue
        holder = prep() if prep else None
        if argv[0] == "py":
            body = "\n".join("    " + line for line in argv[1].splitlines())
            cmd = [sys.executable, "-c", LIB_WRAP.format(body=body)]
        else:
            cmd = [sys.executable, "-m", "lsd_jax.cli", *argv]
        t = time.perf_counter()
        res = run(cmd)
        sec = time.perf_counter() - t
        if isinstance(holder, subprocess.Popen):
            holder.kill()
            holder.wait()
        err = res.stderr.strip().splitlines()
        msg = next((line for line in err if "error:" in line or line.startswith("library:")), err[-1] if err else "")
        want = {"refuse": 2, "ok": 0, "fail": 1}[expect]
        row = {"case": name, "expected": expect, "exit": res.returncode, "traceback": "Traceback" in res.stderr,
               "silent_wrong": expect != "ok" and res.returncode == 0, "as_expected": res.returncode == want,
               "seconds": round(sec, 2), "message": msg[:220]}
        rows.append(row)
        print(f"{row['exit']:>3} {'TB' if row['traceback'] else '  '} {'ok ' if row['as_expected'] else 'BAD'} "
              f"{sec:6.1f}s  {name}: {msg[:150]}", flush=True)
    if not a.keep:
        shutil.rmtree(w, ignore_errors=True)
    summary = {"cases": len(rows), "tracebacks": sum(r["traceback"] for r in rows),
               "silent_wrong": sum(r["silent_wrong"] for r in rows),
               "not_as_expected": sum(not r["as_expected"] for r in rows), "seconds": round(time.time() - t0, 1)}
    print(json.dumps(summary))
    if not a.only:
        write(a.out, rows, summary)
    return 0 if summary["tracebacks"] == summary["silent_wrong"] == summary["not_as_expected"] == 0 else 1


def write(base: str, rows: list, summary: dict) -> None:
    import platform

    from lsd_jax.runs import write_json, write_text

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cpus (shared)", "commit": commit,
            "command": "python benchmarks/hostile.py", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write_json(base + ".json", {**meta, "summary": summary, "rows": rows})
    lines = [f"# Hostile inputs ({meta['date']}, commit {commit}, {meta['machine']})", "",
             f"{summary['cases']} cases: {summary['tracebacks']} tracebacks, {summary['silent_wrong']} silent wrong "
             f"results, {summary['not_as_expected']} not as expected; {summary['seconds']} s in all.", "",
             "| case | expected | exit | traceback | seconds | message |", "|---|---|---|---|---|---|"]
    for r in rows:
        msg = r["message"].replace("|", "\\|").replace(ROOT, ".")
        lines.append(f"| {r['case']} | {r['expected']} | {r['exit']} | {'yes' if r['traceback'] else 'no'} | "
                     f"{r['seconds']} | {msg[:160]} |")
    write_text(base + ".md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
