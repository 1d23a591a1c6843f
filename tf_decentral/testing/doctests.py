"""Running a module's doctests from a test (Bazel runs no --doctest-modules).

Pure Python; imports the module it checks.
"""

import doctest
import importlib


def run_doctests(module_name: str, optionflags: int = doctest.ELLIPSIS):
    """Runs the doctests of `module_name`; returns `(attempted, failed)`.

    Raises:
        ValueError: If the module has no doctest at all (a test of its
            doctests would then prove nothing).
    """
    module = importlib.import_module(module_name)
    result = doctest.testmod(
        module, verbose=False, report=True, optionflags=optionflags
    )
    if result.attempted == 0:
        raise ValueError(
            f"`{module_name}` must have doctests to run. Received: a module "
            "without any example."
        )
    return result.attempted, result.failed
