"""Noise schedules: total noise sigmabar(t) and its rate sigma(t) = d sigmabar / dt.

The forward CTMC has rate matrix Q_t = sigma(t) Q; at time t in [0, 1] a sequence has
been noised by total noise sigmabar(t) = int_0^t sigma(s) ds.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Union

import jax.numpy as jnp

from lsd_jax.names import NOISES

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class LogLinear:
    """SEDD's log-linear schedule: sigmabar(t) = -log1p(-(1 - eps) t).

    The probability that a token is still clean at time t is 1 - (1 - eps) t.
    """

    eps: float = 1e-3
    name: str = dataclasses.field(default="loglinear", init=False)

    def __post_init__(self):
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"noise.eps must be in (0, 1), got {self.eps}")

    def total(self, t: Array) -> Array:
        """sigmabar(t), same shape as t."""
        return -jnp.log1p(-(1.0 - self.eps) * t)

    def rate(self, t: Array) -> Array:
        """sigma(t) = sigmabar'(t), same shape as t."""
        return (1.0 - self.eps) / (1.0 - (1.0 - self.eps) * t)

    def to_dict(self) -> dict:
        return {"type": self.name, "eps": self.eps}


@dataclasses.dataclass(frozen=True)
class Geometric:
    """Geometric schedule: sigmabar(t) = sigma_min^(1 - t) sigma_max^t."""

    sigma_min: float = 1e-4
    sigma_max: float = 20.0
    name: str = dataclasses.field(default="geometric", init=False)

    def __post_init__(self):
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                "noise needs 0 < sigma_min < sigma_max, got "
                f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"
            )

    def total(self, t: Array) -> Array:
        return self.sigma_min ** (1.0 - t) * self.sigma_max**t

    def rate(self, t: Array) -> Array:
        return self.total(t) * math.log(self.sigma_max / self.sigma_min)

    def to_dict(self) -> dict:
        return {"type": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


Noise = Union[LogLinear, Geometric]


def get_noise(name: str, **kwargs) -> Noise:
    """Builds a schedule by name ("loglinear" or "geometric"); kwargs are its fields."""
    if name == "loglinear":
        return LogLinear(**{k: v for k, v in kwargs.items() if k == "eps"})
    if name == "geometric":
        return Geometric(**{k: v for k, v in kwargs.items() if k in ("sigma_min", "sigma_max")})
    raise ValueError(f"noise type {name!r} is not supported; allowed: {', '.join(NOISES)}")


def from_dict(cfg: dict) -> Noise:
    """Inverse of `to_dict` (also reads SEDD's config.json `noise` block)."""
    kind = cfg.get("type")
    return get_noise(kind, **{k: v for k, v in cfg.items() if k != "type"})
