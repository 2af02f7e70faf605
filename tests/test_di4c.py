"""Di4C mixture students (lsd_jax.students): losses by hand, the teacher at initialisation,
lambda draws, resume, CLI train-and-sample."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax import graphs, grids, samplers
from lsd_jax.cli import main
from lsd_jax.models.dit import DiTConfig, init_params, score_fn_from
from lsd_jax.noise import LogLinear
from lsd_jax.students import di4c
from lsd_jax.students import fit as fit_lib
from lsd_jax.teachers import markov
from lsd_jax.teachers.checkpoint import load_teacher
from ports import sedd

V, L = 4, 6
DIT = DiTConfig(vocab_size=V + 1, hidden_size=16, cond_dim=8, n_blocks=1, n_heads=2, length=L, scale_by_sigma=True,
                family="sedd", graph="absorb")


def random_teacher_params(seed=0):
    """A tiny DiT whose adaLN and output layers are not zero (init_params zeroes them)."""
    p = init_params(DIT, jax.random.PRNGKey(seed))
    leaves, tree = jax.tree_util.tree_flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("teacher"))
    cfg = sedd.CheckpointConfig("sedd", "absorb", V, L, LogLinear().to_dict(), DIT, source="test")
    sedd.save_converted(d, random_teacher_params(), cfg)
    with open(os.path.join(d, "chain.json"), "w") as f:
        json.dump(markov.make_chain(V, L, seed=0).to_dict(), f)
    return d


def test_losses_match_a_hand_computation_on_a_two_position_toy():
    """n = 2 components over L = 2 positions, V = 2 tokens; every term by hand."""
    p = [[[0.9, 0.1], [0.8, 0.2]], [[0.2, 0.8], [0.3, 0.7]]]  # student components [n, L, V]
    q = [[[0.7, 0.3], [0.5, 0.5]], [[0.1, 0.9], [0.4, 0.6]]]  # target components
    t = [[0.5, 0.5], [0.6, 0.4]]  # teacher [L, V]
    x0, xhat = [0, 1], [[0, 0], [1, 1]]
    lp, lq, lt = (jnp.log(jnp.asarray(a))[None] for a in (p, q, t))
    args = (lp, lt, lq, jnp.asarray([x0]), jnp.asarray([xhat]))
    out = di4c.losses(*args, jnp.asarray([False]), jnp.asarray([0.3]))
    out_d = di4c.losses(*args, jnp.asarray([True]), jnp.asarray([0.3]))

    def klh(a, b):
        return sum(ai * math.log(ai / bi) for ai, bi in zip(a, b))

    m = [[0.55, 0.45], [0.55, 0.45]]  # mixture marginals
    qm = [[0.4, 0.6], [0.45, 0.55]]
    mix = lambda x: 0.5 * (p[0][0][x[0]] * p[0][1][x[1]] + p[1][0][x[0]] * p[1][1][x[1]])  # noqa: E731
    cor = lambda x: -math.log(mix(x)) + math.log(m[0][x[0]]) + math.log(m[1][x[1]])  # noqa: E731
    assert mix([0, 1]) == pytest.approx(0.16) and mix([0, 0]) == pytest.approx(0.39)
    hand = {
        "distil": 0.5 * sum(klh(t[d], p[i][d]) for i in range(2) for d in range(2)),
        "consistency_cor": 0.5 * (cor([0, 0]) + cor([1, 1])),
        "consistency_marg": klh(qm[0], m[0]) + klh(qm[1], m[1]),
        "data_cor": cor(x0),
        "data_marg": klh(t[0], m[0]) + klh(t[1], m[1]),
    }
    for k, v in hand.items():
        assert float(out[k][0]) == pytest.approx(v, rel=1e-5), k
    rest = 0.3 * hand["data_cor"] + hand["data_marg"]
    assert float(out["total"][0]) == pytest.approx(hand["consistency_cor"] + hand["consistency_marg"] + rest, rel=1e-5)
    assert float(out_d["total"][0]) == pytest.approx(hand["distil"] + rest, rel=1e-5)
    out_w = di4c.losses(*args, jnp.asarray([False]), jnp.asarray([0.3]), marg_weight=0.25)
    assert float(out_w["total"][0]) == pytest.approx(
        hand["consistency_cor"] + 0.25 * hand["consistency_marg"] + rest, rel=1e-5)


@pytest.mark.slow
def test_student_is_the_teacher_at_initialisation():
    """Every lambda gives the teacher's denoiser, so the mixture's marginals are the teacher's,
    its correlation terms vanish and the distillation / marginal terms are 0."""
    g, noise = graphs.get_graph("absorb", V), LogLinear()
    tparams = random_teacher_params()
    teacher = score_fn_from(di4c.DiT(DIT), tparams, DIT)
    params = di4c.init_student(DIT, tparams, jax.random.PRNGKey(3))
    model = di4c.MixtureDiT(DIT)
    x = jax.random.randint(jax.random.PRNGKey(4), (3, L), 0, V + 1)  # some masks, some tokens
    sb = noise.total(jnp.asarray([0.2, 0.5, 0.9]))
    lt = di4c.log_p0(g, x, teacher(x, sb))
    lp = jnp.stack([di4c.student_log_p0(model, params, g, x, sb, jnp.full((3,), lam)) for lam in (0.0, 0.37, 0.99)], 1)
    np.testing.assert_allclose(lp, jnp.broadcast_to(lt[:, None], lp.shape), atol=1e-6)
    np.testing.assert_allclose(di4c.mixture_log_marginal(lp), lt, atol=1e-6)
    assert float(jnp.abs(jnp.exp(lt[x != g.mask_id]).max(-1) - 1.0).max()) < 1e-6  # unmasked: point masses
    xs = jax.random.categorical(jax.random.PRNGKey(5), lt)  # [3, L]
    out = di4c.losses(lp, lt, lp, xs, xs[:, None], jnp.zeros(3, bool), jnp.ones(3))
    for k in ("distil", "consistency_cor", "consistency_marg", "data_cor", "data_marg"):
        assert float(jnp.abs(out[k]).max()) < 1e-4, k
    # the marginal (factorised) diagnostic of the mixture: here the teacher's normalised score
    marg = di4c.marginal_score_fn(DIT, params, lambdas=3)(x, sb)
    want = di4c.analytic_log_score(x, teacher(x, sb), sb)
    masked = np.asarray(x) == V
    np.testing.assert_allclose(np.asarray(marg)[masked], np.asarray(want)[masked], atol=1e-5)


@pytest.mark.slow
def test_student_score_has_the_absorbing_mass():
    """At masked positions the student's score is p_{0|t} / expm1(sigmabar) (the exact absorbing
    relation), so a Tweedie step reveals with the schedule's probability (t - s) / t under the
    log-linear noise; unmasked positions keep the network's output."""
    g, noise = graphs.get_graph("absorb", V), LogLinear()
    x = jax.random.randint(jax.random.PRNGKey(4), (3, L), 0, V + 1).at[:, 0].set(V)
    sb = noise.total(jnp.asarray([0.2, 0.5, 0.9]))
    raw = 0.7 * jax.random.normal(jax.random.PRNGKey(5), (3, L, V + 1))
    out = di4c.analytic_log_score(x, raw, sb)
    masked = x == V
    mass = jnp.exp(jax.nn.logsumexp(out[..., :V], axis=-1))
    np.testing.assert_allclose(mass[masked], jnp.broadcast_to(1 / jnp.expm1(sb)[:, None], x.shape)[masked], rtol=1e-5)
    np.testing.assert_allclose(di4c.log_p0(g, x, out), di4c.log_p0(g, x, raw), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out)[~np.asarray(masked)], np.asarray(raw)[~np.asarray(masked)])
    t, s_ = 0.5, 0.3  # reveal probability of one Tweedie step t -> s with this mass: (t' - s') / t', t' = (1 - eps) t
    sbt, sbs = noise.total(jnp.asarray([t])), noise.total(jnp.asarray([s_]))
    mass_t = jnp.exp(jax.nn.logsumexp(di4c.analytic_log_score(x[:1], raw[:1], sbt)[0, 0, :V]))
    tp, sp = (1 - noise.eps) * t, (1 - noise.eps) * s_
    assert float(jnp.expm1(sbt - sbs)[0] * mass_t) == pytest.approx((tp - sp) / tp, rel=1e-5)


