"""Start test tasks by forking a process that imported TensorFlow once.

Importing TensorFlow and Keras costs about 3.5 s of CPU per process, most of
a small multi-process test's start-up (a 4-worker cluster pays it four
times). The *preloader* is one helper process per test process that imports
them once (every task imports `tf_decentral` afresh, from its own
`PYTHONPATH`) and then forks one child per task on request. A child behaves like
`python SCRIPT ARGS...`, `python -c CODE ARGS...` or `python -m MODULE
ARGS...` started with the task's
environment: its own session (so `os.killpg(pid, SIGKILL)` kills it and its
children), its output in the given files, stdin from /dev/null, its
`sys.argv` and `sys.path[0]` as the interpreter would set them, the task's
`PYTHONPATH` entries in front, and a normal interpreter exit (exit code,
`sys.excepthook` for an uncaught exception, `atexit` handlers). What
differs from a fresh interpreter: TensorFlow and Keras are already imported,
so environment variables they read at import time (`TF_CPP_MIN_LOG_LEVEL`)
come from the preloader's environment, and the task's parent process is
the preloader.

TensorFlow can be forked after its import and before its runtime starts (no
eager context, no thread pools yet): the preloader never runs an op.

`tf_decentral.testing.cluster.local_cluster` uses it when asked to (its
`preload` argument, or `TF_DECENTRAL_TEST_PRELOAD=1` in the environment; this
repository's `tests/conftest.py` sets it). Start-up crashes of TF's runtime
(research/multiclient_segfault.md) happen after the fork, in the task.

Protocol (one JSON object per line): the client writes `{"argv": [...],
"env": {...}, "cwd": ..., "stdout": path, "stderr": path}`; the preloader
answers `{"pid": pid}` (or `{"error": text}`), and later `{"exited": pid,
"returncode": code}` (`-signum` if a signal ended it) for every child.
"""

import json
import os
import pathlib
import select
import subprocess
import sys
import threading
import time

__all__ = (
    "PreloadedProcess",
    "Preloader",
    "enabled",
    "get",
    "is_preloadable",
    "pids",
    "start_in_background",
)

PRELOADED_MODULES = ("numpy", "tensorflow", "keras")
"""What the preloader imports before it forks any task."""

_PACKAGE_PARENT = str(pathlib.Path(__file__).resolve().parents[2])


ENV_VAR = "TF_DECENTRAL_TEST_PRELOAD"

# The preloader's command line: `-c`, not `-m tf_decentral.testing.preload`,
# which runpy warns about (the package has already imported this module).
MAIN = "from tf_decentral.testing import preload; preload.main()"
"""`1`: `local_cluster` forks its Python tasks from the preloader."""


def enabled() -> bool:
    """Whether `ENV_VAR` asks for preloaded tasks."""
    return os.environ.get(ENV_VAR, "0") == "1"


def is_preloadable(command) -> bool:
    """Whether `command` is `[sys.executable, SCRIPT.py, ...]`,
    `[sys.executable, "-c", CODE, ...]` or `[sys.executable, "-m", MODULE,
    ...]`."""
    command = list(command)
    if len(command) < 2 or command[0] != sys.executable:
        return False
    if command[1] in ("-c", "-m"):
        return len(command) >= 3
    return command[1].endswith(".py")


