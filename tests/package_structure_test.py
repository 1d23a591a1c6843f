"""The package's shape: no import cycles, modules and functions of a size a
maintainer can hold in their head, submodules reachable as attributes."""

import ast
import pathlib

from absl.testing import absltest
from absl.testing import parameterized

import tf_decentral

PACKAGE = pathlib.Path(tf_decentral.__file__).parent
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80  # not counting the docstring
# A module longer than MAX_MODULE_LINES says why in its docstring with this
# phrase, e.g. "Longer than 500 lines because ...".
LONG_MODULE_REASON = "Longer than 500 lines because"


def _module_name(path):
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts
    return ".".join(parts)


def _sources():
    return {
        _module_name(p): p
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "__main__.py"
    }


def _resolve(module, level, name, package_of):
    if level == 0:
        return name
    base = package_of.split(".")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph(sources):
    """Module -> the tf_decentral modules it imports (anywhere in it)."""
    graph = {}
    for module, path in sources.items():
        is_package = path.name == "__init__.py"
        package_of = module if is_package else module.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node.level, node.module, package_of)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in sources else base)
            for target in targets:
                # `import a.b.c` imports a, a.b and a.b.c: the deepest known.
                while target and target not in sources:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def find_cycle(graph):
    """Returns one import cycle as a list of modules, or None.

    A package's `__init__` importing its own submodules (re-exports) is not
    a cycle unless a submodule imports the package's `__init__` back.
    """
    state = {}
    stack = []

    def visit(node):
        state[node] = "active"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "active":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def _without_reexports(graph, sources):
    """Drops edges from a package `__init__` to its own submodules: they
    re-export; a submodule importing its parent package is still an edge."""
    out = {}
    for module, edges in graph.items():
        if sources[module].name == "__init__.py":
            edges = {e for e in edges if not e.startswith(module + ".")}
        out[module] = edges
    return out


def _code_lines(function):
    """Lines of `function` without its docstring."""
    length = function.end_lineno - function.lineno + 1
    body = function.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        length -= body[0].end_lineno - body[0].lineno + 1
    return length


class PackageStructureTest(parameterized.TestCase):
    def test_no_import_cycles(self):
        sources = _sources()
        graph = _without_reexports(import_graph(sources), sources)
        self.assertIsNone(find_cycle(graph))

    def test_the_cycle_check_finds_a_cycle(self):
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        self.assertEqual(find_cycle(graph), ["a", "b", "c", "a"])
        self.assertIsNone(find_cycle({"a": {"b"}, "b": set()}))

    def test_the_import_graph_sees_lazy_imports(self):
        # GossipStrategy once imported its multi-worker module inside a
        # function; such an import is an edge like any other.
        sources = _sources()
        graph = import_graph(sources)
        self.assertIn(
            "tf_decentral.strategies.gossip",
            graph["tf_decentral.strategies.registry"],
        )

    def test_modules_are_short_or_say_why(self):
        long = []
        for module, path in _sources().items():
            lines = path.read_text().count("\n")
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            if lines > MAX_MODULE_LINES and LONG_MODULE_REASON not in docstring:
                long.append(f"{module}: {lines} lines")
        self.assertEqual(long, [])

    def test_functions_are_short(self):
        long = []
        for module, path in _sources().items():
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = _code_lines(node)
                    if length > MAX_FUNCTION_LINES:
                        long.append(f"{module}.{node.name}: {length} lines")
        self.assertEqual(long, [])

    @parameterized.parameters(
        "callbacks",
        "cluster",
        "cost_model",
        "datasets",
        "ops",
        "strategies",
        "testing",
        "topology",
    )
    def test_submodule_is_an_attribute(self, name):
        self.assertTrue(hasattr(tf_decentral, name))
        self.assertIn(name, dir(tf_decentral))

    def test_cost_model_without_an_import(self):
        # `import tf_decentral as tfd; tfd.cost_model` (ARCHITECTURE.md).
        self.assertTrue(callable(tf_decentral.cost_model.step_time))


if __name__ == "__main__":
    absltest.main()


class SubpackageLayersTest(absltest.TestCase):
    def test_subpackages_import_one_way(self):
        # Importing any module of a subpackage runs the subpackage's
        # __init__ first: a cycle between subpackages (ops -> strategies ->
        # ops) leaves one of them half imported while the other runs.
        sources = _sources()
        graph = import_graph(sources)
        layers = {}
        for module, edges in graph.items():
            here = _layer(module)
            for target in edges:
                there = _layer(target)
                if there != here:
                    layers.setdefault(here, set()).add(there)
        self.assertIsNone(find_cycle(layers), layers)


def _layer(module):
    """`tf_decentral.X...` -> `tf_decentral.X` (X a module or subpackage)."""
    return ".".join(module.split(".")[:2])
