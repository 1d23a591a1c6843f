"""Tests that `tf_decentral.topology` never imports TensorFlow or Keras."""

import os
import pathlib
import subprocess
import sys
import textwrap

from absl.testing import absltest

import tf_decentral

_REPO_ROOT = pathlib.Path(tf_decentral.__file__).resolve().parent.parent

# Runs in a fresh interpreter: `None` in `sys.modules` makes any import of
# TensorFlow or Keras raise ImportError.
_PROGRAM = textwrap.dedent(
    """
    import importlib
    import pkgutil
    import sys

    for blocked in ("tensorflow", "keras", "tf_keras", "jax", "torch"):
        sys.modules[blocked] = None

    import tf_decentral.topology as topology

    # Import every module of the package, re-exported or not.
    for module in pkgutil.walk_packages(
        topology.__path__, prefix="tf_decentral.topology."
    ):
        importlib.import_module(module.name)

    for name in topology.NAMES:
        topology.get(name, 8).weights(step=3)
    gap = topology.spectral_gap(topology.resolve("ring", 4))
    heavy = sorted(
        name
        for name, module in sys.modules.items()
        if module is not None
        and name.split(".")[0] in ("tensorflow", "keras", "tf_keras")
    )
    print(f"gap={gap:.4f} heavy={heavy}")
    """
)


class NoTensorFlowImportTest(absltest.TestCase):
    def test_topology_imports_and_works_without_tensorflow(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")])
        )
        result = subprocess.run(
            [sys.executable, "-c", _PROGRAM],
            cwd=_REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.assertEqual(result.returncode, 0, msg=result.stderr)
        self.assertEqual(result.stdout.strip(), "gap=0.6667 heavy=[]")


if __name__ == "__main__":
    absltest.main()
