"""Teacher training (lsd_jax.train): score-entropy loss, resume, export, config errors, CLI flags."""

import argparse
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax import cli, graphs, grids, samplers, train
from lsd_jax.noise import Geometric, LogLinear
from lsd_jax.teachers import markov
from lsd_jax.graphs import is_token

# A tiny run: V 4, L 8, D 32, one block, 40 steps. One config for every test below, so
# everything is compiled once (compilation dominates the time of these tests).
TINY = dict(vocab=4, length=8, hidden_size=32, n_blocks=1, n_heads=2, cond_dim=16, batch_size=32,
            lr=1e-2, warmup=5, val_size=256, eval_batch=256, ema=0.9, final_repeats=2,
            steps=40, eval_every=20, checkpoint_every=20)


def tiny(**kw) -> train.TrainConfig:
    return train.TrainConfig(**{**TINY, **kw})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cfg = tiny()
    out = str(tmp_path_factory.mktemp("train") / "full")
    return cfg, out, train.train(cfg, out, progress=False, log=lambda s: None)


@pytest.mark.slow
@pytest.mark.parametrize("graph,noise", [("absorb", LogLinear()), ("uniform", Geometric())])
def test_exact_score_minimises_the_loss(graph, noise):
    """The exact concrete score of the chain gives a lower loss than a perturbed one (same
    t and x_t: common random numbers), the DSE is >= 0, and its NELBO is tight."""
    chain = markov.make_chain(4, 8, seed=0)
    g = graphs.get_graph(graph, 4)
    x0 = chain.sample(jax.random.PRNGKey(1), 2048)
    key = jax.random.PRNGKey(2)
    exact = lambda x, s: chain.log_score(g, x, s)  # noqa: E731
    noise_tab = 0.3 * jax.random.normal(jax.random.PRNGKey(3), (8, g.dim))

    def perturbed(x, s):
        ls = exact(x, s) + noise_tab[None]
        return jnp.where(is_token(x, g.dim), 0.0, ls)

    l_exact, l_pert = jax.jit(lambda k, x: (train.score_entropy_loss(exact, g, noise, k, x),
                                            train.score_entropy_loss(perturbed, g, noise, k, x)))(key, x0)
    assert float(l_exact.mean()) < float(l_pert.mean()) - 0.01
    assert float(l_exact.min()) > -1e-3  # score entropy is a divergence (>= 0 per sequence)
    # NELBO with the exact score = entropy rate + prior term (tight), up to sampling noise
    v = train.nelbo(exact, np.asarray(x0), g, noise, jax.random.PRNGKey(4), batch=2048, repeats=4)
    nll = -chain.log_prob(np.asarray(x0)).mean() / 8
    assert abs(v["nelbo"] - (nll + train.prior_kl(g, noise))) < 4 * v["se"] + 0.01, (v, nll)
    assert v["nelbo_bits"] == pytest.approx(v["nelbo"] / math.log(2))


def test_prior_kl():
    assert train.prior_kl(graphs.Absorbing(16), LogLinear(1e-3)) == pytest.approx(1e-3 * math.log(16), rel=1e-4)
    assert 0.0 <= train.prior_kl(graphs.Uniform(16), Geometric(1e-4, 20.0)) < 1e-12
    assert train.prior_kl(graphs.Uniform(4), Geometric(1e-4, 1.0)) > 0.05  # sigma_max 1 leaves much signal


@pytest.mark.slow  # training loops
def test_loss_decreases_on_markov_data(uninterrupted):
    cfg, _, s = uninterrupted
    run = train.loop._run_for(cfg)
    x_val = run.data.validation(cfg)
    key = jax.random.PRNGKey(train.VAL_KEY + 1)
    init = run.init_state()
    before = run.nelbo(run.score_fn(init["params"]), x_val, key)
    # untrained: the zero-initialised output layer + scale_by_sigma is the uniform posterior
    assert before["nelbo"] == pytest.approx(math.log(4) + train.prior_kl(run.graph, run.noise), abs=0.06)
    assert s["finished"] and s["step"] == 40 and [h["step"] for h in s["history"]] == [20, 40]
    first, last = s["history"]
    assert first["val_nelbo_raw"] < before["nelbo"] - 0.05, (before, s["history"])
    assert last["val_nelbo_raw"] < first["val_nelbo_raw"] - 0.08, s["history"]  # 1.39 -> 1.29 -> 1.14
    assert last["val_nelbo"] < first["val_nelbo"]  # the EMA follows
    assert last["train_loss"] < first["train_loss"]
    # a bound: not below the exact score's NELBO on the same draws (up to noise)
    assert s["val_nelbo"] > s["exact_score_nelbo"] - 3 * s["excess_over_exact_score_se"] - 1e-3


