"""lsd-jax: learnable sampler distillation for discrete diffusion models in JAX.

The flat API (what a research script needs; the modules hold the rest):

    model = lsd_jax.markov_teacher()            # or any object with score_fn, graph, noise, length
    out = lsd_jax.sample(model, lsd_jax.grids.uniform(8, 1e-4), jax.random.PRNGKey(0), 256)
    res = lsd_jax.fit(model, lsd_jax.DistillConfig(method="lsd+", nfe=8))   # res.params, res.history
    params, hist = lsd_jax.search(model, 8, lsd_jax.make_divergence("ngram", model, reference))

Names resolve on first use (PEP 562), so `import lsd_jax` (and the CLI's parser) starts no jax.
"""

import importlib

__version__ = "0.1.0"

_MODULES = ("distill", "divergences", "eval", "graphs", "grids", "names", "noise", "sampler_params", "samplers",
            "teachers", "tune")
_NAMES = {
    "DistillConfig": "lsd_jax.distill", "FitResult": "lsd_jax.distill", "fit": "lsd_jax.distill",
    "make_divergence": "lsd_jax.divergences",
    "sample": "lsd_jax.eval.sampling", "run_sampler": "lsd_jax.eval.sampling",
    "evaluate_sampler": "lsd_jax.eval.sampling", "unigram_entropy": "lsd_jax.eval.text_metrics",
    "get_graph": "lsd_jax.graphs", "get_noise": "lsd_jax.noise", "SamplerParams": "lsd_jax.sampler_params",
    "ScoreModel": "lsd_jax.teachers.base", "check_model": "lsd_jax.teachers.base",
    "Teacher": "lsd_jax.teachers", "markov_teacher": "lsd_jax.teachers",
    "search": "lsd_jax.tune", "best_fixed_grid": "lsd_jax.tune", "enable_x64": "lsd_jax._compat",
}
__all__ = sorted(_NAMES) + list(_MODULES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"lsd_jax.{name}")
    raise AttributeError(f"module 'lsd_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
