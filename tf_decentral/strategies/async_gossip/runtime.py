"""Start-up of `AsyncGossipStrategy`: one TF server and one client per worker.

Every worker process runs two TensorFlow tasks:

* a plain `tf.distribute.Server`, `/job:worker/task:i` (or `/job:chief/...`)
  of the cluster in `TF_CONFIG`, which hosts this worker's shared state: its
  model copy `x_i` and its lock. Peers reach that state by `shared_name`.
* the Python program itself, connected with `connect_to_cluster` as
  `/job:async_gossip_client/task:i` to a cluster made of every worker's
  server plus this one client task. Clients never connect to each other:
  connecting every worker process to every other as peers deadlocks
  (research/downpour_and_async_gossip_feasibility.md, section 4).

Start-up order. TF 2.21's eager service replaces a server's collective
executor manager when a *first* remote context is created on it, without a
lock against a concurrent first context; two clients connecting to a fresh
server at the same moment leave one context with a freed manager, and the
server crashes at the first remote op (research/multiclient_segfault.md:
20-33% of 3-process starts). A server that already holds a context never
replaces the manager. So node 0's client connects first, alone, forcing the
lazy connect with `list_logical_devices()`; it then sets a flag on every
server, and every other client waits for the flag on its *own* server
before connecting. The flag is read through a TF1 graph session on the local
server (`server.target`, the master/worker services), which creates no eager
context; this works the same across hosts.

Exit. A client runs TF functions on its peers' servers, and TF 2.21
registers every new function (Keras' `evaluate`, `predict`...) on every
server of the cluster: if a peer's server has gone, the registration fails
and the process crashes (SIGSEGV, measured: "Failed to register function
remotely due to Socket closed", then a segmentation fault in
`evaluate`). So at interpreter exit every worker keeps its server up until
every peer has reached its own exit, or cannot be reached
(`Runtime.wait_for_peers_at_exit`, an `atexit` handler).
"""

import atexit
import contextlib
import dataclasses
import os
import threading
import time

import tensorflow as tf
from absl import logging

from tf_decentral import _tf_private
from tf_decentral import cluster as cluster_lib
from tf_decentral.cluster import local_launcher

CLIENT_JOB = "async_gossip_client"
"""The job name of the workers' Python clients."""

_GO_FLAG = "tf_decentral/async_gossip/connect_go"
_EXIT_FLAG = "tf_decentral/async_gossip/exiting"

EXIT_TIMEOUT_SECONDS = 600.0
"""How long a worker's exit waits for its peers to reach their own exit."""
_TRAINING_JOBS = ("chief", "worker")
_POLL_SECONDS = 0.02

_runtime_lock = threading.Lock()
_runtime = None


@dataclasses.dataclass(frozen=True)
class Layout:
    """The gossip nodes of a cluster and this process's place among them.

    Attributes:
        cluster: The training jobs (`"chief"`, `"worker"`) of the cluster,
            job name -> addresses.
        nodes: `(job, task_id)` of every node: the chief first, then the
            workers, TensorFlow's order.
        node: This process's node index.
    """

    cluster: dict
    nodes: tuple
    node: int

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    def task(self, k: int) -> str:
        """Returns node `k`'s task name, e.g. `"worker:2"`."""
        job, task_id = self.nodes[k]
        return f"{job}:{task_id}"

    def address(self, k: int) -> str:
        job, task_id = self.nodes[k]
        return self.cluster[job][task_id]

    def server_device(self, k: int) -> str:
        """Returns the CPU of node `k`'s server, which holds its state."""
        job, task_id = self.nodes[k]
        return f"/job:{job}/replica:0/task:{task_id}/device:CPU:0"

    @property
    def client_task(self) -> str:
        return f"/job:{CLIENT_JOB}/replica:0/task:{self.node}"


def layout_from_resolver(resolver) -> Layout:
    """Returns the `Layout` of a `tf.distribute` cluster resolver.

    Raises:
        ValueError: If this task is not a chief or worker task.
    """
    spec = resolver.cluster_spec().as_dict()
    cluster = {}
    for job in _TRAINING_JOBS:
        tasks = spec.get(job, [])
        if isinstance(tasks, dict):
            tasks = [tasks[k] for k in sorted(tasks)]
        if tasks:
            cluster[job] = list(tasks)
    nodes = cluster_lib.training_tasks(cluster)
    task = (resolver.task_type, resolver.task_id)
    if task not in nodes:
        raise ValueError(
            "AsyncGossipStrategy runs on the chief and worker tasks of a "
            "cluster: every one of them trains. Received: "
            f"task_type={resolver.task_type!r}, task_id={resolver.task_id!r}"
            f" in a cluster with jobs {sorted(spec)}."
        )
    return Layout(cluster=cluster, nodes=nodes, node=nodes.index(task))


