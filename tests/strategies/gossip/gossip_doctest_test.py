"""Runs the doctests of the `tf_decentral.strategies.gossip` modules."""


import tensorflow as tf
from absl.testing import parameterized

from tf_decentral.testing import doctests

_MODULES = (
    ("update", "tf_decentral.strategies.gossip.update"),
    ("single_host", "tf_decentral.strategies.gossip.single_host"),
)


class GossipDoctestTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(*_MODULES)
    def test_doctests_pass(self, module_name):
        _, failed = doctests.run_doctests(module_name)
        self.assertEqual(failed, 0)


if __name__ == "__main__":
    tf.test.main()
