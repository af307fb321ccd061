"""hpc-mm's built-in trainer: `python -m hpc_mm.train <Megatron-style args>`."""
