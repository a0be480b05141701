"""The package's walls: no module imports from a higher layer, and no import cycles.

Every import of every module counts, function-local and type-checking ones too, because a lazy
import still ties the two modules together. Layers, lowest first:

    errors, redact, credentials, clock, version   the base every layer may use
    core                                           pure: imports only core and errors
    config                                         settings
    storage, catalog                               adapters (never services, schedule or faces)
    exec                                           executors
    ingest, services                               the jobs
    api                                            Fleet, the one door of the faces
    schedule, web                                  faces
    cli                                            the outermost face

``fleetscore/__init__.py`` (the lazy public face) may name anything; no package of the same layer
imports another (storage and catalog know nothing of each other, nor ingest and services).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = [
    {"errors", "redact", "credentials", "clock", "version"},
    {"core"},
    {"config"},
    {"storage", "catalog"},
    {"exec"},
    {"ingest", "services"},
    {"api"},
    {"schedule", "web"},
    {"cli"},
]
LAYER = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in (SRC / "fleetscore").rglob("*.py")}


def resolve(name: str) -> str:
    """The module an imported name belongs to (``fleetscore.core.times.iso`` -> ``fleetscore.core.times``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fleetscore"):
            found |= {resolve(f"{node.module}.{alias.name}") for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {resolve(alias.name) for alias in node.names if alias.name.startswith("fleetscore")}
    return found - {module, ""}


GRAPH = {m: imports_of(m) for m in MODULES}


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer() -> None:
    assert {package(m) for m in MODULES} - {"__init__"} <= set(LAYER), "add the new package to LAYERS"


def test_no_import_reaches_up_or_sideways() -> None:
    bad = []
    for module, targets in GRAPH.items():
        here = package(module)
        if here == "__init__":
            continue
        for target in targets:
            there = package(target)
            if there == here:
                continue
            if there == "__init__" or LAYER[there] >= LAYER[here]:
                bad.append(f"{module} imports {target}")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_core_imports_only_core_and_errors() -> None:
    bad = [f"{m} imports {t}" for m, ts in GRAPH.items() if package(m) == "core"
           for t in ts if package(t) not in ("core", "errors")]
    assert not bad, "\n".join(bad)


def test_only_faces_import_the_api() -> None:
    bad = [f"{m} imports fleetscore.api" for m, ts in GRAPH.items() if "fleetscore.api" in ts
           and package(m) not in ("cli", "web", "schedule", "__init__")]
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_import_cycles_between_packages_or_modules() -> None:
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        packages[package(module)] |= {package(t) for t in targets if package(t) != package(module)}
    packages.pop("__init__", None)  # the lazy public face names everything; nothing below imports it
    assert _cycles(packages) == []
    assert _cycles(GRAPH) == []
