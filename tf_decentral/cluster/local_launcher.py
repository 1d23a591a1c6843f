"""Runs a whole cluster on this machine: one subprocess per task.

Every task runs the same command with its own `TF_CONFIG` (and
`TF_DECENTRAL_TASK`, e.g. `"worker:1"`). The addresses are free ports on
`localhost`, so a multi-worker program can be tried on one machine exactly as
it will run on many. TensorFlow's servers listen on every interface of the
machine whatever host `TF_CONFIG` names, without authentication (see
`tf_decentral.cluster.exposure`): the launcher says so when the machine has
other interfaces, and `--private-network` runs the tasks in a network
namespace of their own where only they can reach each other.

Life cycle, as `launch` implements it:

* Each task runs in its own session (so its own process group): killing the
  group also reaches the task's children, and a Ctrl-C typed in the terminal
  reaches only the launcher, which forwards it.
* Every line a task writes to stdout or stderr is copied to the launcher's
  stdout or stderr with the task's prefix, e.g. `[worker:1] `.
* The run succeeds when every chief and worker task has exited with code 0;
  the `"ps"` tasks, servers that never exit on their own, are then stopped.
* When a task fails, or the launcher gets SIGINT, SIGTERM or SIGHUP, every
  task is stopped: first with that signal (SIGTERM when a task failed), then,
  after a grace period, with SIGKILL (a worker blocked in a collective
  ignores SIGTERM). A second signal skips the grace period.

Pure Python: this module never imports TensorFlow.

Longer than 500 lines because the command line, the per-task configs and the
supervision loop share one task table and one life cycle (above); each
function is short.
"""

import argparse
import dataclasses
import fcntl
import os
import random
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from collections.abc import Sequence
from typing import IO

from tf_decentral.cluster import exposure
from tf_decentral.cluster.tf_config import ClusterConfig

# The environment variable naming the task, e.g. "worker:1".
TASK_ENV_VAR = "TF_DECENTRAL_TASK"
# Seconds between two checks of the tasks' states.
_POLL_SECONDS = 0.02
# Seconds to wait for a task's output to drain once its group is killed.
_DRAIN_SECONDS = 5.0
_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Exit code of a command that cannot be found, as the shells use it.
_EXIT_NOT_FOUND = 127
_EXIT_NOT_EXECUTABLE = 126
_PROG = "python -m tf_decentral.launch"
# One TF task takes about 2 s of CPU to start and 260 MB of private memory
# (600 MB resident); past this many tasks one machine thrashes instead of
# training. Real clusters of more tasks are launched by a cluster manager.
MAX_TASKS = 64
MAX_GRACE_SECONDS = 3600.0
# Ports below this are privileged or belong to well-known services.
MIN_PORT = 1024
# Set in the environment of a launcher re-run inside its network namespace.
_PRIVATE_NETWORK_ENV = "TF_DECENTRAL_PRIVATE_NETWORK"
_EXAMPLE_COMMAND = f"{_PROG} --workers 2 -- python train.py"


