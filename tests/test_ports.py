"""Parity and strictness of the SEDD / MDLM / RADD converter (ports.sedd, models.dit).

Tiny random PyTorch models (tests/sedd_torch_reference.py) are saved in HF layout,
converted, and their outputs compared in float32 with the Flax DiT.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import sedd_torch_reference as ref  # noqa: E402
from lsd_jax import graphs, noise  # noqa: E402
from lsd_jax.models.dit import NEG_INF, ConfigError, DiTConfig, score_fn_from  # noqa: E402
from ports import sedd  # noqa: E402
from ports.cli import convert_main  # noqa: E402
from ports.keymaps import key_table  # noqa: E402

TOL = 1e-5
L = 16
CASES = [  # (family, graph, time_conditioning)
    ("sedd", "absorb", True),
    ("sedd", "uniform", True),
    ("mdlm", "absorb", False),
    ("mdlm", "absorb", True),
    ("radd", "absorb", True),
]
CASE_IDS = ["sedd-absorb", "sedd-uniform", "mdlm", "mdlm-timecond", "radd"]


def _inputs(vocab: int, absorb: bool, seed: int = 0):
    """x [3, L] (row 0 half masked, row 1 all masked under absorb), sigmabar [3]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (3, L), generator=g)
    if absorb:
        x[0, ::2] = vocab - 1
        x[1] = vocab - 1
    return x, torch.tensor([0.05, 0.7, 3.0])  # both branches of SEDD's expm1 rule


def _torch_out(model, x, sigma) -> np.ndarray:
    with torch.no_grad():
        return model(x, sigma).numpy()


@functools.lru_cache(maxsize=None)
def _jitted_apply(model):  # one compile per model config, shared by the tests
    return jax.jit(model.apply)


def _flax_out(model, params, x, sigma) -> np.ndarray:
    out = _jitted_apply(model)({"params": params}, jnp.asarray(x.numpy(), jnp.int32), jnp.asarray(sigma.numpy()))
    return np.asarray(out)


@pytest.fixture(scope="module")
def make_ckpt(tmp_path_factory):
    """make_ckpt(family, graph, fmt, time_conditioning) -> (dir, torch model, config)."""
    cache: dict = {}

    def make(family="sedd", graph="absorb", fmt="safetensors", tc=True):
        key = (family, graph, fmt, tc)
        if key not in cache:
            cfg = ref.make_config(family, graph=graph, time_conditioning=tc)
            model = ref.randomize(ref.build(family, cfg), seed=zlib.crc32(f"{family}-{graph}".encode()) % 1000)
            d = str(tmp_path_factory.mktemp(f"{family}-{graph}-{fmt}-{tc}"))
            cache[key] = (ref.save_hf(model, cfg, d, fmt), model, cfg)
        return cache[key]

    return make


def _copy_ckpt(src_model, cfg, d, fmt="safetensors", edit_state=None, edit_cfg=None):
    """Saves a modified copy: edit_state(state dict) and edit_cfg(config dict) in place."""
    os.makedirs(d, exist_ok=True)
    cfg = json.loads(json.dumps(cfg))
    state = {k: v.clone() for k, v in src_model.state_dict().items()}
    if edit_state:
        edit_state(state)
    if edit_cfg:
        edit_cfg(cfg)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(d, "model.safetensors"))
    else:
        torch.save(state, os.path.join(d, "pytorch_model.bin"))
    return d


# ------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("fmt", ["safetensors", pytest.param("bin", marks=pytest.mark.slow)])  # bin: slow
@pytest.mark.parametrize("family,graph,tc", CASES, ids=CASE_IDS)
def test_parity_float32(make_ckpt, family, graph, tc, fmt, record_property):
    d, tmodel, _ = make_ckpt(family, graph, fmt, tc)
    model, params, cfg = sedd.load(d)
    assert (cfg.family, cfg.graph, cfg.num_tokens, cfg.length) == (family, graph, 30, L)
    x, sigma = _inputs(cfg.dit.vocab_size, graph == "absorb")
    want, got = _torch_out(tmodel, x, sigma), _flax_out(model, params, x, sigma)
    assert got.dtype == np.float32 and got.shape == want.shape
    diff = float(np.abs(got - want).max())
    record_property("max_abs_diff", diff)
    print(f"parity {family}/{graph}/{fmt}/tc={tc}: max abs diff {diff:.3e}")
    assert diff < TOL
    assert np.abs(want[np.abs(want) < 1e5]).max() > 1.0  # the outputs are not trivially small


