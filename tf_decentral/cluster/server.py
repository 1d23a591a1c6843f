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
import socket
import sys
import time

from tf_decentral.cluster import tf_config

SERVER_JOBS = ("worker", "ps")
# Seconds between two checks that the chief is still there.
_CHIEF_POLL_SECONDS = 1.0
_CONNECT_TIMEOUT_SECONDS = 1.0


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection(
            (host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT_SECONDS
        ):
            return True
    except OSError:
        return False


def _wait_for_chief_to_leave(address: str, grace_seconds: float):
    """Returns once `address` went away for `grace_seconds` after being up."""
    seen = False
    down_since = None
    while True:
        if _reachable(address):
            seen, down_since = True, None
        elif seen:
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since >= grace_seconds:
                return
        time.sleep(_CHIEF_POLL_SECONDS)


def run_server(
    config: tf_config.ClusterConfig | None = None,
    *,
    exit_with_chief: bool = True,
    chief_grace_seconds: float = 5.0,
) -> None:
    """Serves this task's TensorFlow server if it is a worker or ps task.

    On a `"worker"` or `"ps"` task this starts `tf.distribute.Server` at the
    task's address and never returns: the process exits (code 0) once the
    chief has gone, or runs until it is killed. On any other task (the chief,
    an evaluator) or without a cluster it returns at once, so that the same
    script can run on every task.

    Args:
        config: The task's `ClusterConfig`; None reads `TF_CONFIG`.
        exit_with_chief: If the cluster has a `"chief"` task, exit once the
            chief's address stopped accepting connections for
            `chief_grace_seconds` after it was first up (the chief serves at
            its address while it trains). Lets launchers such as
            `python -m tf_decentral.launch` end when training ends. With
            False, the server runs until it is killed.
        chief_grace_seconds: Seconds the chief must stay unreachable; > 0.

    Raises:
        ValueError: If `chief_grace_seconds` is not positive.

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
    if not chief_grace_seconds > 0:
        raise ValueError(
            "`chief_grace_seconds` must be > 0. "
            f"Received: chief_grace_seconds={chief_grace_seconds!r}"
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
    print(
        f"tf_decentral: {config.task_name} serving at {config.address}",
        file=sys.stderr,
        flush=True,
    )
    chief = config.cluster.get("chief")
    if not (exit_with_chief and chief):
        server.join()
    _wait_for_chief_to_leave(chief[0], chief_grace_seconds)
    print(
        f"tf_decentral: {config.task_name} stops: the chief at {chief[0]} "
        "has gone.",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    # TensorFlow servers cannot be stopped cleanly; leave without teardown.
    os._exit(0)


if __name__ == "__main__":
    run_server()
