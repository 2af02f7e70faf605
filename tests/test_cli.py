import json
import subprocess
import sys

import pytest

from lsd_jax.cli import main

REQUIRED = {"nfe", "sampler", "graph", "nll", "data_entropy", "unigram_entropy", "bigram_kl", "seconds"}
SMALL = ["--teacher-vocab", "6", "--teacher-length", "8", "--num-samples", "64"]


@pytest.mark.parametrize("graph,sampler", [("absorb", "euler"), ("uniform", "tweedie")])
def test_sample_writes_json(tmp_path, capsys, graph, sampler):
    out = tmp_path / "r.json"
    rc = main(["sample", "--teacher", "markov", "--graph", graph, "--sampler", sampler, "--nfe", "4", *SMALL,
               "--seed", "3", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert REQUIRED <= set(res)
    assert (res["nfe"], res["network_calls"], res["graph"], res["sampler"]) == (4, 5, graph, sampler)
    assert res["nll"] > 0 and res["bigram_kl"] >= 0 and 0 < res["unigram_entropy"] <= 1.7918  # log 6
    assert "nll=" in capsys.readouterr().out


@pytest.mark.slow
def test_sample_is_reproducible(tmp_path):
    paths = [tmp_path / f"{i}.json" for i in range(2)]
    for p in paths:
        assert main(["sample", "--nfe", "4", *SMALL, "--seed", "5", "--json", str(p)]) == 0
    a, b = (json.loads(p.read_text()) for p in paths)
    assert a["nll"] == b["nll"] and a["bigram_kl"] == b["bigram_kl"]


@pytest.mark.slow  # a fresh python process
def test_sample_x64(tmp_path):
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "lsd_jax.cli", "sample", "--nfe", "4", *SMALL, "--x64", "--json", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    assert json.loads(out.read_text())["x64"] is True


@pytest.mark.parametrize("argv,needle", [
    (["sample", "--nfe", "0"], "--nfe must be >= 1"),
    (["sample", "--nfe", "4", "--teacher-vocab", "1"], "--teacher-vocab must be >= 2"),
    (["sample", "--nfe", "4", "--eps", "2.0"], "eps"),
    (["sample", "--nfe", "4", "--sampler-params", "/nonexistent/p.json"], "not found"),
])
def test_bad_input_gives_clear_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


@pytest.mark.slow  # a fresh python process
def test_console_script_help():
    res = subprocess.run(["lsd-jax", "sample", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--nfe" in res.stdout
