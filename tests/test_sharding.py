"""Multi-device data parallelism (lsd_jax.sharding) and the fast sampling path it runs.

The multi-device checks run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4
set before jax is imported (4 CPU devices on one host) and compare, for the same keys, the
batch-sharded run with the single-device run of the same process.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax import grids, samplers, sharding, solvers
from lsd_jax.graphs import Absorbing
from lsd_jax.noise import LogLinear
from lsd_jax.teachers import markov_teacher

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_with_devices(code: str, n: int = 4, timeout: int = 240) -> dict:
    """Runs `code` in a fresh python with n forced CPU devices; it prints one JSON line last."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]))
    env.pop("LSD_JAX_NO_SHARDING", None)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


SAMPLING = """
import json, re
import numpy as np, jax, jax.numpy as jnp
from lsd_jax import grids, samplers, sharding, solvers
from lsd_jax.graphs import Absorbing
from lsd_jax.noise import LogLinear
from lsd_jax.models.dit import DiT, DiTConfig, init_params, score_fn_from
from lsd_jax.teachers import markov_teacher

res = {"devices": jax.device_count()}
V = 5000  # above FLAT_VOCAB_MAX: the two-level draw
cfg = DiTConfig(vocab_size=V, hidden_size=32, cond_dim=16, n_blocks=2, n_heads=4, length=16, scale_by_sigma=True)
p = init_params(cfg, jax.random.PRNGKey(0))
p = jax.tree_util.tree_map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(1), a.shape), p)
net = (score_fn_from(DiT(cfg), p, cfg), Absorbing(V - 1), LogLinear(), 16)
t = markov_teacher(graph="uniform", vocab=8, length=12)
cases = {"dit-absorb-euler": (net, "euler"), "markov-uniform-tweedie": ((t.score_fn, t.graph, t.noise, 12), "tweedie")}
for name, ((fn, graph, noise, length), smp) in cases.items():
    g = grids.uniform(6, 1e-4)
    kw = dict(sampler=smp, return_reveal=graph.is_absorbing)
    a = samplers.sample(fn, graph, noise, g, jax.random.PRNGKey(5), 8, length, **kw)
    b = samplers.sample(fn, graph, noise, g, jax.random.PRNGKey(5), 8, length, mesh=None, **kw)
    res[name] = {
        "spec": list(a.tokens.sharding.spec) if hasattr(a.tokens.sharding, "spec") else None,
        "n_shards": len(a.tokens.addressable_shards),
        "equal": bool(np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))),
        "reveal_equal": bool(a.reveal is None or np.array_equal(np.asarray(a.reveal), np.asarray(b.reveal))),
        "distinct_rows": int(len({tuple(r) for r in np.asarray(a.tokens).tolist()})),
    }
# a batch the devices do not divide stays on one device and still runs
t = markov_teacher(vocab=8, length=12)
odd = samplers.sample(t.score_fn, t.graph, t.noise, grids.uniform(4, 1e-4), jax.random.PRNGKey(0), 6, 12)
res["odd_batch_devices"] = len(odd.tokens.devices())
# the partitioned program: no collective at all (pure data parallelism)
fn, graph, noise, _ = net
mesh = sharding.batch_mesh()
g = jnp.asarray(grids.uniform(6, 1e-4), jnp.float32)
gp = jnp.concatenate([g, jnp.full((samplers.capacity(6) - 6,), g[-1])])
args = sharding.replicate((samplers.as_pytree_fn(fn), gp, jnp.ones(gp.shape[0] - 1)), mesh)
x0 = sharding.shard_batch(jnp.full((8, 16), V - 1, jnp.int32), mesh)
txt = samplers._run.lower(args[0], graph, noise, args[1], args[2], jnp.asarray(6, jnp.int32), jax.random.PRNGKey(0), x0,
                          solver=solvers.Euler(), drawer=solvers.GumbelDraw(), reading="linear", denoise=True,
                          return_path=False, mesh=mesh).compile().as_text()
res["collectives"] = sum(len(re.findall(op + r"(-start)?\\(", txt)) for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute"))
print(json.dumps(res))
"""


@pytest.mark.slow  # a 4-device subprocess
def test_sharded_sampling_equals_single_device():
    res = run_with_devices(SAMPLING)
    assert res["devices"] == 4
    for name in ("dit-absorb-euler", "markov-uniform-tweedie"):
        r = res[name]
        assert r["spec"] == ["batch"] and r["n_shards"] == 4, (name, r)
        assert r["equal"] and r["reveal_equal"], (name, r)  # exact: integer samples, same keys
        assert r["distinct_rows"] > 1, (name, r)  # rows differ: each shard draws its own noise
    assert res["odd_batch_devices"] == 1
    assert res["collectives"] == 0


