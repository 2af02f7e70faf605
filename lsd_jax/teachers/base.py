"""The model seam: any object with `score_fn, graph, noise, length` is a score model.

`ScoreModel` is a `typing.Protocol`: the exact Markov teacher, network teachers loaded
from checkpoints and a plain `types.SimpleNamespace(score_fn=..., graph=..., noise=...,
length=...)` all satisfy it; `distill.fit`, `tune.search`, `lsd_jax.eval` and
`samplers.sample` need nothing more. Optional attributes, read with `getattr`:
`exact` (an exact likelihood is available), `metrics(tokens) -> dict`, `features(tokens)
-> [B, F]` (network features for the MMD divergence), `name`, `decode`.

`check_score_fn` is the one place a score function is validated: once, by
`jax.eval_shape` (no compile, no FLOPs), before any work, with an error that names the
function, the shape it must return and what it returned.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Callable, Optional, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x int32 [B, L], sigmabar [B]) -> log score [B, L, dim]
CHECK_BATCH = 2  # batch size of the abstract call that validates a score function


@runtime_checkable
class ScoreModel(Protocol):
    """What samplers, distillation, tuning and evaluation need of a model."""

    score_fn: ScoreFn  # (x int32 [B, L], sigmabar float [B]) -> log concrete score [B, L, graph.dim]
    graph: Any  # lsd_jax.graphs.Graph
    noise: Any  # lsd_jax.noise.Noise
    length: int  # L


@dataclasses.dataclass(frozen=True, eq=False)
class Bound:
    """A score model made of its four parts (e.g. another model's graph with a traced score_fn)."""

    score_fn: ScoreFn
    graph: Any
    noise: Any
    length: int


def with_score_fn(model: ScoreModel, score_fn: ScoreFn) -> Bound:
    """`model` with its score function replaced; never copies or mutates the user's object."""
    return Bound(score_fn, model.graph, model.noise, model.length)


def is_exact(model: ScoreModel) -> bool:
    """True when the model has exact metrics (the Markov teacher, or a network on its chain)."""
    return bool(getattr(model, "exact", False))


def model_metrics(model: ScoreModel, tokens) -> dict:
    """The model's own metrics of samples [B, L] (`model.metrics`), else the pooled unigram entropy."""
    metrics = getattr(model, "metrics", None)
    if metrics is not None:
        return metrics(tokens)
    from lsd_jax.eval.text_metrics import unigram_entropy

    return {"unigram_entropy": unigram_entropy(tokens, mode="pooled")}


def model_features(model: ScoreModel) -> Optional[Callable]:
    """tokens [B, L] -> features [B, F] for the MMD divergence, or None (no network features)."""
    return getattr(model, "features", None)


def _fn_name(fn) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial / jax.tree_util.Partial
    name = getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None) or type(inner).__name__
    mod = getattr(inner, "__module__", None)
    full = f"{mod}.{name}" if mod and mod not in ("__main__", "builtins") else name
    code = getattr(inner, "__code__", None)
    if code is not None and "<" in name:  # a lambda or a local function: say where it is
        full += f" ({code.co_filename}:{code.co_firstlineno})"
    return full


_checked: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()


def check_score_fn(score_fn: ScoreFn, graph, length: int, *, batch: int = CHECK_BATCH) -> None:
    """Validates `score_fn` by one abstract call (`jax.eval_shape`: no compile) on x int32
    [batch, length] and sigmabar [batch]; raises ValueError naming the function, the
    expected [B, L, graph.dim] and what it returned (or raised). Remembered per function
    object, so samplers called in a loop pay it once."""
    if not callable(score_fn):
        raise ValueError(f"score_fn must be callable (x [B, L] int32, sigmabar [B]) -> [B, L, dim], got {score_fn!r}")
    dim = int(graph.dim)
    fdt = jnp.zeros((), float).dtype  # float32, or float64 under x64
    sig = (dim, int(length), str(fdt))
    try:
        seen = _checked.get(score_fn)
    except TypeError:  # not weak-referenceable / hashable: check every time
        seen = None
    if seen is not None and sig in seen:
        return
    name = _fn_name(score_fn)
    expected = f"[B, L, graph.dim] = [{batch}, {length}, {dim}]"
    x = jax.ShapeDtypeStruct((batch, int(length)), jnp.int32)
    sb = jax.ShapeDtypeStruct((batch,), fdt)
    try:
        out = jax.eval_shape(score_fn, x, sb)
    except Exception as e:  # noqa: BLE001 - re-raised with the user's names
        raise ValueError(f"score function {name} failed on x int32 [{batch}, {length}], sigmabar [{batch}] "
                         f"(expected a log score {expected}): {type(e).__name__}: {e}") from e
    shape = getattr(out, "shape", None)
    dtype = getattr(out, "dtype", None)
    if shape != (batch, int(length), dim) or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        got = f"{type(out).__name__}" if shape is None else f"{dtype} {list(shape)}"
        raise ValueError(f"score function {name} must return a float log score {expected}; it returned {got}")
    try:
        _checked.setdefault(score_fn, set()).add(sig)
    except TypeError:
        pass


def check_model(model: Any) -> ScoreModel:
    """Checks that `model` has score_fn, graph (with dim), noise and length (an int >= 1),
    then validates its score function (`check_score_fn`); returns the model unchanged."""
    missing = [a for a in ("score_fn", "graph", "noise", "length") if not hasattr(model, a)]
    if missing:
        raise ValueError(f"a score model needs attributes score_fn, graph, noise, length; "
                         f"{type(model).__name__} lacks {', '.join(missing)}")
    length = model.length
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"model.length must be an integer >= 1, got {length!r}")
    if not hasattr(model.graph, "dim"):
        raise ValueError(f"model.graph must be an lsd_jax.graphs graph (with .dim), got {type(model.graph).__name__}")
    if not (hasattr(model.noise, "total") and hasattr(model.noise, "rate")):
        raise ValueError(f"model.noise must be an lsd_jax.noise schedule (with .total, .rate), "
                         f"got {type(model.noise).__name__}")
    check_score_fn(model.score_fn, model.graph, int(length))
    return model
