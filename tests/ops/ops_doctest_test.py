"""Runs the doctests of every `tf_decentral.ops` module."""

import doctest
import importlib

import tensorflow as tf
from absl.testing import parameterized

_MODULES = ("tf_decentral.ops.packing", "tf_decentral.ops.neighbor_exchange")


class OpsDoctestTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*_MODULES)
    def test_doctests_pass(self, module_name):
        module = importlib.import_module(module_name)
        result = doctest.testmod(module, verbose=False, report=True)
        self.assertGreater(result.attempted, 0, msg=f"{module_name} has none")
        self.assertEqual(result.failed, 0)


if __name__ == "__main__":
    tf.test.main()
