"""Multi-host data parallelism (lsd_jax.sharding with jax.distributed) on one machine.

Two Python processes on 127.0.0.1 each call `sharding.initialize_distributed(coordinator,
2, i)` before any other jax use and see 2 forced CPU devices each (XLA_FLAGS), so 4 global
devices over 2 processes; cross-process collectives on CPU are gloo's over TCP (jax's
default `jax_cpu_collectives_implementation`). Both run the same program with the same
keys: `samplers.sample` splits the batch over the 4 devices of both hosts and returns
global arrays that no single host holds, which `sharding.to_host` all-gathers; `distill.fit`
reshards the teacher cache and validates by sampling; the CLI runs with `--distributed`.
Every host must end with exactly what one process on one device gets for the same key.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from lsd_jax import distill, grids, samplers
from lsd_jax.cli import main as cli_main
from lsd_jax.teachers import markov_teacher

pytestmark = pytest.mark.slow  # ~2 min on 2 busy CPU cores: 2 processes compile everything

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
N_PROCS, LOCAL_DEVICES = 2, 2
TIMEOUT_S = 300  # both processes together; ~95 s on 2 CPU cores shared with other work

# tiny distillation of a small random score network on the absorbing graph (the exact
# chain's own score would leave phi's gradient exactly zero, so Adam would turn float
# round-off, which depends on the reduction order across devices, into lr-sized steps):
# lsd+ moves phi and the grid; "exact" selection samples the student (sharded over both
# hosts) after every epoch, so the validator's gather is exercised too
FIT = dict(method="lsd+", nfe=4, teacher_nfe=32, samples=16, batch_size=8, epochs=2, select="exact", val_samples=64)
CLI_SAMPLE = ["sample", "--teacher-vocab", "8", "--teacher-length", "12", "--nfe", "6", "--num-samples", "16",
              "--seed", "4", "--show", "0"]
CLI_DISTILL = ["distill", "--teacher-vocab", "8", "--teacher-length", "12", "--nfe", "4", "--teacher-nfe", "32",
               "--samples", "16", "--batch-size", "8", "--select", "none", "--eval-seeds", "0", "--no-progress"]

WORKER = """
import json, os, sys, time
coordinator, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
from lsd_jax import sharding
info = sharding.initialize_distributed(coordinator_address=coordinator, num_processes=2, process_id=pid)

import numpy as np, jax
from lsd_jax import distill, grids, samplers
from lsd_jax.cli import main as cli_main
from lsd_jax.teachers import markov_teacher
from test_multihost import CLI_DISTILL, CLI_SAMPLE, FIT, fit_teacher

res = {"info": info}
def save(name, a):
    np.save(os.path.join(out, f"{name}_{pid}.npy"), a)

# absorbing graph, Euler, with the reveal steps
t = markov_teacher(vocab=8, length=12)
a = samplers.sample(t.score_fn, t.graph, t.noise, grids.uniform(8, 1e-4), jax.random.PRNGKey(3), 8, 12,
                    return_reveal=True)
res["absorb"] = {"fully_addressable": a.tokens.is_fully_addressable, "n_devices": len(a.tokens.sharding.device_set),
                 "local_shards": len(a.tokens.addressable_shards),
                 "local_rows": [list(s.index[0].indices(8))[:2] for s in a.tokens.addressable_shards]}
save("absorb_tokens", sharding.to_host(a.tokens))
save("absorb_reveal", sharding.to_host(a.reveal))
# uniform graph, Tweedie, with the whole path [M + 1, B, L] (batch on axis 1)
u = markov_teacher(graph="uniform", vocab=8, length=12)
b = samplers.sample(u.score_fn, u.graph, u.noise, grids.uniform(6, 1e-4), jax.random.PRNGKey(5), 8, 12,
                    sampler="tweedie", return_path=True)
save("uniform_tokens", sharding.to_host(b.tokens))
save("uniform_path", sharding.to_host(b.path))
# a batch the 4 devices do not divide stays on this host's first device
c = samplers.sample(t.score_fn, t.graph, t.noise, grids.uniform(4, 1e-4), jax.random.PRNGKey(0), 6, 12)
res["odd_fully_addressable"] = c.tokens.is_fully_addressable
save("odd_tokens", sharding.to_host(c.tokens))

