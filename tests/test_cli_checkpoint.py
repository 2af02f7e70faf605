"""`lsd-jax convert` and `lsd-jax sample --checkpoint` on a tiny random SEDD built in the test."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sedd_torch_reference as ref  # noqa: E402

from lsd_jax.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    cfg = ref.make_config("sedd", graph="absorb")
    model = ref.randomize(ref.build("sedd", cfg), seed=3)
    return ref.save_hf(model, cfg, str(tmp_path_factory.mktemp("hf")), "safetensors"), cfg


@pytest.mark.slow
def test_convert_then_sample(hf_dir, tmp_path, capsys):
    src, cfg = hf_dir
    dst = tmp_path / "flax"
    assert main(["convert", src, str(dst)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["family"] == "sedd" and summary["graph"] == "absorb" and summary["params"] > 0
    out = tmp_path / "s.json"
    for path in (str(dst), src):  # a converted directory and the HF directory itself
        assert main(["sample", "--checkpoint", path, "--nfe", "4", "--num-samples", "8", "--json", str(out)]) == 0
        res = json.loads(out.read_text())
        assert res["nfe"] == 4 and res["graph"] == "absorb" and res["sampler"] == "euler"
        assert "nll" not in res and "bigram_kl" not in res  # no exact likelihood for a network
        assert 0 < res["unigram_entropy"] <= np.log(cfg["tokens"]) + 1e-6


def test_convert_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err
