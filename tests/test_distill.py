import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax import distill, grids, samplers
from lsd_jax import sampler_params as sp_lib
from lsd_jax._compat import enable_x64
from lsd_jax.cli import main
from lsd_jax.teachers import Teacher, markov_teacher

import tiny_score

SMALL = dict(nfe=4, teacher_nfe=64, samples=16, batch_size=8, epochs=3, select="none")


def grads(teacher, cfg, params=None, seed=0):
    cache = distill.teacher_cache(teacher, cfg, jax.random.PRNGKey(seed))
    params = params or distill.init_state(cfg, jax.random.PRNGKey(1)).params
    (loss, aux), g = jax.value_and_grad(distill.student_loss, has_aux=True)(
        params, cache.path, cache.x_start, jax.random.PRNGKey(2), teacher=teacher, cfg=cfg)
    return float(loss), np.asarray(g.phi), np.asarray(g.logits)


def test_kl_has_zero_phi_gradient_on_exact_absorbing_teacher():
    """lsd.md: exact score, log-linear, absorbing, linear reading -> Euler is already exact per
    position, the full-transition KL is minimised at phi = 1: zero gradient."""
    with enable_x64():
        teacher = markov_teacher(vocab=8, length=12)
        cfg = distill.DistillConfig(nfe=8, teacher_nfe=128, samples=16, batch_size=16, x64=True)
        loss, g_phi, _ = grads(teacher, cfg)
        assert loss > 0.01  # the states differ, so the loss itself is not zero
        assert np.abs(g_phi).max() < 1e-10


@pytest.mark.slow
def test_token_kl_readings():
    with enable_x64():
        teacher = markov_teacher(vocab=8, length=12)
        base = distill.DistillConfig(nfe=8, teacher_nfe=128, samples=16, batch_size=16, x64=True, loss="token-kl")
        _, g_lin, _ = grads(teacher, base)
        _, g_tmp, _ = grads(teacher, dataclasses.replace(base, reading="temperature"))
        assert np.abs(g_lin).max() < 1e-10  # the scale of phi cancels after normalising
        assert np.abs(g_tmp).max() > 1e-3


@pytest.mark.slow
def test_uniform_graph_has_nonzero_phi_gradient():
    with enable_x64():
        teacher = markov_teacher(graph="uniform", vocab=8, length=12)
        cfg = distill.DistillConfig(nfe=8, teacher_nfe=128, samples=16, batch_size=16, x64=True)
        _, g_phi, _ = grads(teacher, cfg)
        assert np.abs(g_phi).max() > 1e-3


@pytest.mark.slow
def test_every_loss_gives_finite_gradients():
    teacher = markov_teacher(vocab=8, length=12)
    for loss in distill.LOSSES:
        for reading in samplers.READINGS:
            cfg = distill.DistillConfig(nfe=4, teacher_nfe=32, samples=8, batch_size=8, loss=loss, reading=reading,
                                        method="lsd+")
            val, g_phi, g_logits = grads(teacher, cfg)
            assert np.isfinite(val) and np.all(np.isfinite(g_phi)) and np.all(np.isfinite(g_logits)), (loss, reading)


@pytest.mark.slow
def test_lsd_returns_plain_euler_on_exact_teacher():
    """phi stays at 1 up to round-off (the last step to eps reveals 1 - eps/t_{M-1} of the
    tokens; above phi = 1/that the kernel saturates and Adam drifts in a flat loss), and
    the learned sampler draws the same samples as plain Euler."""
    teacher = markov_teacher(vocab=8, length=12)
    cfg = distill.DistillConfig(**SMALL)
    params, hist = distill.fit(teacher, cfg, progress=False)
    assert np.abs(np.asarray(params.phi) - 1.0).max() < 5e-3
    g = grids.uniform(4, cfg.eps)
    run = lambda phi: np.asarray(samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, g,
                                                 jax.random.PRNGKey(9), 512, 12, phi=phi).tokens)
    assert np.mean(run(params.phi) == run(None)) > 0.999
    np.testing.assert_array_equal(params.logits, jnp.zeros(4))  # lsd never moves the grid
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3] and hist[0]["loss"] is None  # history[e] is epoch e
    assert all(np.isfinite(h["loss"]) for h in hist[1:])