t0 = time.perf_counter()
params, hist = distill.fit(fit_teacher(), distill.DistillConfig(**FIT), progress=False)
res["fit_seconds"] = time.perf_counter() - t0
res["fit_devices"] = hist[0]["timing"]["devices"]
res["fit_val"] = [h.get("val_divergence") for h in hist]
res["fit_loss"] = [h["loss"] for h in hist]
save("fit_phi", np.asarray(params.phi))
save("fit_grid", np.asarray(params.grid()))

import contextlib, io
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    rc = cli_main(CLI_SAMPLE + ["--distributed", "--json", os.path.join(out, "cli_sample.json")])
res["cli_sample"] = {"rc": rc, "stdout": buf.getvalue()}
# distill with orbax checkpoints into one directory both hosts see, then resume it
dd = os.path.join(out, "distill")
with contextlib.redirect_stdout(io.StringIO()):
    res["cli_distill"] = [cli_main(CLI_DISTILL + ["--distributed", "--epochs", "2", "--out", dd]),
                          cli_main(CLI_DISTILL + ["--distributed", "--epochs", "3", "--out", dd, "--resume"])]
print(json.dumps(res))
"""


def fit_teacher():
    import tiny_score

    from lsd_jax.teachers import Teacher

    base = markov_teacher(vocab=8, length=12)
    model, net_params = tiny_score.make(base.graph.dim, 12)
    return Teacher(lambda x, sb: model.apply({"params": net_params}, x, sb), base.graph, base.noise, 12, "tiny",
                   base.chain)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_hosts(out_dir: str) -> list:
    """Starts the worker as processes 0 and 1 of one jax.distributed job; returns their JSON."""
    coordinator = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={LOCAL_DEVICES}", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]))
    for k in ("LSD_JAX_NO_SHARDING", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    outs_f = [open(os.path.join(out_dir, f"stdout_{i}.txt"), "w+") for i in range(N_PROCS)]
    logs = [open(os.path.join(out_dir, f"stderr_{i}.txt"), "w+") for i in range(N_PROCS)]
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(WORKER), coordinator, str(i), out_dir],
                              env=env, cwd=ROOT, stdout=outs_f[i], stderr=logs[i], text=True)
             for i in range(N_PROCS)]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        outs = [None] * N_PROCS
        while any(p.poll() is None for p in procs):
            # one process failing leaves the other blocked in a collective: stop both at once
            if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for i, p in enumerate(procs):
            if p.poll() is None:
                p.kill()
            p.wait()
            logs[i].seek(0)
            err = logs[i].read()
            assert p.returncode == 0, f"process {i} (rc {p.returncode}, {TIMEOUT_S} s limit):\n{err[-4000:]}"
            outs_f[i].seek(0)
            outs[i] = json.loads(outs_f[i].read().strip().splitlines()[-1])
        return outs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in outs_f + logs:
            f.close()


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("multihost"))
    return out_dir, run_two_hosts(out_dir)


def _load(out_dir, name, pid):
    return np.load(os.path.join(out_dir, f"{name}_{pid}.npy"))


def test_two_processes_see_four_global_devices(two_hosts):
    _, outs = two_hosts
    for i, o in enumerate(outs):
        assert o["info"] == {"process_id": i, "process_count": 2, "devices": 4, "local_devices": 2}
        a = o["absorb"]
        # a global array: split over all 4 devices, this host holds its 2 quarters of the batch
        assert not a["fully_addressable"] and a["n_devices"] == 4 and a["local_shards"] == 2
        assert sorted(a["local_rows"]) == [[4 * i, 4 * i + 2], [4 * i + 2, 4 * i + 4]]  # [start, stop) of rows
        assert o["odd_fully_addressable"]


def test_multihost_sampling_equals_single_device(two_hosts):
    out_dir, _ = two_hosts
    t = markov_teacher(vocab=8, length=12)
    a = samplers.sample(t.score_fn, t.graph, t.noise, grids.uniform(8, 1e-4), jax.random.PRNGKey(3), 8, 12,
                        return_reveal=True, mesh=None)
    u = markov_teacher(graph="uniform", vocab=8, length=12)
    b = samplers.sample(u.score_fn, u.graph, u.noise, grids.uniform(6, 1e-4), jax.random.PRNGKey(5), 8, 12,
                        sampler="tweedie", return_path=True, mesh=None)
    c = samplers.sample(t.score_fn, t.graph, t.noise, grids.uniform(4, 1e-4), jax.random.PRNGKey(0), 6, 12, mesh=None)
    want = {"absorb_tokens": a.tokens, "absorb_reveal": a.reveal, "uniform_tokens": b.tokens, "uniform_path": b.path,
            "odd_tokens": c.tokens}
    for name, w in want.items():
        w = np.asarray(w)
        for pid in range(N_PROCS):
            got = _load(out_dir, name, pid)
            assert got.dtype == w.dtype and got.shape == w.shape, (name, pid, got.shape, w.shape)
            np.testing.assert_array_equal(got, w, err_msg=f"{name} of process {pid}")
    assert len({tuple(r) for r in np.asarray(a.tokens).tolist()}) > 1  # rows differ: not one shard copied


def test_multihost_fit_equals_single_device(two_hosts, monkeypatch):
    out_dir, outs = two_hosts
    params, hist = distill.fit(fit_teacher(), distill.DistillConfig(**FIT), progress=False, mesh=None)
    assert hist[0]["timing"]["devices"] == 1 and all(o["fit_devices"] == 4 for o in outs)
    for pid, o in enumerate(outs):
        # the validation samples are integers drawn from the same keys: the same divergences
        assert o["fit_val"] == pytest.approx([h.get("val_divergence") for h in hist], rel=1e-5), pid
        assert o["fit_loss"][1:] == pytest.approx([h["loss"] for h in hist][1:], rel=1e-5), pid
        np.testing.assert_allclose(_load(out_dir, "fit_phi", pid), np.asarray(params.phi), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_load(out_dir, "fit_grid", pid), np.asarray(params.grid()), rtol=1e-5, atol=1e-6)
    # the two hosts hold the same replicated result, bit for bit
    np.testing.assert_array_equal(_load(out_dir, "fit_phi", 0), _load(out_dir, "fit_phi", 1))
    np.testing.assert_array_equal(_load(out_dir, "fit_grid", 0), _load(out_dir, "fit_grid", 1))


def _summary(stdout: str) -> str:
    """The sample command's summary line without its wall-clock seconds."""
    line = stdout.strip().splitlines()[0]
    return " ".join(w for w in line.split() if not w.startswith("seconds="))


