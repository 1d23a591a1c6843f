"""Shared pytest setup: logical CPUs for multi-replica tests.

TensorFlow must be split into logical devices before its runtime starts, so
this runs at collection time, before any test module touches TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NUM_LOGICAL_CPUS = 8


def pytest_configure(config):
    del config
    from tf_decentral.testing import logical_cpus

    logical_cpus(NUM_LOGICAL_CPUS)
