"""Checks of everything that can be known before work starts, one home per input kind.

- paths: output directories and files (`output_dir`, `output_file`): kind, emptiness,
  writability, probed by actually creating a file (root ignores permission bits);
- checkpoint files: a weight file's container (`weight_file_problem`: truncated
  safetensors, a text file posing as pytorch_model.bin) and non-finite tensors
  (`nonfinite_tensors`, naming each);
- sampler-params documents (`sampler_params_doc`): structure, phi and eps ranges, the
  saved grid against the grid its logits give, naming the file and the key;
- tokens (`tokens`): shape and id range of x_init / samples handed to metrics;
- phi and score probes of the library (`phi`, `probe_score`);
- config combinations of the CLI (`sample_args`, `tune_args`, `distill_args`).

Every check raises `InputError` (a ValueError) whose message names the flag, file or key
and what is allowed; the CLI turns it into `lsd-jax CMD: error: ...` and exit 2.
"""

from __future__ import annotations

import json
import math
import os
import struct
import uuid
from typing import Any, Iterable, Mapping, Optional

import numpy as np

PHI_RANGE = (0.05, 20.0)  # the box distill projects onto and tune searches in
EPS_RANGE = (0.0, 1.0)  # open interval of the terminal time
LOCK_NAME = ".lsd-jax.lock"  # lsd_jax.runs' lock file: never counts as content of an --out directory


class InputError(ValueError):
    """Bad input known before any work; the message names what and what is allowed."""


class NonFiniteInput(InputError, FloatingPointError):
    """An input (a network, its weights, phi) that gives NaN or inf, found before any work."""


# --------------------------------------------------------------------------- paths
def _nearest_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _probe_dir(directory: str, flag: str, shown: str) -> None:
    """Creates `directory` (and parents) and a probe file in it; InputError if either fails."""
    anc = _nearest_existing(directory)
    if not os.path.isdir(anc):
        raise InputError(f"{flag} {shown}: {anc} is a file, so nothing can be created below it")
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".lsd-jax-probe-{uuid.uuid4().hex[:8]}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise InputError(f"{flag} {shown} is not writable ({e.strerror or e})") from None


def dir_content(path: str) -> list:
    """Entries of a directory other than the run lock (what makes an --out 'not empty')."""
    return sorted(e for e in os.listdir(path) if e != LOCK_NAME)


def output_dir(path: str, flag: str = "--out", *, resume: Optional[bool] = None) -> str:
    """An output directory: not a file, writable (created here), and empty unless resuming.

    resume None: the command has no --resume (a non-empty directory is refused);
    False / True: refused without --resume / accepted with it.
    """
    if not path:
        raise InputError(f"{flag} must name a directory")
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{flag} {path} is a file; expected a directory (new or empty"
                         + (", or an earlier run with --resume)" if resume is not None else ")"))
    if os.path.isdir(path) and dir_content(path) and not resume:
        hint = "pass --resume to continue it, or choose a new --out" if resume is not None else "choose a new directory"
        raise InputError(f"{flag} {path} exists and is not empty: {hint}")
    _probe_dir(path, flag, path)
    return path


def output_file(path: str, flag: str) -> str:
    """An output file path: not a directory, its directory writable (created here)."""
    if not path:
        raise InputError(f"{flag} must name a file")
    if os.path.isdir(path):
        raise InputError(f"{flag} {path} is a directory; expected a file path (e.g. {os.path.join(path, 'out.json')})")
    _probe_dir(os.path.dirname(os.path.abspath(path)), flag, path)
    if os.path.exists(path):
        try:
            with open(path, "a"):
                pass
        except OSError as e:
            raise InputError(f"{flag} {path} exists and is not writable ({e.strerror or e})") from None
    return path


def input_file(path: str, flag: str) -> str:
    if not os.path.exists(path):
        raise InputError(f"{flag} {path} not found (no such file or directory)")
    return path


