"""The upstream PyTorch SEDD code for `benchmarks/speed.py`: import it from a checkout and,
where flash-attn is not installable (no CUDA), plain-torch stand-ins for its two functions
(`flash_attn_varlen_qkvpacked_func` -> torch scaled_dot_product_attention,
`apply_rotary_emb_qkv_` -> the rotate-half rotary in place), recorded in the results.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import types
import warnings

import torch
import torch.nn.functional as F


def _flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                      **_):
    """Stand-in for flash_attn's varlen packed attention: qkv [total, 3, H, Dh] -> [total, H, Dh]."""
    total, _, h, d = qkv.shape
    lens = cu_seqlens[1:] - cu_seqlens[:-1]
    if bool((lens == max_seqlen).all()):
        q, k, v = qkv.view(lens.numel(), max_seqlen, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=softmax_scale)
        return out.transpose(1, 2).reshape(total, h, d)
    outs = []
    for s, e in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        q, k, v = qkv[s:e].permute(1, 2, 0, 3).unbind(0)
        o = F.scaled_dot_product_attention(q[None], k[None], v[None], dropout_p=dropout_p, is_causal=causal,
                                           scale=softmax_scale)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs, 0)


def _apply_rotary_emb_qkv_(qkv, cos, sin, cos_k=None, sin_k=None, interleaved=False, **_):
    """Stand-in for flash_attn's in-place rotary on q and k: qkv [B, S, 3, H, Dh], cos/sin [S, Dh/2]."""
    assert not interleaved and cos_k is None and sin_k is None
    half = cos.shape[-1]
    c, s = cos[None, :, None, :].to(qkv.dtype), sin[None, :, None, :].to(qkv.dtype)
    for i in (0, 1):
        t = qkv[:, :, i]
        x1, x2 = t[..., :half].clone(), t[..., half:2 * half].clone()
        t[..., :half] = x1 * c - x2 * s
        t[..., half:2 * half] = x2 * c + x1 * s
    return qkv


def install_flash_attn_stub() -> None:
    fa = types.ModuleType("flash_attn")
    fa.__doc__ = "lsd-jax benchmark stand-in: plain torch, NOT flash-attn"
    iface = types.ModuleType("flash_attn.flash_attn_interface")
    iface.flash_attn_varlen_qkvpacked_func = _flash_attn_varlen_qkvpacked_func
    layers = types.ModuleType("flash_attn.layers")
    rot = types.ModuleType("flash_attn.layers.rotary")
    rot.apply_rotary_emb_qkv_ = _apply_rotary_emb_qkv_
    fa.flash_attn_interface, fa.layers, layers.rotary = iface, layers, rot
    sys.modules.update({"flash_attn": fa, "flash_attn.flash_attn_interface": iface, "flash_attn.layers": layers,
                        "flash_attn.layers.rotary": rot})


def load_upstream(path: str | None, commit: str | None = None):
    """The upstream modules, or (None, reason). commit: recorded as given (for a checkout
    extracted without .git), else read with git."""
    if not path:
        return None, "not available: no --upstream checkout given"
    if not os.path.isfile(os.path.join(path, "sampling.py")) or not os.path.isdir(os.path.join(path, "model")):
        return None, f"not available: {path} is not a Score-Entropy-Discrete-Diffusion checkout"
    try:
        import flash_attn  # noqa: F401

        stub = False
    except ImportError:
        install_flash_attn_stub()
        stub = True
    sys.path.insert(0, os.path.abspath(path))
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*autocast.*")
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    try:
        import graph_lib
        import noise_lib
        import sampling
        from model import SEDD
    except Exception as e:  # noqa: BLE001
        return None, f"not available: importing upstream from {path} failed: {type(e).__name__}: {e}"
    with contextlib.suppress(Exception):
        commit = commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    up = types.SimpleNamespace(SEDD=SEDD, sampling=sampling, graph_lib=graph_lib, noise_lib=noise_lib,
                               flash_attn_stub=stub, path=os.path.abspath(path), commit=commit)
    return up, None
