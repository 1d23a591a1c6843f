"""Runs the doctests of the `tf_decentral.strategies.gossip` modules."""

import doctest
import importlib

import tensorflow as tf
from absl.testing import parameterized

_MODULES = (
    ("update", "tf_decentral.strategies.gossip.update"),
    ("single_host", "tf_decentral.strategies.gossip.single_host"),
)


class GossipDoctestTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(*_MODULES)
    def test_doctests_pass(self, module_name):
        module = importlib.import_module(module_name)
        result = doctest.testmod(module, verbose=False, report=True)
        self.assertGreater(result.attempted, 0, msg=f"{module_name} has none")
        self.assertEqual(result.failed, 0)


if __name__ == "__main__":
    tf.test.main()
