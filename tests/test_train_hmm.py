"""Teacher training on HMM data and the masked cross-entropy (MDLM) objective."""

import json
import os

import jax
import numpy as np
import pytest

from lsd_jax import cli, graphs, train
from lsd_jax.noise import LogLinear
from lsd_jax.teachers.checkpoint import load_teacher
from lsd_jax.teachers.hmm import make_hmm


def test_masked_ce_equals_score_entropy_on_a_posterior_score():
    """For a score of the posterior form (the exact HMM score at masked positions is
    w(y) / expm1(sigmabar)), MDLM's weighted masked CE is SEDD's score entropy, draw by draw."""
    hmm = make_hmm(3, 5, 8, seed=1)
    g, noise = graphs.Absorbing(5), LogLinear()
    x0 = hmm.sample(jax.random.PRNGKey(0), 256)
    exact = hmm.score_fn(g)
    key = jax.random.PRNGKey(1)
    ce = train.masked_ce_loss(exact, g, noise, key, x0)
    se = train.score_entropy_loss(exact, g, noise, key, x0)
    np.testing.assert_allclose(np.asarray(ce), np.asarray(se), rtol=2e-4, atol=1e-4)
    assert float(ce.mean()) > 0.1
    with pytest.raises(ValueError, match="absorbing"):
        train.masked_ce_loss(hmm.score_fn(graphs.Uniform(5)), graphs.Uniform(5), noise, key, x0)


def test_masked_ce_config_and_cli_flags():
    with pytest.raises(ValueError, match="objective = 'masked-ce' is not supported with graph = 'uniform'"):
        train.TrainConfig(objective="masked-ce", graph="uniform").validate()
    with pytest.raises(ValueError, match="hmm_states"):
        train.TrainConfig(data="hmm", hmm_states=1).validate()
    cfg = train.TrainConfig(objective="masked-ce")
    assert cfg.family == "mdlm" and not cfg.use_scale_by_sigma
    assert train.TrainConfig().family == "sedd" and train.TrainConfig().use_scale_by_sigma
    args = cli.build_parser().parse_args(["train-teacher", "--data", "hmm", "--hmm-states", "3", "--vocab", "5",
                                          "--objective", "masked-ce", "--out", "x"])
    cfg = cli.train_config_from_args(args)
    assert (cfg.data, cfg.hmm_states, cfg.vocab, cfg.objective) == ("hmm", 3, 5, "masked-ce")
    cmd = train.command_for(cfg, "x")
    assert "--hmm-states 3" in cmd and "--objective masked-ce" in cmd and "--tokenizer" not in cmd
    assert "--hmm-states" not in train.command_for(train.TrainConfig(), "x")


@pytest.mark.slow
def test_masked_ce_on_hmm_data_trains_exports_and_loads(tmp_path):
    """A tiny MDLM run on HMM data: the NELBO falls, hmm.json and an mdlm checkpoint are
    written, and the checkpoint loads as a teacher with the HMM's exact metrics."""
    cfg = train.TrainConfig(data="hmm", hmm_states=2, vocab=4, length=8, objective="masked-ce", hidden_size=32,
                            n_blocks=1, n_heads=2, cond_dim=16, batch_size=32, lr=1e-2, warmup=5, val_size=256,
                            eval_batch=256, ema=0.9, final_repeats=2, steps=40, eval_every=20, checkpoint_every=40)
    out = str(tmp_path / "run")
    s = train.train(cfg, out, progress=False, log=lambda m: None)
    first, last = s["history"]
    assert last["val_nelbo_raw"] < first["val_nelbo_raw"]
    assert s["entropy_rate"] == pytest.approx(make_hmm(2, 4, 8).entropy_rate())
    assert s["val_nelbo"] > s["exact_score_nelbo"] - 4 * (s["exact_score_nelbo_se"] or 0.01)
    with open(os.path.join(out, "lsd_config.json")) as f:
        assert json.load(f)["family"] == "mdlm"
    t = load_teacher(out)
    assert t.hmm is not None and t.chain is None and t.exact
    np.testing.assert_allclose(t.hmm.emit, make_hmm(2, 4, 8).emit)
    x = np.asarray(t.hmm.sample(jax.random.PRNGKey(0), 64))
    assert {"nll", "lag_kl", "bigram_kl"} <= set(t.metrics(x))
