"""The queue side: the sbatch script (`render`), submission (`submit`), the decision after a
step ends (`requeue`), following a run (`status`), and every Slurm command (`query`).
"""
