"""Key tables: PyTorch checkpoint key -> Flax parameter path of `lsd_jax.models.dit.DiT`.

One explicit table per family, built from the config (only the block count repeats):

| checkpoint key (sedd, radd; mdlm adds the prefix `backbone.`) | Flax path                              | torch shape -> Flax |
|----------------------------------------------------------------|----------------------------------------|---------------------|
| vocab_embed.embedding                                          | vocab_embed/embedding                  | [V, D] copied       |
| sigma_map.mlp.0.{weight,bias}          (not radd)              | sigma_map/mlp_0/{kernel,bias}          | [C, 256] -> [256, C]|
| sigma_map.mlp.2.{weight,bias}          (not radd)              | sigma_map/mlp_2/{kernel,bias}          | [C, C] transposed   |
| blocks.{i}.norm1.weight (+ .bias radd)                         | blocks_{i}/norm1/scale (+ bias)        | [D]                 |
| blocks.{i}.attn_qkv.weight                                     | blocks_{i}/attn_qkv/kernel             | [3D, D] -> [D, 3D]  |
| blocks.{i}.attn_out.weight                                     | blocks_{i}/attn_out/kernel             | [D, D] transposed   |
| blocks.{i}.norm2.weight (+ .bias radd)                         | blocks_{i}/norm2/scale (+ bias)        | [D]                 |
| blocks.{i}.mlp.0.{weight,bias}                                 | blocks_{i}/mlp_0/{kernel,bias}         | [4D, D] -> [D, 4D]  |
| blocks.{i}.mlp.2.{weight,bias}                                 | blocks_{i}/mlp_2/{kernel,bias}         | [D, 4D] -> [4D, D]  |
| blocks.{i}.adaLN_modulation.{weight,bias} (not radd)           | blocks_{i}/adaLN_modulation/{kernel,bias} | [6D, C] -> [C, 6D] |
| output_layer.norm_final.weight (+ .bias radd)                  | output_layer/norm_final/scale (+ bias) | [D]                 |
| output_layer.linear.{weight,bias}                              | output_layer/linear/{kernel,bias}      | [V, D] -> [D, V]    |
| output_layer.adaLN_modulation.{weight,bias} (not radd)         | output_layer/adaLN_modulation/{kernel,bias} | [2D, C] -> [C, 2D] |
| rotary_emb.inv_freq  (a buffer, optional)                      | - (checked against the recomputed value) | [Dh / 2]          |
"""

from __future__ import annotations

import dataclasses

from lsd_jax.models.dit import FREQ_DIM, MLP_RATIO, DiTConfig

PREFIX = {"sedd": "", "mdlm": "backbone.", "radd": ""}
INV_FREQ = "rotary_emb.inv_freq"  # buffer key, without the family prefix


@dataclasses.dataclass(frozen=True)
class Entry:
    """One checkpoint tensor: its key, the Flax path it fills and its torch shape."""

    key: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    linear: bool = False  # a torch Linear weight [out, in]: transpose to a kernel [in, out]

    @property
    def flax_shape(self) -> tuple[int, ...]:
        return self.shape[::-1] if self.linear else self.shape


def _dense(key: str, path: tuple[str, ...], n_out: int, n_in: int, bias: bool = True) -> list[Entry]:
    out = [Entry(f"{key}.weight", path + ("kernel",), (n_out, n_in), linear=True)]
    if bias:
        out.append(Entry(f"{key}.bias", path + ("bias",), (n_out,)))
    return out


def _norm(key: str, path: tuple[str, ...], dim: int, bias: bool) -> list[Entry]:
    out = [Entry(f"{key}.weight", path + ("scale",), (dim,))]
    if bias:
        out.append(Entry(f"{key}.bias", path + ("bias",), (dim,)))
    return out


def key_table(cfg: DiTConfig) -> list[Entry]:
    """Every parameter tensor a checkpoint of `cfg.family` must hold, in checkpoint order."""
    v, d, c = cfg.vocab_size, cfg.hidden_size, cfg.cond_dim
    radd = cfg.family == "radd"
    entries = [Entry("vocab_embed.embedding", ("vocab_embed", "embedding"), (v, d))]
    if not radd:
        entries += _dense("sigma_map.mlp.0", ("sigma_map", "mlp_0"), c, FREQ_DIM)
        entries += _dense("sigma_map.mlp.2", ("sigma_map", "mlp_2"), c, c)
    for i in range(cfg.n_blocks):
        k, p = f"blocks.{i}", (f"blocks_{i}",)
        entries += _norm(f"{k}.norm1", p + ("norm1",), d, radd)
        entries += _dense(f"{k}.attn_qkv", p + ("attn_qkv",), 3 * d, d, bias=False)
        entries += _dense(f"{k}.attn_out", p + ("attn_out",), d, d, bias=False)
        entries += _norm(f"{k}.norm2", p + ("norm2",), d, radd)
        entries += _dense(f"{k}.mlp.0", p + ("mlp_0",), MLP_RATIO * d, d)
        entries += _dense(f"{k}.mlp.2", p + ("mlp_2",), d, MLP_RATIO * d)
        if not radd:
            entries += _dense(f"{k}.adaLN_modulation", p + ("adaLN_modulation",), 6 * d, c)
    entries += _norm("output_layer.norm_final", ("output_layer", "norm_final"), d, radd)
    entries += _dense("output_layer.linear", ("output_layer", "linear"), v, d)
    if not radd:
        entries += _dense("output_layer.adaLN_modulation", ("output_layer", "adaLN_modulation"), 2 * d, c)
    prefix = PREFIX[cfg.family]
    return [dataclasses.replace(e, key=prefix + e.key) for e in entries]


def buffer_keys(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Optional non-parameter tensors (checked, never required): key -> shape."""
    return {PREFIX[cfg.family] + INV_FREQ: (cfg.head_dim // 2,)}
