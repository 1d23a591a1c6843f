"""How serving tasks learn that the chief is alive, done, or gone.

In a parameter-server cluster only the chief runs the training program; the
`"worker"` and `"ps"` tasks run `run_server` and serve. They must not
outlive the job, and must not take a network blip for its end: a ps task
that exits loses every parameter it holds. The protocol, over TensorFlow's
own runtime (no other transport):

* Every serving task holds two int64 resource variables on its CPU, found by
  `shared_name`: a **heartbeat** counter and a **state** (0 running, 1 done,
  2 the chief failed).
* The chief (`ChiefLifecycle`, started by `DownpourParameterServerStrategy`)
  adds 1 to every serving task's heartbeat every `HEARTBEAT_SECONDS`, one
  thread per task so that a dead task delays no other, and when its program
  ends it writes the state: 1 if the program exits normally, 2 if it dies
  of an uncaught exception.
* A serving task (`watch_chief`) reads both from its own server through a
  local session and exits 0 once the state says done, 1 if the chief
  failed, 2 once the heartbeat has not moved for `grace_seconds` (chief
  crashed, stopped, or cut off), 3 if no heartbeat came within
  `start_timeout_seconds`.

Imports TensorFlow only when a function that needs it runs.
"""

import atexit
import dataclasses
import sys
import threading
import time

HEARTBEAT_NAME = "tf_decentral/lifecycle/heartbeat"
STATE_NAME = "tf_decentral/lifecycle/state"
RUNNING, DONE, FAILED = 0, 1, 2
HEARTBEAT_SECONDS = 1.0
FINISH_TIMEOUT_SECONDS = 10.0
SERVER_JOBS = ("worker", "ps")

# Exit codes of a serving task.
EXIT_DONE = 0
EXIT_CHIEF_FAILED = 1
EXIT_CHIEF_LOST = 2
EXIT_NO_CHIEF = 3


LARGE_PIPELINE_BYTES = 32 << 20
"""A pipeline graph above this size (per worker) gets a warning."""


def warn_if_pipeline_large(graph_bytes: int, num_workers: int) -> None:
    """Warns when the input pipeline the chief ships holds large constants.

    The chief sends the serialized pipeline to every worker through the
    same per-task stream as its heartbeats, which wait behind it: measured
    at 100 Mbit/s, 188 MB of Fashion-MNIST arrays to 8 workers held them
    past the serving tasks' 30 s grace and the job stopped.
    """
    if graph_bytes <= LARGE_PIPELINE_BYTES:
        return
    from absl import logging

    logging.warning(
        "The input pipeline `fit` ships to the workers is %.1f MB: arrays "
        "held in memory (NumPy arrays given to `fit`, `from_tensor_slices`) "
        "are constants of its graph. The chief sends it to each of the %d "
        "workers (%.1f MB in all) before training starts, and its "
        "heartbeats to a worker wait behind that worker's copy: a serving "
        "task whose heartbeat stands still for its `chief_grace_seconds` "
        "(`tfd.cluster.run_server`, default 30) exits and the job is lost. "
        "On a slow network, read the data from files inside the pipeline "
        "(`tfds.load`, `tf.data.TFRecordDataset` on storage every worker "
        "reaches) or give `run_server` a larger `chief_grace_seconds`.",
        graph_bytes / 1e6,
        num_workers,
        graph_bytes * num_workers / 1e6,
    )


def _device(job: str, index: int) -> str:
    return f"/job:{job}/replica:0/task:{index}/device:CPU:0"


def _handle(tf, name):
    return tf.raw_ops.VarHandleOp(
        dtype=tf.int64, shape=[], shared_name=name, container=""
    )


