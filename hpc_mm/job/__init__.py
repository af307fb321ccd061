"""The job: typed spec (`spec`), job-file loading and `--set` (`jobfile`), rules (`rules`),
coercion from YAML (`coerce`), signal names (`signals`) and the Megatron argv (`megatron`).

Nothing here imports torch: it all runs on login nodes.
"""
