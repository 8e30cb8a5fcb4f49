"""The training core: LoRA wrapping, activation checkpointing, the loop, checkpoints. Runs with or without Ray."""
