"""The import graph of ``harness``: one direction, no cycles, no borrowed private names.

Layers, top to bottom (a module may import from its own layer or any layer below, never above):

    cli, report, diff, pytest_plugin            what users run
    verify, generate, retention, regen,         the runner, the generator, the store's retention,
      scope                                       which producers a run checks
    store, integrity, contents, isolation,      the golden store and the guards around loads,
      manifest, atomic, lock, policy,             downstream runtimes' lowerings
      results, sandbox, downstream, index
    formats                                     one writer/reader per format
    subjects                                    adapters, case lookup by subject
    cases, graphsig                             the case catalogue and graph signatures
    quant                                       the quantization implementation
    outcomes, compat, recorded_warnings, isa,   leaves anyone may import
      jsonstrict, names, harness (the package)

Every import counts, at module level or inside a function, ``TYPE_CHECKING`` ones included: a
function-level import that climbs a layer is the same dependency, only hidden.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "harness"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("harness.cli", "harness.report", "harness.diff", "harness.pytest_plugin"),
    ("harness.verify", "harness.generate", "harness.retention", "harness.regen", "harness.scope"),
    (
        "harness.store",
        "harness.results",
        "harness.index",
        "harness.integrity",
        "harness.contents",
        "harness.isolation",
        "harness.manifest",
        "harness.atomic",
        "harness.lock",
        "harness.policy",
        "harness.sandbox",
        "harness.downstream",
    ),
    ("harness.formats",),
    ("harness.subjects",),
    ("harness.cases", "harness.graphsig"),
    ("harness.quant",),
    (
        "harness.outcomes",
        "harness.compat",
        "harness.recorded_warnings",
        "harness.jsonstrict",
        "harness.names",
        "harness.isa",
        "harness",
    ),
)

# Sanctioned climbs out of a layer (none: harness/__init__.py no longer registers the
# quantized_decomposed ops; harness.quant and the exported-format reader do).
ALLOWED_CLIMBS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    rel = path.relative_to(HARNESS.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(HARNESS.rglob("*.py"))}


def imports(source: str, me: str, is_package: bool, known: set[str]) -> set[tuple[str, str | None]]:
    """(imported module, imported name or None) for every harness import in module ``me``.

    ``from harness.x import y`` names module ``harness.x.y`` when that is a module, else
    the attribute ``y`` of ``harness.x``.
    """
    package = me if is_package else me.rpartition(".")[0]
    found: set[tuple[str, str | None]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update((a.name, None) for a in node.names if a.name.split(".")[0] == "harness")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "harness":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add((sub, None) if sub in known else (base, alias.name))
    return found


def layer_of(module: str) -> int:
    """Index of the layer a module belongs to (its longest matching prefix)."""
    best, best_len = None, -1
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in this test")
    return best


def module_imports(name: str, path: Path, known: set[str]) -> set[tuple[str, str | None]]:
    return imports(path.read_text(), name, path.name == "__init__.py", known)


@functools.cache
def edges() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {
        name: {target for target, _ in module_imports(name, path, known) if target != name}
        for name, path in mods.items()
    }


def test_every_module_belongs_to_a_layer() -> None:
    for name in modules():
        layer_of(name)


@pytest.mark.parametrize("module", sorted(modules()))
def test_a_module_never_imports_from_a_layer_above_it(module: str) -> None:
    climbs = [target for target in sorted(edges()[module]) if layer_of(target) < layer_of(module)]
    assert not climbs, f"{module} (layer {layer_of(module)}) imports from above: {climbs}"


def test_the_import_graph_has_no_cycle() -> None:
    graph = edges()
    # A module importing its own package (``harness.formats.graph`` -> ``harness.formats``) runs
    # the package first; that is a real edge, and the registry modules avoid it on purpose.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def private_uses(source: str, me: str, is_package: bool, known: set[str]) -> set[str]:
    """``module._name`` borrowed by module ``me``: imported by name, or read as an attribute of
    a harness module it imported (``from harness.quant import primitives as P; P._quantize``)."""
    found = {
        f"{target}.{attr}"
        for target, attr in imports(source, me, is_package, known)
        if attr is not None and _is_private(attr) and target != me
    }
    aliases: dict[str, str] = {}
    tree = ast.parse(source)
    package = me if is_package else me.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in known:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and _is_private(node.attr)
            and aliases[node.value.id] != me
        ):
            found.add(f"{aliases[node.value.id]}.{node.attr}")
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def borrowed_private_names() -> set[str]:
    mods = modules()
    known = set(mods)
    return {
        f"{name} uses {use}"
        for name, path in mods.items()
        for use in private_uses(path.read_text(), name, path.name == "__init__.py", known)
    }


def test_no_module_uses_another_modules_private_name() -> None:
    borrowed = borrowed_private_names()
    assert not borrowed, "\n".join(sorted(borrowed))


def test_the_checker_sees_a_function_level_climb() -> None:
    """The rule is only worth what its parser sees: an import inside a function counts."""
    source = "def f():\n    from harness.verify import run_check\n"
    found = imports(source, "harness.store", False, {"harness.store", "harness.verify"})
    assert found == {("harness.verify", "run_check")}
    assert layer_of("harness.verify") < layer_of("harness.store")


def test_the_checker_sees_a_private_attribute_of_an_imported_module() -> None:
    source = "from harness.quant import primitives as P\n\ndef f(x):\n    return P._quantize(x)\n"
    known = {"harness.quant", "harness.quant.primitives", "harness.quant.nn.stubs"}
    uses = private_uses(source, "harness.quant.nn.stubs", False, known)
    assert uses == {"harness.quant.primitives._quantize"}


def test_the_checker_resolves_relative_imports() -> None:
    source = "from . import base\nfrom .base import _hidden\n"
    known = {"harness.formats", "harness.formats.base", "harness.formats.graph"}
    found = imports(source, "harness.formats.graph", False, known)
    assert found == {("harness.formats.base", None), ("harness.formats.base", "_hidden")}
