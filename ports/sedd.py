"""SEDD / MDLM / RADD checkpoints (Hugging Face layout) -> Flax `DiT` params, and back.

Two directory layouts are read:
- HF layout: `config.json` + `model.safetensors` (read with the `safetensors` numpy API;
  no torch needed) or `pytorch_model.bin` (torch, imported only then); sharded
  `*.index.json` variants too. A path that is not a local directory is tried as a
  Hugging Face repo id (`huggingface_hub.snapshot_download`).
- converted: `lsd_config.json` (CheckpointConfig.to_dict) + `params/` (an orbax
  StandardCheckpointer save of the Flax params), written by `convert`.

The family comes from config.json: `model_type: mdlm` -> mdlm; `model.type: ddit_wot` ->
radd; otherwise sedd. Loading is strict: every parameter of the family's key table
(`ports.keymaps`) must be present with its shape, and every tensor in the file must be
used; `CheckpointError` names each missing, unexpected and mis-shaped key (and, before
that, every unsupported config value). `rotary_emb.inv_freq` is an optional buffer: when
present its shape is checked and its values are compared with the recomputed float32
frequencies; a difference only warns (RuntimeWarning) and the recomputed values are used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import struct
import time
import warnings
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax import graphs as graphs_lib
from lsd_jax import noise as noise_lib
from lsd_jax import validate
from lsd_jax.models.dit import DTYPES, ConfigError, DiT, DiTConfig, abstract_params, rotary_inv_freq
from ports.keymaps import Entry, buffer_keys, key_table

CONFIG_FILE = "config.json"
CONVERTED_CONFIG = "lsd_config.json"
PARAMS_DIR = "params"
FORMAT = "lsd-jax-dit"
FORMAT_VERSION = 1
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MDLM_DEFAULT_NOISE = {"type": "loglinear", "eps": 1e-3}  # MDLM's config.json has no noise block


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names every offending key/field."""


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """What a loaded checkpoint is: family, graph, data tokens, length, noise, model.

    noise: the `lsd_jax.noise` dict (`to_dict()` form) of the schedule it was trained with.
    """

    family: str
    graph: str
    num_tokens: int
    length: int
    noise: dict = dataclasses.field(hash=False)
    dit: DiTConfig
    source: str = dataclasses.field(default="", compare=False)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "family": self.family,
            "graph": self.graph,
            "num_tokens": self.num_tokens,
            "length": self.length,
            "noise": dict(self.noise),
            "dit": self.dit.to_dict(),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CheckpointConfig":
        if d.get("format") != FORMAT or d.get("version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{CONVERTED_CONFIG}: format/version = {d.get('format')!r}/{d.get('version')!r}; "
                f"allowed: {FORMAT!r}/{FORMAT_VERSION}"
            )
        try:
            dit = DiTConfig.from_dict(d["dit"])
            return cls(d["family"], d["graph"], d["num_tokens"], d["length"], dict(d["noise"]), dit, d.get("source", ""))
        except KeyError as e:
            raise CheckpointError(f"{CONVERTED_CONFIG}: field {e.args[0]!r} is missing") from None
        except ConfigError as e:
            raise CheckpointError(f"{CONVERTED_CONFIG}: {e}") from None

    def with_dtype(self, dtype: str) -> "CheckpointConfig":
        return dataclasses.replace(self, dit=self.dit.replace(dtype=dtype))


# ------------------------------------------------------------------------ config.json
def detect_family(raw: Mapping[str, Any]) -> str:
    """sedd | mdlm | radd from a config.json dict (see the module docstring)."""
    if raw.get("model_type") == "mdlm" or ("hidden_dim" in raw and "vocab_size" in raw):
        return "mdlm"
    model = raw.get("model")
    if isinstance(model, Mapping) and "tokens" in raw:
        return "radd" if model.get("type") == "ddit_wot" else "sedd"
    raise CheckpointError(
        f"{CONFIG_FILE} is neither a SEDD/RADD training config (fields `tokens`, `model`, "
        f"`graph`, `noise`) nor an MDLM config (`model_type: mdlm`); top-level fields: {sorted(raw)}"
    )