@pytest.mark.parametrize("bug", ref.BUGS)
def test_planted_bug_moves_output_far_beyond_tolerance(make_ckpt, bug):
    d, tmodel, cfg = make_ckpt("sedd", "absorb")
    model, params, _ = sedd.load(d)
    broken = ref.build("sedd", cfg, bugs=[bug])
    broken.load_state_dict(tmodel.state_dict())
    x, sigma = _inputs(31, True)
    diff = np.abs(_flax_out(model, params, x, sigma) - _torch_out(broken, x, sigma)).max()
    assert diff > 100 * TOL, f"{bug}: only {diff:.2e}"


def test_one_percent_time_bias_change_is_visible(make_ckpt):
    d, tmodel, cfg = make_ckpt("sedd", "absorb")
    model, params, _ = sedd.load(d)
    other = ref.build("sedd", cfg)
    state = tmodel.state_dict()
    state["sigma_map.mlp.0.bias"] = state["sigma_map.mlp.0.bias"] * 1.01
    other.load_state_dict(state)
    x, sigma = _inputs(31, True)
    assert np.abs(_flax_out(model, params, x, sigma) - _torch_out(other, x, sigma)).max() > 100 * TOL


def test_bfloat16_safetensors_checkpoint(make_ckpt, tmp_path):
    """bf16 tensors (numpy has no bfloat16) are read exactly; inv_freq in bf16 only warns."""
    _, tmodel, cfg = make_ckpt("sedd", "absorb")
    d = _copy_ckpt(tmodel, cfg, tmp_path / "bf16", edit_state=lambda s: s.update({k: v.bfloat16() for k, v in s.items()}))
    with pytest.warns(RuntimeWarning, match="rotary_emb.inv_freq"):
        model, params, _ = sedd.load(str(d))
    rounded = ref.build("sedd", cfg)
    rounded.load_state_dict({k: v.bfloat16().float() for k, v in tmodel.state_dict().items() if k != "rotary_emb.inv_freq"}, strict=False)
    x, sigma = _inputs(31, True)
    assert np.abs(_flax_out(model, params, x, sigma) - _torch_out(rounded, x, sigma)).max() < TOL


