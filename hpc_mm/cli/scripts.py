"""The commands about users' launch scripts: `import` (a MindSpeed-MM launch script to job files) and
`args --node N --diff SCRIPT` (what a node runs, against what the script ran)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from hpc_mm.cli.parser import shortcut_overrides
from hpc_mm.errors import UserError


def node_args(args: argparse.Namespace) -> int:
    """`args --node N [--diff SCRIPT ...]`: what node N runs, and against a script, every difference."""
    from hpc_mm.importer.differences import DIFFERENCES, compare, node_command
    from hpc_mm.importer.launches import launcher_of
    from hpc_mm.importer.trace import trace
    from hpc_mm.job.megatron import shell_line

    overrides = list(args.overrides) + shortcut_overrides(args)
    node = node_command(args.job, args.node or 0, args.device, overrides, args.nodes, args.run_dir)
    spec = node.plan.spec
    said = {"node": args.node or 0, "nnodes": spec.nnodes, "cwd": node.cwd, "argv": node.argv, "env": node.env}
    if args.diff:
        script, *script_args = args.diff
        found = trace(Path(script), script_args, Path(node.cwd))
        launches = [c for c in found.commands if launcher_of(c)]
        if not launches:
            raise UserError.one("--diff", f"{script} launches nothing", "give the launch script the job came from")
        # the script's launch this job is (a multi-stage script: the one it differs from least)
        candidates = [c for c in launches if spec.entry.script in c.argv] or launches
        found_diffs = [compare(c, node, spec.entry.kind) for c in candidates]
        best = min(found_diffs, key=lambda ds: (sum(r is None for _, r in ds), len(ds)))
        said["differences"] = [{"what": w, "reason": r, "why": DIFFERENCES.get(r)} for w, r in best]
    if args.json:
        print(json.dumps(said, indent=2))
    else:
        print(
            f"# node {said['node']} of {spec.nnodes}, as `hpc-mm launch` runs it (in an allocation n1..n{spec.nnodes})"
        )
        print(f"cd {shlex.quote(node.cwd)}")
        for name, value in node.env.items():
            print(f"unset {name}" if value is None else f"export {name}={shlex.quote(value)}")
        print(shell_line(node.argv))
        for d in said.get("differences", []):
            print(f"differs: {d['what']}  [{d['reason'] or 'UNEXPLAINED'}]")
    unexplained = [d for d in said.get("differences", []) if d["reason"] is None]
    return 1 if unexplained else 0


def cmd_import(args: argparse.Namespace) -> int:
    from hpc_mm.importer.trace import to_json, trace
    from hpc_mm.importer.translate import translate
    from hpc_mm.importer.write import job_name, write_jobs

    script = Path(args.script)
    found = trace(script, args.args, Path(args.workdir or "."), timeout=args.timeout)
    if args.trace:
        print(json.dumps(to_json(found), indent=2))
        return 0
    if not found.confined:
        print(
            "hpc-mm import: note: this machine refuses namespaces: the script ran without a read-only "
            "filesystem or a network cut; only its launchers and known side effects were stood in for",
            file=sys.stderr,
        )
    imported = translate(found, args.name or job_name(script))
    if not imported.stages:
        raise UserError.one("SCRIPT", "; ".join(imported.not_carried), "write the job file by hand (see README)")
    out = Path(args.output or f"{job_name(script)}.yaml")
    paths = [out] if len(imported.stages) == 1 else [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in
                                                     range(len(imported.stages))]  # fmt: skip
    for path in paths:
        if not path.parent.is_dir():
            raise UserError.one("-o", f"{path.parent} is not a folder", "create it, or write the job file elsewhere")
        if path.exists() and not args.force:
            raise UserError.one("-o", f"{path} exists", "pass --force to write over it, or choose another -o")
    problems = write_jobs(imported, paths, script, args.args)
    for line in imported.changed:
        print(f"hpc-mm runs differently: {line}", file=sys.stderr)
    for line in imported.not_carried:
        print(f"not carried: {line}", file=sys.stderr)
    if problems:
        raise UserError(problems)
    submit = " ".join(shlex.quote(str(p)) for p in paths)
    print(f"wrote {submit}: it validates; `hpc-mm submit {submit} --nodes N` runs it on N nodes")
    return 0