def test_multihost_cli_sample_equals_single_device(two_hosts, tmp_path, monkeypatch, capsys):
    out_dir, outs = two_hosts
    assert [o["cli_sample"]["rc"] for o in outs] == [0, 0]
    capsys.readouterr()  # this process has one device: the single-device reference
    assert cli_main(CLI_SAMPLE + ["--json", str(tmp_path / "single.json")]) == 0
    want_line = _summary(capsys.readouterr().out)
    want = json.loads((tmp_path / "single.json").read_text())
    for pid, o in enumerate(outs):  # every host prints the metrics of the gathered samples
        assert _summary(o["cli_sample"]["stdout"]) == want_line, pid
    # process 0 alone writes the files (the hosts may share the output path)
    got = json.loads(open(os.path.join(out_dir, "cli_sample.json")).read())
    assert got["device"]["count"] == 4
    for k in ("nll", "bigram_kl", "unigram_entropy"):
        assert got[k] == want[k], k


def test_multihost_cli_distill_checkpoints_and_resumes(two_hosts):
    """Orbax checkpoints of global arrays written by both hosts into one directory, the
    history by process 0, then --resume restores them on both hosts and continues."""
    out_dir, outs = two_hosts
    assert all(o["cli_distill"] == [0, 0] for o in outs)
    dd = os.path.join(out_dir, "distill")
    hist = json.loads(open(os.path.join(dd, "history.json")).read())
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]  # history[e] is epoch e
    assert all(np.isfinite(h["loss"]) for h in hist[1:])
    ckpts = sorted(os.listdir(os.path.join(dd, "checkpoints")))
    assert ckpts == ["epoch_0002", "epoch_0002.history.json", "epoch_0003", "epoch_0003.history.json"]
    saved = json.loads(open(os.path.join(dd, "checkpoints", "epoch_0003.history.json")).read())
    assert [h["epoch"] for h in saved] == [0, 1, 2, 3]  # the sidecar is the history up to that epoch, epoch 0 included
    result = json.loads(open(os.path.join(dd, "result.json")).read())
    assert len(result["phi"]) == 4 and np.allclose(result["phi"], hist[-1]["phi"])
