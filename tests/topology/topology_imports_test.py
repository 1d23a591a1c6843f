"""Tests that `tf_decentral.topology` never imports TensorFlow or Keras."""

import textwrap

from absl.testing import absltest

from tf_decentral.testing import cluster as testing_cluster

# Runs in a fresh interpreter that cannot import TensorFlow or Keras
# (`tf_decentral.testing.cluster.run_without_tensorflow`).
_PROGRAM = textwrap.dedent(
    """
    import importlib
    import pkgutil
    import sys

    import tf_decentral.topology as topology

    # Import every module of the package, re-exported or not.
    for module in pkgutil.walk_packages(
        topology.__path__, prefix="tf_decentral.topology."
    ):
        importlib.import_module(module.name)

    for name in topology.NAMES:
        topology.get(name, 8).weights(step=3)
    gap = topology.spectral_gap(topology.resolve("ring", 4))
    heavy = heavy_modules()
    print(f"gap={gap:.4f} heavy={heavy}")
    """
)


class NoTensorFlowImportTest(absltest.TestCase):
    def test_topology_imports_and_works_without_tensorflow(self):
        result = testing_cluster.run_without_tensorflow(_PROGRAM, timeout=120)
        self.assertEqual(result.returncode, 0, msg=result.stderr)
        self.assertEqual(result.stdout.strip(), "gap=0.6667 heavy=[]")


if __name__ == "__main__":
    absltest.main()