@pytest.mark.slow  # training loops
def test_resume_reproduces_uninterrupted_run(uninterrupted, tmp_path):
    cfg, _, full = uninterrupted
    out = str(tmp_path / "resumed")
    part = train.train(cfg, out, progress=False, stop_at=20, log=lambda s: None)
    assert not part["finished"] and part["step"] == 20
    with pytest.raises(ValueError, match="--resume"):
        train.train(cfg, out, progress=False, log=lambda s: None)  # not empty without resume
    with pytest.raises(ValueError, match="hidden_size"):
        train.train(tiny(hidden_size=16), out, resume=True, progress=False, log=lambda s: None)
    state_dir = os.path.join(out, train.STATE_DIR)  # a kill during the next save left orbax's temp directory
    shutil.copytree(os.path.join(state_dir, "step_0020"), os.path.join(state_dir, "step_0030.orbax-checkpoint-tmp-1"))
    res = train.train(cfg, out, resume=True, progress=False, log=lambda s: None)
    assert res["finished"] and res["step"] == 40
    for a, b in zip(jax.tree_util.tree_leaves(full["params_tree"]), jax.tree_util.tree_leaves(res["params_tree"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    assert [h["step"] for h in res["history"]] == [20, 40]
    np.testing.assert_allclose([h["val_nelbo"] for h in res["history"]],
                               [h["val_nelbo"] for h in full["history"]], rtol=1e-6)


@pytest.mark.slow  # the shared 40-step training run
def test_output_directory_loads_and_samples(uninterrupted):
    from lsd_jax.models.dit import score_fn_from
    from lsd_jax.teachers.checkpoint import load_teacher
    from ports import sedd

    cfg, out, full = uninterrupted
    for name in ("lsd_config.json", "params", train.CHAIN_FILE, train.LOG_FILE, train.PLOT_FILE, train.CONFIG_FILE):
        assert os.path.exists(os.path.join(out, name)), name
    model, params, ccfg = sedd.load(out)
    assert (ccfg.family, ccfg.graph, ccfg.num_tokens, ccfg.length) == ("sedd", "absorb", 4, 8)
    assert ccfg.dit.scale_by_sigma and ccfg.noise == LogLinear().to_dict()
    for a, b in zip(jax.tree_util.tree_leaves(full["params_tree"]), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the EMA params are exported
    graph, noise = sedd.build_core(ccfg)
    out_s = samplers.sample(score_fn_from(model, params, ccfg), graph, noise, grids.uniform(4, 1e-4),
                            jax.random.PRNGKey(0), 16, 8)
    tok = np.asarray(out_s.tokens)
    assert tok.shape == (16, 8) and tok.min() >= 0 and tok.max() < 4
    with open(os.path.join(out, train.CHAIN_FILE)) as f:
        chain = markov.MarkovChain.from_dict(json.load(f))
    ref = markov.make_chain(4, 8, seed=0)
    np.testing.assert_allclose(chain.trans, ref.trans)
    assert markov.evaluate(chain, tok)["nll"] > 0
    teacher = load_teacher(out)
    assert teacher.length == 8 and teacher.graph.name == "absorb"
    with open(os.path.join(out, train.LOG_FILE)) as f:
        log = json.load(f)
    assert log["val_nelbo"] == pytest.approx(full["val_nelbo"]) and log["entropy_rate"] > 0
    assert log["val_repeats"] == 2 and log["excess_over_exact_score_se"] >= 0 and log["val_data_nll"] > 0
    assert log["excess_over_exact_score"] == pytest.approx(log["val_nelbo"] - log["exact_score_nelbo"], abs=1e-9)
    assert log["last_eval"]["step"] == 40 and log["estimator"] == "masked"
    assert "params_tree" not in log and log["command"].startswith("lsd-jax train-teacher")


@pytest.mark.parametrize("changes,fields", [
    (dict(data="images"), ["data", "markov, hmm, text"]),
    (dict(graph="masked"), ["graph", "absorb, uniform"]),
    (dict(noise="cosine"), ["noise", "loglinear, geometric"]),
    (dict(schedule="linear"), ["schedule", "cosine, constant"]),
    (dict(objective="elbo"), ["objective = 'elbo'", "score-entropy"]),
    (dict(hidden_size=30, n_heads=4), ["hidden_size = 30", "n_heads = 4"]),
    (dict(lr=-1.0, steps=0), ["lr = -1.0", "steps = 0"]),
    (dict(ema=1.0), ["ema = 1.0"]),
    (dict(graph="uniform", scale_by_sigma=True), ["scale_by_sigma"]),
    (dict(data="text", tokenizer="bytes"), ["tokenizer", "char"]),
])
def test_bad_config_names_the_field(changes, fields):
    with pytest.raises(ValueError) as e:
        tiny(**changes).validate()
    for f in fields:
        assert f in str(e.value)


def test_cli_register_and_errors(tmp_path):
    parser = argparse.ArgumentParser(prog="lsd-jax")
    cli._add_train_teacher(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["train-teacher", "--out", str(tmp_path / "x"), "--steps", "0"])
    with pytest.raises(ValueError, match="steps = 0"):
        args.func(args)
    args = parser.parse_args(["train-teacher", "--out", str(tmp_path / "x"), "--hidden-size", "30"])
    with pytest.raises(ValueError, match="hidden_size = 30 must be divisible by n_heads = 4"):
        args.func(args)
    args = parser.parse_args(["train-teacher", "--out", str(tmp_path / "y"), "--graph", "uniform", "--steps", "5"])
    cfg = cli.train_config_from_args(args)
    assert cfg.noise_name == "geometric" and not cfg.use_scale_by_sigma
    assert train.TrainConfig.from_dict(cfg.to_dict()) == cfg


def _text_cached() -> bool:
    from lsd_jax.data import fetch

    root = fetch.corpus_dir() / "char"
    return any((p / "meta.json").is_file() for p in root.glob("*")) if root.is_dir() else False


@pytest.mark.slow
@pytest.mark.skipif(not _text_cached(), reason="char corpus not cached (lsd_jax.data.corpus fetches it once)")
def test_text_data_runs_a_few_steps():
    cfg = train.TrainConfig(data="text", tokenizer="char", length=128, hidden_size=32, n_blocks=1, n_heads=2,
                            cond_dim=16, batch_size=8, steps=3, warmup=1, eval_every=3, val_size=16)
    s = train.train(cfg, None, progress=False, log=lambda m: None)
    assert s["finished"] and s["data"]["vocab"] == 46 and np.isfinite(s["val_nelbo"])
    assert s["bits_per_token_name"] == "bits per character"


def test_register_is_cheap_and_choices_match():
    """Building the lsd-jax parser imports lsd_jax.train.config: that must not import jax."""
    import subprocess
    import sys

    from lsd_jax import noise

    code = ("import sys, lsd_jax.train, lsd_jax.cli; lsd_jax.cli.build_parser(); "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert train.GRAPHS == graphs.GRAPHS and train.NOISES == noise.NOISES


def test_text_teacher_decodes_with_its_tokenizer_file(tmp_path):
    """A text checkpoint's tokenizer.json names the tokenizer its samples decode with; mask
    ids (>= num_tokens) are dropped, and a size mismatch is an error naming the file."""
    import json

    from lsd_jax.data.corpus import get_tokenizer
    from lsd_jax.teachers.checkpoint import _named_decoder

    f = tmp_path / "tokenizer.json"
    f.write_text(json.dumps({"tokenizer": "char", "seq_len": 128}))
    tok = get_tokenizer("char")
    ids = tok.encode("it is a truth, universally acknowledged")
    decode = _named_decoder(str(f), tok.vocab_size)
    assert decode(np.asarray(ids + [tok.vocab_size])) == "it is a truth, universally acknowledged"
    with pytest.raises(ValueError, match="tokenizer.json"):
        _named_decoder(str(f), tok.vocab_size + 1)