class Runtime:
    """This process's server and connected client (one per process).

    Attributes:
        layout: The cluster's `Layout`.
        server: This worker's `tf.distribute.Server`.
        client_device: The device the Keras model lives on (this client's
            first GPU, else its CPU).
        connect_seconds: Seconds spent waiting for the turn to connect and
            connecting.
    """

    def __init__(self, layout: Layout, startup_timeout: float):
        self.layout = layout
        job, task_id = layout.nodes[layout.node]
        config = tf.compat.v1.ConfigProto()
        # Lock waits and transfers of peers' exchanges run on this pool.
        config.inter_op_parallelism_threads = max(
            2, int(os.environ.get("TF_NUM_INTEROP_THREADS", "0") or 0)
        )
        self.server = tf.distribute.Server(
            tf.train.ClusterSpec(layout.cluster),
            job_name=job,
            task_index=task_id,
            protocol="grpc",
            config=config,
            start=True,
        )
        start = time.monotonic()
        if layout.node != 0:
            self._wait_for_turn(startup_timeout)
        # As ParameterServerStrategy does before it connects (TF's other
        # client that outlives its peers), make `context.async_wait()` a
        # no-op: Keras calls it at the end of every epoch, and TF's
        # distributed iterators when they are created; it syncs the executors
        # of every server of the cluster, and waits for ever on a dead one.
        # This client's remote calls are synchronous anyway. (PSS also
        # disables streaming enqueue; here that makes concurrent exchanges
        # deadlock.)
        _tf_private.disable_async_executor_globally()
        host = layout.address(layout.node).rpartition(":")[0]
        port = local_launcher.pick_unused_ports(1)[0]
        client_cluster = dict(layout.cluster)
        client_cluster[CLIENT_JOB] = {layout.node: f"{host}:{port}"}
        tf.config.experimental_connect_to_cluster(
            tf.train.ClusterSpec(client_cluster),
            job_name=CLIENT_JOB,
            task_index=layout.node,
        )
        # `connect_to_cluster` is lazy: this makes the remote contexts now.
        devices = tf.config.list_logical_devices()
        if layout.node == 0:
            self._let_others_connect()
        self.connect_seconds = time.monotonic() - start
        prefix = layout.client_task + "/device:"
        gpus = [d.name for d in devices if d.name.startswith(prefix + "GPU")]
        self.client_device = gpus[0] if gpus else prefix + "CPU:0"
        atexit.register(self.wait_for_peers_at_exit)

    def _flag_handle(self, k, name=_GO_FLAG):
        with tf.device(self.layout.server_device(k)):
            return tf.raw_ops.VarHandleOp(
                dtype=tf.int64, shape=[], container="", shared_name=name
            )

    def wait_for_peers_at_exit(self, timeout=EXIT_TIMEOUT_SECONDS):
        """Keeps this worker's server up until every peer has reached this
        point too (or cannot be reached), at most `timeout` seconds.

        Registered with `atexit`: a worker that finishes first would
        otherwise take its server down while its peers' programs still use
        it (see the module docstring). Returns the nodes it stopped waiting
        for at the timeout.
        """
        layout = self.layout
        me = layout.task(layout.node)
        try:
            with tf.device(layout.server_device(layout.node)):
                tf.raw_ops.AssignVariableOp(
                    resource=self._flag_handle(layout.node, _EXIT_FLAG),
                    value=tf.constant(1, tf.int64),
                )
        except tf.errors.OpError:
            return []  # Our own server is gone: nothing to keep up.
        start = time.monotonic()
        waiting = [k for k in range(layout.num_nodes) if k != layout.node]
        told = False
        while waiting:
            waiting = [k for k in waiting if not self._exiting_or_gone(k)]
            elapsed = time.monotonic() - start
            if waiting and elapsed > timeout:
                logging.warning(
                    "AsyncGossipStrategy on %s: exiting after waiting %g s "
                    "for %s to finish; their programs may fail when they "
                    "next create a TF function.",
                    me,
                    timeout,
                    [layout.task(k) for k in waiting],
                )
                return waiting
            if waiting and elapsed > 2.0 and not told:
                told = True
                logging.warning(
                    "AsyncGossipStrategy on %s: keeping this worker's server"
                    " up until %s finish (their programs use it; at most "
                    "%g s).",
                    me,
                    [layout.task(k) for k in waiting],
                    timeout,
                )
            if waiting:
                time.sleep(_POLL_SECONDS)
        return []

    def _exiting_or_gone(self, k):
        try:
            with tf.device(self.layout.server_device(k)):
                flag = tf.raw_ops.VarIsInitializedOp(
                    resource=self._flag_handle(k, _EXIT_FLAG)
                )
            return bool(flag.numpy())
        except tf.errors.OpError:
            return True  # Exited (or crashed): its server is gone.

    def task_name(self, k: int) -> str:
        """Node `k`'s server as TF names a task,
        `"/job:worker/replica:0/task:1"`."""
        return self.layout.server_device(k).rpartition("/device:")[0]

    def flag_via_server(self, k, shared_name=_GO_FLAG, set_it=False) -> bool:
        """Reads (or, with `set_it`, sets) an int64 flag variable on node
        `k`'s server through this worker's own server (`_flag_session`),
        which creates no eager context on `k`'s server. So it may run while
        `k`'s client has not connected yet: a restarted server's first
        eager context must be its own client's (see the module docstring).
        Returns whether the flag is set (True after setting it).

        Blocks while `k`'s server is down: check `task_is_alive` first.
        """
        with self._flag_session(k, shared_name, set_it) as (session, op):
            result = session.run(op)
        return True if set_it else bool(result)

    @contextlib.contextmanager
    def _flag_session(self, k, shared_name, set_it=False):
        """Yields `(session, op)`: a TF1 graph session on this worker's own
        server (`server.target`, the master/worker services) and the op
        that reads whether the flag `shared_name` on node `k`'s server is
        set (or, with `set_it`, sets it)."""
        layout = self.layout
        graph = tf.Graph()
        with graph.as_default(), tf.device(layout.server_device(k)):
            handle = tf.raw_ops.VarHandleOp(
                dtype=tf.int64, shape=[], container="", shared_name=shared_name
            )
            if set_it:
                op = tf.raw_ops.AssignVariableOp(
                    resource=handle, value=tf.constant(1, tf.int64)
                )
            else:
                op = tf.raw_ops.VarIsInitializedOp(resource=handle)
        tasks = {
            "/job:{}/task:{}".format(*layout.nodes[n]): None
            for n in (layout.node, k)
        }
        config = tf.compat.v1.ConfigProto(device_filters=list(tasks))
        with tf.compat.v1.Session(
            self.server.target, graph=graph, config=config
        ) as session:
            yield session, op

    def _let_others_connect(self):
        for k in range(1, self.layout.num_nodes):
            with tf.device(self.layout.server_device(k)):
                tf.raw_ops.AssignVariableOp(
                    resource=self._flag_handle(k),
                    value=tf.constant(1, tf.int64),
                )

    def _wait_for_turn(self, timeout):
        """Waits until node 0 has connected (its flag on our own server)."""
        layout = self.layout
        deadline = time.monotonic() + timeout
        with self._flag_session(layout.node, _GO_FLAG) as (session, is_set):
            while not session.run(is_set):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"AsyncGossipStrategy on {layout.task(layout.node)} "
                        f"waited {timeout:g} s for {layout.task(0)} "
                        f"({layout.address(0)}), which connects first, to "
                        "connect to this worker's server. Check that every "
                        "worker of the cluster has been started and can "
                        "reach the others, then look at that worker's log."
                    )
                time.sleep(_POLL_SECONDS)


def get_runtime(layout: Layout, startup_timeout: float) -> Runtime:
    """Returns this process's `Runtime`, starting it on the first call.

    Raises:
        RuntimeError: If a runtime for another cluster or task already runs
            in this process (one process is one worker).
    """
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime(layout, startup_timeout)
        elif _runtime.layout != layout:
            current = _runtime.layout
            raise RuntimeError(
                "One process can be only one AsyncGossipStrategy worker: "
                f"this one already is {current.task(current.node)}"
                f" of cluster {current.cluster}. Received: a "
                f"strategy for {layout.task(layout.node)} of cluster "
                f"{layout.cluster}."
            )
        return _runtime