DISTILL = """
import json
import numpy as np, jax, jax.numpy as jnp
import tiny_score
from lsd_jax import distill
from lsd_jax.teachers import Teacher, markov_teacher

base = markov_teacher(vocab=8, length=12)
model, net_params = tiny_score.make(base.graph.dim, 12)
teacher = Teacher(lambda x, sb: model.apply({"params": net_params}, x, sb), base.graph, base.noise, 12, "tiny", base.chain)
cfg = distill.DistillConfig(method="lsd+", nfe=4, teacher_nfe=32, samples=16, batch_size=8, epochs=2, select="none")
cache = distill.teacher_cache(teacher, cfg, jax.random.PRNGKey(0))
res = {"cache_kind": type(cache.path).__name__}
runs = {}
for name, mesh in (("sharded", "auto"), ("single", None)):
    fn = distill.make_epoch_fn(teacher, cfg, cache, mesh=mesh)
    state = distill.init_state(cfg, jax.random.PRNGKey(1))
    hist = []
    for _ in range(cfg.epochs):
        state, stats = fn(state)
        hist.append((float(stats["loss"]), np.asarray(stats["student_moved"]).tolist()))
    runs[name] = {"mesh_devices": 0 if fn.mesh is None else int(fn.mesh.devices.size), "hist": hist,
                  "phi": np.asarray(state.params.phi).tolist(), "logits": np.asarray(state.params.logits).tolist()}
res.update(runs)
# one loss gradient with the minibatch sharded over the 4 devices vs on one device
from lsd_jax import sharding
mesh = sharding.batch_mesh()
params = distill.init_state(cfg, jax.random.PRNGKey(1)).params
loss = lambda p, path, x0: distill.student_loss(p, path, x0, jax.random.PRNGKey(2), teacher=teacher, cfg=cfg)
g1 = jax.jit(jax.grad(lambda *a: loss(*a)[0]))(params, cache.path, cache.x_start)
g4 = jax.jit(jax.grad(lambda *a: loss(*a)[0]))(sharding.replicate(params, mesh), sharding.shard_batch(cache.path, mesh),
                                                 sharding.shard_batch(cache.x_start, mesh))
res["grad_single"] = np.concatenate([g1.phi, g1.logits]).tolist()
res["grad_sharded"] = np.concatenate([g4.phi, g4.logits]).tolist()
# fit end to end on 4 devices (validator sampling sharded too)
params, hist = distill.fit(teacher, distill.DistillConfig(method="lsd", nfe=4, teacher_nfe=32, samples=16, batch_size=8,
                                                          epochs=1, select="exact", val_samples=64), progress=False)
res["fit_timing_keys"] = sorted(hist[0]["timing"])
res["fit_devices"] = hist[0]["timing"]["devices"]
print(json.dumps(res))
"""


@pytest.mark.slow  # a 4-device subprocess
def test_sharded_distillation_matches_single_device():
    res = run_with_devices(DISTILL)
    assert res["cache_kind"] == "RevealPath"
    s, u = res["sharded"], res["single"]
    assert s["mesh_devices"] == 4 and u["mesh_devices"] == 0
    for (ls, ms), (lu, mu) in zip(s["hist"], u["hist"]):
        assert ls == pytest.approx(lu, rel=1e-5)
        assert ms == mu  # the student's own draws: identical integers
    g1, g4 = np.asarray(res["grad_single"]), np.asarray(res["grad_sharded"])
    np.testing.assert_allclose(g4, g1, rtol=1e-4, atol=1e-6 * np.abs(g1).max())
    # parameters: equal up to Adam's amplification of float noise in an exactly-zero
    # gradient (phi_0: teacher and student both start all-mask) into lr-sized steps
    np.testing.assert_allclose(s["phi"], u["phi"], atol=2e-3)
    np.testing.assert_allclose(s["logits"], u["logits"], atol=2e-3)
    assert res["fit_devices"] == 4
    assert {"teacher", "epochs", "validation", "total_s"} <= set(res["fit_timing_keys"])


def test_default_mesh_single_device():
    if jax.device_count() == 1:
        assert sharding.default_mesh(8) is None
    mesh = sharding.batch_mesh()
    assert mesh.axis_names == ("batch",)
    x = sharding.shard_batch(jnp.zeros((4, 3)), mesh)
    assert np.array_equal(sharding.to_host(x), np.zeros((4, 3)))


