"""Reveal policies: counts, orders, and the laws they must obey, by exact enumeration on tiny chains."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax import grids, reveal, samplers, solvers
from lsd_jax._compat import enable_x64
from lsd_jax.graphs import Absorbing
from lsd_jax.noise import Geometric, LogLinear
from lsd_jax.teachers import markov_teacher
from lsd_jax.teachers.markov import make_chain


def all_sequences(v, length):
    return np.array(list(itertools.product(range(v), repeat=length)), np.int32)


def tiny(v=3, length=4, seed=1):
    chain = make_chain(v, length, seed=seed)
    graph = Absorbing(v)
    return chain, graph, chain.score_fn(graph)


# ------------------------------------------------------------------ counts and orders
@pytest.mark.parametrize("noise", [LogLinear(1e-3), Geometric(1e-4, 20.0)], ids=["loglinear", "geometric"])
@pytest.mark.parametrize("m,length", [(8, 32), (5, 7), (16, 1024), (3, 2)])
def test_counts_sum_to_length_and_follow_the_expectation(noise, m, length):
    g = grids.power(m, 1e-4, 1.5)
    c = np.asarray(reveal.counts_from_grid(noise, g, length))
    e = np.asarray(reveal.expected_counts(noise, g, length), np.float64)
    assert c.dtype == np.int32 and c.shape == (m,) and c.min() >= 0 and c.sum() == length
    assert np.abs(np.cumsum(c) - np.cumsum(e)).max() <= 0.5 + 1e-4  # rounding on the cumulative sum
    assert np.isclose(e.sum(), length, rtol=1e-5)
    jitted = jax.jit(lambda grid: reveal.counts_from_grid(noise, grid, length))(g)
    np.testing.assert_array_equal(np.asarray(jitted), c)


def test_uniform_grid_on_loglinear_noise_reveals_equally():
    c = reveal.counts_from_grid(LogLinear(1e-3), grids.uniform(8, 1e-4), 32)
    np.testing.assert_array_equal(np.asarray(c), [4] * 8)


def test_planned_orders():
    np.testing.assert_array_equal(reveal.planned_order(8), [0, 4, 2, 6, 1, 5, 3, 7])
    o = reveal.planned_order(11)
    assert sorted(o.tolist()) == list(range(11)) and o[:3].tolist() == [0, 8, 4]
    o2 = reveal.planned_order(16, (4, 4))
    assert sorted(o2.tolist()) == list(range(16))
    assert set(o2[:4].tolist()) == {0, 2, 8, 10}  # the even-even lattice (stride 2) before its midpoints
    assert o2[0] == 0 and set(o2[:1].tolist() + o2[4:8].tolist()) >= {0}
    o3 = reveal.planned_order(12, (3, 4))
    assert sorted(o3.tolist()) == list(range(12))
    with pytest.raises(ValueError, match="shape"):
        reveal.planned_order(10, (3, 4))


def test_is_screened():
    order = reveal.planned_order(8)
    assert reveal.is_screened(order, [1, 1, 2, 4])
    assert reveal.is_screened(order, [1, 1, 1, 1, 2, 2])
    assert not reveal.is_screened(order, [2, 2, 4])  # 0 and 4 together, nothing between them
    assert not reveal.is_screened(order, [1, 1, 6])


def test_top_k_is_exact():
    pr = jnp.array([[0.3, 0.9, 0.1, 0.9, 0.5]])
    masked = jnp.array([[True, True, True, False, True]])
    np.testing.assert_array_equal(np.asarray(reveal.top_k(pr, masked, 2)), [[False, True, False, False, True]])
    np.testing.assert_array_equal(np.asarray(reveal.top_k(pr, masked, 9)), np.asarray(masked))


# ------------------------------------------------------------------ laws (exact enumeration)
def test_screened_plans_give_the_exact_law_and_only_those():
    """Every plan (order x counts) on a chain of length 4: the planned sampler's law equals the
    chain's exactly iff no two positions are revealed together without a revealed one between."""
    with enable_x64():
        chain, graph, score_fn = tiny()
        noise = LogLinear(1e-3)
        xs = all_sequences(3, 4)
        truth = chain.log_prob(xs)
        outcomes = []
        for order in itertools.permutations(range(4)):
            for counts in ([1, 1, 1, 1], [1, 1, 2], [1, 2, 1], [2, 1, 1], [2, 2], [1, 3], [4]):
                grid = grids.uniform(len(counts), 1e-4)
                lq = np.asarray(reveal.policy_log_prob(score_fn, graph, noise, grid, xs, policy=reveal.Planned(),
                                                       counts=counts, order=np.array(order)))
                np.testing.assert_allclose(np.exp(lq).sum(), 1.0, atol=1e-9)  # a distribution
                exact = np.abs(lq - truth).max() < 1e-9
                assert exact == reveal.is_screened(order, counts), (order, counts, np.abs(lq - truth).max())
                outcomes.append(exact)
        assert any(outcomes) and not all(outcomes)


