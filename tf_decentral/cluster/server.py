"""`run_server`: the one line that parameter-server and worker tasks run.

With `DownpourParameterServerStrategy` (and TensorFlow's
`ParameterServerStrategy`) only the chief runs the training script; every
`"worker"` and `"ps"` task just serves a TensorFlow server that the chief
drives. `run_server()` is that server, so one script can serve every task:

```python
import tf_decentral as tfd

tfd.cluster.run_server()  # blocks on worker and ps tasks; returns on chief
strategy = tfd.DownpourParameterServerStrategy()
...
```

or, for a task that only serves: `python -m tf_decentral.cluster.server`.

Importing this module does not import TensorFlow; `run_server` does.
"""

import os
import sys

from tf_decentral.cluster import exposure
from tf_decentral.cluster import lifecycle
from tf_decentral.cluster import tf_config

SERVER_JOBS = lifecycle.SERVER_JOBS
DEFAULT_GRACE_SECONDS = 30.0
DEFAULT_START_TIMEOUT_SECONDS = 600.0


def run_server(
    config: tf_config.ClusterConfig | None = None,
    *,
    exit_with_chief: bool = True,
    chief_grace_seconds: float = DEFAULT_GRACE_SECONDS,
    chief_start_timeout_seconds: float = DEFAULT_START_TIMEOUT_SECONDS,
) -> None:
    """Serves this task's TensorFlow server if it is a worker or ps task.

    On a `"worker"` or `"ps"` task this starts `tf.distribute.Server` at the
    task's address and never returns: the process exits when the job is
    over for it (see `tf_decentral.cluster.lifecycle`), with code 0 when the
    chief says the job is done, 1 when the chief's program failed, 2 when
    the chief's heartbeat stopped for `chief_grace_seconds` (a crashed,
    stopped or unreachable chief: this task's state is lost), 3 when no
    chief came within `chief_start_timeout_seconds`. On any other task (the
    chief, an evaluator) or without a cluster it returns at once, so that
    the same script can run on every task.

    The server listens on every network interface, without authentication
    (`tf_decentral.cluster.exposure`): keep cluster ports on a private
    network.

    Args:
        config: The task's `ClusterConfig`; None reads `TF_CONFIG`.
        exit_with_chief: Whether to exit when the job is over (above). With
            False, or in a cluster without a `"chief"`, the server runs
            until it is killed.
        chief_grace_seconds: Seconds the chief's heartbeat may stand still;
            > 0.
        chief_start_timeout_seconds: Seconds to wait for the chief's first
            heartbeat; > 0.

    Raises:
        ValueError: If a number of seconds is not positive.

    Example:
        >>> from tf_decentral import cluster
        >>> chief = cluster.parse_tf_config(
        ...     '{"cluster": {"chief": ["localhost:2222"], '
        ...     '"worker": ["localhost:2223"], "ps": ["localhost:2224"]}, '
        ...     '"task": {"type": "chief", "index": 0}}'
        ... )
        >>> cluster.run_server(chief) is None  # the chief trains instead
        True
    """
    for name, value in (
        ("chief_grace_seconds", chief_grace_seconds),
        ("chief_start_timeout_seconds", chief_start_timeout_seconds),
    ):
        if isinstance(value, bool) or not 0 < value < float("inf"):
            raise ValueError(
                f"`{name}` must be a positive number of seconds. "
                f"Received: {name}={value!r}"
            )
    if config is None:
        config = tf_config.from_env()
    if config is None or config.task_type not in SERVER_JOBS:
        return None

    import tensorflow as tf

    cluster_spec = tf.train.ClusterSpec(config.to_cluster_spec_dict())
    server = tf.distribute.Server(
        cluster_spec,
        job_name=config.task_type,
        task_index=config.task_id,
        protocol=config.rpc_layer or "grpc",
        start=True,
    )
    port = int(config.address.rpartition(":")[2])
    print(
        f"tf_decentral: {config.task_name} serving at {config.address} "
        f"(listening on {', '.join(exposure.listening_hosts(port)) or '?'}, "
        "no authentication: keep this port on a private network)",
        file=sys.stderr,
        flush=True,
    )
    if not (exit_with_chief and config.cluster.get("chief")):
        server.join()
    verdict = lifecycle.watch_chief(
        server,
        config.task_type,
        config.task_id,
        grace_seconds=chief_grace_seconds,
        start_timeout_seconds=chief_start_timeout_seconds,
    )
    print(
        f"tf_decentral: {config.task_name} stops (exit code {verdict.code}):"
        f" {verdict.message}.",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    # TensorFlow servers cannot be stopped cleanly; leave without teardown.
    os._exit(verdict.code)


if __name__ == "__main__":
    run_server()
