"""The package's shape: folders in the order a job flows, imports pointing down only, no loops,
small files, one owner for Slurm queries, no environment type tests outside environments/."""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "hpc_mm"
# Top to bottom: a module may import its own layer or a lower one, never a higher one.
LAYERS = ["cli", "api", "importer", "launch", "slurm", "train", "run", "job", "environments", "errors", "names"]


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "hpc_mm" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[str, int]]:
    """Every hpc_mm module `path` imports (module level and inside functions), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hpc_mm"):
            for alias in node.names:  # `from hpc_mm.run import events` imports hpc_mm.run.events
                name = f"{node.module}.{alias.name}"
                found.append((name if is_module(name) else node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("hpc_mm")]
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def modules():
    return [p for p in PACKAGE.rglob("*.py")]


def test_imports_point_down_the_layers():
    wrong = []
    for path in modules():
        here = layer(module_name(path))
        for target, line in imports(path):
            there = layer(target)
            if here and there and LAYERS.index(there) < LAYERS.index(here):
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({here}) imports {target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_no_import_loops():
    graph = {module_name(p): {t for t, _ in imports(p)} for p in modules()}
    graph = {m: {t for t in deps if t in graph and t != m} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                raise AssertionError("import loop: " + " -> ".join(stack + [m, t]))
            if t not in state:
                visit(t, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_files_stay_small():
    big = [f"{p.relative_to(ROOT)}: {n}" for p in modules() if (n := len(p.read_text().splitlines())) > 400]
    assert not big, big


SLURM_COMMANDS = {"sbatch", "scontrol", "squeue", "sacct", "scancel", "sinfo", "sacctmgr", "sstat"}


def _command(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and node.value in SLURM_COMMANDS else None


def slurm_commands(path: Path) -> set[str]:
    """The Slurm commands a module runs or looks for: a command line (a list or tuple) starting with
    one, `shutil.which` of one, and any use of submitit, which runs sbatch. (Sentences and error
    fields may name them.)"""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts and _command(node.elts[0]):
            found.add(_command(node.elts[0]))
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "which"
            and node.args
            and _command(node.args[0])
        ):
            found.add(_command(node.args[0]))
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if any(n.split(".")[0] == "submitit" for n in names):
                found.add("sbatch (submitit)")
    return found


def test_one_module_speaks_to_slurm():
    users = {str(p.relative_to(ROOT)): cmds for p in modules() if (cmds := slurm_commands(p))}
    assert list(users) == ["hpc_mm/slurm/query.py"], users
    assert users["hpc_mm/slurm/query.py"] >= {"sbatch", "scontrol", "squeue", "sacct", "scancel", "sbatch (submitit)"}


def test_no_environment_type_tests_outside_environments():
    offenders = [
        str(p.relative_to(ROOT))
        for p in modules()
        if "environments" not in p.parts and "isinstance(" in p.read_text() and "Environment)" in p.read_text()
    ]
    assert not offenders, offenders


def test_the_queue_side_never_reaches_into_the_allocation():
    """slurm/ is the queue side (render, submit, query, status, ...); launch/ runs inside the allocation
    (launch, supervise, watchdog, preflight, finish, the restart policy, blame, hold)."""
    wrong = [
        f"{p.relative_to(ROOT)}:{line} imports {target}"
        for p in modules()
        if layer(module_name(p)) == "slurm"
        for target, line in imports(p)
        if layer(target) == "launch"
    ]
    assert not wrong, wrong


def _string_sets(path: Path) -> dict[str, int]:
    """Module-level names bound to a tuple, list, set or frozenset of two or more string literals."""
    found = {}
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            continue
        value = node.value
        if (
            isinstance(value, ast.Call)
            and getattr(value.func, "id", "") in ("frozenset", "set", "tuple")
            and value.args
        ):
            value = value.args[0]
        if isinstance(value, (ast.Tuple, ast.List, ast.Set)) and len(value.elts) >= 2:
            if all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts):
                found[node.targets[0].id] = node.lineno
    return found


def test_closed_sets_of_names_are_owned_by_the_vocabulary_module():
    """A set of names another module compares against (causes, actions, event kinds, phases, states,
    strategies) lives in hpc_mm/names.py; a module may keep a set of strings for itself or its folder
    (files to skip, its own flags, a table of variable names), never share one with another room."""
    owners = {name: (p, line) for p in modules() if p.name != "names.py" for name, line in _string_sets(p).items()}
    shared = []
    for p in modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hpc_mm"):
                for alias in node.names:
                    where, line = owners.get(alias.name, (p, 0))
                    room = layer(module_name(where)) or where
                    if where != p and room != (layer(module_name(p)) or p):  # a room may share its own
                        shared.append(
                            f"{where.relative_to(ROOT)}:{line} {alias.name}, imported by {p.relative_to(ROOT)}"
                        )
    assert not shared, shared


def test_the_run_directorys_names_have_one_owner():
    """Every name in a run directory (and a sweep's folder) is spelled once, in run/layout.py, and
    paths are built by RunDir: no other module writes "events.jsonl" or "report.png" itself."""
    from hpc_mm.run import layout

    names = {
        v
        for k, v in vars(layout).items()
        if k.isupper()
        and isinstance(v, str)
        and k not in ("TASK_LOG", "PROGRESS_FILE", "BATCH_LOG")
        and ("." in v or v in ("heartbeats", "submitit"))  # file names (folder names are also words, commands)
    }
    spelled = []
    for p in modules():
        if p.name in ("layout.py",):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not spelled, spelled


def _layout_names(path: Path) -> set[str]:
    """The names `path` imports from run/layout.py (`from hpc_mm.run.layout import EVENTS`)."""
    return {
        alias.asname or alias.name
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == "hpc_mm.run.layout"
        for alias in node.names
    }


def _names_layout(node, imported: set[str]) -> bool:
    """Is `node` a name of run/layout.py (`layout.EVENTS`, `EVENTS`, `TASK.format(i)`, `layout.f(...)`)?"""
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "layout":
            return True  # layout.local_task_log(...)
        return isinstance(func, ast.Attribute) and _names_layout(func.value, imported)  # TASK.format(i)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "layout":
        return node.attr.isupper()
    return isinstance(node, ast.Name) and node.id in imported and node.id.isupper()


def test_every_path_in_a_run_directory_is_built_by_rundir_or_sweepdir():
    """`folder / layout.EVENTS`, `run_dir / TASK.format(i)`: only RunDir and SweepDir (and layout.py,
    which plans a run before its directory exists) join a folder with a run directory's name."""
    builders = {"layout.py", "rundir.py", "sweepdir.py"}
    built = []
    for p in modules():
        if p.name in builders:
            continue
        mine = _layout_names(p)
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and _names_layout(node.right, mine):
                built.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert not built, built


def test_one_atomic_writer():
    """Files are replaced whole in one place (run/atomic.py); the checkpoint's own folder is renamed
    into place by the trainer's save (a folder, not a file)."""
    replacing = [
        f"{p.relative_to(ROOT)}:{node.lineno}"
        for p in modules()
        if p.name != "atomic.py"
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("replace", "rename")
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "os"
    ]
    assert replacing == ["hpc_mm/train/checkpoint.py:68"], replacing
