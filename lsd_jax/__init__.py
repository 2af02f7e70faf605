"""lsd-jax: learnable sampler distillation for discrete diffusion models in JAX."""

__version__ = "0.1.0"
