"""The SEDD diffusion transformer (DiT) in Flax, with its MDLM and RADD variants.

One module, `DiT`, three families (the `family` field of `DiTConfig`):

- "sedd" (louaaron/Score-Entropy-Discrete-Diffusion `SEDD`): time-conditioned by adaLN on
  c = SiLU(TimestepEmbedder(sigmabar)); the output is the log concrete score. With
  `scale_by_sigma` (absorbing graph only) the logits are shifted by
  -log(expm1(sigmabar)) - log(V - 1). The entry of the current token is set to 0.
- "mdlm" (kuleshov-group/mdlm `DIT` backbone + "subs" parameterisation): the same network;
  the output is log p(x0 = y | x_t) over all V ids (mask id = V - 1): the mask logit gets
  -1e6 before the log-softmax, and at unmasked positions every entry is -1e6 except 0 at
  the current token. Without `time_conditioning` the network sees sigmabar = 0.
- "radd" (ML-GSAI/RADD `RADD`): no time conditioning (no sigma_map, no adaLN), LayerNorm
  with weight and bias, plain residuals; the output holds log_softmax over the data ids in
  [..., :-1] and the raw mask logit in [..., -1]. sigmabar is ignored.

`model.apply({"params": params}, x, sigmabar)` returns exactly what the PyTorch forward of
that family returns, as float32 [B, L, V]. `score_fn_from` turns any family into the log
concrete score of its graph, the interface of `lsd_jax.samplers`.

Numerics: LayerNorm, the residual stream, the time embedding and the rotary tables are
float32 in both compute dtypes; with dtype "bfloat16" the Dense layers and the attention
run in bfloat16 (as the reference under CUDA bf16 autocast, except that rotary is applied
in float32 here and the logits are cast to float32 before the output transform).
Length (~640 lines): one network of three families with its config validation, score
transforms and masked head, kept together so the layer names match the converter's key tables.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lsd_jax.graphs import expm1_stable, id_row, is_token
from lsd_jax.names import DTYPES, FAMILIES, GRAPHS
from lsd_jax.tiles import over_masked_tiles

Array = jnp.ndarray

FREQ_DIM = 256  # size of the sinusoidal timestep embedding fed to sigma_map
ROPE_BASE = 10000.0
LN_EPS = 1e-5
MLP_RATIO = 4
# Stand-in for log 0 in MDLM's subs output and in the score of data ids at unmasked
# positions: finite so that sums, products with 0 and phi-scalings stay NaN-free, and
# exp(NEG_INF) == 0 exactly in float32.
NEG_INF = -1e6


class ConfigError(ValueError):
    """An unsupported model config; `problems` lists one message per bad field."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("unsupported model config: " + "; ".join(self.problems))


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Shape and behaviour of a DiT; hashable, so it can be a Flax module field.

    vocab_size: V, the rows of the embedding and the width of the output (absorb: data
    tokens + the mask id V - 1). time_conditioning: MDLM only (False: sigmabar -> 0).
    length: the training sequence length (rotary allows others). dtype: compute dtype.
    """

    vocab_size: int
    hidden_size: int
    cond_dim: int
    n_blocks: int
    n_heads: int
    length: int
    scale_by_sigma: bool = False
    family: str = "sedd"
    graph: str = "absorb"
    dtype: str = "float32"
    time_conditioning: bool = True

    def __post_init__(self):
        values = {f.name: (f.name, getattr(self, f.name)) for f in dataclasses.fields(self)}
        problems = [f"{k} must be set" for k, (_, val) in values.items() if val is None]
        problems += _field_problems(values)
        if problems:
            raise ConfigError(problems)

    @property
    def num_tokens(self) -> int:
        """Number of data tokens (absorb: V - 1, the mask id is V - 1; uniform: V)."""
        return self.vocab_size - 1 if self.graph == "absorb" else self.vocab_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    def replace(self, **changes) -> "DiTConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DiTConfig":
        """Inverse of `to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError([f"unknown DiTConfig field(s) {unknown}; allowed: {sorted(names)}"])
        return cls(**d)

    @classmethod
    def from_sedd_config(cls, cfg: Mapping[str, Any], dtype: str = "float32") -> "DiTConfig":
        """Reads a SEDD (or RADD) training config, the config.json of its HF checkpoint.

        Fields read: `tokens`, `graph.type` (absent for RADD: absorb), `model.{hidden_size,
        cond_dim, length, n_blocks, n_heads, scale_by_sigma, dropout, type, name}`. RADD is
        recognised by `model.type == "ddit_wot"`. Raises ConfigError naming every bad field
        (with its allowed values); unknown `model.*` keys are errors too, since they might
        change the architecture. Other top-level blocks (training, data, ...) are ignored.
        """
        r = _Reader(cfg)
        mtype = r.block("model").get("type", "ddit")
        family = {"ddit": "sedd", "ddit_wot": "radd"}.get(mtype) if isinstance(mtype, str) else None
        if family is None:
            r.problems.append(f"model.type = {mtype!r} is not supported; allowed: ddit (SEDD), ddit_wot (RADD)")
            family = "sedd"
        allowed_model = {"name", "type", "hidden_size", "cond_dim", "length", "n_blocks", "n_heads", "dropout"}
        allowed_model |= {"scale_by_sigma"} if family == "sedd" else {"use_checkpoint", "dtype", "scale_by_sigma"}
        r.unknown_keys("model", allowed_model)
        tokens = r.get("tokens", int)
        graph = r.get("graph.type", str, default="absorb" if family == "radd" else _MISSING)
        if graph == "absorbing":
            graph = "absorb"
        r.get("model.dropout", (int, float), default=0.0)  # checked only: no dropout at inference
        fields = {
            "vocab_size": ("tokens", None if tokens is None else tokens + (graph != "uniform")),
            "hidden_size": ("model.hidden_size", r.get("model.hidden_size", int)),
            "cond_dim": ("model.cond_dim", r.get("model.cond_dim", int, default=128 if family == "radd" else _MISSING)),
            "n_blocks": ("model.n_blocks", r.get("model.n_blocks", int)),
            "n_heads": ("model.n_heads", r.get("model.n_heads", int)),
            "length": ("model.length", r.get("model.length", int, default=1024 if family == "radd" else _MISSING)),
            "scale_by_sigma": ("model.scale_by_sigma", r.get("model.scale_by_sigma", bool, default=False)),
            "family": ("model.type", family),
            "graph": ("graph.type", graph),
            "dtype": ("dtype", dtype),
            "time_conditioning": ("model.type", family != "radd"),
        }
        return _build(cls, fields, r.problems)

    @classmethod
    def from_mdlm_config(cls, cfg: Mapping[str, Any], dtype: str = "float32") -> "DiTConfig":
        """Reads the config.json of an MDLM HF checkpoint (kuleshov-group/mdlm-owt).

        Fields read: `vocab_size` (data tokens + mask, mask id = vocab_size - 1),
        `model_length`, `hidden_dim`, `cond_dim`, `n_blocks`, `n_heads`, `dropout`,
        `time_conditioning` (default False). Other keys (HF bookkeeping) are ignored.
        """
        r = _Reader(cfg)
        r.get("dropout", (int, float), default=0.0)  # checked only: no dropout at inference
        fields = {
            "vocab_size": ("vocab_size", r.get("vocab_size", int)),
            "hidden_size": ("hidden_dim", r.get("hidden_dim", int)),
            "cond_dim": ("cond_dim", r.get("cond_dim", int)),
            "n_blocks": ("n_blocks", r.get("n_blocks", int)),
            "n_heads": ("n_heads", r.get("n_heads", int)),
            "length": ("model_length", r.get("model_length", int)),
            "scale_by_sigma": ("scale_by_sigma", False),
            "family": ("model_type", "mdlm"),
            "graph": ("graph", "absorb"),
            "dtype": ("dtype", dtype),
            "time_conditioning": ("time_conditioning", r.get("time_conditioning", bool, default=False)),
        }
        return _build(cls, fields, r.problems)


# ----------------------------------------------------------------------- config reading
_MISSING = object()
_TYPE_NAMES = {int: "an integer", bool: "true or false", str: "a string", (int, float): "a number"}


class _Reader:
    """Reads dotted fields of a nested config dict, collecting one problem per bad field."""

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = cfg
        self.problems: list[str] = []

    def block(self, path: str) -> Any:
        node = self.cfg.get(path) if isinstance(self.cfg, Mapping) else None
        return node if isinstance(node, Mapping) else {}

    def unknown_keys(self, path: str, allowed: set) -> None:
        extra = sorted(set(self.block(path)) - allowed)
        if extra:
            self.problems.append(
                f"{path}.{{{', '.join(extra)}}} not supported (unknown model fields may change the "
                f"architecture); allowed: {', '.join(sorted(allowed))}"
            )

    def get(self, path: str, kind: Any, default: Any = _MISSING) -> Any:
        node: Any = self.cfg
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                if default is _MISSING:
                    self.problems.append(f"{path} is missing (expected {_TYPE_NAMES[kind]})")
                    return None
                return default
            node = node[part]
        is_bool = isinstance(node, bool)
        ok = is_bool if kind is bool else (isinstance(node, kind) and not is_bool)
        if not ok:
            self.problems.append(f"{path} = {node!r} must be {_TYPE_NAMES[kind]}")
            return None
        return node


def _field_problems(fields: Mapping[str, tuple[str, Any]]) -> list[str]:
    """Checks DiTConfig values; fields maps DiTConfig name -> (config path, value).

    None values are skipped (their reader already reported them).
    """
    p: list[str] = []
    v = {k: val for k, (_, val) in fields.items()}
    name = {k: path for k, (path, _) in fields.items()}
    for k in ("vocab_size", "hidden_size", "cond_dim", "n_blocks", "n_heads", "length"):
        if v.get(k) is not None and (not isinstance(v[k], int) or isinstance(v[k], bool) or v[k] < 1):
            p.append(f"{name[k]} = {v[k]!r} must be a positive integer")
    for k, allowed in (("family", FAMILIES), ("graph", GRAPHS), ("dtype", DTYPES)):
        if v.get(k) is not None and v[k] not in allowed:
            p.append(f"{name[k]} = {v[k]!r} is not supported; allowed: {', '.join(allowed)}")
    if v.get("family") in ("mdlm", "radd") and v.get("graph") not in (None, "absorb"):
        p.append(f"{name['graph']} = {v['graph']!r} is not supported for {v['family']}; allowed: absorb")
    if v.get("scale_by_sigma") and v.get("graph") in GRAPHS and (v["graph"] != "absorb" or v.get("family") != "sedd"):
        p.append(
            f"{name['scale_by_sigma']} = true is not supported with {name['graph']} = "
            f"{v.get('graph')!r} / family {v.get('family')!r}; allowed: false (the reference "
            "defines scale_by_sigma for the SEDD absorbing graph only)"
        )
    d, h = v.get("hidden_size"), v.get("n_heads")
    if isinstance(d, int) and isinstance(h, int) and d > 0 and h > 0:
        if d % h:
            p.append(f"{name['hidden_size']} = {d} must be divisible by {name['n_heads']} = {h}")
        elif (d // h) % 2:
            p.append(f"{name['hidden_size']} / {name['n_heads']} = {d // h} must be even (rotary)")
    return p


def _build(cls, fields: Mapping[str, tuple[str, Any]], problems: list[str]) -> DiTConfig:
    """DiTConfig from (config path, value) fields, or ConfigError with every problem."""
    problems = problems + _field_problems(fields)
    if problems:
        raise ConfigError(problems)
    return cls(**{k: val for k, (_, val) in fields.items()})


# ----------------------------------------------------------------------------- layers
def timestep_embedding(sigmabar: Array, dim: int = FREQ_DIM, max_period: float = 10000.0) -> Array:
    """Sinusoidal embedding [B, dim] of sigmabar [B]: [cos(s f_k), sin(s f_k)], cos first,
    f_k = max_period^(-k / (dim/2)) for k < dim/2 (a zero column pads an odd dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = sigmabar.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def rotary_inv_freq(head_dim: int, base: float = ROPE_BASE) -> Array:
    """1 / base^(2j / head_dim), j < head_dim / 2, float32 [head_dim / 2] (the checkpoint's
    `rotary_emb.inv_freq` buffer)."""
    return 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def rotary_cos_sin(length: int, head_dim: int) -> tuple[Array, Array]:
    """cos, sin tables [L, head_dim] of angle pos * inv_freq, the half repeated twice."""
    freqs = jnp.arange(length, dtype=jnp.float32)[:, None] * rotary_inv_freq(head_dim)[None]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x: Array) -> Array:
    """[x1, x2] -> [-x2, x1] on the last axis (GPT-NeoX / flash-attn non-interleaved)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotates q or k x [B, L, H, Dh] by cos, sin [L, Dh] in float32; keeps x's dtype."""
    x32 = x.astype(jnp.float32)
    out = x32 * cos[None, :, None, :] + rotate_half(x32) * sin[None, :, None, :]
    return out.astype(x.dtype)


def modulate(x: Array, shift: Array, scale: Array) -> Array:
    """adaLN modulation x (1 + scale) + shift in x's dtype; x [B, L, D], shift/scale [B, 1, D]
    (or python scalars); (1 + scale) is formed in scale's dtype, as the reference does."""
    return x * jnp.asarray(1.0 + scale, x.dtype) + jnp.asarray(shift, x.dtype)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis in float32, eps 1e-5, weight `scale` (and `bias`)."""

    dim: int
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (self.dim,), jnp.float32)
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        row = (1,) * (x.ndim - 1) + (self.dim,)  # [D] as [1, ..., D]: no implicit rank promotion
        y = (x - mean) * jax.lax.rsqrt(var + LN_EPS) * scale.astype(jnp.float32).reshape(row)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.dim,), jnp.float32)
            y = y + bias.astype(jnp.float32).reshape(row)
        return y


class VocabEmbed(nn.Module):
    """Token ids [B, L] -> rows of `embedding` [V, D], as float32 (the residual stream)."""

    vocab_size: int
    dim: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        table = self.param("embedding", nn.initializers.normal(1.0), (self.vocab_size, self.dim), jnp.float32)
        return jnp.take(table, x, axis=0).astype(jnp.float32)


class TimestepEmbedder(nn.Module):
    """sigmabar [B] -> Linear(256, C) -> SiLU -> Linear(C, C), float32 [B, C]."""

    cond_dim: int

    @nn.compact
    def __call__(self, sigmabar: Array) -> Array:
        h = nn.Dense(self.cond_dim, dtype=jnp.float32, name="mlp_0")(timestep_embedding(sigmabar))
        return nn.Dense(self.cond_dim, dtype=jnp.float32, name="mlp_2")(nn.silu(h))


class DiTBlock(nn.Module):
    """Pre-LN transformer block; adaLN-modulated (sedd, mdlm) or plain (radd).

    x [B, L, D] float32 residual stream; c [B, C] condition (None for radd).
    """

    config: DiTConfig

    @nn.compact
    def __call__(self, x: Array, cos: Array, sin: Array, c: Array | None) -> Array:
        cfg = self.config
        dt = cfg.compute_dtype
        d, radd = cfg.hidden_size, cfg.family == "radd"
        dense = lambda n, name, bias=True, **kw: nn.Dense(n, use_bias=bias, dtype=dt, name=name, **kw)
        if radd:
            shift_msa = scale_msa = shift_mlp = scale_mlp = 0.0
            gate_msa = gate_mlp = 1.0
        else:  # six chunks of [B, 1, D], in the reference's order
            mod = dense(6 * d, "adaLN_modulation", kernel_init=nn.initializers.zeros)(c)[:, None]
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)

        h = modulate(LayerNorm(d, use_bias=radd, name="norm1")(x), shift_msa, scale_msa)
        b, length = x.shape[:2]
        qkv = dense(3 * d, "attn_qkv", bias=False)(h).reshape(b, length, 3, cfg.n_heads, cfg.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, L, H, Dh]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        with jax.numpy_dtype_promotion("standard"):  # jax.nn's attention mixes bf16 and f32 inside
            att = jax.nn.dot_product_attention(q, k, v).reshape(b, length, d)  # non-causal
        x = x + jnp.asarray(gate_msa * dense(d, "attn_out", bias=False)(att), jnp.float32)  # the stream stays float32

        h = modulate(LayerNorm(d, use_bias=radd, name="norm2")(x), shift_mlp, scale_mlp)
        h = dense(MLP_RATIO * d, "mlp_0")(h)
        h = dense(d, "mlp_2")(nn.gelu(h, approximate=True))
        return x + jnp.asarray(gate_mlp * h, jnp.float32)


class FinalLayer(nn.Module):
    """LN (adaLN shift, scale for sedd/mdlm) -> Linear(D, V); float32 [B, L, V]."""

    config: DiTConfig

    @nn.compact
    def __call__(self, x: Array, c: Array | None, head: bool = True) -> Array:
        """head False: the input of the Linear [B, L, D] float32 (for `masked_head`)."""
        cfg = self.config
        radd = cfg.family == "radd"
        h = LayerNorm(cfg.hidden_size, use_bias=radd, name="norm_final")(x)
        if not radd:
            mod = nn.Dense(
                2 * cfg.hidden_size, dtype=cfg.compute_dtype, name="adaLN_modulation",
                kernel_init=nn.initializers.zeros,
            )(c)[:, None]
            shift, scale = jnp.split(mod, 2, axis=-1)
            h = modulate(h, shift, scale)
        linear = nn.Dense(cfg.vocab_size, dtype=cfg.compute_dtype, name="linear", kernel_init=nn.initializers.zeros)
        if not head:
            return h
        return linear(h).astype(jnp.float32)


class DiT(nn.Module):
    """SEDD / MDLM / RADD diffusion transformer.

    __call__(x int32 [B, L], sigmabar [B]) -> float32 [B, L, V], exactly the PyTorch
    forward of `config.family` (see the module docstring). Parameter tree (Flax names):
    vocab_embed/embedding [V, D]; sigma_map/mlp_{0,2}/{kernel,bias};
    blocks_{i}/{norm1,norm2}/scale(,bias), attn_qkv/kernel [D, 3D], attn_out/kernel,
    mlp_{0,2}/{kernel,bias}, adaLN_modulation/{kernel [C, 6D],bias};
    output_layer/norm_final/scale(,bias), linear/{kernel [D, V],bias},
    adaLN_modulation/{kernel [C, 2D],bias}. RADD has no sigma_map and no adaLN_modulation.
    """

    config: DiTConfig

    @nn.compact
    def __call__(self, x: Array, sigmabar: Array, cond_offset: Optional[Array] = None, head: bool = True) -> Array:
        """cond_offset [B, C]: added to the conditioning vector (e.g. a mixture student's
        latent, `lsd_jax.students.di4c`); None leaves the network as published.
        head False: returns the input of the output Linear [B, L, D] float32 instead (the
        rest of the head runs in `masked_head`, on the positions that need it)."""
        cfg = self.config
        h = VocabEmbed(cfg.vocab_size, cfg.hidden_size, name="vocab_embed")(x)  # [B, L, D] float32
        sigmabar = jnp.asarray(sigmabar, jnp.float32)
        c = None
        if cfg.family != "radd":
            t = sigmabar if cfg.time_conditioning else jnp.zeros_like(sigmabar)
            c = nn.silu(TimestepEmbedder(cfg.cond_dim, name="sigma_map")(t))  # [B, C]
        if cond_offset is not None:
            if c is None:
                raise ValueError("cond_offset needs a conditioned network; family 'radd' has no conditioning vector")
            c = c + cond_offset
        cos, sin = rotary_cos_sin(x.shape[1], cfg.head_dim)
        for i in range(cfg.n_blocks):
            h = DiTBlock(cfg, name=f"blocks_{i}")(h, cos, sin, c)
        self.sow("intermediates", "final_hidden", h)  # [B, L, D]: features for two-sample tests
        if not head:
            return FinalLayer(cfg, name="output_layer")(h, c, head=False)  # [B, L, D] float32
        logits = FinalLayer(cfg, name="output_layer")(h, c)  # [B, L, V] float32
        return output_transform(cfg, logits, x, sigmabar)


def output_transform(cfg: DiTConfig, logits: Array, x: Array, sigmabar: Array) -> Array:
    """The family's head on raw logits [B, L, V]; x [B, L], sigmabar [B]."""
    v = cfg.vocab_size
    if cfg.family == "sedd":
        if cfg.scale_by_sigma:
            esigm1_log = jnp.log(expm1_stable(sigmabar))[:, None, None]
            logits = logits - esigm1_log - math.log(v - 1)
        return jnp.where(is_token(x, v), 0.0, logits)
    if cfg.family == "mdlm":  # "subs"
        mask = v - 1
        logits = jnp.where(id_row(v, mask, logits.ndim), logits + NEG_INF, logits)
        logp = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
        return jnp.where((x != mask)[..., None], jnp.where(is_token(x, v), 0.0, NEG_INF), logp)
    # radd: log_softmax over the data ids, raw mask logit kept last
    return jnp.concatenate([jax.nn.log_softmax(logits[..., :-1], axis=-1), logits[..., -1:]], axis=-1)


HEADS = ("full", "masked")  # score_fn_from(head=...): every position / the masked ones (absorbing graph)
HEAD_TILE = 64  # rows per GEMM of the masked head (fewer when B * L is smaller)


def score_fn_from(model: DiT, params: Any, config: DiTConfig | Any,
                  head: str = "full") -> Callable[[Array, Array], Array]:
    """The score function of a DiT: (x int32 [B, L], sigmabar [B]) -> float32 [B, L, V].

    Returns the log concrete score of the model's graph; the current token's entry is 0.
    sedd: the model output. mdlm/radd (absorbing graph, mask id m = V - 1), from the model's
    log p(x0 = y | x_t) over data ids y: at masked positions log s[y] = log p(y | x_t) -
    log expm1(sigmabar) for y < m and 0 at m; at unmasked positions 0 at the current token
    and NEG_INF (-1e6, a finite log 0) elsewhere, as the absorbing reverse process never
    moves an unmasked token. `config` may be a DiTConfig or anything with a `.dit` one.

    head "masked" (absorbing graph): the output Linear and the family's transform run only
    at masked positions (`masked_head`); unmasked positions get 0 at the current token and
    NEG_INF elsewhere for every family (the value every absorbing kernel ignores there: no
    move leaves an unmasked token). Masked positions are bit for bit those of head "full"
    at the GEMM sizes that XLA CPU sends to Eigen (tests/test_masked_head.py); training keeps
    "full" (one GEMM).
    The result is a `jax.tree_util.Partial` (a pytree holding params), so it can be passed
    into jitted code as an argument instead of baking params in as constants.
    """
    cfg = getattr(config, "dit", config)
    if not isinstance(cfg, DiTConfig):
        raise TypeError(f"config must be a DiTConfig (or have .dit), got {type(config).__name__}")
    if head not in HEADS:
        raise ValueError(f"head {head!r} is not supported; allowed: {', '.join(HEADS)}")
    if head == "masked" and cfg.graph != "absorb":
        raise ValueError(f"head 'masked' needs the absorbing graph (graph {cfg.graph!r}: every token can move); "
                         "allowed there: full")
    return jax.tree_util.Partial(_DiTScore(model, cfg, head), params)


def for_gradients(score_fn: Callable[[Array, Array], Array]) -> Callable[[Array, Array], Array]:
    """The score function to differentiate through (the LSD losses: phi, and the grid via
    sigmabar): a masked-head DiT score becomes the full head's (its tile loop under reverse
    mode carries a [B L, V] buffer per tile: 4.6x slower at V 50258, L 64, B 4, and worse
    with more tiles); any other score function is returned as is. Masked positions get the
    same values either way, and the losses read only those."""
    f = getattr(score_fn, "func", None)
    if isinstance(score_fn, jax.tree_util.Partial) and isinstance(f, _DiTScore) and f.head != "full":
        return jax.tree_util.Partial(dataclasses.replace(f, head="full"), *score_fn.args)
    return score_fn


@dataclasses.dataclass(frozen=True)
class _DiTScore:
    """Hashable (model, config, head) part of a score function; params come as an argument.

    score = finish(net(params, x, sigmabar), x, sigmabar). `reusable`: net does not read
    sigmabar (mdlm without time conditioning, radd), so a sampler step whose x did not
    change may reuse the previous net output exactly (`lsd_jax.samplers`, the step cache).
    """

    model: DiT
    cfg: DiTConfig
    head: str = "full"

    @property
    def reusable(self) -> bool:
        return self.cfg.family == "radd" or (self.cfg.family == "mdlm" and not self.cfg.time_conditioning)

    def __call__(self, params: Any, x: Array, sigmabar: Array) -> Array:
        return self.finish(self.net(params, x, sigmabar), x, sigmabar)

    def net(self, params: Any, x: Array, sigmabar: Array) -> Array:
        """The family's output [B, L, V] (`DiT.__call__`; masked head: see `masked_head`)."""
        if self.head == "full":
            return self.model.apply({"params": params}, x, sigmabar)
        return masked_head(self.cfg, params["output_layer"]["linear"], self.trunk(params, x, sigmabar), x, sigmabar)

    @property
    def row_tile(self) -> int:
        """Rows per tile of a row-wise step (`lsd_jax.solvers.rows`); 0: this score has no row path."""
        return HEAD_TILE if self.head == "masked" else 0

    def trunk(self, params: Any, x: Array, sigmabar: Array) -> Array:
        """The output Linear's input [B, L, D] (`DiT(head=False)`)."""
        return self.model.apply({"params": params}, x, sigmabar, head=False)

    def rows(self, params: Any, h: Array, x: Array, sigmabar: Array) -> Array:
        """The log score of rows [R, V] from trunk rows h [R, D], their tokens x [R] and
        sigmabar [R]: the masked head's tile, then `finish` (masked rows: head "masked"'s bits)."""
        out = head_rows(self.cfg, params["output_layer"]["linear"], h, x, sigmabar)
        return self.finish(out[:, None], x[:, None], sigmabar)[:, 0]

    def finish(self, out: Array, x: Array, sigmabar: Array) -> Array:
        """The log score [B, L, V] from the family's output (elementwise)."""
        if self.cfg.family == "sedd":
            return out
        v = self.cfg.vocab_size
        sigmabar = jnp.asarray(sigmabar, jnp.float32)
        log_s = out - jnp.log(expm1_stable(sigmabar))[:, None, None]
        masked = jnp.where(id_row(v, v - 1, log_s.ndim), 0.0, log_s)
        unmasked = jnp.where(is_token(x, v), 0.0, NEG_INF)
        return jnp.where((x == v - 1)[..., None], masked, unmasked)


def _linear(cfg: DiTConfig, p: Any, h: Array) -> Array:
    """The output Linear on rows h [R, D] -> float32 [R, V], as `nn.Dense` computes it."""
    dt = cfg.compute_dtype
    h, kernel, bias = (jnp.asarray(a, dt) for a in (h, p["kernel"], p["bias"]))
    y = jax.lax.dot_general(h, kernel, (((1,), (0,)), ((), ())))
    y += jnp.reshape(bias, (1, -1))
    return y.astype(jnp.float32)


def head_rows(cfg: DiTConfig, linear: Any, h: Array, x: Array, sigmabar: Array) -> Array:
    """The output Linear and `output_transform` on rows: h [R, D], x [R], sigmabar [R] -> [R, V]
    (each row a sequence of length 1: the same bits as those positions of the full head at the
    GEMM shapes XLA CPU sends to Eigen)."""
    logits = _linear(cfg, linear, h)[:, None]  # [R, 1, V]
    return output_transform(cfg, logits, x[:, None], sigmabar)[:, 0]


def masked_head(cfg: DiTConfig, linear: Any, h: Array, x: Array, sigmabar: Array) -> Array:
    """The output Linear and `output_transform` at masked positions only -> float32 [B, L, V].

    h [B, L, D]: the Linear's input (`DiT(head=False)`); linear: its params {kernel, bias}.
    The masked positions (flattened over B * L, in order) are taken in tiles of R =
    min(HEAD_TILE, B L) rows; the first ceil(count / R) tiles (count traced; the others are
    skipped by lax.cond) each run one [R, D] x [D, V] GEMM and the transform and write their
    rows into the output, so
    a position's logits come from the same GEMM shape however many positions are masked
    (all masked: every tile runs; no separate fallback). Unmasked positions hold 0 at the
    current token and NEG_INF elsewhere.
    """
    h, x = jnp.asarray(h), jnp.asarray(x)  # numpy tokens cannot be indexed by the traced tile rows
    b, length, d = h.shape
    v, n = cfg.vocab_size, b * length
    xf = x.reshape(n)
    hf = h.reshape(n, d)
    sf = jnp.repeat(jnp.asarray(sigmabar, jnp.float32), length)  # [n]

    def tile(rows, safe, out):
        vals = head_rows(cfg, linear, hf[safe], xf[safe], sf[safe])

        def put(i, o):  # one contiguous row copy (faster than XLA CPU's scatter); padding rows skipped
            return jax.lax.cond(rows[i] < n, lambda: jax.lax.dynamic_update_slice(o, vals[i][None], (rows[i], 0)),
                                lambda: o)

        return jax.lax.fori_loop(0, rows.shape[0], put, out)

    fill = jnp.full((n, v), NEG_INF, jnp.float32).at[jnp.arange(n), xf].set(0.0)  # [n, V]
    return over_masked_tiles(xf == v - 1, HEAD_TILE, tile, fill).reshape(b, length, v)


def features_fn_from(model: DiT, params: Any) -> Callable[[Array, Array], Array]:
    """(x int32 [B, L], sigmabar [B]) -> float32 [B, D]: the final hidden states of the
    network, mean-pooled over positions (the features of `lsd_jax.divergences.mmd`)."""

    def features(x: Array, sigmabar: Array) -> Array:
        _, state = model.apply({"params": params}, x, sigmabar, mutable=["intermediates"])
        return jnp.mean(state["intermediates"]["final_hidden"][0].astype(jnp.float32), axis=1)

    return jax.jit(features)


def init_params(config: DiTConfig, key: Array, batch: int = 1) -> Any:
    """Fresh parameters (adaLN and output layer zero, as the references initialise)."""
    x = jnp.zeros((batch, config.length), jnp.int32)
    return DiT(config).init(key, x, jnp.ones((batch,), jnp.float32))["params"]


def abstract_params(config: DiTConfig, dtype: Any = jnp.float32) -> Any:
    """ShapeDtypeStruct tree of the parameters, every leaf in `dtype`; no compute."""
    tree = jax.eval_shape(lambda k: init_params(config, k), jax.random.PRNGKey(0))
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype)), tree)