def test_lambda_draws():
    """One uniform per row and call: rows with equal tokens differ, a new sigmabar or state
    redraws, equal inputs repeat, and the draws look uniform."""
    key = jax.random.PRNGKey(0)
    x = jnp.zeros((4096, L), jnp.int32)
    lam = di4c.lambdas_for(key, x, jnp.full((4096,), 0.5))
    assert lam.shape == (4096,) and float(lam.min()) >= 0.0 and float(lam.max()) < 1.0
    assert len(np.unique(np.asarray(lam))) > 4000
    assert abs(float(lam.mean()) - 0.5) < 0.02 and abs(float(jnp.mean(lam < 0.25)) - 0.25) < 0.02
    again = di4c.lambdas_for(key, x, jnp.full((4096,), 0.5))
    np.testing.assert_array_equal(lam, again)
    assert float(jnp.mean(di4c.lambdas_for(key, x, jnp.full((4096,), 0.25)) == lam)) < 0.01
    assert float(jnp.mean(di4c.lambdas_for(key, x.at[:, 0].set(1), jnp.full((4096,), 0.5)) == lam)) < 0.01


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="teacher_nfe = 20 must be a multiple of nfe = 8"):
        fit_lib.Di4CConfig(teacher_nfe=20).validate()
    with pytest.raises(ValueError, match="lambdas = 0"):
        fit_lib.Di4CConfig(lambdas=0).validate()
    with pytest.raises(ValueError, match="ema_target = 1.0 must be a number in"):
        fit_lib.Di4CConfig(ema_target=1.0).validate()
    with pytest.raises(ValueError, match="data_schedule = 'cosine' is not supported; allowed: sigmoid, constant"):
        fit_lib.Di4CConfig(data_schedule="cosine").validate()
    with pytest.raises(ValueError, match="grid = 'jys' is not supported; allowed: uniform, power, cosine"):
        fit_lib.Di4CConfig(grid="jys").validate()