def _noise_dict(block: Any) -> tuple[Optional[dict], list[str]]:
    """Validates a config `noise` block -> (lsd_jax.noise dict, problems)."""
    if not isinstance(block, Mapping):
        return None, [f"noise is missing or not a mapping (allowed noise.type: {', '.join(noise_lib.NOISES)})"]
    kind = block.get("type")
    if kind not in noise_lib.NOISES:
        return None, [f"noise.type = {kind!r} is not supported; allowed: {', '.join(noise_lib.NOISES)}"]
    # loglinear ignores sigma_min/sigma_max (SEDD's LogLinearNoise has a fixed eps = 1e-3).
    fields = ("eps",) if kind == "loglinear" else ("sigma_min", "sigma_max")
    kwargs, problems = {}, []
    for f in fields:
        if f in block:
            try:  # YAML-born configs may hold "1e-4" as a string
                kwargs[f] = float(block[f])
            except (TypeError, ValueError):
                problems.append(f"noise.{f} = {block[f]!r} must be a number")
    if problems:
        return None, problems
    try:
        return noise_lib.get_noise(kind, **kwargs).to_dict(), []
    except ValueError as e:
        return None, [str(e)]


def parse_config(raw: Mapping[str, Any], dtype: str = "float32", source: str = "") -> CheckpointConfig:
    """config.json dict -> CheckpointConfig; CheckpointError names every unsupported value."""
    family = detect_family(raw)
    problems: list[str] = []
    if dtype not in DTYPES:
        problems.append(f"dtype = {dtype!r} is not supported; allowed: {', '.join(DTYPES)}")
        dtype = "float32"
    dit = None
    try:
        reader = DiTConfig.from_mdlm_config if family == "mdlm" else DiTConfig.from_sedd_config
        dit = reader(raw, dtype=dtype)
    except ConfigError as e:
        problems += e.problems
    noise, noise_problems = _noise_dict(MDLM_DEFAULT_NOISE if family == "mdlm" else raw.get("noise"))
    problems += noise_problems
    if problems:
        where = f" in {source}" if source else ""
        raise CheckpointError(f"unsupported {family} config{where}: " + "; ".join(problems))
    return CheckpointConfig(family, dit.graph, dit.num_tokens, dit.length, noise, dit, source)


