"""PyTorch reference of the SEDD DiT and its MDLM and RADD variants, written for the tests.

It follows the math of the upstream models (louaaron/Score-Entropy-Discrete-Diffusion
`model/transformer.py`, kuleshov-group/mdlm `models/dit.py` + "subs", ML-GSAI/RADD
`model/transformer.py`) and keeps their exact state-dict key names, so that checkpoints it
saves look like the released ones. It runs in float32 on any device, without flash-attn:
attention is written out as softmax(q k^T / sqrt(Dh)) v.

`bugs` (a set of names) plants one known mistake, to show that the parity tests notice it:
  "no_rotary"      rotary embedding skipped
  "swap_cos_sin"   cos and sin tables exchanged in the rotary
  "chunk_order"    adaLN chunks read as (scale, shift, ...) instead of (shift, scale, ...)
  "one_plus_gate"  residual x + (1 + gate) * out instead of x + gate * out
  "sin_first"      timestep embedding [sin, cos] instead of [cos, sin]
"""

from __future__ import annotations

import json
import math
import os
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NEG_INF = -1000000.0  # MDLM's neg_infinity
BUGS = ("no_rotary", "swap_cos_sin", "chunk_order", "one_plus_gate", "sin_first")


# ----------------------------------------------------------------------------- configs
def make_config(
    family: str = "sedd",
    *,
    tokens: int = 30,
    graph: str = "absorb",
    hidden_size: int = 32,
    cond_dim: int = 16,
    n_blocks: int = 2,
    n_heads: int = 4,
    length: int = 16,
    scale_by_sigma: Optional[bool] = None,
    time_conditioning: bool = True,
) -> dict:
    """The config.json dict a checkpoint of `family` carries (upstream field names)."""
    if family == "mdlm":
        return {
            "architectures": ["MDLM"],
            "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
            "model_type": "mdlm",
            "vocab_size": tokens + 1,
            "model_length": length,
            "hidden_dim": hidden_size,
            "cond_dim": cond_dim,
            "n_blocks": n_blocks,
            "n_heads": n_heads,
            "dropout": 0.1,
            "time_conditioning": time_conditioning,
            "torch_dtype": "float32",
            "transformers_version": "4.38.2",
        }
    model = {
        "name": "tiny",
        "hidden_size": hidden_size,
        "cond_dim": cond_dim,
        "length": length,
        "n_blocks": n_blocks,
        "n_heads": n_heads,
        "dropout": 0.1,
    }
    cfg = {
        "ngpus": 1,
        "tokens": tokens,
        "training": {"batch_size": 8, "ema": 0.9999},
        "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
        "model": model,
    }
    if family == "radd":
        model.update(type="ddit_wot", use_checkpoint=False, dtype="float32")
    elif family == "sedd":
        model.update(type="ddit", scale_by_sigma=(graph == "absorb") if scale_by_sigma is None else scale_by_sigma)
        cfg["graph"] = {"type": graph, "file": "data", "report_all": False}
    else:
        raise ValueError(f"family {family!r}; allowed: sedd, mdlm, radd")
    return cfg


# ----------------------------------------------------------------------------- layers
class WeightNorm(nn.Module):
    """F.layer_norm in float32 (eps 1e-5) times `weight` (plus `bias` for RADD)."""

    def __init__(self, dim: int, bias: bool = False):
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x):
        y = F.layer_norm(x.float(), [self.dim]) * self.weight[None, None]
        return y if self.bias is None else y + self.bias[None, None]


class TokenEmbedding(nn.Module):
    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(vocab, dim))

    def forward(self, ids):
        return self.embedding[ids]


class SigmaEmbedding(nn.Module):
    """256 sinusoidal features of sigma (cos half first) -> Linear -> SiLU -> Linear."""

    def __init__(self, cond_dim: int, freq_dim: int = 256, bugs: frozenset = frozenset()):
        super().__init__()
        self.freq_dim = freq_dim
        self.bugs = bugs
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def features(self, sigma):
        half = self.freq_dim // 2
        k = torch.arange(half, dtype=torch.float32, device=sigma.device)
        angle = sigma.float()[:, None] * torch.exp(-math.log(10000.0) * k / half)[None]
        parts = [torch.sin(angle), torch.cos(angle)] if "sin_first" in self.bugs else [torch.cos(angle), torch.sin(angle)]
        return torch.cat(parts, dim=-1)

    def forward(self, sigma):
        return self.mlp(self.features(sigma))


