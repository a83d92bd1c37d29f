"""No import cycles between peftbench modules, and the light entry points stay light.

The graph is read from the source with `ast`, without importing anything: every `import` and `from ... import`
statement counts, at module level and inside functions alike (a deferred import that closes a cycle is still a
cycle, only one that fails later). Relative imports are resolved against the importing module's package;
`from pkg import name` is an edge to the submodule `pkg.name` when there is one, else to `pkg` (its __init__).

Only explicit imports count. Importing `peftbench.data.files` also runs `peftbench/__init__.py` and
`peftbench/data/__init__.py` first, but those implicit parent edges are left out: every package's __init__ imports
some of its own submodules, so counting them would make every package a trivial cycle.

Light entry points: `import peftbench`, `import peftbench.errors`, `peftbench --help` and every subcommand's
`--help` load neither torch nor segment_anything (the package's public API is imported on first use, by a
module-level `__getattr__` in peftbench/__init__.py); each is checked in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

import peftbench

PACKAGE_DIR = Path(peftbench.__file__).parent
ROOT = PACKAGE_DIR.parent
HEAVY = ("torch", "segment_anything", "torchvision")


def module_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package (a package is its __init__.py)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(module: str, is_package: bool, source: str, modules: set[str]) -> set[str]:
    """The modules among `modules` that `source` (the text of `module`) imports explicitly."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(_known_prefix(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            anchor = parts[: len(parts) - node.level + 1] if node.level else []  # level 1: the package itself
            base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else _known_prefix(base, modules))
    return found - {None}


def _known_prefix(name: str, modules: set[str]) -> str | None:
    """The longest dotted prefix of `name` that is one of `modules`: the module an import names; None for anything
    outside them (the standard library, third-party packages)."""
    parts = name.split(".")
    return next((p for p in (".".join(parts[:n]) for n in range(len(parts), 0, -1)) if p in modules), None)


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """Module -> the package modules it imports explicitly."""
    files = module_files(package_dir)
    return {name: imports_of(name, path.name == "__init__.py", path.read_text(), set(files))
            for name, path in files.items()}


def tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components that hold a cycle (Tarjan's algorithm): each set of modules that import
    one another, directly or not, once."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:  # node is the root of a component: the stack above it holds the rest
            components.append(set(stack[stack.index(node):]))
            del stack[stack.index(node):]

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [c for c in components if len(c) > 1 or c <= graph.get(min(c), set())]


def shortest_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """[a, b, ..., a]: the shortest path from the component's first module back to itself within the component
    (breadth first), the import chain to break."""
    start = min(component)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if nxt in component and nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    raise ValueError(f"{sorted(component)} holds no cycle")


def test_no_import_cycles():
    graph = import_graph()
    found = [f"{' -> '.join(shortest_cycle(graph, t))} (tangled: {', '.join(sorted(t))})" for t in tangles(graph)]
    assert not found, "import cycles: " + "; ".join(found)


def test_tangles_find_every_cycle_once():
    graph = {"a": {"b"}, "b": {"c", "e", "g"}, "c": {"a"}, "d": {"a"}, "e": set(), "f": {"f"}, "g": {"a"}}
    assert sorted(map(sorted, tangles(graph))) == [["a", "b", "c", "g"], ["f"]]
    assert shortest_cycle(graph, {"a", "b", "c", "g"}) == ["a", "b", "c", "a"]
    assert shortest_cycle(graph, {"f"}) == ["f", "f"]
    assert tangles({"a": {"b"}, "b": {"c"}, "d": {"b", "c"}}) == []


def test_imports_resolve_relative_and_submodule_imports():
    modules = {"pkg", "pkg.errors", "pkg.sub", "pkg.sub.a", "pkg.sub.b", "pkg.sub.c"}
    source = ("import os\nimport pkg.sub.c.name\nfrom . import b, helper\nfrom .. import errors\n"
              "from ..errors import UserError\n\ndef f():\n    from .c import thing\n    from pkg import sub\n")
    # helper is a name in pkg/sub/__init__.py; `import pkg.sub.c.name` runs pkg.sub.c; os is not in the package.
    assert imports_of("pkg.sub.a", False, source, modules) == {"pkg.sub.c", "pkg.sub.b", "pkg.sub", "pkg.errors"}
    assert imports_of("pkg.sub", True, "from . import a\nfrom .b import x\n", modules) == {"pkg.sub.a", "pkg.sub.b"}


def test_graph_sees_the_package_imports():
    graph = import_graph()
    assert {"peftbench.data", "peftbench.methods"} <= graph["peftbench"]
    assert "peftbench.methods.bitfit" in graph["peftbench.methods"]  # `from . import bitfit, ...`
    assert "peftbench.errors" in graph["peftbench.methods.base"]  # `from ..errors import UserError`


def fresh_python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python *args` in a new interpreter on this checkout (not an installed copy)."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                     os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def imported_modules(importtime_stderr: str) -> set[str]:
    """The modules `python -X importtime` reports having imported (one line each on stderr)."""
    return {m.group(1) for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", importtime_stderr,
                                            flags=re.MULTILINE)}


def heavy(modules) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.mark.parametrize("module", ["peftbench", "peftbench.errors", "peftbench.cli"])
def test_importing_loads_no_torch(module):
    done = fresh_python("-c", f"import {module}, sys; assert 'torch' not in sys.modules; "
                              "print(','.join(m for m in sys.modules if m.split('.')[0] in "
                              f"{HEAVY!r}))")
    assert done.returncode == 0 and not done.stdout.strip(), \
        f"import {module} loaded {done.stdout.strip() or 'torch'}\n{done.stderr[-2000:]}"


def subcommands() -> list[str]:
    """The subcommands, from cli's command table (importing cli is light; building the parser at collection time
    would make a heavy parser an error of this whole file instead of the failure of the tests below)."""
    from peftbench.cli import COMMANDS

    return sorted(COMMANDS)


@pytest.mark.parametrize("command", [[], *([c] for c in subcommands())], ids=lambda c: " ".join(c) or "peftbench")
def test_help_loads_no_torch(command):
    """`python -m peftbench [command] --help`, as a user types it, with the interpreter's own import log."""
    done = fresh_python("-X", "importtime", "-m", "peftbench", *command, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: peftbench" in done.stdout
    modules = imported_modules(done.stderr)
    assert "peftbench.cli" in modules, "the import log was not read (python -X importtime's format changed?)"
    found = heavy(modules)
    assert not found, (f"peftbench {' '.join(command)} --help imported {sorted({m.split('.')[0] for m in found})} "
                       f"({len(found)} modules; see `python -X importtime -m peftbench {' '.join(command)} --help`)")


def test_the_public_api_loads_on_first_use():
    code = ("import sys, peftbench\n"
            "assert 'torch' not in sys.modules\n"
            "from peftbench import load_run, dataset_cards\n"
            "from peftbench.methods import adapt, method_specs\n"
            "assert peftbench.adapt is adapt and peftbench.method_specs is method_specs\n"
            "assert peftbench.load_run is load_run and callable(dataset_cards)\n"
            "assert set(peftbench.__all__) <= set(dir(peftbench))\n"
            "assert 'segment_anything' in sys.modules\n"
            "try:\n    peftbench.no_such_name\nexcept AttributeError as err:\n    print(err)\n")
    done = fresh_python("-c", code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no attribute 'no_such_name'" in done.stdout


def test_omp_wait_policy_is_set_before_torch_loads():
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads: peftbench/__init__.py sets it before any torch import,
    whichever peftbench module is imported first (a user's explicit setting wins)."""
    code = ("import os, sys\nimport peftbench.errors\nassert 'torch' not in sys.modules\n"
            "print(os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "PASSIVE", done.stderr[-2000:]
    done = fresh_python("-c", code, env={"OMP_WAIT_POLICY": "ACTIVE"})
    assert done.stdout.strip() == "ACTIVE", done.stderr[-2000:]


def test_import_time_benchmark_compares_a_revision(tmp_path):
    """benchmarks/import_time.py end to end, against HEAD (light too, so quick); its worktree is removed."""
    out = tmp_path / "import_time.json"
    done = fresh_python(str(ROOT / "benchmarks" / "import_time.py"), "--revision", "HEAD", "--runs", "1",
                        "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| `peftbench --help` |" in done.stdout and "| `import peftbench.errors` |" in done.stdout
    medians = json.loads(out.read_text())["median_s"]
    assert all(t > 0 for per in medians.values() for t in per.values())
    assert "peftbench-import-time-" not in subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True,
                                                          text=True, check=False).stdout


# The layers, lowest first (docs/architecture.md): a module may import its own layer and the layers below it, never
# one above. A top-level module not named here is a command (cli, bench, export, params, pretrain, predict).
LAYERS = [
    ("base", ("peftbench.errors", "peftbench.paths")),
    ("store", ("peftbench.store",)),
    ("scoring", ("peftbench.scoring",)),
    ("backbone", ("peftbench.backbone",)),
    ("data", ("peftbench.data",)),
    ("methods", ("peftbench.methods",)),
    ("training", ("peftbench.training",)),
    ("report", ("peftbench.report",)),
    ("grid", ("peftbench.grid",)),
]


def layer_of(module: str) -> int:
    """The index of `module`'s layer in LAYERS; the commands above them all."""
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return len(LAYERS)


def test_no_module_imports_a_layer_above_its_own():
    graph = import_graph()
    upward = [f"{module} -> {target}" for module, targets in sorted(graph.items()) if module != "peftbench"
              for target in sorted(targets) if target != "peftbench" and layer_of(target) > layer_of(module)]
    assert not upward, "imports up the layers (see docs/architecture.md): " + "; ".join(upward)


def test_every_module_is_in_a_layer_or_a_command():
    commands = {m for m in module_files() if layer_of(m) == len(LAYERS)} - {"peftbench"}
    assert all(m.count(".") == 1 for m in commands), sorted(commands)  # commands are top-level modules only
