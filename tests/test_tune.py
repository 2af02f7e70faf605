import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import spearmanr

from lsd_jax import divergences, grids, samplers, tune
from lsd_jax.cli import main
from lsd_jax.divergences import ngram_divergence
from lsd_jax.eval.sampling import evaluate_sampler, run_sampler
from lsd_jax.eval.text_metrics import unigram_entropy
from lsd_jax.teachers import markov_teacher


@pytest.fixture(scope="module")
def uniform_teacher():
    return markov_teacher(graph="uniform")


@pytest.mark.slow  # a CMA-ES search
def test_tuned_grid_beats_uniform_on_held_out_seeds(uniform_teacher):
    """Exact uniform-graph teacher, 8 NFE: tuning the grid on the exact divergence (seeds 0, 1)
    beats the uniform grid on held-out seeds by far more than the seed spread, at the teacher's
    unigram entropy (within 1%)."""
    t = uniform_teacher
    ref = run_sampler(t, grids.uniform(1024, 1e-4), seed=1, num_samples=1024)
    ref_h = unigram_entropy(ref, mode="pooled")
    params, hist = tune.search(t, 8, divergences.exact_divergence(t), budget=40, entropy_ref=ref_h, progress=False)
    held = (20_000, 20_001, 20_002)
    base = evaluate_sampler(t, grids.uniform(8, 1e-4), seeds=held)
    tuned = evaluate_sampler(t, params.grid(), phi=params.phi, seeds=held)
    spread = max(base["bigram_kl_std"], tuned["bigram_kl_std"])
    assert tuned["bigram_kl"] < base["bigram_kl"] - 5 * spread, (tuned["bigram_kl"], base["bigram_kl"], spread)
    assert tuned["bigram_kl"] < 0.6 * base["bigram_kl"]
    assert abs(tuned["unigram_entropy"] - ref_h) < 0.01 * ref_h
    assert hist[-1]["summary"] and hist[-1]["best_divergence"] < hist[-1]["uniform_divergence"]


@pytest.mark.slow
def test_ngram_divergence_floor_and_rank_correlation(uniform_teacher):
    """Fresh teacher samples score at the estimator's floor (as exact chain samples do), a
    coarse sampler far above it; over random grids the n-gram divergence ranks like the exact
    one (Spearman correlation reported and positive)."""
    t = uniform_teacher
    ref = run_sampler(t, grids.uniform(1024, 1e-4), seed=1, num_samples=1024)
    fresh = ngram_divergence(run_sampler(t, grids.uniform(1024, 1e-4), seed=2, num_samples=1024), ref, 16)
    exact_samples = ngram_divergence(np.asarray(t.chain.sample(jax.random.PRNGKey(3), 1024)), ref, 16)
    coarse = ngram_divergence(run_sampler(t, grids.uniform(8, 1e-4), seed=2, num_samples=1024), ref, 16)
    assert fresh < 1.5 * exact_samples + 1e-3
    assert coarse > 3 * fresh
    assert ngram_divergence(ref, ref, 16) == 0.0
    rng = np.random.default_rng(0)
    exact, ngram = [], []
    for _ in range(12):
        g = grids.from_logits(jnp.asarray(rng.normal(size=8) * 1.2), 1e-4)
        tok = run_sampler(t, g, seed=5, num_samples=1024)
        exact.append(t.metrics(tok)["bigram_kl"])
        ngram.append(ngram_divergence(tok, ref, 16))
    rho = spearmanr(exact, ngram).correlation
    print(f"Spearman(exact bigram KL, n-gram divergence) over 12 random 8-step grids: {rho:.3f}")
    assert rho > 0.5


@pytest.mark.slow
def test_entropy_guard_rejects_sharpening_that_wins_on_likelihood():
    """log-score x 1.5 (temperature reading, phi 1.5) lowers the NLL under the true chain, yet
    its unigram entropy leaves the teacher's 1% window: rejected."""
    t = markov_teacher()
    g = grids.uniform(8, 1e-4)
    ref = run_sampler(t, grids.uniform(1024, 1e-4), seed=1, num_samples=2048)
    ref_h = unigram_entropy(ref, mode="pooled")
    plain = run_sampler(t, g, seed=4, num_samples=2048)
    sharp_phi = jnp.full((8,), 1.5)
    sharp = run_sampler(t, g, seed=4, num_samples=2048, phi=sharp_phi, reading="temperature")
    assert t.metrics(sharp)["nll"] < t.metrics(plain)["nll"]
    _, info = tune._score(t, g, sharp_phi, divergences.exact_divergence(t), sampler="euler", reading="temperature",
                          crn_seeds=(4,), num_samples=2048, x64=False, entropy_ref=ref_h, entropy_band=0.01,
                          entropy_base=unigram_entropy(plain, mode="pooled"))
    assert info["rejected"] and info["unigram_entropy"] < 0.99 * ref_h
    lo, hi = tune.entropy_window(ref_h, 0.01, unigram_entropy(plain, mode="pooled"))
    assert lo <= unigram_entropy(plain, mode="pooled") <= hi  # the plain sampler itself is never rejected here


