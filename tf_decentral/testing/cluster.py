"""Local multi-process clusters for tests: one subprocess per task.

TensorFlow's `multi_process_runner` needs Bazel; these helpers need only
subprocess and portpicker. A test describes each task's program as a command
(usually `python_command(code)`, i.e. `[sys.executable, "-c", code]`, or
`[sys.executable, "path/to/worker.py"]`), and `local_cluster` runs it once
per task with the task's `TF_CONFIG`:

```python
with local_cluster(python_command(code), num_workers=2, timeout=60,
                   env=thread_env()) as cluster:
    results = cluster.wait(check=True)
print(results["worker:1"].stdout)
```

Every task runs in its own session (hence its own process group), and when
the `with` block ends, normally, by an exception or at the timeout, every
group is killed with SIGKILL: TensorFlow workers blocked in a collective
ignore SIGTERM, and killing the group also reaches the task's children.
Outputs go to temporary files, so a chatty task never blocks on a full pipe.

This module imports no TensorFlow (though `tf_decentral.testing` may).

Longer than 500 lines because the cluster harness (start, wait, kill) and
its helpers for test programs are one life cycle; each function is short.
A task that crashes at start-up is not retried: the test sees it.
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence

from tf_decentral.cluster import local_launcher
from tf_decentral.cluster.tf_config import ClusterConfig
from tf_decentral.testing import preload as preload_lib

__all__ = (
    "LocalCluster",
    "TaskResult",
    "child_pids",
    "live_pids",
    "local_cluster",
    "make_tf_config",
    "pick_ports",
    "python_command",
    "thread_env",
)

# The directory holding the `tf_decentral` package, put on every task's
# PYTHONPATH so that tasks import the same code as the test.
_PACKAGE_PARENT = str(pathlib.Path(__file__).resolve().parents[2])
_POLL_SECONDS = 0.02
# How many characters of a task's output an error message quotes.
_TAIL_CHARS = 3000

# A task's command: the same for every task, or a function of
# `(task_type, task_id)`.
CommandForTask = Sequence[str] | Callable[[str, int], Sequence[str]]


def pick_ports(num_ports: int) -> list[int]:
    """Returns `num_ports` distinct free ports, from portpicker.

    Example:
        >>> from tf_decentral.testing import cluster
        >>> ports = cluster.pick_ports(3)
        >>> len(set(ports))
        3
    """
    return local_launcher.pick_unused_ports(num_ports)


def make_tf_config(
    num_workers: int,
    num_ps: int = 0,
    has_chief: bool = False,
    ports: Sequence[int] | None = None,
) -> list[tuple[str, int, str]]:
    """Returns `(task_type, task_id, tf_config_json)` for every local task.

    Tasks come in TensorFlow's order (chief, workers, ps) and listen on
    `localhost`.

    Args:
        num_workers: Number of `"worker"` tasks; at least 1.
        num_ps: Number of `"ps"` tasks; at least 0.
        has_chief: Whether to add a `"chief"` task.
        ports: One distinct port per task, in task order, or `None` to pick
            free ports.

    Returns:
        One tuple per task; the JSON is what `TF_CONFIG` should hold.

    Example:
        >>> import json
        >>> from tf_decentral.testing import cluster
        >>> tasks = cluster.make_tf_config(2, ports=[3000, 3001])
        >>> [(task_type, task_id) for task_type, task_id, _ in tasks]
        [('worker', 0), ('worker', 1)]
        >>> json.loads(tasks[1][2])["cluster"]
        {'worker': ['localhost:3000', 'localhost:3001']}
    """
    configs = local_launcher.local_cluster_configs(
        num_workers, num_ps=num_ps, has_chief=has_chief, ports=ports
    )
    return [(c.task_type, c.task_id, c.to_json()) for c in configs]


def thread_env(intra_op: int = 1, inter_op: int = 1) -> dict[str, str]:
    """Returns environment variables capping TensorFlow's thread pools.

    TensorFlow reads `TF_NUM_INTRAOP_THREADS` and `TF_NUM_INTEROP_THREADS`
    when it creates its thread pools; `OMP_NUM_THREADS` caps oneDNN. On a
    small machine, several TensorFlow processes with default pools fight for
    the cores.

    Args:
        intra_op: Threads per op (e.g. a matmul); at least 1.
        inter_op: Ops run at once; at least 1. Collectives that wait on a
            peer inside one program may need 2 or more.

    Example:
        >>> from tf_decentral.testing import cluster
        >>> cluster.thread_env(1, 2)["TF_NUM_INTEROP_THREADS"]
        '2'
    """
    for name, value in (("intra_op", intra_op), ("inter_op", inter_op)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`{name}` must be an integer >= 1. Received: {name}={value!r}"
            )
    return {
        "TF_NUM_INTRAOP_THREADS": str(intra_op),
        "TF_NUM_INTEROP_THREADS": str(inter_op),
        "OMP_NUM_THREADS": str(intra_op),
    }


def can_unshare_network() -> bool:
    """Whether this machine lets us create a network namespace (Linux,
    util-linux's `unshare`, and root or unprivileged user namespaces)."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return False
    command = [unshare, "--net"]
    if os.getuid() != 0:
        command.append("--map-root-user")
    try:
        result = subprocess.run(
            [*command, "--", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def python_command(code: str, *args: str) -> list[str]:
    """Returns the command running Python `code` (dedented) in a new process.

    Example:
        >>> import sys
        >>> from tf_decentral.testing import cluster
        >>> command = cluster.python_command("print(1)")
        >>> command == [sys.executable, "-c", "print(1)"]
        True
    """
    return [sys.executable, "-c", textwrap.dedent(code), *args]


_WITHOUT_TENSORFLOW_PRELUDE = """
import sys

# `None` in `sys.modules` makes any import of these raise ImportError.
for _blocked in ("tensorflow", "keras", "tf_keras", "jax", "torch"):
    sys.modules[_blocked] = None


def heavy_modules():
    \"\"\"The TensorFlow/Keras modules imported so far (should be none).\"\"\"
    return sorted(
        name
        for name, module in sys.modules.items()
        if module is not None
        and name.split(".")[0] in ("tensorflow", "keras", "tf_keras")
    )

"""


def run_without_tensorflow(code: str, timeout: float = 120.0):
    """Runs Python `code` in a fresh interpreter that cannot import TF.

    Importing TensorFlow, Keras, JAX or PyTorch raises `ImportError` there;
    `code` may call `heavy_modules()` to list any TF/Keras module that got
    imported anyway. This package is first on the child's `PYTHONPATH`.

    Returns:
        The `subprocess.CompletedProcess`, with text `stdout` and `stderr`.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")])
    )
    return subprocess.run(
        python_command(_WITHOUT_TENSORFLOW_PRELUDE + textwrap.dedent(code)),
        cwd=_PACKAGE_PARENT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


RESULT_PREFIX = "RESULT "
"""How a test worker prints what it reports: `RESULT {json}`, one line."""


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """What one task of a `LocalCluster` did.

    Attributes:
        task_type: The task's job, e.g. `"worker"`.
        task_id: The task's index in its job.
        pid: The task's process id (also its process group id).
        returncode: The exit code, `-signum` if a signal killed it, or `None`
            if it was still running when the result was taken.
        stdout: Everything the task wrote to stdout so far.
        stderr: Everything the task wrote to stderr so far.

    Example:
        >>> from tf_decentral.testing import cluster
        >>> result = cluster.TaskResult("worker", 1, 1234, 3, "", "Oops\\n")
        >>> result.name
        'worker:1'
        >>> print(result.describe())
        --- worker:1 (exit code 3) stdout:
        <BLANKLINE>
        --- worker:1 stderr:
        Oops
        <BLANKLINE>
    """

    task_type: str
    task_id: int
    pid: int
    returncode: int | None
    stdout: str
    stderr: str

    @property
    def name(self) -> str:
        """The task as `"job:index"`, e.g. `"worker:1"`."""
        return f"{self.task_type}:{self.task_id}"

    def report(self) -> dict | None:
        """Returns the JSON of the task's last `RESULT {json}` stdout line
        (the convention of the multi-process tests' workers), or None.

        Example:
            >>> from tf_decentral.testing import cluster
            >>> out = 'noise\\nRESULT {"node": 1, "loss": 0.5}\\n'
            >>> cluster.TaskResult("worker", 1, 1234, 0, out, "").report()
            {'node': 1, 'loss': 0.5}
        """
        lines = [
            line
            for line in self.stdout.splitlines()
            if line.startswith(RESULT_PREFIX)
        ]
        if not lines:
            return None
        return json.loads(lines[-1][len(RESULT_PREFIX) :])

    def describe(self) -> str:
        """Returns the task's exit status and the tail of its output."""
        if self.returncode is None:
            status = "still running"
        elif self.returncode < 0:
            status = f"killed by signal {-self.returncode}"
        else:
            status = f"exit code {self.returncode}"
        return (
            f"--- {self.name} ({status}) stdout:\n"
            f"{self.stdout[-_TAIL_CHARS:]}\n"
            f"--- {self.name} stderr:\n{self.stderr[-_TAIL_CHARS:]}"
        )


@dataclasses.dataclass
class _Task:
    config: ClusterConfig
    process: subprocess.Popen
    stdout_path: str
    stderr_path: str

    def result(self) -> TaskResult:
        return TaskResult(
            task_type=self.config.task_type,
            task_id=self.config.task_id,
            pid=self.process.pid,
            returncode=self.process.poll(),
            stdout=_read(self.stdout_path),
            stderr=_read(self.stderr_path),
        )

    def kill_group(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _read(path: str) -> str:
    try:
        return pathlib.Path(path).read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


class LocalCluster:
    """The running tasks of a `local_cluster` block.

    Attributes:
        configs: Every task's `ClusterConfig`, in task order.
        results: After the block, every task's final `TaskResult`, by name
            (e.g. `"worker:1"`); empty before.
        timed_out: Whether the deadline passed before the chief and
            worker tasks finished.

    Example:
        >>> from tf_decentral.testing import cluster
        >>> command = cluster.python_command("import time; time.sleep(30)")
        >>> with cluster.local_cluster(command, num_workers=1) as c:
        ...     c.wait(timeout=0.1)
        Traceback (most recent call last):
        TimeoutError: The cluster's tasks must finish before the deadline, ...
        >>> c.results["worker:0"].returncode, c.leftover_pids()
        (-9, [])
    """

    def __init__(self, configs: Sequence[ClusterConfig], deadline: float):
        self.configs = list(configs)
        self.results: dict[str, TaskResult] = {}
        self.timed_out = False
        self._deadline = deadline
        self._tasks: list[_Task] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The task processes' ids (each also its process group id)."""
        return [task.process.pid for task in self._tasks]

    def poll(self) -> dict[str, TaskResult]:
        """Returns every task's result so far, without waiting."""
        return {task.config.task_name: task.result() for task in self._tasks}

    def wait(
        self,
        timeout: float | None = None,
        *,
        fail_fast: bool = True,
        check: bool = False,
    ) -> dict[str, TaskResult]:
        """Waits until every chief and worker task has exited.

        `"ps"` tasks are servers that never exit: they are not waited for
        (their `returncode` stays `None` until the block ends).

        Args:
            timeout: Seconds to wait at most; defaults to what is left of
                the cluster's `timeout`.
            fail_fast: Stop waiting as soon as one task fails (its peers
                may then block forever, e.g. in a collective).
            check: Raise if a task failed.

        Returns:
            Every task's `TaskResult`, by task name (e.g. `"worker:1"`).

        Raises:
            TimeoutError: If the tasks are still running at the deadline;
                the message holds every task's output.
            RuntimeError: If `check` and a task exited with a nonzero code.
        """
        deadline = self._deadline
        if timeout is not None:
            deadline = min(deadline, time.monotonic() + timeout)
        while True:
            codes = [task.process.poll() for task in self._trainers()]
            failed = any(code not in (None, 0) for code in codes)
            done = all(code is not None for code in codes)
            now = time.monotonic()
            finished = done or (fail_fast and failed)
            if not finished and now >= self._deadline:
                # The watchdog may not have fired yet: do its job.
                self._kill(timed_out=True)
            if self.timed_out or (not finished and now >= deadline):
                results = self.poll()
                raise TimeoutError(
                    "The cluster's tasks must finish before the deadline, "
                    "but some are still running (or were killed at the "
                    "deadline). Raise `timeout`, or look for a deadlock in "
                    "the outputs:\n"
                    + "\n".join(r.describe() for r in results.values())
                )
            if finished:
                break
            time.sleep(_POLL_SECONDS)
        results = self.poll()
        if check:
            bad = [r for r in results.values() if r.returncode not in (None, 0)]
            if bad:
                raise RuntimeError(
                    "Every task must exit with code 0, but "
                    f"{', '.join(r.name for r in bad)} did not:\n"
                    + "\n".join(r.describe() for r in bad)
                )
        return results

    def leftover_pids(self) -> list[int]:
        """Returns the live processes in the tasks' process groups.

        Empty once the `with` block has ended (give the kernel a moment:
        see `live_pids`).
        """
        groups = set(self.pids)
        return sorted(
            pid
            for pid, state, _, pgid in _process_table()
            if pgid in groups and state != "Z"
        )

    def _start(self, command_for_task, env, log_dir, preload=False):
        for config in self.configs:
            command = command_for_task
            if callable(command_for_task):
                command = command_for_task(config.task_type, config.task_id)
            if isinstance(command, str) or not command:
                raise ValueError(
                    "`cmd_for_task` must give a non-empty list of strings, "
                    'such as [sys.executable, "-c", code]. Received for '
                    f"{config.task_name}: {command!r}"
                )
            task_env = dict(env)
            task_env["TF_CONFIG"] = config.to_json()
            task_env[local_launcher.TASK_ENV_VAR] = config.task_name
            stem = os.path.join(log_dir, config.task_name.replace(":", "_"))
            with (
                open(f"{stem}.out", "wb") as out,
                open(f"{stem}.err", "wb") as err,
            ):
                with self._lock:
                    if self._closed:
                        return
                    if preload and preload_lib.is_preloadable(command):
                        process = preload_lib.get().spawn(
                            command, task_env, out.name, err.name
                        )
                    else:
                        process = subprocess.Popen(
                            list(command),
                            env=task_env,
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=err,
                            start_new_session=True,
                        )
                    self._tasks.append(
                        _Task(config, process, out.name, err.name)
                    )

    def _trainers(self) -> list[_Task]:
        return [t for t in self._tasks if t.config.task_type != "ps"]

    def _kill(self, timed_out: bool = False):
        with self._lock:
            if timed_out and not self._closed:
                # Timed out only if a chief or worker task was still running.
                self.timed_out = any(
                    task.process.poll() is None for task in self._trainers()
                )
            self._closed = True
            for task in self._tasks:
                task.kill_group()

    def _finish(self):
        self._kill()
        for task in self._tasks:
            task.process.wait()
            # Children forked meanwhile are still in the group.
            task.kill_group()
        self.results = self.poll()


@contextlib.contextmanager
def local_cluster(
    cmd_for_task: CommandForTask,
    num_workers: int,
    num_ps: int = 0,
    has_chief: bool = False,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    preload: bool | None = None,
) -> Iterator[LocalCluster]:
    """Runs one subprocess per task of a local cluster; kills them on exit.

    Every task gets `os.environ`, then `TF_CPP_MIN_LOG_LEVEL=2` and
    `PYTHONUNBUFFERED=1`, then `env`, then its `TF_CONFIG` and
    `TF_DECENTRAL_TASK` (e.g. `"worker:1"`); the directory holding
    `tf_decentral` is put first on its `PYTHONPATH`.

    Args:
        cmd_for_task: The command every task runs, or a function
            `(task_type, task_id) -> command`.
        num_workers: Number of `"worker"` tasks; at least 1.
        num_ps: Number of `"ps"` tasks; at least 0.
        has_chief: Whether to add a `"chief"` task.
        timeout: Seconds after which every task is killed, even if the
            `with` block is still running; `wait` then raises TimeoutError.
        env: Extra environment variables, e.g. `thread_env()`.
        preload: Fork Python tasks (`[sys.executable, SCRIPT.py or -c CODE or
            -m MODULE, ...]`) from a process that imported TensorFlow once
            (`tf_decentral.testing.preload`) instead of starting a new
            interpreter each. None: as `TF_DECENTRAL_TEST_PRELOAD` says
            (`1`: yes; default no).

    Yields:
        The `LocalCluster`; call `wait()` on it to let the tasks finish.
        After the block, `results` holds every task's final `TaskResult`.

    Example:
        >>> from tf_decentral.testing import cluster
        >>> code = "import os; print(os.environ['TF_DECENTRAL_TASK'])"
        >>> with cluster.local_cluster(
        ...     cluster.python_command(code), num_workers=2, timeout=30
        ... ) as c:
        ...     results = c.wait(check=True)
        >>> results["worker:1"].stdout
        'worker:1\\n'
    """
    if not timeout > 0:
        raise ValueError(
            f"`timeout` must be > 0. Received: timeout={timeout!r}"
        )
    configs = local_launcher.local_cluster_configs(
        num_workers, num_ps=num_ps, has_chief=has_chief
    )
    base_env = dict(os.environ)
    base_env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    base_env["PYTHONUNBUFFERED"] = "1"
    base_env.update(env or {})
    base_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [_PACKAGE_PARENT, base_env.get("PYTHONPATH")])
    )
    cluster = LocalCluster(configs, time.monotonic() + timeout)
    watchdog = threading.Timer(
        timeout, cluster._kill, kwargs={"timed_out": True}
    )
    watchdog.daemon = True
    with tempfile.TemporaryDirectory(prefix="tf_decentral_cluster_") as logs:
        try:
            watchdog.start()
            if preload is None:
                preload = preload_lib.enabled()
            cluster._start(cmd_for_task, base_env, logs, preload)
            yield cluster
        finally:
            watchdog.cancel()
            cluster._finish()


def run_workers(
    command: list[str],
    num_workers: int,
    timeout: float = 200.0,
    env: Mapping[str, str] | None = None,
) -> tuple[dict, dict]:
    """Runs `command` on `num_workers` workers until they all exit.

    Every worker gets `thread_env(intra_op=1, inter_op=2)` and `env`.

    Returns:
        `(results, reports)`: every task's `TaskResult` by task name, and
        the `RESULT` dict of each task that printed one, by task name, with
        its `"returncode"` added.
    """
    with local_cluster(
        command,
        num_workers=num_workers,
        timeout=timeout,
        env={**thread_env(intra_op=1, inter_op=2), **(env or {})},
    ) as cluster:
        results = cluster.wait(fail_fast=False)
    reports = {}
    for name, result in results.items():
        report = result.report()
        if report is not None:
            report["returncode"] = result.returncode
            reports[name] = report
    return results, reports


def _process_table() -> Iterator[tuple[int, str, int, int]]:
    """Yields `(pid, state, ppid, pgid)` of every process (Linux `/proc`)."""
    try:
        entries = os.listdir("/proc")
    except FileNotFoundError:
        entries = None
    if entries is None:
        try:
            import psutil
        except ImportError as e:
            raise NotImplementedError(
                "Listing processes needs Linux's /proc or psutil: install "
                "psutil (`pip install psutil`)."
            ) from e
        for proc in psutil.process_iter(["pid", "status", "ppid"]):
            info = proc.info
            try:
                pgid = os.getpgid(info["pid"])
            except OSError:
                continue
            state = "Z" if info["status"] == psutil.STATUS_ZOMBIE else "R"
            yield info["pid"], state, info["ppid"], pgid
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        yield int(entry), fields[0], int(fields[1]), int(fields[2])


def child_pids(pid: int | None = None) -> list[int]:
    """Returns the live (non-zombie) child processes of `pid` (default: us;
    then the tasks `tf_decentral.testing.preload` forked for us count, the
    preloader itself does not).

    Tests call it at the end to check that they left no process behind.

    Example:
        >>> import subprocess
        >>> from tf_decentral.testing import cluster
        >>> child = subprocess.Popen(["sleep", "10"])
        >>> child.pid in cluster.child_pids()
        True
        >>> child.kill(); child.wait()
        -9
        >>> child.pid in cluster.child_pids()
        False
    """
    parent = os.getpid() if pid is None else pid
    # The preloader is a helper of this process that outlives a test; the
    # tasks it forked for us count as our children.
    preloaders = preload_lib.pids() if pid is None else set()
    parents = {parent} | preloaders
    return sorted(
        child
        for child, state, ppid, _ in _process_table()
        if ppid in parents and child not in preloaders and state != "Z"
    )


def live_pids(pids: Iterable[int], timeout: float = 0.0) -> list[int]:
    """Returns which of `pids` are still alive, waiting up to `timeout` s.

    A zombie (exited, not yet reaped) counts as dead. A killed process
    takes a moment to exit, so tests pass a small `timeout`.

    Example:
        >>> import os, subprocess
        >>> from tf_decentral.testing import cluster
        >>> child = subprocess.Popen(["sleep", "10"])
        >>> child.kill()
        >>> cluster.live_pids([child.pid], timeout=5)
        []
        >>> cluster.live_pids([os.getpid()]) == [os.getpid()]
        True
        >>> child.wait()
        -9
    """
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        alive = {pid for pid, state, _, _ in _process_table() if state != "Z"}
        remaining = [pid for pid in pids if pid in alive]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(_POLL_SECONDS)