def pick_unused_ports(num_ports: int) -> list[int]:
    """Returns `num_ports` distinct ports that are free now.

    Picked at random in `_PICK_RANGE`, below the OS's ephemeral range, and
    checked free with portpicker (which picks them itself if that range is
    crowded). A free port is free only until some process binds it.

    Args:
        num_ports: How many ports; at least 0.

    Returns:
        The ports, all distinct.

    Raises:
        ValueError: If `num_ports` is negative.
        ImportError: If portpicker is not installed.

    Example:
        >>> from tf_decentral import cluster
        >>> len(set(cluster.pick_unused_ports(3)))
        3
    """
    if isinstance(num_ports, bool) or not isinstance(num_ports, int):
        raise ValueError(
            f"`num_ports` must be an integer. Received: num_ports={num_ports!r}"
        )
    if num_ports < 0:
        raise ValueError(
            f"`num_ports` must be at least 0. Received: num_ports={num_ports}"
        )
    try:
        import portpicker
    except ImportError as e:
        raise ImportError(
            "Picking free ports needs portpicker. Install it with "
            "`pip install portpicker`, or pass the ports explicitly (with "
            "the launcher: `--port-base`)."
        ) from e
    low, high = _PICK_RANGE
    ephemeral = _ephemeral_ports()
    if ephemeral is not None:
        high = min(high, ephemeral[0])
    rng = random.Random()
    ports = []
    for _ in range(100 * num_ports):
        if len(ports) == num_ports:
            break
        port = rng.randrange(low, high) if high > low else None
        if port is not None and port not in ports:
            if portpicker.is_port_free(port):
                ports.append(port)
    while len(ports) < num_ports:  # A crowded range: as portpicker picks.
        port = portpicker.pick_unused_port()
        if port not in ports:
            ports.append(port)
    return ports


_PICK_RANGE = (15000, 25000)
"""Where `pick_unused_ports` picks (portpicker's own fallback range): below
the OS's ephemeral range, from which outgoing connections take their local
ports. A port picked there can be taken by another process's connection
before the server binds it (measured: "Could not start gRPC server" in 2 of
about 80 runs of a multi-process test file with three test jobs on the
machine)."""


def _ephemeral_ports():
    """The OS's ephemeral port range `(low, high)`, or None if unknown."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
    except (OSError, ValueError):
        return None
    return low, high


def local_cluster_configs(
    num_workers: int,
    num_ps: int = 0,
    has_chief: bool = False,
    ports: Sequence[int] | None = None,
    host: str = "localhost",
) -> list[ClusterConfig]:
    """Returns the `ClusterConfig` of every task of a one-machine cluster.

    Tasks come in TensorFlow's order: the chief, the workers, then the ps
    tasks; `ports` are given to them in that order.

    Args:
        num_workers: Number of `"worker"` tasks; at least 1.
        num_ps: Number of `"ps"` tasks; at least 0.
        has_chief: Whether to add a `"chief"` task.
        ports: One distinct port per task, or `None` to pick free ports with
            portpicker.
        host: The host name of every address.

    Returns:
        One `ClusterConfig` per task, all sharing the same cluster.

    Raises:
        ValueError: If a count is out of range or `ports` has the wrong
            length or repeats a port.

    Example:
        >>> from tf_decentral import cluster
        >>> configs = cluster.local_cluster_configs(
        ...     2, has_chief=True, ports=[2000, 2001, 2002]
        ... )
        >>> [(c.task_name, c.address) for c in configs]
        [('chief:0', 'localhost:2000'), ('worker:0', 'localhost:2001'), \
('worker:1', 'localhost:2002')]
    """
    for name, value, low in (
        ("num_workers", num_workers, 1),
        ("num_ps", num_ps, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(
                f"`{name}` must be an integer >= {low}. "
                f"Received: {name}={value!r}"
            )
    jobs = (
        ("chief", int(bool(has_chief))),
        ("worker", num_workers),
        ("ps", num_ps),
    )
    num_tasks = sum(count for _, count in jobs)
    if ports is None:
        ports = pick_unused_ports(num_tasks)
    ports = list(ports)
    if len(ports) != num_tasks or len(set(ports)) != num_tasks:
        raise ValueError(
            f"`ports` must hold {num_tasks} distinct ports, one per task "
            "(chief, workers, then ps). "
            f"Received: ports={ports}. Pass ports=None to pick free ports."
        )
    cluster = {}
    next_port = iter(ports)
    for job, count in jobs:
        if count:
            cluster[job] = tuple(
                f"{host}:{next(next_port)}" for _ in range(count)
            )
    return ClusterConfig.every_task(cluster)


def exit_code(returncode: int) -> int:
    """Returns a shell-style exit code: 128 + signal number if killed.

    Args:
        returncode: A `subprocess.Popen.returncode`: the exit code, or
            `-signum` if a signal killed the process.

    Example:
        >>> from tf_decentral.cluster import local_launcher
        >>> local_launcher.exit_code(3), local_launcher.exit_code(-9)
        (3, 137)
    """
    return 128 - returncode if returncode < 0 else returncode


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name} (exit code {exit_code(returncode)})"
    return f"exited with code {returncode}"


class _Output:
    """Writes lines to the launcher's stdout and stderr, one at a time."""

    def __init__(self, stdout: IO, stderr: IO):
        self._streams = {"stdout": stdout, "stderr": stderr}
        self._lock = threading.Lock()

    def write(self, stream: str, prefix: str, line: bytes):
        if not line.endswith(b"\n"):
            line += b"\n"
        target = self._streams[stream]
        with self._lock:
            try:
                binary = getattr(target, "buffer", None)
                if binary is not None:
                    target.flush()
                    binary.write(prefix.encode() + line)
                    binary.flush()
                else:
                    text = line.decode(errors="replace")
                    target.write(prefix + text)
                    target.flush()
            except (BrokenPipeError, ValueError):
                # The reader went away (or the stream was closed): drop the
                # line but keep draining the task's pipe so it never blocks.
                pass

    def log(self, message: str):
        self.write("stderr", "[launch] ", message.encode())


