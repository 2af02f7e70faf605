import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lsd_jax._compat import enable_x64

from lsd_jax import grids, samplers, solvers
from lsd_jax.graphs import Absorbing, Uniform
from lsd_jax.noise import Geometric, LogLinear
from lsd_jax.teachers import markov_teacher
from lsd_jax.teachers.markov import make_chain
from lsd_jax.graphs import is_token


def random_inputs(graph, key, b=4, length=6, shift=-1.0):
    """Random states and log-scores (current-token entry 0, as every score has)."""
    k1, k2 = jax.random.split(key)
    x = jax.random.randint(k1, (b, length), 0, graph.dim)
    log_score = jax.random.normal(k2, (b, length, graph.dim), jnp.float64) + shift
    log_score = jnp.where(is_token(x, graph.dim), 0.0, log_score)
    return x, log_score


def step_probs(graph, noise, name, x, log_score, t, t_next):
    """Normalised one-step probabilities of a one-call solver: derived from its LogKernel."""
    return solvers.probs(solvers.get_solver(name).kernel(graph, noise, x, log_score, t, t_next))


def both_steps(graph, noise, x, log_score, t, t_next):
    tb, tn = jnp.full((x.shape[0],), t), jnp.full((x.shape[0],), t_next)
    e = step_probs(graph, noise, "euler", x, log_score, tb, tn)
    w = step_probs(graph, noise, "tweedie", x, log_score, tb, tn)
    return np.asarray(e), np.asarray(w)


@pytest.mark.parametrize("t,t_next", [(1.0, 0.875), (0.5, 0.3), (0.01, 1e-4)])
def test_euler_equals_tweedie_loglinear_absorbing(t, t_next):
    """e^{dsigma} - 1 = dt sigma(t_k) holds exactly for log-linear noise: same kernel."""
    with enable_x64():
        graph = Absorbing(7)
        x, ls = random_inputs(graph, jax.random.PRNGKey(0), shift=-4.0)  # small scores: no clipping
        e, w = both_steps(graph, LogLinear(1e-3), x, ls, t, t_next)
        np.testing.assert_allclose(e, w, atol=1e-12)


@pytest.mark.parametrize("graph,noise", [(Absorbing(7), Geometric(1e-4, 20.0)), (Uniform(7), LogLinear(1e-3)),
                                         (Uniform(7), Geometric(1e-4, 20.0))], ids=["absorb-geo", "unif-ll", "unif-geo"])
def test_euler_differs_from_tweedie_elsewhere(graph, noise):
    with enable_x64():
        x, ls = random_inputs(graph, jax.random.PRNGKey(1), shift=-4.0)
        e, w = both_steps(graph, noise, x, ls, 0.6, 0.5)
        assert np.abs(e - w).max() > 1e-3


@pytest.mark.slow
def test_euler_equals_tweedie_on_whole_trajectories():
    teacher = markov_teacher(vocab=6, length=8)
    g = grids.uniform(8, 1e-4)
    key = jax.random.PRNGKey(3)
    a = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, g, key, 256, 8, sampler="euler").tokens
    b = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, g, key, 256, 8, sampler="tweedie").tokens
    assert np.mean(np.asarray(a) == np.asarray(b)) > 0.999


def test_exact_euler_step_is_posterior():
    """With the exact score, an Euler step from t to s at a masked position stays masked
    with probability s/t and reveals token y with (1 - s/t) P(x0^i = y | unmasked): lsd.md."""
    with enable_x64():
        chain = make_chain(5, 6, seed=0)
        graph = Absorbing(5)
        noise = LogLinear(1e-3)
        x = jnp.asarray([[5, 2, 5, 5, 1, 5]])
        t, s = 0.6, 0.45
        ls = chain.log_score(graph, x, noise.total(jnp.asarray([t])))
        probs = np.asarray(step_probs(graph, noise, "euler", x, ls, jnp.asarray([t]), jnp.asarray([s])))[0]
        # posterior at masked position 0 by brute force over the chain
        import itertools
        x0s = np.array(list(itertools.product(range(5), repeat=6)))
        p0 = np.exp(chain.log_prob(x0s))
        keep = (x0s[:, 1] == 2) & (x0s[:, 4] == 1)
        post = np.bincount(x0s[keep, 0], weights=p0[keep], minlength=5)
        post /= post.sum()
        np.testing.assert_allclose(probs[0, 5], s / t, rtol=1e-9)
        np.testing.assert_allclose(probs[0, :5], (1 - s / t) * post, rtol=1e-9)
        np.testing.assert_allclose(probs[1], np.eye(6)[2], atol=1e-12)  # unmasked stays


def test_phi_scaling_readings():
    with enable_x64():
        x = jnp.asarray([[0, 3]])
        ls = jnp.log(jnp.asarray([[[1.0, 2.0, 4.0, 0.5], [0.2, 0.3, 0.4, 1.0]]]))
        lin = np.exp(np.asarray(samplers.apply_phi(x, ls, jnp.asarray([2.0]), "linear")))
        np.testing.assert_allclose(lin, [[[1.0, 4.0, 8.0, 1.0], [0.4, 0.6, 0.8, 1.0]]], rtol=1e-12)
        tmp = np.exp(np.asarray(samplers.apply_phi(x, ls, jnp.asarray([2.0]), "temperature")))
        np.testing.assert_allclose(tmp, [[[1.0, 4.0, 16.0, 0.25], [0.04, 0.09, 0.16, 1.0]]], rtol=1e-12)
        with pytest.raises(ValueError, match="allowed: linear, temperature"):
            samplers.apply_phi(x, ls, 1.0, "cubic")