# ----------------------------------------------------------------- checkpoint files
def weight_file_problem(path: str) -> Optional[str]:
    """Why the weight file at `path` cannot be read (None: its container looks whole).

    model.safetensors: the 8-byte header length, the JSON header and every tensor's data
    offsets must fit in the file. pytorch_model.bin: a zip archive (torch >= 1.6) that
    opens, or a pickle (first byte 0x80).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if path.endswith(".safetensors"):
            if size < 8:
                return f"{path} is truncated ({size} bytes; a safetensors file starts with an 8-byte header length)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path} is truncated or not a safetensors file (header of {n} bytes, file of {size})"
            try:
                header = json.loads(f.read(n))
                end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError):
                return f"{path} is not a safetensors file (its header is not the JSON tensor table)"
            if 8 + n + end > size:
                return (f"{path} is truncated: its header lists {end} bytes of tensor data, "
                        f"the file holds {size - 8 - n}")
            return None
    if head.startswith(b"PK\x03\x04"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            return f"{path} is a damaged or truncated zip archive (PyTorch checkpoint): {e}"
        return None
    if head[:1] == b"\x80":
        return None
    return (f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle; "
            f"it starts with {head[:8]!r})")


def nonfinite_tensors(tree: Any) -> list:
    """'name (k of n non-finite)' for every leaf of a nested mapping / pytree with a NaN or inf."""
    import jax

    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.asarray(leaf)
        if not (np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16"):
            continue
        bad = int(np.size(a) - np.isfinite(a.astype(np.float32)).sum())
        if bad:
            name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            out.append(f"{name} ({bad} of {a.size} non-finite)")
    return out


# ------------------------------------------------------------- sampler-params files
def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _vector(doc: Mapping, key: str, where: str) -> np.ndarray:
    v = doc[key]
    if not isinstance(v, list) or not v or not all(_number(x) for x in v):
        raise InputError(f"{where}: key {key!r} must be a non-empty list of numbers, got {str(v)[:60]}")
    a = np.asarray(v, np.float64)
    if not np.all(np.isfinite(a)):
        raise InputError(f"{where}: key {key!r} has non-finite entries at {np.flatnonzero(~np.isfinite(a)).tolist()}")
    return a


def sampler_params_doc(doc: Any, where: str, required: Iterable[str]) -> dict:
    """Checks a parsed sampler-params JSON document; returns it.

    Allowed: a JSON object with `required` keys; phi [M] with every entry in PHI_RANGE;
    logits [M] finite; eps a number in (0, 1); if 'grid' is present it must be the grid
    the logits give (a hand-edited grid would otherwise be ignored silently).
    """
    from lsd_jax import grids

    if not isinstance(doc, Mapping):
        raise InputError(f"{where}: must hold a JSON object (keys format, phi, logits, eps, sampler, reading), "
                         f"got a JSON {type(doc).__name__}")
    for key in required:
        if key not in doc:
            raise InputError(f"{where}: missing field {key!r}")
    phi, logits = _vector(doc, "phi", where), _vector(doc, "logits", where)
    if phi.shape != logits.shape:
        raise InputError(f"{where}: 'phi' and 'logits' must have equal length, got {phi.size} and {logits.size}")
    lo, hi = PHI_RANGE
    out = np.flatnonzero((phi < lo * (1 - 1e-6)) | (phi > hi * (1 + 1e-6)))
    if out.size:
        raise InputError(f"{where}: key 'phi' must lie in [{lo}, {hi}] (the range distill and tune use); "
                         f"entries {out.tolist()} are {phi[out].tolist()}")
    eps = doc["eps"]
    if not _number(eps) or not EPS_RANGE[0] < eps < EPS_RANGE[1]:
        raise InputError(f"{where}: key 'eps' (the terminal time) must be a number in (0, 1), got {eps!r}")
    try:
        g = np.asarray(grids.from_logits(logits, float(eps)), np.float64)
        grids.validate(g, float(eps))
    except ValueError as e:
        raise InputError(f"{where}: key 'logits' gives no valid time grid ({e})") from None
    if "grid" in doc:
        saved = doc["grid"]
        if (not isinstance(saved, list) or len(saved) != g.size or not all(_number(x) for x in saved)
                or not np.allclose(np.asarray(saved, np.float64), g, rtol=1e-5, atol=1e-7)):
            raise InputError(f"{where}: key 'grid' is not the grid its 'logits' give (edit 'logits', the grid "
                             "is derived; or delete 'grid')")
    return dict(doc)


# --------------------------------------------------------------------------- library
def tokens(x, num_tokens: int, length: Optional[int], what: str, batch: Optional[int] = None) -> np.ndarray:
    """Token ids [B, L] with every id in [0, num_tokens) (the mask id counts when num_tokens
    is the graph's dim); length / batch None: any."""
    a = np.asarray(x)
    if a.ndim != 2 or (length is not None and a.shape[1] != length) or (batch is not None and a.shape[0] != batch):
        want = f"[{batch if batch is not None else 'B'}, {length if length is not None else 'L'}]"
        raise InputError(f"{what} must have shape {want}, got {list(a.shape)}")
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{what} must hold integer token ids, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= num_tokens):
        raise InputError(f"{what} holds ids outside [0, {num_tokens}): min {int(a.min())}, max {int(a.max())}")
    return a


def is_concrete(x) -> bool:
    import jax

    return not isinstance(x, jax.core.Tracer)


def phi(p, reading: str = "linear", where: str = "phi") -> None:
    """phi [M] finite, and > 0 under the linear reading (phi s is a rate); a concrete array
    only: traced values are guarded by the sampler loop's non-finite flag."""
    if p is None or not is_concrete(p) or not getattr(p, "is_fully_addressable", True):
        return
    a = np.asarray(p, np.float64)
    bad = np.flatnonzero(~np.isfinite(a) | ((a <= 0) if reading == "linear" else False))
    if bad.size:
        need = "finite and > 0 (a score coefficient under the linear reading)" if reading == "linear" else "finite"
        err = NonFiniteInput if not np.all(np.isfinite(a)) else InputError
        raise err(f"{where} must be {need}; entries {bad.tolist()} are {a[bad].tolist()}")