@pytest.mark.parametrize("policy", [reveal.Margin(), reveal.Entropy(), reveal.EB(0.0)], ids=["margin", "entropy", "eb0"])
def test_one_at_a_time_adaptive_orders_are_exact(policy):
    """Revealing one position per call in any order chosen from what is revealed (not from the
    drawn tokens) is exact: the chain rule in an adaptive order."""
    with enable_x64():
        chain, graph, score_fn = tiny(seed=2)
        xs = all_sequences(3, 4)
        lq = np.asarray(reveal.policy_log_prob(score_fn, graph, LogLinear(1e-3), grids.uniform(4, 1e-4), xs,
                                               policy=policy, counts=[1, 1, 1, 1]))
        np.testing.assert_allclose(lq, chain.log_prob(xs), atol=1e-9)


def _ctmc_law(chain, graph, noise, grid):
    """Exact law over complete sequences of the plain Euler sampler (probability-space
    reference `samplers.step_probs` + final denoise), by a forward pass over all (V+1)^L states."""
    v, length = chain.num_tokens, chain.length
    states = all_sequences(v + 1, length)  # every state, masks included
    index = {tuple(s): i for i, s in enumerate(states)}
    score_fn = chain.score_fn(graph)
    dist = np.zeros(len(states))
    dist[index[(graph.mask_id,) * length]] = 1.0
    g = np.asarray(grid)

    def kernel(probs):  # probs [S, L, V + 1] -> transition [S, S]
        t = np.ones((len(states), len(states)))
        for i in range(length):
            t *= probs[:, i, :][:, states[:, i]]
        return t

    x = jnp.asarray(states)
    euler = solvers.get_solver("euler")
    for k in range(len(g) - 1):
        tb, tn = jnp.full((len(states),), g[k]), jnp.full((len(states),), g[k + 1])
        probs = solvers.probs(euler.kernel(graph, noise, x, score_fn(x, noise.total(tb)), tb, tn))
        dist = dist @ kernel(np.asarray(probs))
    sb = noise.total(jnp.full((len(states),), g[-1]))
    probs = solvers.probs(samplers.denoise_kernel(graph, x, score_fn(x, sb), sb))
    dist = dist @ kernel(np.asarray(probs))
    clean = (states < v).all(1)
    assert abs(dist[clean].sum() - 1.0) < 1e-9
    return {tuple(s): p for s, p in zip(states[clean], dist[clean])}


