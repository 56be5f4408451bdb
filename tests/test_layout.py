"""The package layout's rules (docs/architecture.md, Layout): pretrain/ laid out by stage, stages
import only the stages below them, no import cycles, and the shard format defined once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO_ROOT

PRETRAIN = REPO_ROOT / "pretrain"
# Bottom to top: a module may import its own layer and the layers below it, never one above.
LAYERS: list[set[str]] = [
    {"pretrain.config", "pretrain.faults"},
    {"pretrain.objectives", "pretrain.model", "pretrain.tracking"},
    {"pretrain.loader", "pretrain.plan"},
    {"pretrain.batch_loss", "pretrain.pretrained", "pretrain.distributed"},
    {"pretrain.checkpoint"},
    {"pretrain.evaluate"},
    {"pretrain.train"},
    {"pretrain.export"},
    {"pretrain.generate"},
    {"pretrain.finetune"},
    {"pretrain.cli"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every pretrain module ``path`` imports, at the top or inside a function."""
    known = {_module_name(p) for p in PRETRAIN.rglob("*.py")}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & known
            # ``from package import module`` imports the module; anything else, the package.
            found.update(submodules if len(submodules) == len(node.names) else {node.module})
    return {name for name in found if name in known}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PRETRAIN.rglob("*.py")}


def _layer(module: str) -> int:
    for index, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS: add it where it belongs")


def test_the_top_of_pretrain_holds_at_most_8_modules() -> None:
    modules = [p.name for p in PRETRAIN.glob("*.py") if p.name != "__init__.py"]
    assert len(modules) <= 8, sorted(modules)


def test_every_stage_folder_says_what_it_owns() -> None:
    for folder in PRETRAIN.iterdir():
        if folder.is_dir() and not folder.name.startswith("__"):
            init = folder / "__init__.py"
            assert init.is_file(), folder
            assert ast.get_docstring(ast.parse(init.read_text())), init


def test_no_module_imports_a_stage_above_it() -> None:
    upward = [
        f"{module} -> {imported}"
        for module, imports in _graph().items()
        if module != "pretrain"
        for imported in imports
        if _layer(imported) > _layer(module)
    ]
    assert upward == []


def test_no_module_imports_its_own_package() -> None:
    """A module never imports the ``__init__`` of the folder that holds it (or one above)."""
    bad = [
        f"{module} -> {imported}"
        for module, imports in _graph().items()
        for imported in imports
        if module.startswith(imported + ".") and imported != "pretrain"
    ]
    assert bad == []


def test_no_import_cycles() -> None:
    graph = _graph()
    # A package's own __init__ re-exports its modules: importing the package is importing them.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or node.startswith(nxt + ".") or nxt.startswith(node + "."):
                continue  # a package and its own modules
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_the_shard_format_is_defined_in_one_module() -> None:
    """The member names and the manifest's format version are literals in
    data_pipeline/sample_format.py only; the writer, verify and the loader import them."""
    literal = re.compile(
        r"""["'](tokens\.npy|meta\.json)["']|b["']\.(tokens\.npy|meta\.json)["']"""
    )
    version = re.compile(r"""format_version["']\)?\s*(!=|==)\s*\d|["']format_version["']:\s*\d""")
    owners = []
    for package in ("data_pipeline", "pretrain"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            text = path.read_text()
            if literal.search(text) or version.search(text):
                owners.append(str(path.relative_to(REPO_ROOT)))
    assert owners == ["data_pipeline/sample_format.py"]