@pytest.mark.slow  # a CMA-ES search
def test_tune_cli_writes_params_sample_reads(tmp_path):
    out = tmp_path / "tune"
    assert main(["tune", "--teacher-vocab", "8", "--teacher-length", "12", "--nfe", "4", "--divergence", "ngram",
                 "--budget", "8", "--samples", "128", "--teacher-nfe", "64", "--out", str(out), "--no-progress",
                 "--eval-seeds", "0"]) == 0
    for f in ("sampler_params.json", "history.json", "sampler_params.png", "result.json"):
        assert (out / f).exists()
    assert json.loads((out / "sampler_params.json").read_text())["meta"]["method"] == "tune"
    assert main(["sample", "--teacher-vocab", "8", "--teacher-length", "12", "--nfe", "4", "--num-samples", "16",
                 "--sampler-params", str(out / "sampler_params.json")]) == 0
    assert main(["tune", "--checkpoint", str(tmp_path / "nope"), "--nfe", "4", "--divergence", "exact",
                 "--out", str(tmp_path / "x")]) == 2


def test_tune_cli_start_best_fixed(tmp_path):
    """--start best-fixed: the second evaluation is the named best fixed grid's logits (centred)."""
    out = tmp_path / "tune"
    assert main(["tune", "--teacher-vocab", "8", "--teacher-length", "12", "--nfe", "4", "--divergence", "ngram",
                 "--budget", "3", "--samples", "64", "--teacher-nfe", "32", "--out", str(out), "--no-progress",
                 "--eval-seeds", "0", "--start", "best-fixed"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["start"].startswith("best fixed grid ")
    name = result["start"].removeprefix("best fixed grid ")
    family, _, p = name.partition("-")
    t = markov_teacher(vocab=8, length=12)
    g = grids.get_grid(family, 4, 1e-4, p=float(p) if p else 2.0, noise=t.noise)
    logits = np.asarray(grids.to_logits(jnp.asarray(g), 1e-4), np.float64)
    evals = json.loads((out / "history.json").read_text())["evaluations"]
    assert [h["eval"] for h in evals if "eval" in h] == [0, 1, 2]
    np.testing.assert_allclose(evals[1]["z"], np.clip(logits - logits.mean(), -3, 3), atol=1e-6)
    assert json.loads((out / "sampler_params.json").read_text())["meta"]["start"] == result["start"]


def test_mmd_is_near_zero_for_equal_distributions_and_positive_otherwise():
    from lsd_jax.divergences import mmd

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 5)), rng.normal(size=(400, 5))
    c = rng.normal(size=(400, 5)) + 0.5
    same, shifted = mmd(a, b), mmd(a, c)
    assert abs(same) < 0.01 and shifted > 10 * abs(same)
    # exact value on a tiny case: x = {0, 1}, y = {0, 2}, unit bandwidth
    x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])
    k = lambda u, v: np.exp(-((u - v) ** 2) / 2)
    expect = 2 * k(0, 1) / 2 + 2 * k(0, 2) / 2 - 2 * (k(0, 0) + k(0, 2) + k(1, 0) + k(1, 2)) / 4
    assert mmd(x, y, bandwidth=1.0) == pytest.approx(expect, rel=1e-12)


@pytest.mark.slow
def test_mmd_on_network_features_is_lowest_for_the_teachers_own_samples(tmp_path):
    """A network teacher (tiny random SEDD whose chain.json names the chain): MMD on its pooled
    hidden states is minimal for its own many-step samples and runs through tune."""
    torch = pytest.importorskip("torch")
    import sedd_torch_reference as ref_model

    from lsd_jax.teachers.checkpoint import load_teacher

    cfg = ref_model.make_config("sedd", graph="absorb")
    d = ref_model.save_hf(ref_model.randomize(ref_model.build("sedd", cfg), seed=1), cfg, str(tmp_path), "safetensors")
    t = load_teacher(d)
    assert t.features is not None and t.chain is None
    ref = run_sampler(t, grids.uniform(128, 1e-4), seed=1, num_samples=256)
    div = divergences.mmd_divergence(t, ref)
    fresh = div(run_sampler(t, grids.uniform(128, 1e-4), seed=2, num_samples=256))
    coarse = div(run_sampler(t, grids.uniform(2, 1e-4), seed=2, num_samples=256))
    assert coarse > fresh
    with pytest.raises(ValueError, match="network teacher"):
        divergences.mmd_divergence(markov_teacher(vocab=8, length=12), ref)