@pytest.mark.slow
def test_random_with_grid_counts_matches_ctmc_in_expectation():
    """The plain sampler = `random` with the step counts drawn as the CTMC draws them: its law is
    the mixture over count sequences c of the random policy's law given c, and the expected
    counts are `expected_counts` (computed exactly, log-linear noise, Euler, exact score)."""
    with enable_x64():
        chain, graph, score_fn = tiny(v=2, length=3, seed=3)
        noise = LogLinear(1e-3)
        grid = grids.power(2, 1e-4, 1.5)
        m, length = 2, 3
        law = _ctmc_law(chain, graph, noise, grid)
        g = jnp.asarray(grid)
        pm = np.asarray(-jnp.expm1(-noise.total(g)))
        q = np.append(-np.diff(pm), pm[-1]) / pm[0]  # P(a position is revealed at step k); k = M: the denoise
        xs = all_sequences(2, length)
        mixture = np.zeros(len(xs))
        by_counts = {}
        for assign in itertools.product(range(m + 1), repeat=length):  # step of each position
            c = tuple(np.bincount(assign, minlength=m + 1))
            by_counts.setdefault(c, []).append(np.array(assign))
        for c, assigns in by_counts.items():
            p_c = sum(np.prod(q[a]) for a in assigns)  # P(counts = c) under the CTMC
            law_random = np.zeros(len(xs))  # random policy given c: a uniform assignment with these counts
            for a in assigns:
                order = np.argsort(a, kind="stable")
                lq = reveal.policy_log_prob(score_fn, graph, noise, jnp.concatenate([g, g[-1:] * 0.5]), xs,
                                            policy=reveal.Planned(), counts=list(c), order=order)
                law_random += np.exp(np.asarray(lq)) / len(assigns)
            mixture += p_c * law_random
        np.testing.assert_allclose(mixture, [law[tuple(x)] for x in xs], atol=1e-9)
        # expected reveals per step of the CTMC = the unrounded counts (denoise mass in the last step)
        e = np.asarray(reveal.expected_counts(noise, g, length))
        np.testing.assert_allclose(e, length * np.append(q[:-2], q[-2] + q[-1]), atol=1e-9)


# ------------------------------------------------------------------ the sampler
def test_planned_sampler_follows_its_plan_and_law():
    chain, graph, score_fn = tiny(v=2, length=4, seed=4)
    noise = LogLinear(1e-3)
    grid = grids.uniform(3, 1e-4)
    counts = [1, 1, 2]
    out = reveal.sample(score_fn, graph, noise, grid, jax.random.PRNGKey(0), 20000, 4, policy=reveal.Planned(),
                        counts=counts)
    np.testing.assert_array_equal(np.asarray(out.reveal), np.broadcast_to([0, 2, 1, 2], (20000, 4)))
    assert int(out.network_calls) == 3 and (np.asarray(out.calls) == 3).all()  # no denoise call: nothing left
    xs = all_sequences(2, 4)
    emp = np.bincount(np.asarray(out.tokens) @ (2 ** np.arange(3, -1, -1)), minlength=16) / 20000
    exact = np.exp(chain.log_prob(xs))
    assert 0.5 * np.abs(emp - exact).sum() < 0.02  # TV; sampling floor ~0.008 at 20000 samples


def test_zero_count_steps_make_no_call_and_leftovers_are_denoised():
    chain, graph, score_fn = tiny(v=2, length=4)
    out = reveal.sample(score_fn, graph, LogLinear(1e-3), grids.uniform(3, 1e-4), jax.random.PRNGKey(0), 8, 4,
                        policy=reveal.Random(), counts=[0, 2, 1])
    assert int(out.network_calls) == 3  # two reveal steps and the final denoise of the last position
    assert (np.asarray(out.tokens) < 2).all()


def test_eb_budget_zero_reveals_one_per_call():
    chain, graph, score_fn = tiny(v=3, length=6)
    out = reveal.sample(score_fn, graph, LogLinear(1e-3), grids.uniform(4, 1e-4), jax.random.PRNGKey(0), 16, 6,
                        policy=reveal.EB(0.0))
    assert int(out.network_calls) == 6 and (np.asarray(out.calls) == 6).all()
    big = reveal.sample(score_fn, graph, LogLinear(1e-3), grids.uniform(4, 1e-4), jax.random.PRNGKey(0), 16, 6,
                        policy=reveal.EB(1e9))
    assert int(big.network_calls) == 1