def network_teacher(graph="absorb", exact_metrics=True):
    """The tiny network on the markov chain's graph; exact_metrics keeps the chain (so
    teacher.exact is True and the exact divergence is available), False: a plain network
    teacher (teacher.exact False, as a checkpoint)."""
    base = markov_teacher(graph=graph, vocab=8, length=12)
    model, net_params = tiny_score.make(base.graph.dim, 12)
    score_fn = lambda x, sb: model.apply({"params": net_params}, x, sb)
    chain = base.chain if exact_metrics else None
    return Teacher(score_fn, base.graph, base.noise, 12, "tiny-net", chain), net_params


@pytest.mark.slow  # several fits / validations
def test_only_phi_and_grid_are_optimised_and_gradients_reach_the_grid():
    teacher, net_params = network_teacher()
    before = jax.tree_util.tree_map(np.array, net_params)
    cfg = distill.DistillConfig(method="lsd+", **SMALL)
    _, g_phi, g_logits = grads(teacher, cfg)
    assert np.abs(g_phi).max() > 1e-4 and np.abs(g_logits).max() > 1e-5  # through the network into tau
    params, _ = distill.fit(teacher, cfg, progress=False)
    leaves = jax.tree_util.tree_leaves(params)
    assert [l.shape for l in leaves] == [(4,), (4,)]  # phi and logits, nothing else
    assert not np.allclose(params.logits, 0.0)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, net_params)


@pytest.mark.slow
def test_alternating_updates():
    teacher, _ = network_teacher()
    cfg = distill.DistillConfig(method="lsd+", alternate=True, **{**SMALL, "epochs": 2})
    _, hist = distill.fit(teacher, cfg, progress=False)
    g1 = np.asarray(hist[1]["grid"])
    np.testing.assert_allclose(g1, grids.uniform(4, cfg.eps), atol=1e-6)  # epoch 1: phi only
    assert not np.allclose(hist[1]["phi"], hist[0]["phi"])
    assert not np.allclose(hist[2]["grid"], g1)
    np.testing.assert_array_equal(hist[1]["phi"], hist[2]["phi"])  # epoch 2: grid only


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_relaxed_start_respects_hamming_bound(graph):
    g = markov_teacher(graph=graph, vocab=8, length=40).graph
    x = jnp.asarray(np.random.default_rng(0).integers(0, 8, size=(2000, 40)), jnp.int32)
    for zeta in (0.0, 0.05, 0.2):
        y = np.asarray(distill.relaxed_start(g, jax.random.PRNGKey(1), x, zeta))
        dist = (y != np.asarray(x)).sum(1)
        bound = math.floor(zeta * 40)
        assert dist.max() <= bound
        if bound:
            assert dist.max() == bound and (dist == 0).any()
            if g.is_absorbing:
                assert np.all((y == np.asarray(x)) | (y == g.mask_id))


@pytest.mark.slow  # several fits / validations
def test_resume_reproduces_uninterrupted_run(tmp_path):
    teacher, _ = network_teacher()
    cfg = distill.DistillConfig(method="lsd+", **{**SMALL, "epochs": 4})
    full, hist_full = distill.fit(teacher, cfg, out_dir=str(tmp_path / "a"), progress=False)
    distill.fit(teacher, cfg, out_dir=str(tmp_path / "b"), progress=False, stop_after=2)  # "killed" after 2
    assert distill.latest_checkpoint(str(tmp_path / "b")).endswith("epoch_0002")
    resumed, hist_res = distill.fit(teacher, cfg, out_dir=str(tmp_path / "b"), resume=True, progress=False)
    np.testing.assert_allclose(resumed.phi, full.phi, rtol=1e-6)
    np.testing.assert_allclose(resumed.logits, full.logits, rtol=1e-6)
    assert [h["epoch"] for h in hist_res] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([h["loss"] for h in hist_res[1:]], [h["loss"] for h in hist_full[1:]], rtol=1e-5)


@pytest.mark.parametrize("change,needle", [
    (dict(nfe=64, teacher_nfe=64), "must be < teacher_nfe"),
    (dict(zeta=1.5), "zeta must be in [0, 1]"),
    (dict(loss="mse"), "allowed: kl, token-kl, l2"),
    (dict(reading="log"), "allowed: linear, temperature"),
    (dict(method="lsd++"), "allowed: lsd, lsd+"),
    (dict(batch_size=32, samples=16), "batch_size"),
    (dict(val_every=0), "val_every must be an integer >= 1, got 0"),
    (dict(val_every=1.5), "val_every must be an integer >= 1"),
    (dict(val_reference_nfe=0), "val_reference_nfe must be an integer >= 1, got 0"),
    (dict(val_samples=0), "val_samples must be 'auto' or an integer >= 1, got 0"),
    (dict(val_samples="many"), "val_samples must be 'auto' or an integer >= 1, got 'many'"),
])
def test_bad_config(change, needle):
    with pytest.raises(ValueError) as e:
        distill.DistillConfig(**change).validate()
    assert needle in str(e.value)


