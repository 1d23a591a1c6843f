"""Entry point of every py_test in //:BUILD: runs one test file under pytest.

Bazel runs `pytest_runner.py tests/.../foo_test.py` from the runfiles root, so
pytest reads the `[tool:pytest]` section of setup.cfg (a data dependency) and
tests/conftest.py exactly as a plain `pytest tests/...` run would.
"""

import os
import sys

import pytest


def main(argv):
    args = list(argv)
    xml_output = os.environ.get("XML_OUTPUT_FILE")
    if xml_output:  # Per-test-case results for Bazel's test.xml.
        args.append(f"--junitxml={xml_output}")
    test_filter = os.environ.get("TESTBRIDGE_TEST_ONLY")
    if test_filter:  # bazel test --test_filter=EXPR
        args += ["-k", test_filter]
    return pytest.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
