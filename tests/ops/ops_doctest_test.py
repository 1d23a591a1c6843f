"""Runs the doctests of every `tf_decentral.ops` module."""


import tensorflow as tf
from absl.testing import parameterized

from tf_decentral.testing import doctests

_MODULES = ("tf_decentral.ops.packing", "tf_decentral.ops.neighbor_exchange")


class OpsDoctestTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*_MODULES)
    def test_doctests_pass(self, module_name):
        _, failed = doctests.run_doctests(module_name)
        self.assertEqual(failed, 0)


if __name__ == "__main__":
    tf.test.main()
