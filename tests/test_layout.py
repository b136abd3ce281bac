"""The package's shape, kept by parsing every import (lazy and TYPE_CHECKING ones too).

The rules (README, "Layout"): the leaves import only leaves; ``_fs`` only leaves;
``net/``, ``tables/`` and ``state/`` only the leaves, ``_fs`` and themselves; ``run/``
anything but the public surface and the sandbox; the public surface anything; the sandbox
nothing of bulklink; nothing but ``__main__`` imports the CLI; and no import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bulklink"
LEAVES = frozenset({"errors", "models", "options", "urls", "redaction", "text", "console"})
PUBLIC = frozenset({"__init__", "__main__", "cli", "api", "stream"})
MIDDLE = frozenset({"net", "tables", "state"})
#: What each part may import besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    **{leaf: LEAVES for leaf in LEAVES},
    "_fs": LEAVES,
    **{part: LEAVES | {"_fs"} for part in MIDDLE},
    "run": LEAVES | {"_fs"} | MIDDLE,
    "sandbox": frozenset(),
}
MAX_TOP_LEVEL = 12


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str:
    """The module an imported name stands for: itself, or the package holding it."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {_resolve(a.name) for a in node.names if a.name.startswith("bulklink")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            if not base.startswith("bulklink"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else _resolve(base))
    # Importing its own package (``bulklink.net`` from ``bulklink.net.client``) runs no
    # code of a sibling: not an edge. The package root is no module's own package.
    own = module.rpartition(".")[0]
    return {m for m in found if m != module and (m != own or own == "bulklink")}


def _part(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


GRAPH = {module: _imports(module) for module in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layout(module: str) -> None:
    part = _part(module)
    if part in PUBLIC:
        return
    allowed = ALLOWED[part] | {part}
    wrong = sorted(m for m in GRAPH[module] if _part(m) not in allowed)
    assert not wrong, f"{module} ({part}) may import only {sorted(allowed)}, imports {wrong}"


def test_nothing_but_main_imports_the_cli() -> None:
    importers = sorted(m for m, deps in GRAPH.items() if "bulklink.cli" in deps)
    assert importers == ["bulklink.__main__"]


def test_no_import_cycle() -> None:
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for other in sorted(GRAPH[module]):
            if seen.get(other) == 1:
                cycle = [*path[path.index(other) :], other]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if other not in seen:
                visit(other, [*path, other])
        seen[module] = 2

    for module in sorted(GRAPH):
        if module not in seen:
            visit(module, [module])


def test_the_top_folder_stays_small() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= MAX_TOP_LEVEL, f"{len(top)} modules in bulklink/: {top}"
    parts = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert parts == MIDDLE | {"run"}


def test_every_module_says_its_job() -> None:
    silent = sorted(
        m for m, p in MODULES.items() if not ast.get_docstring(ast.parse(p.read_text()))
    )
    assert not silent, f"modules without a docstring saying their one job: {silent}"
