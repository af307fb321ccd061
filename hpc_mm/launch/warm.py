"""Warm restarts, the job's side: which jobs keep standby interpreters (launch/standby.py), what
they import ahead, how many a node holds, and whether this node's pool answers a start."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from hpc_mm.job.spec import keeps_standbys as enabled
from hpc_mm.launch.standby import Pool, address

TORCH_LATER = ["torch._dynamo", "torch.optim"]  # what torch imports only on first use, in every trainer


def per_node(share) -> int:
    """Standbys a node's part of a start takes: its ranks, and torchrun's agent."""
    return share.nproc_per_node + (1 if share.mode == "agent" else 0)


def modules(share) -> list[str]:
    from hpc_mm.job.entries import contract
    from hpc_mm.launch.preflight import needed_modules

    found = list(needed_modules(share.device, Path(share.spec.entry.workdir), share.spec.builtin))
    # torch imports its compiler stack (torch._dynamo, a second or more) only when the first optimizer is
    # built: every trainer pays it after the process group is up, so a standby pays it ahead instead.
    found += TORCH_LATER if "torch" in found else []
    found += contract(share.spec).preload(share.spec)
    found += ["torch.distributed.run"] if share.mode == "agent" else []
    found += share.spec.requeue.preload
    return list(dict.fromkeys(found))


def node_address(plan) -> str:
    from hpc_mm.environments.devices import node_name

    return address(plan.job_id, node_name(os.environ))


def available(plan) -> bool:
    """Do this start's processes go through standbys: the job keeps them and this node's pool answers
    (the first start of an allocation, `hpc-mm args` on a login node: no pool, a plain command)."""
    if not enabled(plan.spec):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect("\0" + node_address(plan))
        except OSError:
            return False
        sock.sendall(b"\n")  # not a start: the pool closes it
    return True


def serve_node(share, env: dict, report: Path) -> int:
    """`hpc-mm standby RUN_DIR`: this node's pool for the job (`share`: launch/plan.node_share), its
    standbys started with the job's environment `env`."""
    from hpc_mm.environments.devices import node_name

    if not enabled(share.spec):
        return 0
    node = node_name(os.environ)
    pool = Pool(
        address(share.job_id, node),
        [*share.spec.entry.wrapper, share.spec.entry.python or sys.executable],
        str(share.spec.entry.workdir),
        env,
        modules(share),
        per_node(share),
        report=report,
    )
    print(f"hpc-mm standby: {node}: keeping {pool.count} standby interpreter(s) with {', '.join(pool.modules)}")
    sys.stdout.flush()
    pool.serve()
    return 0


def serve(run_dir: Path) -> int:
    """`hpc-mm standby RUN_DIR`, inside the allocation."""
    from hpc_mm.environments.devices import node_name
    from hpc_mm.launch.plan import job_env, node_share
    from hpc_mm.run.rundir import RunDir

    share = node_share(str(run_dir), run_dir)
    report = RunDir(share.run_dir).standby_file(share.job_id, node_name(os.environ))
    return serve_node(share, job_env(os.environ, share.spec, share.run_dir), report)
