"""hpc-mm: from one job file to a running, preemption-proof MindSpeed-MM / Megatron job.

The flow, one module a step:
    spec (job file -> validated JobSpec) -> megatron (argv) -> render/submit (sbatch)
    -> launch (inside the allocation: environments -> torchrun/entry) -> train (built-in trainer)
"""

__version__ = "0.1.0"
