"""One test per class of failure (issue 13): paths, weight files, sampler-params files,
tokens, score probes, CLI combinations and exit codes, the run lock, atomic writes, the
resume configuration check, checkpoints that skip an interrupted save."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax import distill, runs, validate
from lsd_jax import sampler_params as sp_lib
from lsd_jax.cli import main
from lsd_jax.teachers import Teacher, markov_teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(nfe=3, teacher_nfe=16, samples=8, batch_size=4, epochs=4, select="none")


# ------------------------------------------------------------------------------ paths
def test_output_dir_kinds(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(validate.InputError, match="is a file; expected a directory"):
        validate.output_dir(str(f))
    with pytest.raises(validate.InputError, match=f"{f} is a file, so nothing can be created"):
        validate.output_dir(str(f / "sub"))
    d = tmp_path / "run"
    d.mkdir()
    (d / validate.LOCK_NAME).write_text("{}")  # a stale lock is no content
    assert validate.output_dir(str(d), resume=False) == str(d)
    (d / "history.json").write_text("[]")
    with pytest.raises(validate.InputError, match="pass --resume"):
        validate.output_dir(str(d), resume=False)
    assert validate.output_dir(str(d), resume=True)
    with pytest.raises(validate.InputError, match="choose a new directory"):
        validate.output_dir(str(d))  # a command without --resume
    new = tmp_path / "a" / "b"
    validate.output_dir(str(new))
    assert new.is_dir() and not os.listdir(new)  # created, the probe removed


def test_output_file_kinds(tmp_path):
    with pytest.raises(validate.InputError, match="is a directory; expected a file path"):
        validate.output_file(str(tmp_path), "--json")
    (tmp_path / "f").write_text("x")
    with pytest.raises(validate.InputError, match="--json .* is a file, so nothing"):
        validate.output_file(str(tmp_path / "f" / "x.json"), "--json")
    with pytest.raises(validate.InputError, match="not writable"):
        validate.output_file("/proc/lsd-jax-test/x.json", "--json")
    assert validate.output_file(str(tmp_path / "new" / "x.json"), "--json")


# ------------------------------------------------------------------------ weight files
def test_weight_file_problems(tmp_path):
    from safetensors.numpy import save_file

    good = str(tmp_path / "model.safetensors")
    save_file({"w": np.ones((64, 64), np.float32)}, good)
    assert validate.weight_file_problem(good) is None
    trunc = str(tmp_path / "t" / "model.safetensors")
    os.makedirs(os.path.dirname(trunc))
    shutil.copy(good, trunc)
    with open(trunc, "r+b") as f:
        f.truncate(os.path.getsize(good) - 100)
    assert "is truncated: its header lists 16384 bytes of tensor data, the file holds 16284" in \
        validate.weight_file_problem(trunc)
    tiny = str(tmp_path / "tiny.safetensors")
    open(tiny, "wb").write(b"abc")
    assert "truncated (3 bytes" in validate.weight_file_problem(tiny)
    text = str(tmp_path / "pytorch_model.bin")
    open(text, "w").write("version https://git-lfs.github.com/spec/v1\n")
    assert "is not a PyTorch checkpoint" in validate.weight_file_problem(text)
    import torch

    zipped = str(tmp_path / "z.bin")
    torch.save({"w": torch.ones(3)}, zipped)
    assert validate.weight_file_problem(zipped) is None
    with open(zipped, "r+b") as f:
        f.truncate(40)
    assert "damaged or truncated zip" in validate.weight_file_problem(zipped)


def test_nonfinite_tensors_are_named():
    tree = {"a": {"kernel": np.ones((2, 3), np.float32)}, "b": np.array([1.0, np.nan, np.inf]),
            "ids": np.array([1, 2])}
    assert validate.nonfinite_tensors(tree) == ["b (2 of 3 non-finite)"]


def test_convert_and_load_refuse_nonfinite_tensor(tmp_path):
    """A NaN weight: convert refuses naming the tensor; a converted directory with an inf
    parameter is refused at load naming the parameter."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import hostile
    from ports import sedd

    bad = hostile.make_hf(str(tmp_path / "nan"), lambda s: s["blocks.0.attn_qkv.weight"].__setitem__((1, 2), np.nan))
    with pytest.raises(sedd.CheckpointError, match=r"NaN or inf: blocks.0.attn_qkv.weight \(1 of"):
        sedd.convert(bad, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing half-written left
    conv = str(tmp_path / "conv")
    sedd.convert(hostile.make_hf(str(tmp_path / "hf")), conv)
    _, params, cfg = sedd.load(conv)
    params = jax_tree_poison(params)
    sedd.save_converted(str(tmp_path / "conv_inf"), params, cfg)
    with pytest.raises(sedd.CheckpointError, match=r"parameters with NaN or inf: .*\(1 of"):
        sedd.load(str(tmp_path / "conv_inf"))


def jax_tree_poison(params):
    import jax

    leaves, tree = jax.tree_util.tree_flatten(params)
    leaves = [np.array(x, np.float32) for x in leaves]
    leaves[0].reshape(-1)[0] = np.inf
    return jax.tree_util.tree_unflatten(tree, leaves)


# ---------------------------------------------------------------- sampler-params files
@pytest.mark.parametrize("edit,needle", [
    (dict(phi=[-1.0, 1, 1]), r"key 'phi' must lie in \[0.05, 20.0\].*entries \[0\] are \[-1.0\]"),
    (dict(phi=[1, 0.0, 1]), r"entries \[1\] are \[0.0\]"),
    (dict(phi=[1, 1, 1e30]), r"entries \[2\] are \[1e\+30\]"),
    (dict(phi=[1, "x", 1]), "key 'phi' must be a non-empty list of numbers"),
    (dict(phi=[1, 1]), "'phi' and 'logits' must have equal length, got 2 and 3"),
    (dict(eps="abc"), "key 'eps' .* must be a number in \\(0, 1\\), got 'abc'"),
    (dict(eps=1.0), "got 1.0"),
    (dict(eps=True), "got True"),
    (dict(logits=[0, 1e400, 0]), "key 'logits' has non-finite entries at \\[1\\]"),
    (dict(grid=[1.0, 0.5, 0.2, 1e-4]), "key 'grid' is not the grid its 'logits' give"),
    (dict(whole=[1, 2, 3]), "must hold a JSON object .* got a JSON list"),
    (dict(drop="eps"), "missing field 'eps'"),
])
def test_sampler_params_file_checks(tmp_path, edit, needle):
    path = str(tmp_path / "p.json")
    sp_lib.save(sp_lib.init(3), path)
    doc = json.loads(open(path).read())
    if "whole" in edit:
        doc = edit["whole"]
    elif "drop" in edit:
        del doc[edit["drop"]]
    else:
        doc.update(edit)
    open(path, "w").write(json.dumps(doc).replace("Infinity", "1e400"))
    with pytest.raises(validate.InputError, match=needle) as e:
        sp_lib.load(path)
    assert path in str(e.value)


def test_sampler_params_round_trip_still_loads(tmp_path):
    p = sp_lib.init(5, eps=1e-3, grid=np.linspace(1.0, 1e-3, 6) ** 1.5 + np.r_[0, 0, 0, 0, 0, 1e-3 - 1e-3 ** 1.5])
    p = p.replace(phi=jnp.array([0.05, 0.5, 1.0, 2.0, 20.0]))  # the ends of the allowed range
    sp_lib.save(p, str(tmp_path / "p.json"))
    q = sp_lib.load(str(tmp_path / "p.json"))
    np.testing.assert_allclose(q.grid(), p.grid(), rtol=1e-6)
    np.testing.assert_allclose(q.phi, p.phi)


# ------------------------------------------------------------------ tokens and probes
def test_tokens_checks_and_metrics_length():
    t = markov_teacher(vocab=5, length=6)
    with pytest.raises(ValueError, match=r"must have shape \[B, 6\], got \[4, 5\]"):
        t.metrics(np.zeros((4, 5), np.int32))
    with pytest.raises(ValueError, match=r"ids outside \[0, 5\): min 7, max 7"):
        t.metrics(np.full((2, 6), 7))
    assert validate.tokens(np.zeros((2, 6), np.int32), 5, 6, "x").shape == (2, 6)


def test_probe_score_wrong_width_and_nan():
    t = markov_teacher(vocab=5, length=6)
    validate.probe_score(t)  # the exact teacher passes
    narrow = Teacher(lambda x, sb: t.score_fn(x, sb)[..., :3], t.graph, t.noise, 6, "narrow")
    with pytest.raises(ValueError, match=r"must return a float log score .*\[B, L, graph.dim\].* returned .*\[\d+, 6, 3\]"):
        validate.probe_score(narrow)
    nan = Teacher(lambda x, sb: t.score_fn(x, sb) * jnp.nan, t.graph, t.noise, 6, "nan")
    with pytest.raises(FloatingPointError, match="score is non-finite .* at t = 1.0"):
        validate.probe_score(nan)


# ------------------------------------------------------------------ CLI and exit codes
@pytest.mark.parametrize("argv,needle", [
    (["tune", "--divergence", "mmd", "--nfe", "4"], "--divergence mmd needs a network teacher"),
    (["tune", "--teacher-nfe", "2", "--nfe", "8"], r"--teacher-nfe \(2\) must be > --nfe \(8\)"),
    (["distill", "--batch-size", "32", "--samples", "16"], r"--batch-size \(32\) must be <= --samples \(16\)"),
    (["sample", "--nfe", "4", "--eps", "0.001", "--sampler-params", "@P@"], "drop --eps"),
    (["convert", "@NOPE@", "@DST@"], "nope does not exist"),
])
def test_cli_refuses_before_work(tmp_path, capsys, argv, needle):
    path = str(tmp_path / "p.json")
    sp_lib.save(sp_lib.init(4), path)
    argv = [a.replace("@P@", path).replace("@NOPE@", str(tmp_path / "nope")).replace("@DST@", str(tmp_path / "dst"))
            for a in argv]
    if argv[0] in ("tune", "distill"):
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lsd-jax {argv[0]}: error:") and "Traceback" not in err and len(err.splitlines()) == 1
    assert __import__("re").search(needle, err), err
    assert not (tmp_path / "out").exists() or not validate.dir_content(str(tmp_path / "out"))


@pytest.mark.parametrize("flag,path", [("--out", "FILE"), ("--out", "FILE/sub")])
def test_train_teacher_out_checked_first(tmp_path, capsys, flag, path):
    (tmp_path / "f").write_text("x")
    assert main(["train-teacher", "--steps", "1", flag, path.replace("FILE", str(tmp_path / "f"))]) == 2
    assert "lsd-jax train-teacher: error: --out" in capsys.readouterr().err


# ------------------------------------------------------------------------ runs: writes
def test_atomic_write_json_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "d" / "x.json")
    runs.write_json(path, {"a": 1})
    runs.write_json(path, {"a": 2})
    assert json.loads(open(path).read()) == {"a": 2} and os.listdir(tmp_path / "d") == ["x.json"]
    with pytest.raises(TypeError):
        runs.write_json(path, {"a": object()})  # a failed write keeps the old file, no temporary
    assert json.loads(open(path).read()) == {"a": 2} and os.listdir(tmp_path / "d") == ["x.json"]