@pytest.mark.slow  # ~30-60 s on the shared CPU: compiles on the default chain
def test_remask_corrector_counts_its_calls():
    t = markov_teacher(vocab=6, length=8)
    out = reveal.sample(t.score_fn, t.graph, t.noise, grids.uniform(4, 1e-4), jax.random.PRNGKey(0), 16, 8,
                        policy=reveal.Planned(), remask=reveal.Remask(steps=3, count=2))
    assert int(out.network_calls) == 4 + 3 and (np.asarray(out.tokens) < 6).all()
    assert int((np.asarray(out.reveal) >= 5).sum(1).max()) <= 6  # at most 3 x 2 positions redrawn


@pytest.mark.slow  # ~30-60 s on the shared CPU: compiles on the default chain
def test_confidence_ordering_lowers_sample_entropy():
    """Measured on the default chain at 8 NFE (512 samples): top-k by the drawn token's
    probability collapses the unigram entropy (2.60 nats for the chain); margin and
    entropy orderings, whose choice does not look at the drawn token, do not."""
    t = markov_teacher()
    g = grids.uniform(8, 1e-4)
    ent = {}
    for name in ("random", "confidence", "margin"):
        out = reveal.sample(t.score_fn, t.graph, t.noise, g, jax.random.PRNGKey(7), 512, 32,
                            policy=reveal.get_policy(name))
        ent[name] = t.metrics(np.asarray(out.tokens))["unigram_entropy"]
    assert ent["confidence"] < ent["random"] - 0.5
    assert abs(ent["margin"] - t.chain.unigram_entropy()) < 0.1


def test_bad_inputs_are_named():
    t = markov_teacher(vocab=4, length=4)
    with pytest.raises(ValueError, match="allowed: ctmc"):
        reveal.get_policy("greedy")
    with pytest.raises(ValueError, match="no parameter"):
        reveal.get_policy("planned", 0.5)
    with pytest.raises(ValueError, match="counts"):
        reveal.sample(t.score_fn, t.graph, t.noise, grids.uniform(2, 1e-4), jax.random.PRNGKey(0), 2, 4,
                      policy=reveal.Random(), counts=[1, 2, 1])
    u = markov_teacher(graph="uniform", vocab=4, length=4)
    with pytest.raises(ValueError, match="absorbing"):
        reveal.sample(u.score_fn, u.graph, u.noise, grids.uniform(2, 1e-4), jax.random.PRNGKey(0), 2, 4,
                      policy=reveal.Random())


