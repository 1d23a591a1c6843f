"""Runs the doctests of `tf_decentral.cluster` and its test helpers."""

import inspect

from absl.testing import absltest
from absl.testing import parameterized

import tf_decentral.cluster
from tf_decentral.testing import cluster as cluster_testing
from tf_decentral.testing import doctests

_MODULES = (
    "tf_decentral.cluster",
    "tf_decentral.cluster.tf_config",
    "tf_decentral.cluster.local_launcher",
    "tf_decentral.testing.cluster",
)


class DoctestTest(parameterized.TestCase):
    @parameterized.parameters(*_MODULES)
    def test_doctests_pass(self, module_name):
        _, failed = doctests.run_doctests(module_name)
        self.assertEqual(failed, 0)

    @parameterized.parameters(tf_decentral.cluster, cluster_testing)
    def test_every_public_symbol_has_an_example(self, module):
        for name in module.__all__:
            symbol = getattr(module, name)
            if inspect.isfunction(symbol) or inspect.isclass(symbol):
                self.assertIn(">>>", symbol.__doc__ or "", msg=name)


if __name__ == "__main__":
    absltest.main()
