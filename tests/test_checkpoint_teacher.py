"""teachers/checkpoint: a converted directory loads as a score model; chain.json makes it exact."""

import json

import jax
import numpy as np
import pytest

from lsd_jax.models import dit
from lsd_jax.teachers import ScoreModel, check_model, letter_decoder
from lsd_jax.teachers import checkpoint as ck
from lsd_jax.teachers.markov import make_chain
from ports import sedd


def test_letter_decoder_exact():
    assert letter_decoder(4)([0, 3, 4, 1]) == "ad_b"
    assert letter_decoder(40)([0, 39]) == "0 39"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = dit.DiTConfig(vocab_size=7, hidden_size=8, cond_dim=8, n_blocks=1, n_heads=2, length=5, scale_by_sigma=True)
    cfg = sedd.CheckpointConfig("sedd", "absorb", 6, 5, {"type": "loglinear", "eps": 1e-3}, d)
    path = str(tmp_path_factory.mktemp("ck") / "tiny")
    sedd.save_converted(path, dit.init_params(d, jax.random.PRNGKey(0)), cfg)
    return path


def test_load_teacher(converted):
    t = ck.load_teacher(converted)
    assert isinstance(t, ScoreModel) and check_model(t) is t
    assert (t.graph.name, t.graph.num_tokens, t.length, t.noise.name) == ("absorb", 6, 5, "loglinear")
    assert t.name == "sedd-absorb:tiny" and not t.exact and t.decode is None
    x = np.full((2, 5), 6, np.int32)
    assert np.asarray(t.score_fn(x, np.asarray([1.0, 2.0], np.float32))).shape == (2, 5, 7)
    assert t.features(x).shape == (2, 8)


def test_chain_file_makes_it_exact_and_is_checked(converted, tmp_path):
    import shutil

    path = str(tmp_path / "withchain")
    shutil.copytree(converted, path)
    chain = make_chain(6, 5, seed=1)
    with open(f"{path}/{ck.CHAIN_FILE}", "w") as f:
        json.dump(chain.to_dict(), f)
    t = ck.load_teacher(path)
    assert t.exact and t.decode([0, 1, 6]) == "ab_"
    assert set(t.metrics(np.zeros((4, 5), np.int32))) >= {"nll", "bigram_kl", "unigram_entropy"}
    with open(f"{path}/{ck.CHAIN_FILE}", "w") as f:
        json.dump(make_chain(6, 4, seed=1).to_dict(), f)
    with pytest.raises(ValueError, match=r"chain.json: V=6, L=4 does not match the checkpoint's V=6, L=5"):
        ck.load_teacher(path)
