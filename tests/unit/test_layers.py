"""The import structure, checked over the source tree's syntax: no import circle between modules
or between folders, and no import from a lower layer up to a higher one (controller/README.md).

Every import counts, also those inside functions and under TYPE_CHECKING: a lazy import is still
a dependency, and one that points upward is what lets layers grow into each other."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("controller", "lab", "softswitch", "nsm_api", "topologies")

# Lowest first. A module belongs to the longest prefix listed; it may import its own layer's
# modules and lower layers only.
LAYERS: list[tuple[str, ...]] = [
    ("nsm_api", "controller.settings", "controller.aio", "controller.logs"),
    ("controller.topology", "controller.p4rt", "controller.gnmi", "controller.host", "controller.targets",
     "controller.identity", "controller.cluster"),
    ("controller.fabric",),
    ("controller.heal",),
    ("controller.pipeline",),
    ("controller.nsm.base",),
    ("controller.nsm.registry",),
    ("controller.nsm.elements",),
    ("controller.nsm", "controller.admin"),
    ("controller.sdk",),
    ("controller.operators",),
    ("controller.runtime", "controller.replication"),
    ("controller.commands",),
    ("lab",),
]
# The softswitch is a target, not part of the controller: it shares only the protos.
APART = {"softswitch": {"softswitch", "nsm_api"}, "topologies": {"topologies"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (resolved to modules that exist)."""
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    out: dict[str, set[str]] = {}
    for mod, path in modules.items():
        targets: set[str] = set()
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".")[: len(mod.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import module` depends on the module; `from pkg import name`, on pkg
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    targets.add(name)
        out[mod] = targets
    return out


def layer_of(mod: str) -> int | None:
    if mod in PACKAGES:
        return 0  # a top-level package's __init__ holds no code
    best: tuple[int, int] | None = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (mod == prefix or mod.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    return None if best is None else best[0]


def folder(mod: str) -> str:
    """The folder a module's file is in (a package's __init__ counts as its own folder)."""
    path = ROOT.joinpath(*mod.split("."))
    return mod if path.is_dir() else mod.rpartition(".")[0]


def related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def test_no_import_circle_between_modules() -> None:
    g = nx.DiGraph([(a, b) for a, bs in project_imports().items() for b in bs])
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert cycles == []


def test_no_two_folders_import_each_other() -> None:
    # A folder and its subfolders may hold modules of different layers (controller/settings.py
    # is below controller/fabric/, controller/runtime.py above it): the layer test judges those.
    g = nx.DiGraph()
    for a, bs in project_imports().items():
        for b in bs:
            if not related(folder(a), folder(b)):
                g.add_edge(folder(a), folder(b))
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert cycles == []


def test_imports_point_down_the_layers() -> None:
    upward = []
    for a, bs in project_imports().items():
        top = a.split(".")[0]
        if top in APART:
            upward += [f"{a} -> {b}" for b in bs if b.split(".")[0] not in APART[top]]
            continue
        la = layer_of(a)
        assert la is not None, f"{a} is in no layer: add it to LAYERS"
        for b in bs:
            lb = layer_of(b)
            if lb is None or lb > la:
                upward.append(f"{a} -> {b}")
    assert upward == []
