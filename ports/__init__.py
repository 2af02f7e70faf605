"""Checkpoint converters: SEDD-family PyTorch checkpoints (Hugging Face layout) -> Flax."""
