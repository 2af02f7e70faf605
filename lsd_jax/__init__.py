"""lsd-jax: learnable sampler distillation for discrete diffusion models in JAX.

The flat API (everything a research script needs; the modules hold the rest):

    model = lsd_jax.markov_teacher()            # or any object with score_fn, graph, noise, length
    out = lsd_jax.sample(model, lsd_jax.grids.uniform(8, 1e-4), jax.random.PRNGKey(0), 256)
    res = lsd_jax.fit(model, lsd_jax.DistillConfig(method="lsd+", nfe=8))   # res.params, res.history
    params, hist = lsd_jax.search(model, 8, lsd_jax.make_divergence("ngram", model, reference))
"""

from lsd_jax import divergences, eval, graphs, grids, noise, samplers, teachers  # noqa: A004 - eval: the subpackage
from lsd_jax._compat import enable_x64
from lsd_jax.distill import DistillConfig, FitResult, fit
from lsd_jax.divergences import make_divergence
from lsd_jax.eval.sampling import evaluate_sampler, run_sampler, sample
from lsd_jax.graphs import get_graph
from lsd_jax.noise import get_noise
from lsd_jax.sampler_params import SamplerParams
from lsd_jax.teachers import ScoreModel, Teacher, check_model, markov_teacher
from lsd_jax.tune import best_fixed_grid, search

__version__ = "0.1.0"

__all__ = [
    "DistillConfig", "FitResult", "SamplerParams", "ScoreModel", "Teacher", "best_fixed_grid", "check_model",
    "divergences", "enable_x64", "eval", "evaluate_sampler", "fit", "get_graph", "get_noise", "graphs", "grids",
    "make_divergence", "markov_teacher", "noise", "run_sampler", "sample", "samplers", "search", "teachers",
]