# --- the fast path the sharded program runs ----------------------------------------------
def test_two_level_draw_is_the_step_distribution():
    """The two-level Gumbel-max (V > FLAT_VOCAB_MAX) draws from exactly the kernel's probabilities:
    chi-square of 40k draws at one masked position against the probabilities."""
    v = 5000
    graph, noise = Absorbing(v), LogLinear(1e-3)
    rng = np.random.default_rng(0)
    ls_row = np.asarray(rng.normal(size=graph.dim) * 2.5 - 12.0, np.float32)
    ls_row[graph.mask_id] = 0.0
    t, tn = jnp.asarray([0.5]), jnp.asarray([0.3])
    euler = solvers.Euler()
    p = np.asarray(solvers.probs(euler.kernel(graph, noise, jnp.full((1, 1), v), jnp.asarray(ls_row)[None, None], t, tn)),
                   np.float64)[0, 0]
    assert 0.05 < p[graph.mask_id] < 0.95  # both stay and reveal matter
    n = 40000

    @jax.jit
    def draws(key):
        x = jnp.full((1, n), v, jnp.int32)
        ls = jnp.broadcast_to(jnp.asarray(ls_row), (1, n, graph.dim))
        return solvers.draw(key, euler.kernel(graph, noise, x, ls, t, tn))

    d = np.asarray(draws(jax.random.PRNGKey(1)))[0]
    obs, e = np.bincount(d, minlength=graph.dim), p * n
    big = e >= 5
    chi2 = (((obs[big] - e[big]) ** 2) / e[big]).sum() + (obs[~big].sum() - e[~big].sum()) ** 2 / e[~big].sum()
    dof = int(big.sum())
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)
    assert abs(obs[graph.mask_id] / n - p[graph.mask_id]) < 5 * np.sqrt(p[graph.mask_id] / n)


@pytest.mark.slow
def test_flat_draw_uses_the_categorical_uniforms():
    """V <= FLAT_VOCAB_MAX: the log-space kernel draws the same integers as
    categorical(probs(kernel)) for the same key (same uniforms, logits off by a constant)."""
    t = markov_teacher(graph="uniform", vocab=8, length=12)
    x = jax.random.randint(jax.random.PRNGKey(0), (64, 12), 0, 8)
    ls = t.score_fn(x, t.noise.total(jnp.full((64,), 0.4)))
    tb, tn = jnp.full((64,), 0.4), jnp.full((64,), 0.3)
    for smp in solvers.KERNEL_SOLVERS:
        key = jax.random.PRNGKey(7)
        kern = solvers.get_solver(smp).kernel(t.graph, t.noise, x, ls, tb, tn)
        a = solvers.categorical(key, solvers.probs(kern))
        b = solvers.draw(key, kern)
        assert np.mean(np.asarray(a) == np.asarray(b)) > 0.999, smp


def test_one_compilation_across_nfe():
    t = markov_teacher(vocab=6, length=8)
    run = lambda m: samplers.sample(t.score_fn, t.graph, t.noise, grids.uniform(m, 1e-4), jax.random.PRNGKey(m), 16, 8)
    run(3)
    before = samplers._run._cache_size()
    for m in (8, 16, 64, 1024):
        assert run(m).tokens.shape == (16, 8)
    assert samplers._run._cache_size() == before  # NFE is traced: nothing recompiled


@pytest.mark.slow
def test_rematerialised_student_loss_equals_plain(monkeypatch):
    """Large vocabularies recompute each student step in the backward pass (distill.REMAT_BYTES):
    the same loss and gradients as keeping every residual."""
    import tiny_score

    from lsd_jax import distill
    from lsd_jax.teachers import Teacher

    base = markov_teacher(vocab=8, length=12)
    model, net_params = tiny_score.make(base.graph.dim, 12)
    teacher = Teacher(lambda x, sb: model.apply({"params": net_params}, x, sb), base.graph, base.noise, 12, "tiny",
                      base.chain)
    cfg = distill.DistillConfig(method="lsd+", nfe=4, teacher_nfe=32, samples=8, batch_size=8)
    cache = distill.teacher_cache(teacher, cfg, jax.random.PRNGKey(0))
    params = distill.init_state(cfg, jax.random.PRNGKey(1)).params

    def grad():
        f = lambda p: distill.student_loss(p, cache.path, cache.x_start, jax.random.PRNGKey(2), teacher=teacher,
                                           cfg=cfg)[0]
        return jax.jit(jax.value_and_grad(f))(params)

    (l0, g0) = grad()
    monkeypatch.setattr(distill, "REMAT_BYTES", 0)
    (l1, g1) = grad()
    # float32: remat reorders the reductions (measured 1.1e-6 relative); the gradients below use 1e-5 too
    assert float(l1) == pytest.approx(float(l0), rel=1e-5)
    np.testing.assert_allclose(g1.phi, g0.phi, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g1.logits, g0.logits, rtol=1e-5, atol=1e-7)
    assert np.abs(g0.logits).max() > 1e-6
