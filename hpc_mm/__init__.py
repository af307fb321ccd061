"""hpc-mm: from one job file to a running, preemption-proof MindSpeed-MM / Megatron job.

The flow, one folder a stage (imports point down this list only):
    cli          flags in, one call per command, user errors to exit 2
    launch/      on the compute nodes: plan, run and supervise the entry, forward signals
    slurm/       the queue side: render, submit, requeue (finish), status, query
    train/       the built-in trainer
    run/         the run directory and its records (no torch)
    job/         job file -> validated, frozen JobSpec -> Megatron argv
    environments/  where a process runs (Slurm, MPI, torchrun, local) and which devices it has
    errors       the one user-error type
"""

__version__ = "0.1.0"