def probe_score(teacher, times: Iterable[float] = (1.0, 0.5, 1e-3), batch: int = 2, what: str = "teacher") -> None:
    """The score function's shape (`teachers.base.check_score_fn`), then one small call per
    time on the limit state: every value finite (log scores may be -inf where a rate is
    exactly 0, never NaN or +inf). Catches a NaN network or one of the wrong width before
    any work; costs len(times) calls on `batch` sequences."""
    import jax
    import jax.numpy as jnp

    from lsd_jax.teachers.base import check_score_fn

    g, n, length = teacher.graph, teacher.noise, teacher.length
    check_score_fn(teacher.score_fn, g, length)  # its shape (a ValueError naming the function)
    x = g.sample_limit(jax.random.PRNGKey(0), (batch, length))
    for t in times:
        sb = n.total(jnp.full((batch,), t, jnp.float32))
        s = np.asarray(teacher.score_fn(x, sb), np.float64)
        bad = np.isnan(s) | np.isposinf(s)
        if bad.any():
            raise NonFiniteInput(f"{what} score is non-finite ({int(bad.sum())} of {s.size} NaN or +inf) at "
                                 f"t = {t} on the limit state: the network or its weights are broken")


# ------------------------------------------------------------------ CLI combinations
def _at_least(args, names: Iterable[str], lo: int) -> None:
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < lo:
            raise InputError(f"--{name.replace('_', '-')} must be >= {lo}, got {v}")


def _eps(args) -> None:
    if not EPS_RANGE[0] < args.eps < EPS_RANGE[1]:
        raise InputError(f"--eps must be in (0, 1), got {args.eps}")


def _teacher(args) -> None:
    if not getattr(args, "checkpoint", None):  # a checkpoint may be a hub id: ports.sedd.resolve checks it
        _at_least(args, ("teacher_vocab", "teacher_length"), 2)


def sample_args(args) -> None:
    """`lsd-jax sample`: counts, eps, teacher, --json, flags that --sampler-params overrides."""
    _at_least(args, ("nfe", "num_samples"), 1)
    _at_least(args, ("show",), 0)
    _eps(args)
    _teacher(args)
    if args.sampler_params:
        input_file(args.sampler_params, "--sampler-params")
        for flag, given in (("--eps", args.eps_given), ("--grid", args.grid_given)):
            if given:
                raise InputError(f"{flag} and --sampler-params both set the sampler's "
                                 f"{'terminal time' if flag == '--eps' else 'time grid'}; the file's is used: drop {flag}")
    if args.json:
        output_file(args.json, "--json")


def tune_args(args) -> None:
    """`lsd-jax tune`: counts, eps, divergence against teacher kind, --teacher-nfe > --nfe, --out."""
    _at_least(args, ("nfe", "budget", "samples", "crn_seeds", "teacher_nfe", "eval_samples"), 1)
    _at_least(args, ("eval_seeds",), 0)
    _eps(args)
    _teacher(args)
    if not 0.0 <= args.entropy_band < 1.0:
        raise InputError(f"--entropy-band must be in [0, 1), got {args.entropy_band}")
    if args.teacher_nfe <= args.nfe:
        raise InputError(f"--teacher-nfe ({args.teacher_nfe}) must be > --nfe ({args.nfe}): the reference samples "
                         "(the n-gram/MMD target and the entropy guard) must take more steps than the sampler tuned")
    if args.divergence == "mmd" and not getattr(args, "checkpoint", None):
        raise InputError("--divergence mmd needs a network teacher (--checkpoint DIR): it compares the teacher "
                         "network's hidden states; with the markov teacher use exact or ngram")
    if args.divergence == "exact" and getattr(args, "checkpoint", None) and not os.path.isfile(
            os.path.join(args.checkpoint, "chain.json")):
        raise InputError(f"--divergence exact needs an exact teacher (--teacher markov, or a checkpoint with "
                         f"chain.json); {args.checkpoint} has none: use ngram or mmd")
    output_dir(args.out, "--out")


def distill_args(args) -> None:
    """`lsd-jax distill`: --batch-size <= --samples, eval counts, --out (before the config)."""
    _at_least(args, ("eval_samples",), 1)
    _at_least(args, ("eval_seeds",), 0)
    _teacher(args)
    if args.batch_size > args.samples:
        raise InputError(f"--batch-size ({args.batch_size}) must be <= --samples ({args.samples}), the "
                         "training trajectories a minibatch is drawn from")
    output_dir(args.out, "--out", resume=args.resume)


def finite_number(v: float, what: str) -> float:
    if not (isinstance(v, (int, float)) and math.isfinite(v)):
        raise FloatingPointError(f"{what} is non-finite ({v})")
    return float(v)
