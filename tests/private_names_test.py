"""Private TensorFlow/Keras names are used only in the two inventories.

`tf_decentral/_tf_private.py` and `tf_decentral/_keras_private.py` are the
only modules that may import `tensorflow.python.*` / `keras.src.*`, read or
write a private attribute of a TensorFlow or Keras object, or override a
private method of a TensorFlow or Keras class. Each lists every private name
it uses in `PRIVATE_NAMES`, with why. This test scans the package's source:

* a private import anywhere else fails;
* an access `obj._name` anywhere else fails when `_name` is not defined by
  tf_decentral itself, or when `obj` is `self`/`cls` of a class that derives
  from a TensorFlow/Keras class that has `_name` (a method, a class
  attribute, or an instance attribute its source assigns);
* in the inventories, every foreign private name used is a key of
  `PRIVATE_NAMES`, and every key is used (no stale entries).
"""

import ast
import importlib
import inspect
import pathlib
import re

import tensorflow as tf

import tf_decentral

PACKAGE = pathlib.Path(tf_decentral.__file__).parent
INVENTORIES = {"_tf_private.py": "tensorflow", "_keras_private.py": "keras"}
FOREIGN_ROOTS = ("tensorflow", "keras")
PRIVATE_MODULES = re.compile(r"^(tensorflow\.(python|core)|keras\.src)(\.|$)")
# Environment variables TensorFlow documents; any other `TF_*` string is an
# undocumented switch and belongs in the inventory.
TF_ENV_VAR = re.compile(r"^TF_[A-Z0-9_]+$")
PUBLIC_TF_ENV_VARS = {
    "TF_CONFIG",
    "TF_CPP_MIN_LOG_LEVEL",
    "TF_NUM_INTEROP_THREADS",
    "TF_NUM_INTRAOP_THREADS",
}


# Underscore names that Python documents as public API (namedtuple methods,
# `os._exit`): never TensorFlow's or Keras'.
PYTHON_PUBLIC = {"_replace", "_asdict", "_fields", "_make", "_exit"}


def _is_private(name):
    return (
        name.startswith("_")
        and name not in PYTHON_PUBLIC
        and not (name.startswith("__") and name.endswith("__"))
    )


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        if name.endswith("__main__"):
            continue
        yield name, path, ast.parse(path.read_text(), str(path))


def _foreign_private_names(cls):
    """Private names a TF/Keras base class of `cls` defines or assigns."""
    names = set()
    for base in cls.__mro__:
        if base.__module__.split(".")[0] not in FOREIGN_ROOTS:
            continue
        names.update(n for n in vars(base) if _is_private(n))
        try:
            source = inspect.getsource(base)
        except (OSError, TypeError):
            continue
        names.update(re.findall(r"\bself\.(_[A-Za-z]\w*)", source))
    return {n for n in names if _is_private(n)}


class _Scan(ast.NodeVisitor):
    """Collects private imports, definitions and uses in one module."""

    def __init__(self, module, strings_are_names=False):
        self.module = module
        self.strings_are_names = strings_are_names
        self.imports = []
        self.defined = set()
        self.uses = []  # (lineno, name, receiver is self/cls, class or None)
        self._classes = []

    def visit_Import(self, node):
        for alias in node.names:
            if PRIVATE_MODULES.match(alias.name):
                self.imports.append((node.lineno, alias.name))

    def visit_ImportFrom(self, node):
        if node.module and PRIVATE_MODULES.match(node.module):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                self.imports.append((node.lineno, name))

    def visit_ClassDef(self, node):
        cls = getattr(self.module, node.name, None) if self.module else None
        self._classes.append(cls if inspect.isclass(cls) else None)
        for item in node.body:
            targets = []
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                targets = [item.name]
            elif isinstance(item, ast.Assign):
                targets = [
                    t.id for t in item.targets if isinstance(t, ast.Name)
                ]
            for name in targets:
                if _is_private(name):
                    self.uses.append((item.lineno, name, True, cls, True))
        self.generic_visit(node)
        self._classes.pop()

    def visit_Attribute(self, node):
        if _is_private(node.attr):
            receiver = node.value
            on_self = isinstance(receiver, ast.Name) and receiver.id in (
                "self",
                "cls",
            )
            cls = self._classes[-1] if self._classes else None
            if isinstance(node.ctx, ast.Store):
                self.defined.add(node.attr)
            self.uses.append((node.lineno, node.attr, on_self, cls, False))
        self.generic_visit(node)

    def visit_Dict(self, node):
        # Keys of a dict literal (PRIVATE_NAMES) name, they do not use.
        for key in node.keys:
            if key is not None and not isinstance(key, ast.Constant):
                self.visit(key)
        for value in node.values:
            self.visit(value)

    def visit_Constant(self, node):
        value = node.value
        if (
            self.strings_are_names
            and isinstance(value, str)
            and re.fullmatch(r"_[A-Za-z]\w*", value)
            and _is_private(value)
        ):
            # In an inventory, a private name may be kept as a string (an
            # attribute name for getattr/setattr): that is a use.
            self.uses.append((node.lineno, value, False, None, False))
        if (
            isinstance(value, str)
            and TF_ENV_VAR.match(value)
            and value not in PUBLIC_TF_ENV_VARS
            and not value.startswith("TF_DECENTRAL_")
        ):
            self.imports.append((node.lineno, value))

    def visit_Call(self, node):
        # getattr(x, "_name"), setattr(x, "_name", v), hasattr(x, "_name")
        if (
            isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
        ):
            self.uses.append((node.lineno, node.args[1].value, False, None, 0))
        self.generic_visit(node)