def test_nan_stops_with_clear_error():
    base = markov_teacher(vocab=8, length=12)
    bad = Teacher(lambda x, sb: base.score_fn(x, sb) * jnp.nan, base.graph, base.noise, 12, "nan", base.chain)
    with pytest.raises(FloatingPointError, match="teacher score is non-finite"):
        distill.fit(bad, distill.DistillConfig(**SMALL), progress=False)  # probed before the teacher runs


@pytest.mark.slow  # several fits / validations
def test_distill_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["distill", "--teacher", "markov", "--teacher-vocab", "8", "--teacher-length", "12", "--method", "lsd+",
            "--nfe", "4", "--teacher-nfe", "32", "--epochs", "2", "--samples", "16", "--batch-size", "8",
            "--out", str(out), "--eval-seeds", "2", "--eval-samples", "64", "--no-progress"]
    assert main(argv) == 0
    for f in ("sampler_params.json", "history.json", "sampler_params.png", "result.json"):
        assert (out / f).exists(), f
    res = json.loads((out / "result.json").read_text())
    assert set(res["evaluation"]) == {"euler uniform (phi = 1)", "lsd+ learned"}
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err  # refuses to overwrite
    params = sp_lib.load(str(out / "sampler_params.json"))
    assert params.nfe == 4
    js = tmp_path / "s.json"
    assert main(["sample", "--teacher-vocab", "8", "--teacher-length", "12", "--nfe", "4", "--num-samples", "32",
                 "--sampler-params", str(out / "sampler_params.json"), "--json", str(js)]) == 0
    got = json.loads(js.read_text())
    assert got["grid"] == "learned" and got["sampler_params"]["phi"] == pytest.approx(params.phi.tolist())
    assert main(["sample", "--nfe", "8", "--sampler-params", str(out / "sampler_params.json")]) == 2


def test_sampler_params_file_errors(tmp_path):
    p = sp_lib.init(4, 1e-4, grid=grids.cosine(4, 1e-4))
    np.testing.assert_allclose(p.grid(), grids.cosine(4, 1e-4), rtol=1e-5, atol=1e-6)
    path = tmp_path / "p.json"
    sp_lib.save(p, str(path))
    doc = json.loads(path.read_text())
    del doc["phi"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="missing field 'phi'"):
        sp_lib.load(str(path))


@pytest.mark.slow  # several fits / validations
def test_per_step_loss_is_gameable_by_the_grid_law():
    """lsd.md's measured law, pinned: a grid that hides reveals in the first and last steps
    lowers the per-step KL loss while the exact divergence gets several times worse. This
    is why `fit` selects epochs on a sample-level divergence (next test)."""
    teacher = markov_teacher()
    eps = 1e-4
    gamed = jnp.asarray(np.concatenate([[1.0, 0.64], np.linspace(0.64, 0.36, 7)[1:], [eps]]))
    uniform = grids.uniform(8, eps)
    cfg = distill.DistillConfig(nfe=8, teacher_nfe=256, samples=128, batch_size=128)
    cache = distill.teacher_cache(teacher, cfg, jax.random.PRNGKey(0))
    loss = {}
    for name, g in (("uniform", uniform), ("gamed", gamed)):
        p = sp_lib.init(8, eps, grid=g)
        loss[name] = float(distill.student_loss(p, cache.path, cache.x_start, jax.random.PRNGKey(1),
                                                teacher=teacher, cfg=cfg)[0])
    kl = {name: teacher.metrics(samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, g,
                                                jax.random.PRNGKey(2), 2048, 32).tokens)["bigram_kl"]
          for name, g in (("uniform", uniform), ("gamed", gamed))}
    assert loss["gamed"] < 0.8 * loss["uniform"]
    assert kl["gamed"] > 3.0 * kl["uniform"]


@pytest.mark.slow  # several fits / validations
def test_fit_never_returns_a_worse_sampler_than_it_started_with():
    """LSD+ with a large learning rate on the exact teacher: the loss falls, and whatever the
    grid does, the params returned are the best epoch on the exact divergence (epoch 0 =
    the uniform Euler sampler included)."""
    teacher = markov_teacher(vocab=8, length=16)
    cfg = distill.DistillConfig(method="lsd+", nfe=4, teacher_nfe=64, samples=32, batch_size=8, epochs=4, lr=0.3,
                                select="exact", val_samples=512)
    params, hist = distill.fit(teacher, cfg, progress=False)
    vals = [h["val_divergence"] for h in hist]
    assert hist[0]["epoch"] == 0 and len(vals) == 5
    best = int(np.argmin(vals))
    np.testing.assert_allclose(params.grid(), hist[best]["grid"], rtol=1e-5, atol=1e-6)
    validate, kind = distill.make_validator(teacher, cfg)
    assert kind == "exact" and validate(params) == pytest.approx(min(vals), rel=1e-6) and min(vals) <= vals[0]


