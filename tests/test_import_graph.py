"""The package's import structure: every module imports on its own, the import graph has no
cycle, and the parallel layer knows nothing of the objective (no diffusion import, no
ANT-UW name): engines see modules and parameter groups only."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "dtr_scale"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(importer: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name `from <level dots><target> import ...` refers to inside `importer`."""
    if level == 0:
        return target or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imported_modules(name: str, path: Path) -> set[str]:
    """dtr_scale modules that `name` imports anywhere: at module level or lazily inside a function
    (a lazy import that closes a circle is still a circle, only a later-failing one)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = list(ast.walk(tree))
    out = set()
    is_package = path.name == "__init__.py"
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(name, is_package, node.level, node.module)
            # `from pkg import sub` imports the submodule when there is one.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` where c is an attribute
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_resolution():
    assert resolve("dtr_scale.parallel.fsdp", False, 1, "engine") == "dtr_scale.parallel.engine"
    assert resolve("dtr_scale.parallel.fsdp", False, 2, "models.routing") == "dtr_scale.models.routing"
    assert resolve("dtr_scale.data", True, 1, "loader") == "dtr_scale.data.loader"
    edges = imported_modules("dtr_scale.parallel.fsdp", MODULES["dtr_scale.parallel.fsdp"])
    assert "dtr_scale.parallel.engine" in edges


def test_import_graph_has_no_cycle():
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.timeout(300)
def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(n for n in MODULES if not n.endswith("__main__"))
    code = ("import importlib, sys\n"
            "failed = []\n"
            f"for name in {names!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception as exc:\n"
            "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
            "print('\\n'.join(failed))\n"
            "sys.exit(1 if failed else 0)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                          env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


# ANT-UW by any of its spellings in code, and the names of its parts.
OBJECTIVE_NAMES = re.compile(r"ant[_-]?uw|AntUncertainty|ant_lr|log_vars|ant_clusters", re.IGNORECASE)


def test_parallel_layer_does_not_know_the_objective():
    parallel = {n: p for n, p in MODULES.items() if n.startswith("dtr_scale.parallel")}
    assert "dtr_scale.parallel.engine" in parallel
    for name, path in parallel.items():
        imports = imported_modules(name, path)
        assert not {m for m in imports if m.startswith("dtr_scale.diffusion")}, f"{name} imports the diffusion package"
        hits = OBJECTIVE_NAMES.findall(path.read_text())
        assert not hits, f"{path.relative_to(REPO)} names ANT-UW: {sorted(set(hits))}"
