"""The package's imports only go down its layers and never in a circle.

Layers, bottom to top (``docs/architecture.md``): base helpers -> the reference math -> the Triton
kernels -> the ops and their dispatch -> the modules users build with (head, reward model,
detection) -> the integrations with other libraries -> the command line and the demo. Every
import counts, also those inside functions (a lazy import is still a dependency), and
``importlib.import_module("...")`` with a literal name; the source is read, nothing is imported.
"""
from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path

import inform_fast

LAYERS = [
    ("base", ("inform_fast._platform", "inform_fast._native", "inform_fast._C", "inform_fast._io", "inform_fast.validation")),
    ("math", ("inform_fast.reference", "inform_fast.spatial")),
    ("kernels", ("inform_fast.kernels",)),
    ("ops", ("inform_fast.dispatch", "inform_fast.ops")),
    ("modules", ("inform_fast.head", "inform_fast.packing", "inform_fast.data", "inform_fast.configuration",
                 "inform_fast.modeling", "inform_fast.export", "inform_fast.loading", "inform_fast.detect",
                 "inform_fast.tiny", "inform_fast._auto")),
    ("integrations", ("inform_fast.integrations",)),
    ("applications", ("inform_fast.cli", "inform_fast.demo", "inform_fast.__main__", "inform_fast.testing")),
]
ROOT = "inform_fast"  # the facade: its lazy names point into every layer

# Edges allowed although they break the rule, each with its reason. Keep this short.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def package_files() -> dict[str, Path]:
    """module name -> source file, for inform_fast and inform_fast.kernels (a package-dir mapping)."""
    roots = {ROOT: Path(inform_fast.__file__).parent}
    kernels = importlib.util.find_spec("inform_fast.kernels")
    roots["inform_fast.kernels"] = Path(list(kernels.submodule_search_locations)[0])
    files = {}
    for package, folder in roots.items():
        for directory, _, names in os.walk(folder):
            for name in names:
                if not name.endswith(".py"):
                    continue
                parts = Path(directory, name).relative_to(folder).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                module = ".".join((package,) + parts)
                if module.startswith("inform_fast.kernels") and package == ROOT:
                    continue  # an in-tree copy, if any, is not what is installed
                files[module] = Path(directory, name)
    return files


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The inform_fast modules ``module`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if candidate in modules or candidate == "inform_fast._C":
                    names.append(candidate)
                elif base == ROOT and alias.name in inform_fast._LAZY:
                    names.append(inform_fast._LAZY[alias.name])  # a lazy name of the facade
                else:
                    names.append(base)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        for name in names:
            while name and name not in modules and name != "inform_fast._C":
                name = name.rpartition(".")[0]
            if name.startswith(ROOT) and name != module:
                found.add(name)
    return found


def layer_of(module: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    assert best is not None, f"{module}: in no layer; add it to LAYERS (and to docs/architecture.md)"
    return best[1]


def import_graph() -> dict[str, set[str]]:
    files = package_files()
    modules = set(files)
    return {module: imports_of(module, path, modules) for module, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_is_in_a_layer():
    for module in import_graph():
        if module != ROOT:
            layer_of(module)


def test_imports_only_go_down():
    upward = []
    for module, targets in import_graph().items():
        if module == ROOT:
            continue
        for target in targets:
            if target == ROOT or (module, target) in KNOWN_EXCEPTIONS:
                continue
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = {module: {t for t in targets if t != ROOT and (module, t) not in KNOWN_EXCEPTIONS}
             for module, targets in import_graph().items() if module != ROOT}
    assert not cycles(graph), f"import cycles: {cycles(graph)}"


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    # the checks above can fail: a function-level import, a relative one and import_module count
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from inform_fast.cli import main\n    from . import head\n"
                      "    import importlib\n    importlib.import_module('inform_fast.integrations.trl')\n")
    modules = {"inform_fast.cli", "inform_fast.head", "inform_fast.integrations.trl", "inform_fast.probe"}
    assert imports_of("inform_fast.probe", source, modules) == {"inform_fast.cli", "inform_fast.head", "inform_fast.integrations.trl"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
