"""hpc-mm: from one job file to a running, preemption-proof MindSpeed-MM / Megatron job.

The flow, one folder a stage (imports point down this list only):
    cli          flags in, one call per command, user errors to exit 2
    api          the same from Python: load_job, submit, pipeline, submit_sweep, Run, runs (no printing)
    launch/      on the compute nodes: plan, run and supervise the entry, forward signals
    slurm/       the queue side: render, submit, requeue (finish), status, query
    train/       the built-in trainer
    run/         the run directory and its records (no torch)
    job/         job file -> validated, frozen JobSpec -> Megatron argv
    environments/  where a process runs (Slurm, MPI, torchrun, local) and which devices it has
    errors       the one user-error type
"""

__version__ = "0.1.0"


# From Python: `hpc_mm.load_job(...)`, `hpc_mm.submit(...)`, ... (hpc_mm/api.py's __all__), imported at first use.
def __getattr__(name: str):
    if name.startswith("__"):  # what tools probe modules for (__wrapped__, __path__ of a module, ...)
        raise AttributeError(name)
    import importlib  # at first use: `import hpc_mm` stays light, and hpc_mm.api's modules import hpc_mm

    api = importlib.import_module("hpc_mm.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'hpc_mm' has no attribute {name!r}")


# `hpc_mm.run(...)` is the API's function, but `hpc_mm.run` is also the package of the run directory:
# once any of its modules is imported, Python sets the package here, over the function. The package is
# made callable as the function, so `hpc_mm.run(PATH)` means one thing however it is reached.
def _callable_run_package() -> None:
    import sys
    import types

    import hpc_mm.run as package  # light: its __init__ imports nothing

    class RunPackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            import importlib  # at first use, as __getattr__ above

            return importlib.import_module("hpc_mm.api").run(*args, **kwargs)

    package.__class__ = RunPackage
    sys.modules[__name__].run = package


_callable_run_package()