# --- cheaper selection: val_every, val_reference_nfe, val_samples auto -------------------
def test_validated_epochs_schedule():
    assert distill.validated_epochs(7, 3) == [0, 3, 6, 7]
    assert distill.validated_epochs(20, 5) == [0, 5, 10, 15, 20]
    assert distill.validated_epochs(20, 1) == list(range(21))
    assert distill.validated_epochs(4, 10) == [0, 4]


@pytest.mark.slow  # several fits / validations
def test_val_every_validates_0_k_2k_and_last_and_returns_the_best_of_those():
    """LSD+ with a large learning rate on the exact teacher (the divergence moves between
    epochs): only epochs 0, 3, 6, 7 are scored, the others are None, and the params returned
    are those of the best scored epoch."""
    teacher = markov_teacher(vocab=8, length=16)
    cfg = distill.DistillConfig(method="lsd+", nfe=4, teacher_nfe=64, samples=32, batch_size=8, epochs=7, lr=0.3,
                                select="exact", val_samples=512, val_every=3)
    params, hist = distill.fit(teacher, cfg, progress=False)
    assert [h["epoch"] for h in hist] == list(range(8))
    scored = {h["epoch"]: h["val_divergence"] for h in hist if h["val_divergence"] is not None}
    assert sorted(scored) == [0, 3, 6, 7]
    assert all(hist[e]["val_divergence"] is None for e in (1, 2, 4, 5))
    assert len(set(scored.values())) > 1  # the grid moved: the selection had a choice to make
    best = min(scored, key=scored.get)
    np.testing.assert_allclose(params.grid(), hist[best]["grid"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params.phi, hist[best]["phi"], rtol=1e-6)
    validate, _ = distill.make_validator(teacher, cfg)
    assert validate(params) == pytest.approx(scored[best], rel=1e-6)
    for e in (1, 2, 4, 5):  # an unscored epoch is never returned (the grid moved every epoch)
        assert not np.allclose(params.grid(), hist[e]["grid"], atol=1e-3)
    assert hist[0]["validation"]["epochs"] == [0, 3, 6, 7] and hist[0]["validation"]["samples"] == 512
    assert hist[0]["validation"]["forward_passes"] == 4 * 5 * 512  # 4 validations x (M + 1) calls, no reference


@pytest.mark.slow
def test_val_samples_auto_resolves_by_teacher_kind():
    exact = markov_teacher(vocab=8, length=12)
    net, _ = network_teacher(exact_metrics=False)
    assert exact.exact and not net.exact
    cfg = distill.DistillConfig(nfe=4, teacher_nfe=64)
    assert cfg.val_samples == "auto"
    assert cfg.resolved_val_samples(exact) == 1024
    assert cfg.resolved_val_samples(net) == 256
    plain = dataclasses.replace(cfg, val_samples=100)
    assert plain.validate().resolved_val_samples(exact) == plain.resolved_val_samples(net) == 100
    # the validators draw exactly that many samples; the n-gram reference has as many, at
    # min(val_reference_nfe, teacher_nfe) teacher steps
    v_exact, kind = distill.make_validator(exact, cfg)
    assert kind == "exact" and v_exact.num_samples == 1024 and v_exact.reference is None
    v_net, kind = distill.make_validator(net, cfg)
    assert kind == "ngram" and v_net.num_samples == 256 and v_net.reference_nfe == 64
    assert v_net.reference.shape == (256, 12)
    plan = distill.validation_plan(net, dataclasses.replace(cfg, teacher_nfe=1024, epochs=20, nfe=8))
    assert (plan["samples"], plan["reference_nfe"], len(plan["epochs"])) == (256, 256, 21)
    assert plan["forward_passes"] == 21 * 9 * 256 + 256 * 256
    plan5 = distill.validation_plan(net, dataclasses.replace(cfg, teacher_nfe=1024, epochs=20, nfe=8, val_every=5))
    assert plan5["epochs"] == [0, 5, 10, 15, 20] and plan5["forward_passes"] == 5 * 9 * 256 + 256 * 256
    assert distill.DistillConfig().to_dict()["val_samples"] == "auto"
    json.dumps(distill.DistillConfig().to_dict())


def test_reference_must_be_finer_than_the_student():
    net, _ = network_teacher(exact_metrics=False)
    cfg = distill.DistillConfig(nfe=8, teacher_nfe=64, val_reference_nfe=8, select="ngram")
    with pytest.raises(ValueError, match="val_reference_nfe"):
        distill.make_validator(net, cfg)
    with pytest.raises(ValueError, match="val_reference_nfe"):
        distill.fit(net, cfg, progress=False)


@pytest.mark.slow  # several fits / validations
def test_resume_with_val_every_reproduces_uninterrupted_run(tmp_path):
    """Interrupted after epoch 3 (not a validated epoch: the checkpoint's best is epoch 2),
    resumed: the same validations, the same selected params as one uninterrupted run."""
    teacher, _ = network_teacher(exact_metrics=False)
    cfg = distill.DistillConfig(method="lsd+", **{**SMALL, "epochs": 5, "lr": 0.1, "select": "ngram",
                                                  "val_every": 2, "val_samples": 64, "val_reference_nfe": 32})
    full, hist_full = distill.fit(teacher, cfg, out_dir=str(tmp_path / "a"), progress=False)
    distill.fit(teacher, cfg, out_dir=str(tmp_path / "b"), progress=False, stop_after=3)  # "killed" after 3
    assert distill.latest_checkpoint(str(tmp_path / "b")).endswith("epoch_0003")
    resumed, hist_res = distill.fit(teacher, cfg, out_dir=str(tmp_path / "b"), resume=True, progress=False)
    vals_full = [h["val_divergence"] for h in hist_full]
    vals_res = [h["val_divergence"] for h in hist_res]
    assert [h["epoch"] for h in hist_res] == [0, 1, 2, 3, 4, 5]
    assert [v is None for v in vals_full] == [False, True, False, True, False, False]
    assert [v is None for v in vals_res] == [v is None for v in vals_full]
    np.testing.assert_allclose([v for v in vals_res if v is not None], [v for v in vals_full if v is not None],
                               rtol=1e-5)
    np.testing.assert_allclose(resumed.phi, full.phi, rtol=1e-6)
    np.testing.assert_allclose(resumed.logits, full.logits, rtol=1e-6)
    best = min((v, e) for e, v in enumerate(vals_full) if v is not None)[1]
    assert best < 3  # the selected epoch lies before the interruption: resume must restore it
    np.testing.assert_allclose(full.phi, hist_full[best]["phi"], rtol=1e-6)
    np.testing.assert_allclose(full.grid(), hist_full[best]["grid"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flags,needle", [
    (["--val-every", "0"], "--val-every must be an integer >= 1, got 0"),
    (["--val-reference-nfe", "0"], "--val-reference-nfe must be an integer >= 1, got 0"),
    (["--val-samples", "many"], "--val-samples must be 'auto' or an integer >= 1, got 'many'"),
    (["--val-samples", "0"], "--val-samples must be 'auto' or an integer >= 1, got '0'"),
])
def test_distill_cli_validation_flag_errors(tmp_path, capsys, flags, needle):
    argv = ["distill", "--teacher-vocab", "8", "--teacher-length", "12", "--nfe", "4", "--teacher-nfe", "32",
            "--out", str(tmp_path / "run"), "--no-progress", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # several fits / validations
def test_distill_cli_val_every(tmp_path):
    out = tmp_path / "run"
    argv = ["distill", "--teacher", "markov", "--teacher-vocab", "8", "--teacher-length", "12", "--method", "lsd+",
            "--nfe", "4", "--teacher-nfe", "32", "--epochs", "3", "--samples", "16", "--batch-size", "8",
            "--val-every", "2", "--val-samples", "128", "--val-reference-nfe", "16", "--out", str(out),
            "--eval-seeds", "0", "--no-progress"]
    assert main(argv) == 0
    hist = json.loads((out / "history.json").read_text())
    assert [h["val_divergence"] is None for h in hist] == [False, True, False, False]
    res = json.loads((out / "result.json").read_text())
    cfg = res["config"]
    assert (cfg["val_every"], cfg["val_samples"], cfg["val_reference_nfe"]) == (2, 128, 16)
    assert res["validation"]["epochs"] == [0, 2, 3] and res["validation"]["samples"] == 128
    scored = {h["epoch"]: h["val_divergence"] for h in hist if h["val_divergence"] is not None}
    assert res["selected_epoch"] == min(scored, key=scored.get)