class PreloadedProcess:
    """A task forked by the preloader: the part of `subprocess.Popen` that
    `local_cluster` uses (`pid`, `returncode`, `poll`, `wait`)."""

    def __init__(self, preloader, pid):
        self._preloader = preloader
        self.pid = pid

    @property
    def returncode(self):
        return self._preloader.returncodes.get(self.pid)

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            if not self._preloader.alive:
                raise RuntimeError(
                    f"The preloader died before task {self.pid} exited."
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode


class Preloader:
    """The client side: starts the preloader and forks tasks through it."""

    def __init__(self, env=None):
        self._process = subprocess.Popen(
            [sys.executable, "-c", MAIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        self.pid = self._process.pid
        _started_pids.add(self.pid)
        self.returncodes = {}
        self._replies = []
        self._lock = threading.Lock()
        self._replied = threading.Condition()
        ready = self._process.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(
                "The preloader must print `ready` once it has imported "
                f"{PRELOADED_MODULES}. Received: {ready!r}"
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def _read(self):
        for line in self._process.stdout:
            message = json.loads(line)
            with self._replied:
                if "exited" in message:
                    self.returncodes[message["exited"]] = message["returncode"]
                else:
                    self._replies.append(message)
                self._replied.notify_all()
        with self._replied:
            self._replied.notify_all()

    def spawn(self, argv, env, stdout, stderr, cwd=None) -> PreloadedProcess:
        """Forks a task running `argv` (see `is_preloadable`)."""
        if not is_preloadable(argv):
            raise ValueError(
                "The preloader runs `[sys.executable, SCRIPT.py or -c CODE "
                f"or -m MODULE, ARGS...]`. Received: {argv!r}"
            )
        request = {
            "argv": list(argv),
            "env": dict(env),
            "cwd": cwd or os.getcwd(),
            "stdout": stdout,
            "stderr": stderr,
        }
        with self._lock:
            with self._replied:
                self._process.stdin.write(json.dumps(request) + "\n")
                self._process.stdin.flush()
                while not self._replies:
                    if not self.alive:
                        raise RuntimeError("The preloader died.")
                    self._replied.wait(1.0)
                reply = self._replies.pop(0)
        if "error" in reply:
            raise RuntimeError(f"The preloader could not fork: {reply}")
        return PreloadedProcess(self, reply["pid"])

_preloader = None
_preloader_lock = threading.Lock()
_started_pids = set()


def get() -> Preloader:
    """Returns this process's preloader, started on first use."""
    global _preloader
    with _preloader_lock:
        if _preloader is None or not _preloader.alive:
            env = dict(os.environ)
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")])
            )
            _preloader = Preloader(env)
        return _preloader


def start_in_background() -> None:
    """Starts the preloader in a thread (its imports take seconds): the
    first `get()` then waits only for what is left."""
    threading.Thread(target=get, daemon=True).start()


def pids() -> set[int]:
    """The process ids of the preloaders this process started (also one
    that is still importing)."""
    return set(_started_pids)


# The preloader process -------------------------------------------------------


def _run_child(request):
    """In the forked child: become the task and run it; never returns."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    for source, target in ((devnull, 0), (out, 1), (err, 2)):
        os.dup2(source, target)
        os.close(source)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    argv = request["argv"][1:]
    # The task imports the package from its own PYTHONPATH, afresh.
    for name in [n for n in sys.modules if n.split(".")[0] == "tf_decentral"]:
        del sys.modules[name]
    extra = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    sys.path[:] = [p for p in extra if p and p not in sys.path] + sys.path
    import runpy

    if argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        sys.path.insert(0, "")
        code = compile(argv[1], "<string>", "exec")
        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        exec(code, namespace)  # noqa: S102 - the task's own program
    elif argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]  # run_module sets argv[0]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")
    sys.exit(0)


def _reap(write):
    while True:
        try:
            child, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if child == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        write({"exited": child, "returncode": code})


def main():
    """The preloader: imports `PRELOADED_MODULES`, then forks on request."""
    try:
        _serve()
    except BrokenPipeError:
        # The client (a test process) went away, maybe before the preloader
        # was ready: nothing to report to, nothing buffered worth flushing.
        os._exit(0)


def _serve():
    import importlib

    for name in PRELOADED_MODULES:
        importlib.import_module(name)
    control_in, control_out = sys.stdin, sys.stdout

    def write(message):
        control_out.write(json.dumps(message) + "\n")
        control_out.flush()

    control_out.write("ready\n")
    control_out.flush()
    while True:
        readable, _, _ = select.select([control_in], [], [], 0.02)
        _reap(write)
        if not readable:
            continue
        line = control_in.readline()
        if not line:  # the client closed the pipe: stop (tasks keep going)
            return
        request = json.loads(line)
        try:
            child = os.fork()
        except OSError as e:
            write({"error": f"{type(e).__name__}: {e}"})
            continue
        if child == 0:
            try:
                _run_child(request)
            except SystemExit:
                raise
            except BaseException:  # noqa: BLE001 - as the interpreter does
                sys.excepthook(*sys.exc_info())
                sys.exit(1)
        write({"pid": child})


if __name__ == "__main__":
    main()