class RotaryTable(nn.Module):
    """Holds the persistent `inv_freq` buffer; returns cos, sin [L, Dh]."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim)))

    def forward(self, length: int):
        pos = torch.arange(length, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        angle = torch.outer(pos, self.inv_freq)
        angle = torch.cat([angle, angle], dim=-1)
        return angle.cos(), angle.sin()


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Block(nn.Module):
    """One DiT block; `adaptive` (SEDD, MDLM) has adaLN, else RADD's plain pre-LN block."""

    def __init__(self, dim: int, n_heads: int, cond_dim: int, adaptive: bool, bugs: frozenset):
        super().__init__()
        self.n_heads, self.adaptive, self.bugs = n_heads, adaptive, bugs
        self.norm1 = WeightNorm(dim, bias=not adaptive)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = WeightNorm(dim, bias=not adaptive)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        if adaptive:
            self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)

    def attention(self, h, cos, sin):
        b, length, d = h.shape
        qkv = self.attn_qkv(h).view(b, length, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv.unbind(dim=2)  # [B, L, H, Dh]
        if "no_rotary" not in self.bugs:
            if "swap_cos_sin" in self.bugs:
                cos, sin = sin, cos
            rot = lambda t: t * cos[None, :, None] + _rotate_half(t) * sin[None, :, None]
            q, k = rot(q), rot(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, Dh]
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        return self.attn_out((w @ v).transpose(1, 2).reshape(b, length, d))

    def forward(self, x, cos, sin, c):
        if not self.adaptive:
            x = x + self.attention(self.norm1(x), cos, sin)
            return x + self.mlp(self.norm2(x))
        chunks = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = chunks
        if "chunk_order" in self.bugs:
            shift_msa, scale_msa = scale_msa, shift_msa
        if "one_plus_gate" in self.bugs:
            gate_msa, gate_mlp = 1 + gate_msa, 1 + gate_mlp
        h = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.attention(h, cos, sin)
        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.mlp(h)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, vocab: int, cond_dim: int, adaptive: bool):
        super().__init__()
        self.adaptive = adaptive
        self.norm_final = WeightNorm(dim, bias=not adaptive)
        self.linear = nn.Linear(dim, vocab)
        if adaptive:
            self.adaLN_modulation = nn.Linear(cond_dim, 2 * dim)

    def forward(self, x, c):
        h = self.norm_final(x)
        if self.adaptive:
            shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
            h = h * (1 + scale) + shift
        return self.linear(h)