def _scan_all():
    scans = {}
    for name, path, tree in _modules():
        module = importlib.import_module(name)
        scan = _Scan(module, strings_are_names=path.name in INVENTORIES)
        scan.visit(tree)
        scans[name] = (path, scan)
    return scans


def _foreign_uses(scan, own_names):
    found = []
    for lineno, name, on_self, cls, is_definition in scan.uses:
        foreign_of_cls = (
            _foreign_private_names(cls) if cls is not None else set()
        )
        if on_self and cls is not None:
            foreign = name in foreign_of_cls
        elif is_definition:
            foreign = name in foreign_of_cls
        else:
            foreign = name not in own_names or name in foreign_of_cls
        if foreign:
            found.append((lineno, name))
    return found


class PrivateNamesTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.scans = _scan_all()
        inventory_modules = {
            f"tf_decentral.{f[:-3]}" for f in INVENTORIES
        }
        own = set()
        for name, (_, scan) in cls.scans.items():
            if name in inventory_modules:
                continue
            own |= scan.defined
            for _, n, _on_self, c, is_def in scan.uses:
                if is_def and n not in (
                    _foreign_private_names(c) if c is not None else set()
                ):
                    own.add(n)
        cls.own_names = own

    def _outside_inventories(self):
        for name, (path, scan) in self.scans.items():
            if path.name in INVENTORIES and path.parent == PACKAGE:
                continue
            yield name, path, scan

    def test_no_private_import_or_env_var_outside_the_inventories(self):
        found = [
            f"{path.relative_to(PACKAGE.parent)}:{line} uses {module}"
            for _, path, scan in self._outside_inventories()
            for line, module in scan.imports
        ]
        self.assertEqual(found, [], "\n".join(found))

    def test_no_private_attribute_outside_the_inventories(self):
        found = [
            f"{path.relative_to(PACKAGE.parent)}:{line} uses {name}"
            for _, path, scan in self._outside_inventories()
            for line, name in _foreign_uses(scan, self.own_names)
        ]
        self.assertEqual(found, [], "\n".join(found))

    def test_every_private_name_of_an_inventory_is_listed_with_why(self):
        for filename in INVENTORIES:
            module_name = f"tf_decentral.{filename[:-3]}"
            path, scan = self.scans[module_name]
            module = importlib.import_module(module_name)
            listed = module.PRIVATE_NAMES
            used = {n for _, n in _foreign_uses(scan, self.own_names)}
            used |= {m for _, m in scan.imports}
            with self.subTest(inventory=filename):
                self.assertEqual(sorted(used - set(listed)), [], "unlisted")
                self.assertEqual(sorted(set(listed) - used), [], "stale")
                for name, why in listed.items():
                    self.assertIsInstance(why, str)
                    self.assertGreater(len(why.split()), 3, name)

    def test_the_scan_finds_a_private_use(self):
        # The scan itself must be able to fail: a snippet that reads TF's
        # private `_devices` of a MirroredStrategy's extended is flagged.
        tree = ast.parse("def f(strategy):\n    return strategy.extended._x9\n")
        scan = _Scan(None)
        scan.visit(tree)
        self.assertEqual(_foreign_uses(scan, self.own_names), [(2, "_x9")])
        tree = ast.parse("import tensorflow.python.distribute.values\n")
        scan = _Scan(None)
        scan.visit(tree)
        self.assertEqual(len(scan.imports), 1)


if __name__ == "__main__":
    tf.test.main()
