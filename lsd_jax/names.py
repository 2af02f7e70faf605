"""Names shared across modules, in one place and free of jax (the CLI's parser, the training
config and the checkpoint readers import them without starting jax)."""

GRAPHS = ("absorb", "uniform")  # lsd_jax.graphs.get_graph
NOISES = ("loglinear", "geometric")  # lsd_jax.noise.get_noise
DEFAULT_NOISE = {"absorb": "loglinear", "uniform": "geometric"}  # per graph: SEDD's recipes

# Files beside a network checkpoint, written by train-teacher and read by teachers.checkpoint:
CHAIN_FILE = "chain.json"  # the Markov chain a network was trained on (exact metrics apply)
TOKENIZER_FILE = "tokenizer.json"  # text teachers: {"tokenizer": name for get_tokenizer, "seq_len"}
