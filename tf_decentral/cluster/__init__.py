"""Cluster plumbing: `TF_CONFIG` parsing and a one-machine launcher.

Pure Python: importing this package never imports TensorFlow or Keras.

* `parse_tf_config` and `from_env` read a `TF_CONFIG` into a `ClusterConfig`.
* `launch` runs a command once per task of a local cluster described by
  `local_cluster_configs`; `python -m tf_decentral.launch` is its command
  line (see `tf_decentral.cluster.local_launcher`).
* `run_server` serves a worker or ps task of a parameter-server cluster
  (`DownpourParameterServerStrategy`); it imports TensorFlow when called.

Example:
    >>> from tf_decentral import cluster
    >>> config = cluster.parse_tf_config(
    ...     '{"cluster": {"worker": ["localhost:2222", "localhost:2223"]},'
    ...     ' "task": {"type": "worker", "index": 1}}'
    ... )
    >>> config.address, config.worker_index, config.is_chief
    ('localhost:2223', 1, False)
"""

from tf_decentral.cluster.local_launcher import TASK_ENV_VAR
from tf_decentral.cluster.local_launcher import launch
from tf_decentral.cluster.local_launcher import local_cluster_configs
from tf_decentral.cluster.local_launcher import main
from tf_decentral.cluster.local_launcher import pick_unused_ports
from tf_decentral.cluster.server import run_server
from tf_decentral.cluster.tf_config import ClusterConfig
from tf_decentral.cluster.tf_config import from_env
from tf_decentral.cluster.tf_config import parse_tf_config
from tf_decentral.cluster.tf_config import training_tasks

__all__ = (
    "TASK_ENV_VAR",
    "ClusterConfig",
    "from_env",
    "launch",
    "local_cluster_configs",
    "main",
    "parse_tf_config",
    "pick_unused_ports",
    "run_server",
    "training_tasks",
)
