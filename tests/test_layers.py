"""Importing the packages is cheap, and the layers point one way."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

HEAVY = ("tensorflow", "keras", "matplotlib", "fastapi", "ray", "mlflow")


@pytest.mark.parametrize(
    "package", ["embedder", "classical", "serving", "classical.cli", "serving.cli", "classical.tracking"]
)
def test_importing_loads_no_heavy_library(package: str) -> None:
    code = f"import sys, {package}; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


@pytest.mark.parametrize("module", ["embedder", "embedder.cli"])
def test_embedder_starts_without_scikit_learn(module: str) -> None:
    """Every `embedder` command starts about a second sooner: scikit-learn loads with `embedder.Embedder` only."""
    code = (
        f"import sys, {module}; before = 'sklearn' in sys.modules; from embedder import Embedder; "
        "print(before, 'sklearn' in sys.modules, Embedder.__name__)"
    )
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert printed == ["False", "True", "Embedder"]


def test_loading_a_cache_for_the_classical_layer_needs_no_keras(tmp_path: Path) -> None:
    code = f"""
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from conftest import blobs, write_cache
from classical import load_labeled, make_split
X, labels = blobs(per_class=10)
write_cache({str(tmp_path / "c.h5")!r}, X, labels)
data = load_labeled({str(tmp_path / "c.h5")!r})
make_split(data.paths, data.sha256, data.y, data.class_names)
print(sorted({{m.split('.')[0] for m in sys.modules}} & {{"tensorflow", "keras"}}))
"""
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports (absolute imports), at any depth."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    ("package", "may_import"),
    [
        ("embedder", {"embedder"}),
        ("classical", {"classical", "embedder"}),
        ("serving", {"serving", "classical", "embedder"}),
    ],
)
def test_layers_point_down_and_use_only_public_names(package: str, may_import: set[str]) -> None:
    ours = {"embedder", "classical", "serving"}
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top not in ours:
                continue
            assert top in may_import, f"{path.relative_to(ROOT)} imports {module}: a layer above {package}"
            if top != package:  # a lower layer: its public names only, and a CLI also the CLI's building blocks
                assert module == top or (path.name == "cli.py" and module == "embedder.cli"), (
                    f"{path.relative_to(ROOT)} imports {module}; use `from {top} import ...`"
                )


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports, at any depth (lazy imports too: a cycle is a cycle).

    Importing `a.b.c` runs the packages `a` and `a.b` too, so they count, except the importer's own
    ancestors (already being imported when it runs); `from a.b import c` counts `a.b.c` if it is a module.
    """
    modules = {module_name(path): path for path in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for module in found:
                parts = module.split(".")
                targets.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        graph[name] = {target for target in targets if target in modules and target not in own and target != name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("package", ["embedder", "classical", "serving"])
def test_no_import_cycles(package: str) -> None:
    found = cycle(import_graph(package))
    assert found is None, "import cycle: " + " -> ".join(found or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_embedder_does_not_mention_what_is_built_on_it() -> None:
    for path in sorted((ROOT / "embedder").rglob("*.py")):
        text = path.read_text()
        for word in ("classical", "serving", "sweep", "model file", "service"):
            assert word not in text.lower(), f"{path.relative_to(ROOT)} mentions {word!r}"


# classical's rooms, lowest first: embeddings -> models -> verdict. A room imports only rooms before it.
CLASSICAL_ROOMS = [
    "errors",
    "data",
    "models",
    "search",
    "report",
    "audit",
    "modelfiles",
    "experiments",
    "labelling",
    "finetuning",
    "export",
    "tracking",
    "cli",
]


def test_classical_rooms_point_down() -> None:
    def room(module: str) -> str:
        return module.split(".")[1]

    for module, targets in import_graph("classical").items():
        if module == "classical":
            continue
        assert room(module) in CLASSICAL_ROOMS, f"{module}: a room test_layers.py does not know; add it in its place"
        for target in targets:
            if target != "classical" and room(target) != room(module):
                assert CLASSICAL_ROOMS.index(room(target)) < CLASSICAL_ROOMS.index(room(module)), (
                    f"{module} imports {target}: {room(target)!r} sits above {room(module)!r}"
                )


@pytest.mark.parametrize("package", ["embedder", "classical", "serving"])
def test_every_public_name_exists(package: str) -> None:
    """`__all__` is a package's face: each name in it can be imported (`from package import *` works)."""
    module = importlib.import_module(package)
    missing = [name for name in getattr(module, "__all__", []) if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names what it does not define: {missing}"
