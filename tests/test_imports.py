"""The import graph of ``fedsem_app/``: no circle, and the typed config on the ground floor.

Every ``import`` statement counts, at module level or inside a function (a
function-level import is still an edge: it runs on the first call), except those
under ``if TYPE_CHECKING:`` (never run). Importing ``a.b.c`` also runs the
``__init__`` of ``a.b``, so that package counts as imported too, unless it is a
package the importing module itself sits in (already being imported then).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from fedsem_app.config import registries, sections
from fedsem_app.config.errors import ConfigError
from fedsem_app.registry import Registry, RegistryRef

PACKAGE = "fedsem_app"
ROOT = Path(__file__).resolve().parents[1]
# Config is shared by every side; these hold the server's, the client's and the data side.
NOT_BELOW_CONFIG = ("fedsem_app.strategies", "fedsem_app.clients", "fedsem_app.data")


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` under ``root``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Absolute dotted names that a module imports (``from a import b`` gives ``a.b``)."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (see the module docstring)."""
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        is_package = path.name == "__init__.py"
        if is_package:
            ancestors.add(name)
        for imported in _imported_names(ast.parse(path.read_text()), name, is_package):
            parts = imported.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                # A name that is not a module (`from a import function`) adds nothing.
                if target in modules and target not in ancestors and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module.

    Each is returned sorted; a module importing itself is not counted (cannot happen).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module that importing ``start`` can import, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for succ in graph[todo.pop()] - seen:
            seen.add(succ)
            todo.append(succ)
    return seen


def test_find_cycles_on_hand_made_graphs() -> None:
    # Prepare: a -> b -> c -> a is one circle; d -> e -> d another; f stands alone.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "f"}, "d": {"e"}, "e": {"d"}, "f": set()}
    # Execute / Assert
    assert find_cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_import_graph_counts_function_level_and_package_imports(tmp_path: Path) -> None:
    # Prepare: a package whose config imports a strategy inside a function, and a
    # strategy module that imports the config at the top; a TYPE_CHECKING import
    # and a relative import.
    pkg = tmp_path / "pkg"
    (pkg / "strategies").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def check():\n    from pkg.strategies.rules import RULES\n")
    (pkg / "strategies" / "__init__.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import config\n"
    )
    (pkg / "strategies" / "rules.py").write_text("from ..config import check\nfrom . import x\n")
    (pkg / "strategies" / "x.py").write_text("import os\n")
    # Execute
    graph = import_graph(tmp_path, "pkg")
    # Assert: the function-level import counts, and it runs strategies/__init__ too;
    # the TYPE_CHECKING import does not; `from . import x` names the module x.
    assert graph["pkg.config"] == {"pkg.strategies", "pkg.strategies.rules"}
    assert graph["pkg.strategies"] == set()
    assert graph["pkg.strategies.rules"] == {"pkg.config", "pkg.strategies.x"}
    assert find_cycles(graph) == [["pkg.config", "pkg.strategies.rules"]]


def test_no_import_circle_in_the_app() -> None:
    # Prepare
    graph = import_graph(ROOT, PACKAGE)
    assert len(graph) > 50  # the walk found the app's modules
    # Execute
    cycles = find_cycles(graph)
    # Assert
    assert cycles == [], "modules that import each other in a circle: " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_config_imports_nothing_from_strategies_clients_or_data() -> None:
    # Prepare
    graph = import_graph(ROOT, PACKAGE)
    config_modules = [name for name in graph if name.startswith("fedsem_app.config")]
    assert "fedsem_app.config.sections" in config_modules
    # Execute
    below = {
        name: sorted(m for m in reachable(graph, name) if m.startswith(NOT_BELOW_CONFIG))
        for name in config_modules
    }
    # Assert
    assert all(not found for found in below.values()), below


# The references config checks names through: the section and field each checks,
# and the config key a wrong value's message names.
CHECKED = {
    "TEMPLATES": ("ModelConfig", "template", "model.template"),
    "PARTITIONERS": ("DataConfig", "partitioner", "data.partitioner"),
    "CONSENSUS_RULES": ("FedSemConfig", "consensus", "fedsem.consensus"),
    "AGGREGATION_RULES": ("AggregationConfig", "rule", "aggregation.rule"),
    "DP_WRAPPERS": ("DPConfig", "clip_side", "dp.clip-side"),
    "FAULT_MODES": ("FaultConfig", "mode", "fault.mode"),
    "RELEVANCE_ESTIMATORS": ("FedSemConfig", "relevance", "fedsem.relevance"),
}


def test_every_registry_the_config_checks_resolves_to_its_key() -> None:
    # Prepare
    refs = {name: ref for name, ref in vars(registries).items() if isinstance(ref, RegistryRef)}
    # Execute
    keys = {name: ref.registry.key for name, ref in refs.items()}
    # Assert: each reference reaches a Registry, under the name it has where it lives.
    assert keys == {name: key for name, (_, _, key) in CHECKED.items()}
    for name, ref in refs.items():
        assert isinstance(ref.registry, Registry)
        assert ref.attribute == name


@pytest.mark.parametrize("registry", sorted(CHECKED))
def test_a_wrong_name_fails_with_the_registrys_list(registry: str) -> None:
    # Prepare
    section, field_name, key = CHECKED[registry]
    allowed = ", ".join(getattr(registries, registry).names())
    section_type = getattr(sections, section)
    # Execute
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(section_type(), **{field_name: "nonesuch"})
    # Assert
    assert str(err.value) == f"config key '{key}': got 'nonesuch'; allowed values: {allowed}"
