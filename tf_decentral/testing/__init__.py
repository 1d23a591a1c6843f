"""Test and example helpers: logical devices and local multi-process clusters.

`tf_decentral.testing.cluster` is pure Python; `logical_cpus` imports
TensorFlow when first used.
"""

import importlib

from tf_decentral.testing.cluster import LocalCluster
from tf_decentral.testing.cluster import TaskResult
from tf_decentral.testing.cluster import child_pids
from tf_decentral.testing.cluster import live_pids
from tf_decentral.testing.cluster import local_cluster
from tf_decentral.testing.cluster import make_tf_config
from tf_decentral.testing.cluster import pick_ports
from tf_decentral.testing.cluster import python_command
from tf_decentral.testing.cluster import thread_env

__all__ = (
    "LocalCluster",
    "TaskResult",
    "child_pids",
    "live_pids",
    "local_cluster",
    "logical_cpus",
    "make_tf_config",
    "pick_ports",
    "python_command",
    "thread_env",
)


def __getattr__(name):
    if name == "logical_cpus":
        value = importlib.import_module(
            "tf_decentral.testing.devices"
        ).logical_cpus
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
