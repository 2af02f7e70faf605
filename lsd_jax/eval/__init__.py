"""Evaluation: sampling a score model over held-out seeds (`sampling`); evaluator NLL per
character of text samples with paired t intervals, and gen-PPL, under a causal LM (torch,
imported on use); anchor texts; unigram entropy in the sampler's own ids (numpy).

Report every evaluator number with the evaluator's name, its context length and how it
was scored (BOS or not), and the samples' unigram entropy beside it. On character-level
text rank samplers by NLL per character (paired against Euler), not by per-token gen-PPL.
"""

from lsd_jax.eval.anchors import ANCHORS, CharBigram, anchor_texts, shuffle_words
from lsd_jax.eval.char_nll import Interval, TextScores, mean_interval, paired_difference, score_texts
from lsd_jax.eval.genppl import (
    GGUF_EVALUATORS,
    CausalLMEvaluator,
    GenPPLResult,
    check_known_text,
    gen_ppl,
    load_evaluator,
    score_windows,
)
from lsd_jax.eval.sampling import HELD_OUT_SEED0, evaluate_sampler, gap_closed, mean_std, run_sampler, sample
from lsd_jax.eval.text_metrics import unigram_entropy

__all__ = [
    "ANCHORS",
    "GGUF_EVALUATORS",
    "HELD_OUT_SEED0",
    "CausalLMEvaluator",
    "CharBigram",
    "GenPPLResult",
    "Interval",
    "TextScores",
    "anchor_texts",
    "check_known_text",
    "evaluate_sampler",
    "gap_closed",
    "gen_ppl",
    "load_evaluator",
    "mean_interval",
    "mean_std",
    "paired_difference",
    "run_sampler",
    "sample",
    "score_texts",
    "score_windows",
    "shuffle_words",
    "unigram_entropy",
]