# ------------------------------------------------------------------------ tensors
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy arrays (bfloat16 via ml_dtypes)."""
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except TypeError:  # numpy has no bfloat16: read the (simple) format directly
        pass
    except Exception as e:  # noqa: BLE001 - safetensors' own error type: one clear message
        raise CheckpointError(f"{path} cannot be read as safetensors: {str(e).splitlines()[0]}") from None
    import ml_dtypes

    dtypes = dict(_ST_DTYPES, BF16=ml_dtypes.bfloat16)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise CheckpointError(f"{path}: tensor {name} has dtype {info['dtype']}; allowed: {sorted(dtypes)}")
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
    """All tensors of a pytorch_model.bin (torch pickle) as numpy arrays; needs torch."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path} is a PyTorch pickle and reading it needs torch, which is not installed: "
            "pip install torch (or lsd-jax[torch]), or provide model.safetensors instead"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle / zip / torch errors: one clear message
        raise CheckpointError(f"{path} cannot be read as a PyTorch state dict "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (key -> tensor), got {type(state).__name__}")
    bad = sorted(k for k, t in state.items() if not isinstance(t, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(map(str, bad))}")
    return {k: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for k, t in state.items()}


def weight_files(directory: str) -> tuple[str, list[str]]:
    """(format, files) of the weights in an HF directory: safetensors first, then .bin."""
    for name, fmt in (("model.safetensors", "safetensors"), ("pytorch_model.bin", "bin")):
        if os.path.isfile(os.path.join(directory, name)):
            return fmt, [os.path.join(directory, name)]
        index = os.path.join(directory, name + ".index.json")
        if os.path.isfile(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return fmt, [os.path.join(directory, s) for s in shards]
    raise CheckpointError(
        f"{directory} has no weights: expected {' or '.join(WEIGHT_FILES)} (or a sharded "
        f"*.index.json); found: {sorted(os.listdir(directory))}"
    )


def read_state_dict(directory: str) -> tuple[str, dict[str, np.ndarray]]:
    """(format, key -> numpy array) of the weights in an HF directory."""
    fmt, files = weight_files(directory)
    state: dict[str, np.ndarray] = {}
    for path in files:
        if not os.path.isfile(path):
            raise CheckpointError(f"shard {path} listed in the index is missing")
        problem = validate.weight_file_problem(path)
        if problem:
            raise CheckpointError(problem)
        state.update(_read_safetensors(path) if fmt == "safetensors" else _read_torch_bin(path))
    return fmt, state


def map_state_dict(state: Mapping[str, np.ndarray], cfg: CheckpointConfig, source: str = "") -> dict:
    """Checkpoint tensors -> Flax params (float32 numpy), strictly.

    Raises CheckpointError naming every missing, unexpected and mis-shaped key.
    """
    table: list[Entry] = key_table(cfg.dit)
    buffers = buffer_keys(cfg.dit)
    known = {e.key for e in table} | set(buffers)
    missing = [e.key for e in table if e.key not in state]
    unexpected = sorted(k for k in state if k not in known)
    misshaped = [
        f"{e.key} (checkpoint {list(np.shape(state[e.key]))}, expected {list(e.shape)})"
        for e in table
        if e.key in state and tuple(np.shape(state[e.key])) != e.shape
    ]
    misshaped += [
        f"{k} (checkpoint {list(np.shape(state[k]))}, expected {list(s)})"
        for k, s in buffers.items()
        if k in state and tuple(np.shape(state[k])) != s
    ]
    not_float = [
        f"{e.key} (dtype {np.asarray(state[e.key]).dtype})"
        for e in table
        if e.key in state and not _is_float(state[e.key])
    ]
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("mis-shaped keys", misshaped), ("non-float tensors", not_float)):
        if keys:
            parts.append(f"{label}: {', '.join(keys)}")
    if parts:
        where = f"checkpoint {source}" if source else "checkpoint"
        raise CheckpointError(f"{where} does not match a {cfg.family} DiT ({_describe(cfg.dit)}): " + "; ".join(parts))
    nonfinite = validate.nonfinite_tensors({e.key: state[e.key] for e in table})
    if nonfinite:
        where = f"checkpoint {source}" if source else "checkpoint"
        raise CheckpointError(f"{where} has tensors with NaN or inf: {', '.join(nonfinite)}")
    _check_inv_freq(state, cfg.dit, buffers)

    params: dict = {}
    for e in table:
        arr = np.asarray(state[e.key]).astype(np.float32)
        node = params
        for name in e.path[:-1]:
            node = node.setdefault(name, {})
        node[e.path[-1]] = np.ascontiguousarray(arr.T) if e.linear else arr
    _assert_matches_module(params, cfg.dit)
    return params


def _is_float(a: Any) -> bool:
    dt = np.asarray(a).dtype
    return np.issubdtype(dt, np.floating) or dt.name == "bfloat16"


def _describe(d: DiTConfig) -> str:
    return f"V={d.vocab_size}, D={d.hidden_size}, C={d.cond_dim}, blocks={d.n_blocks}, heads={d.n_heads}"


def _check_inv_freq(state: Mapping[str, np.ndarray], dit: DiTConfig, buffers: Mapping[str, tuple]) -> None:
    for key in buffers:
        if key not in state:
            continue
        got = np.asarray(state[key]).astype(np.float32)
        want = np.asarray(rotary_inv_freq(dit.head_dim))
        rel = float(np.max(np.abs(got - want) / want))
        if rel > 1e-5:
            warnings.warn(
                f"{key} differs from the recomputed rotary frequencies (max relative "
                f"difference {rel:.2e}); the recomputed float32 values are used",
                RuntimeWarning,
                stacklevel=3,
            )


def _assert_matches_module(params: Mapping, dit: DiTConfig) -> None:
    """Internal check: the key table fills exactly the module's parameter tree."""
    want = jax.tree_util.tree_map(lambda s: tuple(s.shape), abstract_params(dit))
    got = jax.tree_util.tree_map(lambda a: tuple(a.shape), params)
    if want != got:
        raise RuntimeError(f"key table and DiT parameters disagree for {dit}: {got} != {want}")


def cast_params(params: Any, dtype: str) -> Any:
    """Params as jax arrays of `dtype` (float32 | bfloat16)."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=jnp.dtype(dtype)), params)


def param_count(params: Any) -> int:
    return int(sum(np.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(params)))


# ------------------------------------------------------------------------ directories
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve(path: str) -> str:
    """A local directory for `path`: itself, or an HF repo id's snapshot download."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(f"{path} is a file; expected a checkpoint directory")
    if not _REPO_ID.match(path):
        raise CheckpointError(f"{path} does not exist (expected a checkpoint directory or a Hugging Face repo id owner/name)")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.bin"])
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        raise CheckpointError(
            f"{path} is not a local directory and downloading it from the Hugging Face Hub "
            f"failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); download it "
            "where the Hub is reachable and pass the local directory"
        ) from None


def is_converted(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, CONVERTED_CONFIG))


def read_hf(directory: str, dtype: str = "float32") -> tuple[CheckpointConfig, dict, str]:
    """(config, float32 numpy params, weight format) of an HF-layout directory."""
    cfg_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise CheckpointError(
            f"{directory} has no {CONFIG_FILE}: expected an HF-layout checkpoint ({CONFIG_FILE} + "
            f"{' or '.join(WEIGHT_FILES)}) or a converted directory ({CONVERTED_CONFIG} + {PARAMS_DIR}/)"
        )
    try:
        with open(cfg_path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from None
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{cfg_path} must hold a JSON object, got {type(raw).__name__}")
    cfg = parse_config(raw, dtype=dtype, source=os.path.abspath(directory))
    fmt, state = read_state_dict(directory)
    return cfg, map_state_dict(state, cfg, source=directory), fmt


def save_converted(dst: str, params: Any, cfg: CheckpointConfig) -> None:
    """Writes dst/lsd_config.json and dst/params (orbax) for params of dtype cfg.dit.dtype."""
    import orbax.checkpoint as ocp

    os.makedirs(dst, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(os.path.abspath(dst), PARAMS_DIR), params)
    ckptr.wait_until_finished()
    ckptr.close()
    from lsd_jax.runs import write_json

    write_json(os.path.join(dst, CONVERTED_CONFIG), cfg.to_dict(), indent=1)  # last: marks the directory complete


def load_converted(directory: str, dtype: Optional[str] = None) -> tuple[CheckpointConfig, Any]:
    """(config, params) of a directory written by `convert`; dtype None keeps the saved one."""
    import orbax.checkpoint as ocp

    with open(os.path.join(directory, CONVERTED_CONFIG)) as f:
        cfg = CheckpointConfig.from_dict(json.load(f))
    saved = cfg.dit.dtype
    target = abstract_params(cfg.dit, saved)
    ckptr = ocp.StandardCheckpointer()
    try:
        params = ckptr.restore(os.path.join(os.path.abspath(directory), PARAMS_DIR), target)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{directory}/{PARAMS_DIR} could not be restored for {_describe(cfg.dit)}: {e}") from None
    finally:
        ckptr.close()
    bad = validate.nonfinite_tensors(params)
    if bad:
        raise CheckpointError(f"{directory}/{PARAMS_DIR}: parameters with NaN or inf: {', '.join(bad)}")
    if dtype is not None and dtype != saved:
        _check_dtype(dtype)
        cfg, params = cfg.with_dtype(dtype), cast_params(params, dtype)
    return cfg, params


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype = {dtype!r} is not supported; allowed: {', '.join(DTYPES)}")


# ------------------------------------------------------------------------ public API
def load(path: str, dtype: Optional[str] = None) -> tuple[DiT, Any, CheckpointConfig]:
    """(model, params, config) from an HF-layout or a converted directory (or HF repo id).

    dtype: compute and parameter dtype, "float32" | "bfloat16"; None: float32 for HF
    checkpoints, the saved dtype for converted ones. Use with
    `lsd_jax.models.dit.score_fn_from(model, params, config)` and `build_core(config)`.
    """
    if dtype is not None:
        _check_dtype(dtype)
    directory = resolve(path)
    if is_converted(directory):
        cfg, params = load_converted(directory, dtype)
    else:
        cfg, params, _ = read_hf(directory, dtype or "float32")
        params = cast_params(params, cfg.dit.dtype)
    return DiT(cfg.dit), params, cfg


def convert(src: str, dst: str, dtype: str = "float32") -> dict:
    """Converts an HF-layout checkpoint `src` into a converted directory `dst`.

    Returns a summary {family, graph, num_tokens, params (count), dtype, format, seconds,
    src, dst}. Raises CheckpointError on bad input, or if dst exists and is not empty.
    """
    t0 = time.perf_counter()
    _check_dtype(dtype)
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise CheckpointError(f"destination {dst} already exists and is not an empty directory; choose a new path")
    created = not os.path.exists(dst)
    try:
        validate.output_dir(dst, "DST")  # writable: probed before any reading
    except validate.InputError as e:
        raise CheckpointError(str(e)) from None
    try:
        directory = resolve(src)
        if is_converted(directory):
            raise CheckpointError(f"{src} is already a converted directory ({CONVERTED_CONFIG}); load it directly")
        cfg, params, fmt = read_hf(directory, dtype)
        params = cast_params(params, dtype)
        save_converted(dst, params, cfg)
    except BaseException:
        if created:  # leave no half-written (or probe-created) destination behind
            shutil.rmtree(dst, ignore_errors=True)
        raise
    return {
        "family": cfg.family,
        "graph": cfg.graph,
        "num_tokens": cfg.num_tokens,
        "params": param_count(params),
        "dtype": dtype,
        "format": fmt,
        "seconds": round(time.perf_counter() - t0, 3),
        "src": os.fspath(src),
        "dst": os.fspath(dst),
    }


def build_core(config: CheckpointConfig | Mapping[str, Any]) -> tuple[graphs_lib.Graph, noise_lib.Noise]:
    """(graph, noise) objects of `lsd_jax` for a checkpoint config (or its to_dict())."""
    if isinstance(config, Mapping):
        config = CheckpointConfig.from_dict(config)
    return graphs_lib.get_graph(config.graph, config.num_tokens), noise_lib.from_dict(config.noise)
