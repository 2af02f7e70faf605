"""Evaluation: sampling a score model over held-out seeds (`sampling`), gen-PPL of text
samples under a causal LM (torch, imported on use) and unigram entropy in the sampler's
own ids (numpy).

Report every gen-PPL with both conventions, the evaluator's name and context length,
and the samples' unigram entropy beside it.
"""

from lsd_jax.eval.genppl import CausalLMEvaluator, GenPPLResult, gen_ppl, load_evaluator, score_windows
from lsd_jax.eval.sampling import HELD_OUT_SEED0, evaluate_sampler, gap_closed, mean_std, run_sampler, sample
from lsd_jax.eval.text_metrics import unigram_entropy

__all__ = [
    "CausalLMEvaluator",
    "GenPPLResult",
    "HELD_OUT_SEED0",
    "evaluate_sampler",
    "gap_closed",
    "gen_ppl",
    "load_evaluator",
    "mean_std",
    "run_sampler",
    "sample",
    "score_windows",
    "unigram_entropy",
]