# ------------------------------------------------------------------------- runs: lock
def test_lock_refuses_live_holder_and_recovers_stale(tmp_path):
    d = str(tmp_path / "run")
    code = textwrap.dedent(f"""
        import time
        from lsd_jax.runs import RunLock
        with RunLock({d!r}):
            print("held", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(validate.InputError, match=rf"in use by another live run \(pid {proc.pid} on"):
            runs.RunLock(d).acquire()
    finally:
        proc.kill()
        proc.wait()
    assert os.path.exists(os.path.join(d, validate.LOCK_NAME))  # a killed holder leaves its file: stale
    with runs.RunLock(d):
        with runs.RunLock(d):  # re-entrant in one process
            info = json.loads(open(os.path.join(d, validate.LOCK_NAME)).read())
            assert info["pid"] == os.getpid()
    assert not os.path.exists(os.path.join(d, validate.LOCK_NAME))


# ------------------------------------------------------------------ runs: config check
def test_config_diff_names_every_field(tmp_path):
    saved = {"config": {"lr": 0.001, "nfe": 8, "method": "lsd", "epochs": 3}, "teacher": {"graph": "absorb"}}
    now = {"config": {"lr": 0.01, "nfe": 8, "method": "lsd+", "epochs": 9}, "teacher": {"graph": "uniform"}}
    assert runs.config_diff(saved, now, may_change=("config.epochs",)) == [
        "config.lr (saved 0.001, now 0.01)", "config.method (saved 'lsd', now 'lsd+')",
        "teacher.graph (saved 'absorb', now 'uniform')"]
    runs.check_config(str(tmp_path), saved, resume=False)
    with pytest.raises(validate.InputError, match="config.lr .*config.method .*teacher.graph"):
        runs.check_config(str(tmp_path), now, resume=True, may_change=("config.epochs",))
    runs.check_config(str(tmp_path), {**saved, "config": {**saved["config"], "epochs": 5}}, resume=True,
                      may_change=("config.epochs",))


@pytest.mark.slow
def test_distill_resume_with_other_config_is_refused(tmp_path):
    teacher = markov_teacher(vocab=5, length=6)
    cfg = distill.DistillConfig(**SMALL)
    distill.fit(teacher, cfg, out_dir=str(tmp_path), progress=False, stop_after=1)
    for change in (dict(lr=0.01), dict(nfe=2), dict(method="lsd+")):
        field = next(iter(change))
        with pytest.raises(ValueError, match=rf"config.{field} \(saved"):
            distill.fit(teacher, distill.DistillConfig(**{**SMALL, **change}), out_dir=str(tmp_path), resume=True,
                        progress=False)
    other = markov_teacher(graph="uniform", vocab=5, length=6)
    with pytest.raises(ValueError, match="teacher.graph \\(saved 'absorb', now 'uniform'\\)"):
        distill.fit(other, cfg, out_dir=str(tmp_path), resume=True, progress=False)


# ----------------------------------------------------------------- runs: checkpoints
def test_checkpoints_skip_incomplete_saves(tmp_path):
    ck = runs.Checkpoints(str(tmp_path), prefix="epoch_", keep=2)
    for step in (1, 2, 3):
        ck.save(step, {"w": np.full((3,), float(step), np.float32)}, [step])
    assert ck.steps() == [2, 3]
    shutil.copytree(ck.path(3), str(tmp_path / "epoch_0004.orbax-checkpoint-tmp-99"))  # a kill mid-save
    shutil.copytree(ck.path(3), ck.path(5))  # committed, but killed before its sidecar
    assert ck.latest() == 3
    assert ck.incomplete() == ["epoch_0004.orbax-checkpoint-tmp-99", "epoch_0005"]
    tree, side = ck.restore(3, {"w": np.zeros((3,), np.float32)})
    assert side == [3] and np.all(np.asarray(tree["w"]) == 3)
    assert ck.clean() == ["epoch_0004.orbax-checkpoint-tmp-99", "epoch_0005"]
    assert sorted(os.listdir(tmp_path)) == ["epoch_0002", "epoch_0002.history.json", "epoch_0003",
                                            "epoch_0003.history.json"]


@pytest.mark.slow
def test_resume_after_interrupted_save_matches_uninterrupted(tmp_path):
    """The interrupted save is planted deterministically (an orbax temp directory for the
    next epoch); the resumed run skips it and ends where the uninterrupted one does."""
    teacher = markov_teacher(vocab=5, length=6)
    cfg = distill.DistillConfig(method="lsd+", **SMALL)
    full, hist_full = distill.fit(teacher, cfg, out_dir=str(tmp_path / "a"), progress=False)
    b = str(tmp_path / "b")
    distill.fit(teacher, cfg, out_dir=b, progress=False, stop_after=2)
    ckdir = os.path.join(b, "checkpoints")
    shutil.copytree(os.path.join(ckdir, "epoch_0002"), os.path.join(ckdir, "epoch_0003.orbax-checkpoint-tmp-7"))
    assert distill.latest_checkpoint(b).endswith("epoch_0002")
    resumed, hist = distill.fit(teacher, cfg, out_dir=b, resume=True, progress=False)
    np.testing.assert_allclose(resumed.phi, full.phi, rtol=1e-6)
    np.testing.assert_allclose(resumed.logits, full.logits, rtol=1e-6)
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3, 4]  # history[e] is epoch e
    np.testing.assert_allclose([h["loss"] for h in hist[1:]], [h["loss"] for h in hist_full[1:]], rtol=1e-5)
    assert not any("tmp" in n for n in os.listdir(ckdir))


KILL_CHILD = """
import os, signal, sys
import orbax.checkpoint as ocp
from lsd_jax import distill, runs
from lsd_jax.teachers import markov_teacher

def save(self, step, tree, sidecar, primary=True):
    if step == 3:  # start the save of epoch 3, then die before orbax commits it
        ocp.StandardCheckpointer().save(self.path(step), tree)
        os.kill(os.getpid(), signal.SIGKILL)
    return ORIG(self, step, tree, sidecar, primary)

ORIG, runs.Checkpoints.save = runs.Checkpoints.save, save
cfg = distill.DistillConfig(method="lsd+", **{small})
distill.fit(markov_teacher(vocab=5, length=6), cfg, out_dir=sys.argv[1], progress=False)
"""


@pytest.mark.slow
def test_sigkill_during_save_resumes_to_the_uninterrupted_result(tmp_path):
    """A real SIGKILL while orbax is writing epoch 3 (a subprocess): --resume continues from
    epoch 2 and ends with the uninterrupted run's parameters and losses."""
    out = str(tmp_path / "killed")
    res = subprocess.run([sys.executable, "-c", KILL_CHILD.format(small=SMALL), out], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}, timeout=600)
    assert res.returncode == -9, res.stderr[-2000:]
    ckdir = os.path.join(out, "checkpoints")
    assert any(".orbax-checkpoint-tmp" in n for n in os.listdir(ckdir)), os.listdir(ckdir)  # killed mid-save
    assert os.path.exists(os.path.join(out, validate.LOCK_NAME))  # and its lock left behind: stale
    teacher = markov_teacher(vocab=5, length=6)
    cfg = distill.DistillConfig(method="lsd+", **SMALL)
    resumed, hist = distill.fit(teacher, cfg, out_dir=out, resume=True, progress=False)
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3, 4]  # history[e] is epoch e
    full, hist_full = distill.fit(teacher, cfg, out_dir=str(tmp_path / "full"), progress=False)
    np.testing.assert_allclose(resumed.phi, full.phi, rtol=1e-6)
    np.testing.assert_allclose(resumed.logits, full.logits, rtol=1e-6)
    np.testing.assert_allclose([h["loss"] for h in hist[1:]], [h["loss"] for h in hist_full[1:]], rtol=1e-5)