def test_inv_freq_absent_is_fine_and_different_only_warns(make_ckpt, tmp_path):
    d0, tmodel, cfg = make_ckpt("sedd", "absorb")
    x, sigma = _inputs(31, True)
    want = _torch_out(tmodel, x, sigma)
    d = _copy_ckpt(tmodel, cfg, tmp_path / "noinv", edit_state=lambda s: s.pop("rotary_emb.inv_freq"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, params, _ = sedd.load(str(d))
    assert np.abs(_flax_out(model, params, x, sigma) - want).max() < TOL
    d = _copy_ckpt(tmodel, cfg, tmp_path / "badinv", edit_state=lambda s: s["rotary_emb.inv_freq"].mul_(1.5))
    with pytest.warns(RuntimeWarning, match="recomputed"):
        model, params, _ = sedd.load(str(d))
    assert np.abs(_flax_out(model, params, x, sigma) - want).max() < TOL  # recomputed values used


# ------------------------------------------------------------------- convert / orbax
@pytest.mark.parametrize("family,graph,tc", [CASES[0], CASES[2], CASES[4]], ids=["sedd", "mdlm", "radd"])
def test_convert_and_load_round_trip(make_ckpt, tmp_path, family, graph, tc):
    d, tmodel, _ = make_ckpt(family, graph, "safetensors", tc)
    dst = tmp_path / "converted"
    summary = sedd.convert(d, str(dst))
    n_torch = sum(p.numel() for p in tmodel.parameters())
    assert {k: summary[k] for k in ("family", "graph", "params", "dtype", "format")} == {
        "family": family, "graph": graph, "params": n_torch, "dtype": "float32", "format": "safetensors",
    }
    assert summary["seconds"] >= 0
    m_hf, p_hf, c_hf = sedd.load(d)
    m_cv, p_cv, c_cv = sedd.load(str(dst))
    assert c_cv == c_hf and m_cv.config == m_hf.config
    jax.tree_util.tree_map(np.testing.assert_array_equal, p_cv, p_hf)
    x, sigma = _inputs(c_cv.dit.vocab_size, True)
    assert np.abs(_flax_out(m_cv, p_cv, x, sigma) - _torch_out(tmodel, x, sigma)).max() < TOL


def test_convert_bfloat16(make_ckpt, tmp_path):
    d, tmodel, _ = make_ckpt("sedd", "absorb")
    summary = sedd.convert(d, str(tmp_path / "bf16"), dtype="bfloat16")
    assert summary["dtype"] == "bfloat16"
    model, params, cfg = sedd.load(str(tmp_path / "bf16"))
    assert cfg.dit.dtype == "bfloat16"
    assert {a.dtype for a in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    x, sigma = _inputs(31, True)
    got, want = _flax_out(model, params, x, sigma), _torch_out(tmodel, x, sigma)
    assert got.dtype == np.float32
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()  # bf16 rounding, not a bug
    _, p32, c32 = sedd.load(str(tmp_path / "bf16"), dtype="float32")
    assert c32.dit.dtype == "float32" and jax.tree_util.tree_leaves(p32)[0].dtype == jnp.float32


def test_build_core(make_ckpt, tmp_path):
    for graph, cls, dim in (("absorb", graphs.Absorbing, 31), ("uniform", graphs.Uniform, 30)):
        _, _, cfg = sedd.load(make_ckpt("sedd", graph)[0])
        g, n = sedd.build_core(cfg)
        assert isinstance(g, cls) and g.dim == dim == cfg.dit.vocab_size
        assert n == noise.LogLinear(1e-3)
        assert sedd.build_core(cfg.to_dict()) == (g, n)
    _, tmodel, c = make_ckpt("sedd", "absorb")
    geo = lambda cfg: cfg.update(noise={"type": "geometric", "sigma_min": "1e-4", "sigma_max": 20})
    d = _copy_ckpt(tmodel, c, tmp_path / "geo", edit_cfg=geo)
    assert sedd.build_core(sedd.load(str(d))[2])[1] == noise.Geometric(1e-4, 20.0)


# ------------------------------------------------------------------------ score_fn
@pytest.mark.parametrize("family,graph,tc", CASES, ids=CASE_IDS)
def test_score_fn(make_ckpt, family, graph, tc):
    d, tmodel, _ = make_ckpt(family, graph, "safetensors", tc)
    model, params, cfg = sedd.load(d)
    score_fn = score_fn_from(model, params, cfg)
    x, sigma = _inputs(cfg.dit.vocab_size, graph == "absorb")
    xj, sj = jnp.asarray(x.numpy(), jnp.int32), jnp.asarray(sigma.numpy())
    log_s = np.asarray(jax.jit(lambda f, a, b: f(a, b))(score_fn, xj, sj))  # a pytree argument
    assert log_s.dtype == np.float32 and log_s.shape == (3, L, cfg.dit.vocab_size)
    assert np.all(np.take_along_axis(log_s, x.numpy()[..., None], -1) == 0.0)
    if family == "sedd":
        np.testing.assert_array_equal(log_s, _flax_out(model, params, x, sigma))
        return
    mask = cfg.dit.vocab_size - 1
    masked = x.numpy() == mask
    logp = _torch_out(tmodel, x, sigma)[..., :mask]  # log p(x0 = y | x_t), data ids
    esigm1 = np.expm1(sigma.numpy())[:, None, None]
    want = logp - np.log(esigm1)
    assert np.abs(log_s[..., :mask] - want)[masked].max() < TOL
    # sum_y s[y] (e^sigma - 1) = 1: the data-token probabilities at masked positions
    np.testing.assert_allclose((np.exp(log_s[..., :mask]) * esigm1).sum(-1)[masked], 1.0, rtol=1e-5)
    off = np.where(np.arange(mask + 1) == x.numpy()[..., None], 0.0, NEG_INF)
    np.testing.assert_array_equal(log_s[~masked], off[~masked])


# ---------------------------------------------------------------------- bad inputs
def _error(d) -> str:
    with pytest.raises(sedd.CheckpointError) as e:
        sedd.load(str(d))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_unexpected_and_misshaped_keys_are_all_named(make_ckpt, tmp_path):
    _, tmodel, cfg = make_ckpt("sedd", "absorb")

    def edit(s):
        del s["blocks.1.attn_out.weight"]
        del s["output_layer.adaLN_modulation.bias"]
        s["blocks.0.extra.weight"] = torch.zeros(3)
        s["blocks.0.mlp.0.bias"] = torch.zeros(7)

    msg = _error(_copy_ckpt(tmodel, cfg, tmp_path / "bad", edit_state=edit))
    for part in ("missing keys: blocks.1.attn_out.weight, output_layer.adaLN_modulation.bias",
                 "unexpected keys: blocks.0.extra.weight",
                 "blocks.0.mlp.0.bias (checkpoint [7], expected [128])"):
        assert part in msg, msg


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_missing_key_each_format(make_ckpt, tmp_path, fmt):
    _, tmodel, cfg = make_ckpt("mdlm", "absorb", fmt, False)
    d = _copy_ckpt(tmodel, cfg, tmp_path / "m", fmt, edit_state=lambda s: s.pop("backbone.sigma_map.mlp.2.bias"))
    assert "missing keys: backbone.sigma_map.mlp.2.bias" in _error(d)


def test_family_key_tables_differ(make_ckpt, tmp_path):
    """A SEDD state dict under an MDLM config: every key is unexpected and every one missing."""
    _, tmodel, _ = make_ckpt("sedd", "absorb")
    msg = _error(_copy_ckpt(tmodel, ref.make_config("mdlm"), tmp_path / "x"))
    assert "missing keys: backbone.vocab_embed.embedding" in msg and "unexpected keys:" in msg
    assert "vocab_embed.embedding" in msg.split("unexpected keys:")[1]


@pytest.mark.parametrize(
    "edit,fields",
    [
        (lambda c: c["graph"].update(type="gaussian"), ["graph.type = 'gaussian'", "allowed: absorb, uniform"]),
        (lambda c: c["noise"].update(type="cosine"), ["noise.type = 'cosine'", "allowed: loglinear, geometric"]),
        (lambda c: c.update(graph={"type": "uniform"}), ["model.scale_by_sigma = true", "allowed: false"]),
        (lambda c: c["model"].update(n_heads=3), ["model.hidden_size = 32 must be divisible by model.n_heads = 3"]),
        (lambda c: c["model"].update(mlp_ratio=2), ["model.{mlp_ratio}", "allowed:"]),
        (lambda c: c["model"].pop("n_blocks"), ["model.n_blocks is missing"]),
        (lambda c: c["model"].update(type="dit_xl"), ["model.type = 'dit_xl'", "ddit_wot"]),
        (lambda c: (c["graph"].update(type="x"), c["noise"].update(type="y")), ["graph.type = 'x'", "noise.type = 'y'"]),
    ],
    ids=["graph", "noise", "scale-uniform", "heads", "unknown-model-key", "missing-field", "model-type", "two-at-once"],
)
def test_unsupported_config_values_are_named(make_ckpt, tmp_path, edit, fields):
    _, tmodel, cfg = make_ckpt("sedd", "absorb")
    msg = _error(_copy_ckpt(tmodel, cfg, tmp_path / "c", edit_cfg=edit))
    for f in fields:
        assert f in msg, msg


def test_missing_files_and_bad_paths(make_ckpt, tmp_path):
    d, _, _ = make_ckpt("sedd", "absorb")
    (tmp_path / "nocfg").mkdir()
    (tmp_path / "nocfg" / "model.safetensors").write_bytes(open(os.path.join(d, "model.safetensors"), "rb").read())
    assert "has no config.json" in _error(tmp_path / "nocfg")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(open(os.path.join(d, "config.json")).read())
    assert "expected model.safetensors or pytorch_model.bin" in _error(tmp_path / "noweights")
    assert "does not exist" in _error(tmp_path / "no" / "such" / "dir")
    with pytest.raises(sedd.CheckpointError, match="dtype = 'float16'.*allowed: float32, bfloat16"):
        sedd.load(d, dtype="float16")


def test_hub_failure_is_one_clear_message(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(sedd.CheckpointError, match=r"owner/sedd-tiny is not a local directory.*network unreachable"):
        sedd.load("owner/sedd-tiny")


def test_bin_without_torch_is_clear(make_ckpt, monkeypatch):
    d, _, _ = make_ckpt("sedd", "absorb", "bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(sedd.CheckpointError, match="needs torch"):
        sedd.load(d)


def test_convert_refuses_non_empty_destination(make_ckpt, tmp_path):
    d, _, _ = make_ckpt("sedd", "absorb")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("x")
    with pytest.raises(sedd.CheckpointError, match=f"destination {dst} already exists"):
        sedd.convert(d, str(dst))
    with pytest.raises(sedd.CheckpointError, match="dtype = 'int8'"):
        sedd.convert(d, str(tmp_path / "new"), dtype="int8")


def test_convert_main(make_ckpt, tmp_path, capsys):
    d, _, _ = make_ckpt("radd", "absorb")
    assert convert_main([d, str(tmp_path / "out"), "--dtype", "bfloat16"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["family"] == "radd" and summary["dtype"] == "bfloat16"
    assert convert_main([d, str(tmp_path / "out")]) == 2  # the one exit convention: bad input -> 2
    err = capsys.readouterr().err
    assert err.startswith("lsd-jax convert: error: destination") and err.count("\n") == 1
    assert convert_main([d, str(tmp_path / "out2"), "--dtype", "float16"]) == 2  # usage error


# ------------------------------------------------------------------------ configs
def test_dit_config_from_upstream_configs():
    sedd_small = ref.make_config("sedd", tokens=50257, hidden_size=768, cond_dim=128, n_blocks=12, n_heads=12, length=1024)
    c = DiTConfig.from_sedd_config(sedd_small)
    assert (c.vocab_size, c.num_tokens, c.family, c.graph, c.scale_by_sigma, c.head_dim) == (50258, 50257, "sedd", "absorb", True, 64)
    m = DiTConfig.from_mdlm_config(ref.make_config("mdlm", tokens=50257, time_conditioning=False))
    assert (m.vocab_size, m.num_tokens, m.family, m.time_conditioning) == (50258, 50257, "mdlm", False)
    r = DiTConfig.from_sedd_config(ref.make_config("radd"))
    assert (r.family, r.graph, r.vocab_size) == ("radd", "absorb", 31)
    assert DiTConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError) as e:
        DiTConfig(vocab_size=0, hidden_size=30, cond_dim=8, n_blocks=1, n_heads=4, length=8, family="gpt", dtype="fp8")
    for f in ("vocab_size = 0", "family = 'gpt'", "dtype = 'fp8'", "hidden_size = 30 must be divisible"):
        assert f in str(e.value)


def test_key_table_covers_every_module_param():
    for fam in ("sedd", "mdlm", "radd"):
        cfg = DiTConfig(vocab_size=11, hidden_size=16, cond_dim=8, n_blocks=3, n_heads=2, length=8, family=fam)
        table = key_table(cfg)
        assert len({e.key for e in table}) == len(table) == len({e.path for e in table})
        from lsd_jax.models.dit import abstract_params

        flat = jax.tree_util.tree_flatten_with_path(abstract_params(cfg))[0]
        paths = {tuple(k.key for k in p): tuple(s.shape) for p, s in flat}
        assert paths == {e.path: e.flax_shape for e in table}
        assert all(e.key.startswith("backbone.") == (fam == "mdlm") for e in table)