class Backbone(nn.Module):
    """The transformer; `forward(ids, sigma)` returns raw logits [B, L, V]."""

    def __init__(self, vocab, dim, cond_dim, n_blocks, n_heads, adaptive, bugs=frozenset()):
        super().__init__()
        self.adaptive = adaptive
        self.vocab_embed = TokenEmbedding(dim, vocab)
        if adaptive:
            self.sigma_map = SigmaEmbedding(cond_dim, bugs=bugs)
        self.rotary_emb = RotaryTable(dim // n_heads)
        self.blocks = nn.ModuleList(Block(dim, n_heads, cond_dim, adaptive, bugs) for _ in range(n_blocks))
        self.output_layer = FinalLayer(dim, vocab, cond_dim, adaptive)

    def forward(self, ids, sigma):
        x = self.vocab_embed(ids).float()
        c = F.silu(self.sigma_map(sigma)) if self.adaptive else None
        cos, sin = self.rotary_emb(ids.shape[1])
        for blk in self.blocks:
            x = blk(x, cos, sin, c)
        return self.output_layer(x, c)


class SEDDRef(Backbone):
    """SEDD: forward(ids, sigma) -> log concrete score, current token's entry 0."""

    def __init__(self, cfg: dict, bugs: Iterable[str] = ()):
        m = cfg["model"]
        self.absorb = cfg["graph"]["type"] == "absorb"
        super().__init__(cfg["tokens"] + self.absorb, m["hidden_size"], m["cond_dim"], m["n_blocks"], m["n_heads"], True, frozenset(bugs))
        self.scale_by_sigma = m["scale_by_sigma"]

    def forward(self, ids, sigma):
        x = super().forward(ids, sigma)
        if self.scale_by_sigma:
            assert self.absorb
            esigm1 = torch.where(sigma < 0.5, torch.expm1(sigma), sigma.exp() - 1)
            x = x - esigm1.log().to(x.dtype)[:, None, None] - np.log(x.shape[-1] - 1)
        return torch.scatter(x, -1, ids[..., None], torch.zeros_like(x[..., :1]))


class MDLMRef(nn.Module):
    """MDLM: `backbone.*` keys; forward(ids, sigma) -> "subs" log p(x0 | x_t) [B, L, V]."""

    def __init__(self, cfg: dict, bugs: Iterable[str] = ()):
        super().__init__()
        self.time_conditioning = cfg["time_conditioning"]
        self.mask_index = cfg["vocab_size"] - 1
        self.backbone = Backbone(cfg["vocab_size"], cfg["hidden_dim"], cfg["cond_dim"], cfg["n_blocks"], cfg["n_heads"], True, frozenset(bugs))

    def forward(self, ids, sigma):
        if not self.time_conditioning:
            sigma = torch.zeros_like(sigma)
        logits = self.backbone(ids, sigma).clone()
        logits[:, :, self.mask_index] += NEG_INF
        logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        unmasked = ids != self.mask_index
        logits[unmasked] = NEG_INF
        logits[unmasked, ids[unmasked]] = 0.0
        return logits


class RADDRef(Backbone):
    """RADD: no time input; forward(ids, sigma=None) -> [log_softmax over data ids, mask logit]."""

    def __init__(self, cfg: dict, bugs: Iterable[str] = ()):
        m = cfg["model"]
        super().__init__(cfg["tokens"] + 1, m["hidden_size"], m["cond_dim"], m["n_blocks"], m["n_heads"], False, frozenset(bugs))

    def forward(self, ids, sigma=None):
        x = super().forward(ids, None).clone()
        x[:, :, :-1] = x[:, :, :-1].log_softmax(dim=-1)
        return x


def build(family: str, cfg: dict, bugs: Iterable[str] = ()) -> nn.Module:
    bad = set(bugs) - set(BUGS)
    if bad:
        raise ValueError(f"unknown bugs {sorted(bad)}; allowed: {BUGS}")
    return {"sedd": SEDDRef, "mdlm": MDLMRef, "radd": RADDRef}[family](cfg, bugs).eval()


# --------------------------------------------------------------------- random weights
@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random and non-zero, so that every path matters (spec: weights
    N(0, 1/fan_in), biases N(0, 0.1^2), LayerNorm weights 1 + N(0, 0.1^2), embeddings N(0, 1))."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda p: torch.randn(p.shape, generator=g, dtype=torch.float32)
    for name, p in model.named_parameters():
        if name.endswith("embedding"):
            p.copy_(randn(p))
        elif ".norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.1 * randn(p))
        elif name.endswith("weight"):  # Linear [out, in]
            p.copy_(randn(p) / math.sqrt(p.shape[1]))
        else:  # Linear and LayerNorm biases
            p.copy_(0.1 * randn(p))
    return model


def save_hf(model: nn.Module, cfg: dict, directory: str, fmt: str = "safetensors") -> str:
    """Writes config.json + model.safetensors ("safetensors") or pytorch_model.bin ("bin")."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, os.path.join(directory, "model.safetensors"))
    elif fmt == "bin":
        torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    else:
        raise ValueError(f"fmt {fmt!r}; allowed: safetensors, bin")
    return directory