@dataclasses.dataclass
class _Task:
    config: ClusterConfig
    process: subprocess.Popen | None = None
    readers: list[threading.Thread] = dataclasses.field(default_factory=list)
    reported: bool = False

    @property
    def name(self) -> str:
        return self.config.task_name

    @property
    def is_server(self) -> bool:
        return self.config.task_type == "ps"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_group(self, signum: int):
        if self.process is None:
            return
        try:
            # The task leads its own session, so its group id is its pid.
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _pump(pipe: IO[bytes], output: _Output, stream: str, prefix: str):
    with pipe:
        for line in iter(pipe.readline, b""):
            output.write(stream, prefix, line)


class _Launcher:
    """Starts, watches and stops the tasks of one `launch` call."""

    def __init__(self, command, configs, grace_seconds, env, output):
        self._command = list(command)
        self._tasks = [_Task(config) for config in configs]
        self._grace_seconds = grace_seconds
        self._env = env
        self._output = output
        self._signals = []

    def _on_signal(self, signum, frame):
        del frame
        self._signals.append(signum)
        if len(self._signals) > 1:
            # A second signal: no more grace.
            for task in self._tasks:
                task.signal_group(signal.SIGKILL)

    def run(self) -> int:
        previous = {}
        in_main_thread = threading.current_thread() is threading.main_thread()
        if in_main_thread:
            for signum in _HANDLED_SIGNALS:
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            code = self._start()
            if code is None:
                code = self._supervise()
            return code
        finally:
            for task in self._tasks:
                task.signal_group(signal.SIGKILL)
            for task in self._tasks:
                if task.process is not None:
                    task.process.wait()
                    # Grandchildren may have joined the group meanwhile.
                    task.signal_group(signal.SIGKILL)
            for task in self._tasks:
                for reader in task.readers:
                    reader.join(_DRAIN_SECONDS)
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _start(self) -> int | None:
        for task in self._tasks:
            if self._signals:
                return self._stop_on_signal()
            env = dict(self._env)
            env["TF_CONFIG"] = task.config.to_json()
            env[TASK_ENV_VAR] = task.name
            env.setdefault("PYTHONUNBUFFERED", "1")
            try:
                task.process = subprocess.Popen(
                    self._command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            except OSError as e:
                self._output.log(
                    f"Cannot start {task.name}: {e}. Check the command "
                    f"after `--`. Received: {shlex.join(self._command)}"
                )
                self._stop(signal.SIGTERM)
                if isinstance(e, PermissionError):
                    return _EXIT_NOT_EXECUTABLE
                return _EXIT_NOT_FOUND
            prefix = f"[{task.name}] "
            for stream, pipe in (
                ("stdout", task.process.stdout),
                ("stderr", task.process.stderr),
            ):
                reader = threading.Thread(
                    target=_pump,
                    args=(pipe, self._output, stream, prefix),
                    name=f"launch-{task.name}-{stream}",
                    daemon=True,
                )
                reader.start()
                task.readers.append(reader)
        return None

    def _supervise(self) -> int:
        while True:
            if self._signals:
                return self._stop_on_signal()
            for task in self._tasks:
                returncode = task.process.poll()
                if returncode is None or task.reported:
                    continue
                task.reported = True
                if returncode != 0:
                    self._output.log(
                        f"{task.name} {_describe_exit(returncode)}; "
                        "stopping the other tasks."
                    )
                    self._stop(signal.SIGTERM)
                    return exit_code(returncode)
            if all(task.reported for task in self._tasks if not task.is_server):
                servers = [task.name for task in self._tasks if task.running()]
                if servers:
                    self._output.log(
                        "Every chief and worker task succeeded; stopping "
                        f"{', '.join(servers)}."
                    )
                    self._stop(signal.SIGTERM)
                return 0
            time.sleep(_POLL_SECONDS)

    def _stop_on_signal(self) -> int:
        signum = self._signals[0]
        self._output.log(
            f"Got {signal.Signals(signum).name}; stopping every task."
        )
        self._stop(signum)
        return 128 + signum

    def _stop(self, signum: int):
        """Sends `signum` to every task, then SIGKILL after the grace period."""
        running = [task for task in self._tasks if task.running()]
        for task in running:
            task.signal_group(signum)
        deadline = time.monotonic() + self._grace_seconds
        while any(task.running() for task in running):
            if time.monotonic() >= deadline or len(self._signals) > 1:
                break
            time.sleep(_POLL_SECONDS)
        stubborn = [task.name for task in running if task.running()]
        if stubborn:
            self._output.log(
                f"{', '.join(stubborn)} still running "
                f"{self._grace_seconds:g}s after "
                f"{signal.Signals(signum).name}; sending SIGKILL."
            )
        for task in self._tasks:
            task.signal_group(signal.SIGKILL)


def launch(
    command: Sequence[str],
    configs: Sequence[ClusterConfig],
    *,
    grace_seconds: float = 5.0,
    env: Mapping[str, str] | None = None,
    stdout: IO | None = None,
    stderr: IO | None = None,
) -> int:
    """Runs `command` once per task, each with its task's `TF_CONFIG`.

    Blocks until the run ends (see the module docstring for the life cycle);
    when it returns, every task and its children have been killed.

    Args:
        command: The program and its arguments, run for every task.
        configs: One `ClusterConfig` per task, e.g. from
            `local_cluster_configs`.
        grace_seconds: Seconds between the signal that stops a task and
            SIGKILL; at least 0.
        env: The base environment of every task; defaults to `os.environ`.
            `TF_CONFIG` and `TF_DECENTRAL_TASK` are set on top of it, and
            `PYTHONUNBUFFERED=1` unless set.
        stdout: Where the tasks' prefixed stdout lines go; defaults to
            `sys.stdout`.
        stderr: Where the tasks' prefixed stderr lines and the launcher's
            own `[launch]` messages go; defaults to `sys.stderr`.

    Returns:
        0 if every chief and worker task succeeded; otherwise the exit code
        of the first task that failed (128 + the signal number if a signal
        killed it), or 128 + the signal number if the launcher was
        interrupted; 127 (126) if the command cannot be found (run).

    Raises:
        ValueError: If `command` or `configs` is empty, or
            `grace_seconds` is negative.

    Example:
        >>> import sys
        >>> from tf_decentral import cluster
        >>> code = "import os; print(os.environ['TF_CONFIG'])"
        >>> cluster.launch(
        ...     [sys.executable, "-c", code],
        ...     cluster.local_cluster_configs(1, ports=[2000]),
        ... )
        [worker:0] {"cluster": {"worker": ["localhost:2000"]}, "task": \
{"type": "worker", "index": 0}}
        0
    """
    if isinstance(command, str) or not command:
        raise ValueError(
            "`command` must be a non-empty list of strings, such as "
            f'["python", "train.py"]. Received: command={command!r}'
        )
    if not configs:
        raise ValueError(
            "`configs` must hold at least one task. Received: configs="
            f"{configs!r}. Build them with `local_cluster_configs()`."
        )
    if not grace_seconds >= 0:
        raise ValueError(
            "`grace_seconds` must be at least 0. "
            f"Received: grace_seconds={grace_seconds!r}"
        )
    output = _Output(stdout or sys.stdout, stderr or sys.stderr)
    launcher = _Launcher(
        command,
        configs,
        grace_seconds,
        os.environ if env is None else env,
        output,
    )
    ports = [int(c.address.rpartition(":")[2]) for c in configs]
    warning = exposure.exposure_warning(ports)
    if warning is not None:
        print(warning, file=stderr or sys.stderr, flush=True)
    return launcher.run()


def _bounded_int(low: int, high: int | None = None, why: str = ""):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(
                f"must be an integer {bound}{why}. Received: {text!r}"
            )
        return value

    return parse


_TASKS_WHY = (
    f" (one machine runs at most {MAX_TASKS} tasks: each is a TensorFlow "
    "process of about 600 MB)"
)


def _grace_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= MAX_GRACE_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds in [0, {MAX_GRACE_SECONDS:g}]. "
            f"Received: {text!r}"
        )
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        usage=(
            f"{_PROG} --workers N [--ps K] [--chief]\n"
            "       [--port-base P] [--grace-seconds S] [--private-network]\n"
            "       [--dry-run] -- CMD [ARG ...]"
        ),
        description=(
            "Runs CMD once per task of a cluster on this machine, each with "
            "its own TF_CONFIG (and TF_DECENTRAL_TASK, e.g. worker:1) on "
            "free loopback ports. Output lines are prefixed with their task. "
            "The run ends when every chief and worker task has exited: with "
            "0 if all succeeded (ps tasks are then stopped), else with the "
            "first failing task's exit code, after stopping the others."
        ),
        epilog=f"example: {_EXAMPLE_COMMAND}",
    )
    parser.add_argument(
        "--workers",
        type=_bounded_int(1, MAX_TASKS, _TASKS_WHY),
        required=True,
        metavar="N",
        help=(
            f"number of worker tasks (1 to {MAX_TASKS}: every task is a "
            "TensorFlow process of about 600 MB)"
        ),
    )
    parser.add_argument(
        "--ps",
        type=_bounded_int(0, MAX_TASKS, _TASKS_WHY),
        default=0,
        metavar="K",
        help="number of parameter-server tasks (default: 0)",
    )
    parser.add_argument("--chief", action="store_true", help="add a chief task")
    parser.add_argument(
        "--port-base",
        type=_bounded_int(
            MIN_PORT, 65535, " (lower ports are privileged or well known)"
        ),
        default=None,
        metavar="P",
        help=(
            "give the tasks ports P, P+1, ... (chief, workers, then ps) "
            "instead of free ports picked by portpicker"
        ),
    )
    parser.add_argument(
        "--grace-seconds",
        type=_grace_seconds,
        default=5.0,
        metavar="S",
        help=(
            "seconds between SIGTERM (or the forwarded signal) and SIGKILL "
            "when stopping tasks (default: 5)"
        ),
    )
    parser.add_argument(
        "--private-network",
        action="store_true",
        help=(
            "run the tasks in a network namespace of their own (Linux, "
            "util-linux's unshare): they reach each other on loopback and "
            "nothing else reaches them, nor do they reach any other host"
        ),
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help=(
            "print each task's `export TF_CONFIG=...` line and exit without "
            "starting anything"
        ),
    )
    return parser