def test_probs_are_distributions_even_for_huge_steps():
    with enable_x64():
        for graph, noise in [(Absorbing(5), LogLinear()), (Uniform(5), Geometric())]:
            x, ls = random_inputs(graph, jax.random.PRNGKey(2), shift=2.0)
            for name in solvers.KERNEL_SOLVERS:
                tb = jnp.ones((4,))
                p = np.asarray(step_probs(graph, noise, name, x, ls, tb, tb * 1e-4))
                assert np.all(p >= 0)
                np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_divergence_falls_with_nfe(graph):
    """Exact teacher: bigram KL falls 8 > 32 > 256 > 1024 (fixed seeds); NLL at 1024 NFE
    is within a few percent of the entropy rate."""
    teacher = markov_teacher(graph=graph, vocab=8, length=16, seed=0)
    kls, nll = [], None
    for m in (8, 32, 256, 1024):
        out = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, grids.uniform(m, 1e-4),
                              jax.random.PRNGKey(m), 4096, 16)
        met = teacher.metrics(out.tokens)
        kls.append(met["bigram_kl"])
        nll = met["nll"]
    floor = met["bigram_kl_floor"]
    print(graph, "bigram KL at 8/32/256/1024 NFE:", kls, "floor", floor, "nll@1024", nll)
    assert kls[0] > kls[1] > kls[2] > kls[3], kls
    assert kls[3] < 2.5 * floor
    assert abs(nll - met["data_entropy"]) < 0.04 * met["data_entropy"], (nll, met["data_entropy"])


def test_sample_compiles_once_per_shape():
    teacher = markov_teacher(vocab=6, length=8)
    samplers._run.clear_cache() if hasattr(samplers._run, "clear_cache") else None
    before = samplers._run._cache_size()
    for seed, p in [(0, 1.0), (1, 2.0), (2, 3.0)]:
        g = grids.power(8, 1e-4, p)
        phi = jnp.full((8,), 1.0 + 0.1 * seed)
        samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, g, jax.random.PRNGKey(seed), 16, 8, phi=phi)
    assert samplers._run._cache_size() - before == 1


def test_float64_draws():
    teacher = markov_teacher(vocab=6, length=8)
    g = grids.uniform(4, 1e-4)
    with pytest.raises(ValueError, match="x64"):
        samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, g, jax.random.PRNGKey(0), 8, 8, x64=True)
    with enable_x64():
        probs = jnp.full((1000, 3), 1 / 3, jnp.float64)
        jaxpr = str(jax.make_jaxpr(lambda k: samplers.categorical(k, probs, jnp.float64))(jax.random.PRNGKey(0)))
        assert "f64[1000,3]" in jaxpr and "f32" not in jaxpr
        # a float64 uniform has more than float32's 24 bits of mantissa
        u = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (1000,), jnp.float64))
        assert np.mean((u * 2**24) % 1 != 0) > 0.99
        out = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, g, jax.random.PRNGKey(0), 8, 8, x64=True)
        assert out.tokens.shape == (8, 8)
        # categorical frequencies in float64
        p = jnp.asarray([0.7, 0.2, 0.1], jnp.float64)
        draws = np.asarray(samplers.categorical(jax.random.PRNGKey(5), jnp.broadcast_to(p, (40000, 3)), jnp.float64))
        np.testing.assert_allclose(np.bincount(draws, minlength=3) / 40000, p, atol=0.01)


def test_sample_input_errors():
    teacher = markov_teacher(vocab=6, length=8)
    run = lambda **kw: samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, kw.pop("grid", grids.uniform(4, 1e-4)),
                                       jax.random.PRNGKey(0), 4, 8, **kw)
    with pytest.raises(ValueError, match="allowed: euler, tweedie, trapezoidal, fhs"):
        run(sampler="midpoint")
    with pytest.raises(ValueError, match="phi must have shape"):
        run(phi=jnp.ones(3))
    with pytest.raises(ValueError, match="strictly decrease"):
        run(grid=jnp.asarray([1.0, 0.5, 0.6, 1e-4]))
    with pytest.raises(ValueError, match="start at t = 1"):
        run(grid=jnp.asarray([0.9, 0.5, 1e-4]))


def test_same_key_same_samples_and_denoise_leaves_no_mask():
    teacher = markov_teacher(vocab=6, length=8)
    g = grids.uniform(4, 1e-4)
    a = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, g, jax.random.PRNGKey(7), 64, 8)
    b = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, g, jax.random.PRNGKey(7), 64, 8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert int(np.asarray(a.tokens).max()) < 6
    assert (a.nfe, a.network_calls) == (4, 5)
    path = samplers.sample(teacher.score_fn, teacher.graph, teacher.noise, g, jax.random.PRNGKey(7), 64, 8,
                           return_path=True).path
    assert path.shape == (5, 64, 8) and np.all(np.asarray(path[0]) == 6)