@pytest.mark.slow
def test_random_lambda_init_breaks_the_symmetry_only_in_the_lambda_path():
    """lambda_init_scale > 0: the DiT part is still the teacher's, the last lambda kernel has
    that scale, and two lambdas now give different denoisers."""
    g, noise = graphs.get_graph("absorb", V), LogLinear()
    tparams = random_teacher_params()
    params = di4c.init_student(DIT, tparams, jax.random.PRNGKey(3), lambda_init_scale=0.05)
    for a, b in zip(jax.tree_util.tree_leaves(params["dit"]), jax.tree_util.tree_leaves(tparams)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kernel = np.asarray(params["lambda_embed"]["mlp_2"]["kernel"])
    assert abs(kernel.std() - 0.05) < 0.005 and not np.asarray(params["lambda_embed"]["mlp_2"]["bias"]).any()
    model, x = di4c.MixtureDiT(DIT), jnp.full((1, L), V, jnp.int32)  # all masked
    sb = noise.total(jnp.asarray([0.7]))
    lp = [di4c.student_log_p0(model, params, g, x, sb, jnp.asarray([lam])) for lam in (0.1, 0.6)]
    assert float(jnp.abs(lp[0] - lp[1]).max()) > 1e-4


@pytest.mark.slow
def test_student_directory_carries_the_hmm(tmp_path):
    """A student of an HMM-trained teacher loads with the HMM (exact lag KL metrics)."""
    from lsd_jax.teachers.hmm import make_hmm

    hmm = make_hmm(num_states=3, num_tokens=V, length=L, seed=0, support=2)
    out = str(tmp_path / "s")
    cfg = sedd.CheckpointConfig("sedd", "absorb", V, L, LogLinear().to_dict(), DIT, source="test")
    di4c.save_student(out, di4c.init_student(DIT, random_teacher_params(), jax.random.PRNGKey(0)), cfg.to_dict(),
                      {"lambda_seed": 0})
    with open(os.path.join(out, "hmm.json"), "w") as f:
        json.dump(hmm.to_dict(), f)
    student = load_teacher(out)
    assert student.hmm is not None and student.chain is None and student.oracle.HEADLINE == "lag_kl"
    assert "lag_kl" in student.metrics(np.asarray(hmm.sample(jax.random.PRNGKey(1), 64)))


TINY = dict(nfe=2, teacher_nfe=4, lambdas=2, batch_size=4, steps=4, lr=1e-2, warmup=1, eval_every=2, eval_samples=8,
            checkpoint_every=2)


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(teacher_dir, tmp_path):
    cfg = fit_lib.Di4CConfig(**TINY)
    full = fit_lib.fit(teacher_dir, cfg, str(tmp_path / "a"), progress=False, log=lambda s: None)
    part = fit_lib.fit(teacher_dir, cfg, str(tmp_path / "b"), progress=False, stop_at=2, log=lambda s: None)
    assert part["step"] == 2 and not part["finished"]
    with pytest.raises(ValueError, match="not empty"):
        fit_lib.fit(teacher_dir, cfg, str(tmp_path / "b"), progress=False, log=lambda s: None)
    rest = fit_lib.fit(teacher_dir, cfg, str(tmp_path / "b"), resume=True, progress=False, log=lambda s: None)
    assert rest["finished"]
    for a, b in zip(jax.tree_util.tree_leaves(full["params_tree"]), jax.tree_util.tree_leaves(rest["params_tree"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moved = jax.tree_util.tree_leaves(full["params_tree"]["lambda_embed"]["mlp_2"])
    assert max(float(jnp.abs(a).max()) for a in moved) > 0  # the lambda path was trained


@pytest.mark.slow
def test_cli_trains_and_samples_a_student(teacher_dir, tmp_path, capsys):
    out = str(tmp_path / "student")
    assert main(["distill-student", "--method", "di4c", "--checkpoint", teacher_dir, "--nfe", "2", "--teacher-nfe", "4",
                 "--lambdas", "2", "--batch-size", "4", "--steps", "2", "--eval-every", "2", "--eval-samples", "8",
                 "--out", out, "--no-progress"]) == 0
    for name in ("di4c.json", "teacher_config.json", "student", "chain.json", "history.json", "loss.png"):
        assert os.path.exists(os.path.join(out, name)), name
    hist = json.load(open(os.path.join(out, "history.json")))
    assert [h["step"] for h in hist] == [0, 2] and "bigram_kl" in hist[-1]
    student = load_teacher(out)
    assert student.exact and student.graph.is_absorbing
    s = samplers.sample(student.score_fn, student.graph, student.noise, grids.uniform(2, 1e-4), jax.random.PRNGKey(0),
                        8, L, sampler="tweedie")
    assert s.network_calls == 3 and s.tokens.shape == (8, L) and int(s.tokens.max()) < V
    res = tmp_path / "r.json"
    assert main(["sample", "--checkpoint", out, "--nfe", "2", "--sampler", "tweedie", "--num-samples", "16",
                 "--json", str(res)]) == 0
    assert json.loads(res.read_text())["network_calls"] == 3
    assert main(["sample", "--checkpoint", out, "--nfe", "2", "--reveal", "planned", "--num-samples", "16",
                 "--json", str(res)]) == 0  # a reveal policy on the student (lambda drawn per call inside its score)
    assert json.loads(res.read_text())["network_calls"] <= 3
    assert main(["distill-student", "--checkpoint", teacher_dir, "--nfe", "3", "--teacher-nfe", "4",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "multiple of nfe" in capsys.readouterr().err


def test_keep_best_takes_the_lowest_divergence_inside_the_entropy_band():
    """--keep-best: the kept params are those of the lowest headline divergence among the
    evaluations whose unigram entropy is within 1% of the data's (out of the band: skipped)."""
    state = {"params": {"w": jnp.zeros(2)}, "best": {"params": {"w": jnp.zeros(2)},
                                                     "score": jnp.float32(jnp.inf), "step": jnp.int32(0)}}
    evals = [(1, 0.10, 2.76), (2, 0.05, 2.80), (3, 0.08, 2.75), (4, 0.09, 2.76)]  # (step, lag KL, entropy)
    for step, kl, h in evals:
        state = {**state, "params": {"w": jnp.full(2, float(step))}}
        state = fit_lib._keep_if_best(state, {"step": step, "lag_kl": kl, "unigram_entropy": h,
                                              "data_unigram_entropy": 2.7633})
    assert int(state["best"]["step"]) == 3 and float(state["best"]["score"]) == pytest.approx(0.08)
    np.testing.assert_array_equal(np.asarray(state["best"]["params"]["w"]), [3.0, 3.0])
    assert fit_lib.eval_score({"bigram_kl": 0.2}) == pytest.approx(0.2)  # the chain's headline
    assert fit_lib.in_entropy_band({"unigram_entropy": 9.0})  # no data entropy: no band