class ChiefLifecycle:
    """The chief's side: heartbeats, then the job's end state.

    Args:
        cluster: Job name -> addresses; every `"worker"` and `"ps"` task
            gets a heartbeat. The calling process must already be connected
            to the cluster (as a `ParameterServerStrategy` chief is).
        interval: Seconds between two heartbeats.
    """

    def __init__(self, cluster: dict, interval: float = HEARTBEAT_SECONDS):
        self.tasks = [
            (job, i)
            for job in SERVER_JOBS
            for i in range(len(cluster.get(job) or ()))
        ]
        self.interval = interval
        self._stop = threading.Event()
        self._threads = []
        self.beats = {task: 0 for task in self.tasks}

    def start(self) -> None:
        """Starts one heartbeat thread per serving task."""
        import tensorflow as tf

        for task in self.tasks:
            thread = threading.Thread(
                target=self._beat,
                args=(tf, task),
                name=f"tfd-heartbeat-{task[0]}-{task[1]}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _beat(self, tf, task):
        while not self._stop.is_set():
            value = tf.constant(self.beats[task] + 1, tf.int64)
            try:
                with tf.device(_device(*task)):
                    tf.raw_ops.AssignVariableOp(
                        resource=_handle(tf, HEARTBEAT_NAME), value=value
                    )
                self.beats[task] += 1
            except tf.errors.OpError:
                pass  # a lost task: its own watch decides what to do
            self._stop.wait(self.interval)

    def finish(self, ok: bool, timeout: float = FINISH_TIMEOUT_SECONDS):
        """Stops the heartbeats and tells every serving task the job ended
        (`ok`: normally; else the chief failed).

        Waits at most `timeout` seconds: a task that is gone (its RPC may
        hang) must not keep the chief from exiting; its own watch ends it.
        """
        import tensorflow as tf

        self._stop.set()
        state = tf.constant(DONE if ok else FAILED, tf.int64)

        def tell(task):
            try:
                with tf.device(_device(*task)):
                    tf.raw_ops.AssignVariableOp(
                        resource=_handle(tf, STATE_NAME), value=state
                    )
            except tf.errors.OpError:
                pass  # gone already; its watch exits on the lost heartbeat

        threads = [
            threading.Thread(target=tell, args=(task,), daemon=True)
            for task in self.tasks
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


_chief = None
_chief_lock = threading.Lock()
_uncaught = []


def start_chief_lifecycle(cluster: dict) -> ChiefLifecycle:
    """Starts this process's `ChiefLifecycle` once; its end state is
    written when the program exits (failed after an uncaught exception)."""
    global _chief
    with _chief_lock:
        if _chief is None:
            _chief = ChiefLifecycle(cluster)
            _chief.start()
            previous = sys.excepthook

            def excepthook(*args):
                _uncaught.append(args[0])
                previous(*args)

            sys.excepthook = excepthook
            atexit.register(lambda: _chief.finish(ok=not _uncaught))
        return _chief


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Why a serving task stops: its exit code and a message."""

    code: int
    message: str


def watch_chief(
    server,
    job: str,
    index: int,
    *,
    grace_seconds: float,
    start_timeout_seconds: float,
    poll_seconds: float = 0.5,
) -> Verdict:
    """Blocks until the job is over for this serving task; returns why.

    Args:
        server: This task's started `tf.distribute.Server`.
        job: This task's job (`"worker"` or `"ps"`).
        index: This task's index.
        grace_seconds: How long the heartbeat may stand still.
        start_timeout_seconds: How long to wait for the first heartbeat.
        poll_seconds: Seconds between two reads.
    """
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.device(_device(job, index)):
        reads = []
        for name in (HEARTBEAT_NAME, STATE_NAME):
            handle = _handle(tf, name)
            reads.append(
                tf.cond(
                    tf.raw_ops.VarIsInitializedOp(resource=handle),
                    lambda h=handle: tf.raw_ops.ReadVariableOp(
                        resource=h, dtype=tf.int64
                    ),
                    lambda: tf.constant(-1, tf.int64),
                )
            )
    # Only this task's devices: a session that looked for the others'
    # would wait for a chief that may never come.
    own = tf.compat.v1.ConfigProto(
        device_filters=[f"/job:{job}/replica:0/task:{index}"]
    )
    session = tf.compat.v1.Session(server.target, graph=graph, config=own)
    started = time.monotonic()
    last_beat, last_change = -1, None
    while True:
        beat, state = session.run(reads)
        now = time.monotonic()
        if state == DONE:
            return Verdict(EXIT_DONE, "the chief says the job is done")
        if state == FAILED:
            return Verdict(
                EXIT_CHIEF_FAILED, "the chief's program failed (see its log)"
            )
        if beat != last_beat:
            last_beat, last_change = beat, now
        if beat < 0 and now - started > start_timeout_seconds:
            return Verdict(
                EXIT_NO_CHIEF,
                f"no chief has contacted this task in "
                f"{start_timeout_seconds:g} s: is the chief running, with "
                "the same TF_CONFIG cluster?",
            )
        if beat >= 0 and now - last_change > grace_seconds:
            return Verdict(
                EXIT_CHIEF_LOST,
                f"the chief's heartbeat stopped {grace_seconds:g} s ago (it "
                "crashed, was stopped, or cannot reach this task; or its "
                "heartbeats waited behind a transfer longer than that, such "
                "as a large input pipeline: see the chief's log); this "
                "task's state is lost with it: restart the job",
            )
        time.sleep(poll_seconds)
