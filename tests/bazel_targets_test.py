"""Every tests/**/*_test.py file has a py_test target in the top-level BUILD.

The BUILD file is evaluated in Python with stand-ins for the Bazel functions it
calls (glob() follows Bazel's rules: files only, `**` spans directories, no
descent into sub-packages or .bazelignore'd directories), so the check needs no
Bazel. When `bazel` is on PATH, the labels from `bazel query` are compared with
the files as well.
"""

import ast
import builtins
import fnmatch
import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNNER = "third_party/bazel/pytest_runner.py"
BUILD_FILE_NAMES = ("BUILD", "BUILD.bazel")

pytestmark = pytest.mark.skipif(
    "TEST_SRCDIR" in os.environ,
    reason="under `bazel test` only runfiles are inputs, so a cached pass "
    "would not notice new test files; run this file with plain pytest",
)


def _test_files():
    """All tests/**/*_test.py files on disk, relative to ROOT."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(ROOT / "tests"):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for filename in filenames:
            if filename.endswith("_test.py"):
                path = pathlib.Path(dirpath, filename).relative_to(ROOT)
                found.add(path.as_posix())
    return found


def _bazelignored():
    path = ROOT / ".bazelignore"
    if not path.exists():
        return set()
    lines = path.read_text().splitlines()
    return {line.strip().rstrip("/") for line in lines if line.strip()}


def _package_files():
    """Files a glob() in //:BUILD can see (Bazel stops at sub-packages)."""
    ignored = _bazelignored()
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = pathlib.Path(dirpath).relative_to(ROOT).as_posix()
        kept = []
        for dirname in dirnames:
            rel = dirname if rel_dir == "." else f"{rel_dir}/{dirname}"
            child = pathlib.Path(dirpath, dirname)
            if (
                rel in ignored
                or rel == ".git"
                or (rel_dir == "." and dirname.startswith("bazel-"))
                or any((child / name).exists() for name in BUILD_FILE_NAMES)
            ):
                continue
            kept.append(dirname)
        dirnames[:] = kept
        for filename in filenames:
            rel = filename if rel_dir == "." else f"{rel_dir}/{filename}"
            files.append(rel)
    return files


def _glob_match(pattern_parts, path_parts):
    if not pattern_parts:
        return not path_parts
    head, rest = pattern_parts[0], pattern_parts[1:]
    if head == "**":
        return any(
            _glob_match(rest, path_parts[i:])
            for i in range(len(path_parts) + 1)
        )
    return (
        bool(path_parts)
        and fnmatch.fnmatchcase(path_parts[0], head)
        and _glob_match(rest, path_parts[1:])
    )


def _matches(pattern, path):
    return _glob_match(pattern.split("/"), path.split("/"))


class _Rule:
    """Records a call to a Bazel rule or macro."""

    def __init__(self, kind, calls):
        self._kind = kind
        self._calls = calls

    def __call__(self, *args, **kwargs):
        self._calls.append((self._kind, args, kwargs))


def _evaluate_build():
    """Runs //:BUILD in Python; returns [(kind, args, kwargs)] per call."""
    source = (ROOT / "BUILD").read_text()
    tree = ast.parse(source, filename="BUILD")
    files = _package_files()
    calls = []

    def glob(include, exclude=(), exclude_directories=1, allow_empty=True):
        del exclude_directories, allow_empty  # Files only, as Bazel's default.
        return sorted(
            path
            for path in files
            if any(_matches(p, path) for p in include)
            and not any(_matches(p, path) for p in exclude)
        )

    namespace = {"glob": glob}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            if name not in namespace and not hasattr(builtins, name):
                namespace[name] = _Rule(name, calls)
    exec(compile(tree, "BUILD", "exec"), namespace)
    return calls


def _py_tests():
    calls = _evaluate_build()
    return [kwargs for kind, _, kwargs in calls if kind == "py_test"]


def _runs(target, path):
    """Whether the py_test target runs the test file at `path`."""
    if path not in target.get("srcs", []):
        return False
    main = target.get("main", target["name"] + ".py")  # Bazel's default.
    return main == path or (main == RUNNER and path in target.get("args", []))


def test_there_are_test_files():
    assert (ROOT / "BUILD").exists()
    assert "tests/bazel_targets_test.py" in _test_files()


def test_every_test_file_has_a_py_test():
    targets = _py_tests()
    missing = sorted(
        path
        for path in _test_files()
        if not any(_runs(target, path) for target in targets)
    )
    assert not missing, f"no py_test in BUILD runs: {missing}"


def test_py_tests_are_named_after_their_files():
    names = [target["name"] for target in _py_tests()]
    assert len(names) == len(set(names)), f"duplicate targets: {names}"
    expected = {path[: -len(".py")] for path in _test_files()}
    assert set(names) == expected


def test_multiprocess_tests_are_large_and_exclusive():
    for target in _py_tests():
        if target["name"].endswith("_multiprocess_test"):
            assert target.get("size") == "large", target["name"]
            assert "exclusive" in target.get("tags", []), target["name"]


@pytest.mark.skipif(shutil.which("bazel") is None, reason="bazel not on PATH")
def test_bazel_query_matches_test_files():
    # --batch leaves no Bazel server running. //:all rather than //...: the
    # checks above already fail on any BUILD file under tests/, and //...
    # would descend into bazel-<dir> symlinks left by another output base.
    result = subprocess.run(
        [
            "bazel",
            "--batch",
            "query",
            "--noshow_progress",
            "kind(py_test, //:all)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    paths = set()
    for label in result.stdout.split():
        package, name = label.removeprefix("//").split(":")
        paths.add(f"{package}/{name}.py" if package else f"{name}.py")
    assert paths == _test_files()