# ------------------------------------------------------------------ distillation and the CLI
@pytest.mark.slow
def test_distill_loss_is_blind_to_the_factorisation_error():
    """With the student's own network as teacher the per-token loss is exactly 0 at phi = 1
    (linear reading: for every phi), whatever the policy's joint error."""
    from lsd_jax import reveal_distill
    from lsd_jax import sampler_params as sp_lib

    t = markov_teacher(vocab=4, length=8)
    rank = jnp.asarray(reveal.order_rank(reveal.planned_order(8)))
    kw = dict(score_fn=t.score_fn, graph=t.graph, noise=t.noise, policy=reveal.Random(), batch=16, length=8, m=2)
    p = sp_lib.init(2, 1e-4, "euler", "temperature")
    key = jax.random.PRNGKey(0)
    assert float(reveal_distill.loss_fn(p, key, rank, reading="temperature", **kw)) == pytest.approx(0.0, abs=1e-6)
    sharp = p.replace(phi=jnp.full((2,), 1.5))
    assert float(reveal_distill.loss_fn(sharp, key, rank, reading="temperature", **kw)) > 1e-3
    assert float(reveal_distill.loss_fn(sharp, key, rank, reading="linear", **kw)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_cli_sample_reveal(tmp_path, capsys):
    import json

    from lsd_jax.cli import main

    out = tmp_path / "r.json"
    assert main(["sample", "--teacher", "markov", "--teacher-vocab", "4", "--teacher-length", "8", "--nfe", "4",
                 "--num-samples", "16", "--reveal", "planned", "--json", str(out), "--show", "0"]) == 0
    r = json.loads(out.read_text())  # planned without a grid: its own screened counts
    assert r["counts"] == [1, 1, 2, 4] and r["network_calls"] == 4 and r["reveal"] == "planned"
    assert main(["sample", "--teacher", "markov", "--teacher-vocab", "4", "--teacher-length", "8", "--nfe", "4",
                 "--num-samples", "16", "--reveal", "planned", "--json", str(out), "--show", "0",
                 "--reveal-counts", "grid"]) == 0
    assert json.loads(out.read_text())["counts"] == [2, 2, 2, 2]
    assert main(["sample", "--teacher", "markov", "--graph", "uniform", "--nfe", "4", "--reveal", "planned"]) == 2
    assert "absorbing graph" in capsys.readouterr().err
    assert main(["sample", "--teacher", "markov", "--nfe", "4", "--reveal", "planned", "--reveal-param", "1"]) == 2


def test_solvers_hook_reveals_the_grid_counts():
    """`samplers.sample(..., policy=Planned())` (the solvers' loop hook) reveals, step by step,
    the planned order in `counts_from_grid` batches (a stateless rounding of the grid)."""
    t = markov_teacher(vocab=5, length=16)
    g = grids.power(5, 1e-4, 1.7)
    counts = np.asarray(reveal.counts_from_grid(t.noise, g, 16))
    out = samplers.sample(t.score_fn, t.graph, t.noise, g, jax.random.PRNGKey(0), 4, 16, policy=reveal.Planned(),
                          return_reveal=True, mesh=None)
    step_of = np.repeat(np.arange(1, 6), counts)[reveal.order_rank(reveal.planned_order(16))]
    np.testing.assert_array_equal(np.asarray(out.reveal), np.broadcast_to(step_of, (4, 16)))
    assert (np.asarray(out.tokens) < 5).all()


REVEAL_SHARDED = """
import json
import numpy as np, jax
from lsd_jax import grids, reveal, sharding
from lsd_jax.graphs import Absorbing
from lsd_jax.noise import LogLinear
from lsd_jax.teachers.markov import make_chain

chain = make_chain(4, 8, seed=3)
graph = Absorbing(4)
fn = chain.score_fn(graph)
res = {"devices": jax.device_count()}
cases = {"confidence+remask": (reveal.Confidence(spread=0.5), reveal.Remask(1, 2)), "eb": (reveal.EB(1.0), reveal.Remask())}
for name, (policy, remask) in cases.items():
    kw = dict(policy=policy, remask=remask)
    a = reveal.sample(fn, graph, LogLinear(), grids.uniform(4, 1e-4), jax.random.PRNGKey(7), 8, 8, **kw)
    b = reveal.sample(fn, graph, LogLinear(), grids.uniform(4, 1e-4), jax.random.PRNGKey(7), 8, 8, mesh=None, **kw)
    res[name] = {"spans": len(a.tokens.sharding.device_set),
                 "same_tokens": bool(np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))),
                 "same_calls": bool(np.array_equal(np.asarray(a.calls), np.asarray(b.calls))),
                 "same_batch_calls": int(a.network_calls) == int(b.network_calls),
                 "done": bool((np.asarray(a.tokens) < 4).all())}
print(json.dumps(res))
"""


@pytest.mark.slow  # a subprocess with 4 forced CPU devices: 4 compilations, ~1-5 min on the shared CPU
def test_sharded_reveal_sampling_equals_single_device():
    from test_sharding import run_with_devices

    res = run_with_devices(REVEAL_SHARDED, timeout=900)
    assert res.pop("devices") == 4
    for name, r in res.items():
        assert r == {"spans": 4, "same_tokens": True, "same_calls": True, "same_batch_calls": True, "done": True}, name
