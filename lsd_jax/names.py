"""Names shared across modules, in one place and free of jax: the allowed values of every
choice (the CLI's `choices=`, the configs' checks) and the file names beside checkpoints.
The modules re-export them (`distill.LOSSES is names.LOSSES`); building the `lsd-jax`
parser imports only this module.
"""

GRAPHS = ("absorb", "uniform")  # lsd_jax.graphs.get_graph
NOISES = ("loglinear", "geometric")  # lsd_jax.noise.get_noise
DEFAULT_NOISE = {"absorb": "loglinear", "uniform": "geometric"}  # per graph: SEDD's recipes
SOLVERS = ("euler", "tweedie", "trapezoidal", "fhs")  # lsd_jax.solvers registry (the CLI's --sampler)
READINGS = ("linear", "temperature")  # how phi scales the score (samplers.apply_phi)
GRID_FAMILIES = ("uniform", "power", "cosine", "loglinear")  # lsd_jax.grids.get_grid
METHODS = ("lsd", "lsd+")  # distill: phi only, phi and the time grid
LOSSES = ("kl", "token-kl", "l2")  # distill.position_loss
SELECT = ("auto", "exact", "ngram", "none")  # distill: model selection divergence
DIVERGENCES = ("exact", "ngram", "mmd")  # divergences.make_divergence
TEACHERS = ("markov", "hmm")  # built-in exact teachers by name (the CLI's --teacher); networks: --checkpoint DIR
# their sizes when the CLI does not name them (lsd_jax.teachers.markov_teacher / hmm_teacher)
TEACHER_DEFAULTS = {"markov": {"vocab": 16, "length": 32}, "hmm": {"states": 16, "vocab": 32, "length": 32}}
FAMILIES = ("sedd", "mdlm", "radd")  # models.dit
DTYPES = ("float32", "bfloat16")  # models.dit parameter / compute dtypes

# Files beside a network checkpoint, written by train-teacher and read by teachers.checkpoint:
CHAIN_FILE = "chain.json"  # the Markov chain a network was trained on (exact metrics apply)
HMM_FILE = "hmm.json"  # the HMM a network was trained on (exact metrics apply)
TOKENIZER_FILE = "tokenizer.json"  # text teachers: {"tokenizer": name for get_tokenizer, "seq_len"}

REVEAL_POLICIES = ("ctmc", "random", "planned", "confidence", "margin", "entropy", "eb")  # lsd_jax.reveal
REVEAL_COUNTS = ("auto", "grid", "screened")  # --reveal-counts