def _rerun_in_private_network(parser, argv) -> int:
    """Runs this launcher again in a new network namespace; returns its
    exit code."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        parser.error(
            "--private-network needs Linux and util-linux's `unshare` "
            "(apt-get install util-linux). Received: platform "
            f"{sys.platform!r}, unshare {unshare or 'missing'}."
        )
    namespace = [unshare, "--net"]
    if os.getuid() != 0:
        namespace.append("--map-root-user")
    launcher = [sys.executable, "-m", "tf_decentral.launch"]
    command = [*namespace, "--", *launcher, *argv]
    env = {**os.environ, _PRIVATE_NETWORK_ENV: "1"}
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


def _loopback_up() -> None:
    """Brings up `lo` in this (new) network namespace."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack(
            "16sH", fcntl.ioctl(s.fileno(), siocgifflags, request)[:18]
        )[1]
        request = struct.pack("16sH", b"lo", flags | iff_up)
        fcntl.ioctl(s.fileno(), siocsifflags, request)


def _dry_run(configs: Sequence[ClusterConfig], command: Sequence[str]):
    for config in configs:
        print(f"# {config.task_name} at {config.address}")
        print(f"export TF_CONFIG={shlex.quote(config.to_json())}")
        if command:
            print(shlex.join(command))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: `python -m tf_decentral.launch --workers N -- CMD`.

    Args:
        argv: The arguments, without the program name; defaults to
            `sys.argv[1:]`.

    Returns:
        The exit code; see `launch`.

    Example:
        >>> from tf_decentral import cluster
        >>> cluster.main(["--workers", "1", "--port-base", "2000", "--dry-run"])
        # worker:0 at localhost:2000
        export TF_CONFIG='{"cluster": {"worker": ["localhost:2000"]}, \
"task": {"type": "worker", "index": 0}}'
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        split = argv.index("--")
        options, command = argv[:split], argv[split + 1 :]
    else:
        options, command = argv, []
    parser = _parser()
    args, unknown = parser.parse_known_args(options)
    if unknown:
        parser.error(
            f"unrecognized arguments: {shlex.join(unknown)}. Put the command "
            f"to run after `--`, e.g. `{_EXAMPLE_COMMAND}`."
        )
    if not command and not args.dry_run:
        parser.error(
            "missing CMD: put the command every task runs after `--`, e.g. "
            f"`{_EXAMPLE_COMMAND}`."
        )
    num_tasks = int(args.chief) + args.workers + args.ps
    if num_tasks > MAX_TASKS:
        parser.error(
            f"the cluster has {num_tasks} tasks; one machine runs at most "
            f"{MAX_TASKS} (each is a TensorFlow process of about 600 MB). "
            f"Received: --workers {args.workers} --ps {args.ps}"
            f"{' --chief' if args.chief else ''}."
        )
    if args.private_network and not args.dry_run:
        if not os.environ.get(_PRIVATE_NETWORK_ENV):
            return _rerun_in_private_network(parser, argv)
        _loopback_up()
    ports = None
    if args.port_base is not None:
        last = args.port_base + num_tasks - 1
        if last > 65535:
            parser.error(
                f"argument --port-base: the {num_tasks} tasks need ports "
                f"{args.port_base}..{last}, past 65535. Received: "
                f"--port-base {args.port_base}. Use a lower --port-base."
            )
        ports = range(args.port_base, last + 1)
    configs = local_cluster_configs(
        args.workers, num_ps=args.ps, has_chief=args.chief, ports=ports
    )
    if args.dry_run:
        _dry_run(configs, command)
        return 0
    return launch(command, configs, grace_seconds=args.grace_seconds)
