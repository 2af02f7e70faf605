"""Learned sampler parameters: the small pytree LSD / LSD+ / tuning optimise, and its file.

phi    [M]  per-step score coefficient (1 = the plain sampler).
logits [M]  LSD+ time grid: t = grids.from_logits(logits, eps), monotone in (eps, 1]
            for any finite logits; zeros give the uniform grid.
The file is a small JSON document that `lsd-jax sample --sampler-params FILE` and
`lsd_jax.samplers.sample(..., params, ...)` (in the grid's place: grid, phi, reading and
solver travel together) accept, whatever method made it.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import flax.struct
import jax.numpy as jnp
import numpy as np

from lsd_jax import grids
from lsd_jax.samplers import READINGS, check_choice
from lsd_jax.solvers import SOLVERS as SAMPLERS
from lsd_jax.solvers import Solver, get_solver

FORMAT = "lsd-jax-sampler-params/1"


@flax.struct.dataclass
class SamplerParams:
    phi: jnp.ndarray  # [M]
    logits: jnp.ndarray  # [M]
    eps: float = flax.struct.field(pytree_node=False, default=1e-4)
    sampler: str = flax.struct.field(pytree_node=False, default="euler")
    reading: str = flax.struct.field(pytree_node=False, default="linear")

    @property
    def nfe(self) -> int:
        """Steps M (network calls: M x solver.calls_per_step)."""
        return int(self.phi.shape[0])

    @property
    def solver(self) -> Solver:
        """The solver object of `sampler` (lsd_jax.solvers)."""
        return get_solver(self.sampler)

    def grid(self) -> jnp.ndarray:
        """Time grid [M + 1] from t_0 = 1 to t_M = eps."""
        return grids.from_logits(self.logits, self.eps)

    def describe(self) -> dict:
        return {
            "nfe": self.nfe,
            "sampler": self.sampler,
            "reading": self.reading,
            "eps": self.eps,
            "phi": np.asarray(self.phi, np.float64).tolist(),
            "grid": np.asarray(self.grid(), np.float64).tolist(),
        }


def init(nfe: int, eps: float = 1e-4, sampler: str = "euler", reading: str = "linear", grid=None) -> SamplerParams:
    """phi = 1 and the uniform grid (or `grid` [M + 1]): the plain M-step sampler."""
    check_choice("sampler", sampler, SAMPLERS)
    check_choice("reading", reading, READINGS)
    if grid is None:
        logits = jnp.zeros((nfe,))
    else:
        g = grids.validate(grid, eps)
        if g.shape[0] != nfe + 1:
            raise ValueError(f"grid has {g.shape[0]} times but nfe = {nfe} needs {nfe + 1}")
        logits = grids.to_logits(g, eps)
    return SamplerParams(jnp.ones((nfe,)), logits, eps=float(eps), sampler=sampler, reading=reading)


def save(params: SamplerParams, path: str, meta: Optional[dict] = None) -> None:
    """Writes the JSON file (phi, logits, and the grid they give, for reading by eye)."""
    doc = {"format": FORMAT, **params.describe(), "logits": np.asarray(params.logits, np.float64).tolist()}
    if meta:
        doc["meta"] = meta
    from lsd_jax.runs import write_json

    write_json(path, doc)


def load(path: str) -> SamplerParams:
    """Reads a sampler-params file; `lsd_jax.validate.sampler_params_doc` checks it (errors
    name the file, the key and what is allowed)."""
    from lsd_jax import validate

    if os.path.isdir(path):
        path = os.path.join(path, "sampler_params.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"sampler params file not found: {path}")
    with open(path) as f:
        try:
            doc = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise validate.InputError(f"{path} is not JSON: {e}") from None
    doc = validate.sampler_params_doc(doc, path, required=("format", "phi", "logits", "eps", "sampler", "reading"))
    if doc.get("format") != FORMAT:
        raise validate.InputError(f"{path}: key 'format' must be {FORMAT!r}, got {doc.get('format')!r}")
    check_choice(f"{path}: sampler", doc["sampler"], SAMPLERS)
    check_choice(f"{path}: reading", doc["reading"], READINGS)
    return SamplerParams(jnp.asarray(doc["phi"]), jnp.asarray(doc["logits"]), eps=float(doc["eps"]),
                         sampler=doc["sampler"], reading=doc["reading"])
