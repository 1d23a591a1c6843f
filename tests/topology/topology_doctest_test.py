"""Runs the doctests of every `tf_decentral.topology` module."""

import pkgutil

from absl.testing import absltest
from absl.testing import parameterized

import tf_decentral.topology
from tf_decentral.testing import doctests

_MODULES = (
    "tf_decentral.topology",
    *(
        module.name
        for module in pkgutil.walk_packages(
            tf_decentral.topology.__path__, prefix="tf_decentral.topology."
        )
        if not module.name.rpartition(".")[2].startswith("_")
    ),
)


class DoctestTest(parameterized.TestCase):
    @parameterized.parameters(*_MODULES)
    def test_doctests_pass(self, module_name):
        _, failed = doctests.run_doctests(module_name)
        self.assertEqual(failed, 0)

    def test_every_public_symbol_has_an_example(self):
        for name in tf_decentral.topology.__all__:
            symbol = getattr(tf_decentral.topology, name)
            if name == "NAMES":
                continue
            self.assertIn(">>>", symbol.__doc__ or "", msg=name)


if __name__ == "__main__":
    absltest.main()
