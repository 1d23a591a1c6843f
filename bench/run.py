r"""Runs the scheme comparison on emulated networks; writes CSV and plots.

As root, from the repository root:

    .venv/bin/python bench/run.py --experiments=smoke --out=/tmp/bench_smoke
    .venv/bin/python bench/run.py \
        --experiments=latency,bandwidth,straggler,tta --out=bench/results/full

Every run is one scheme on one emulated cluster (`bench/netsim`): one TF
process per task, each in its own host namespace, `TF_CONFIG` pointing at
the hosts' addresses, all running `bench/worker.py`. The sweep is
experiments x networks (rate, latency) x schemes x stragglers x workers x
repeats; an experiment (`EXPERIMENTS`) fixes the model, the steps and its
grid, and flags override any of it.

Outputs in `--out`:

- `runs.csv`: one row per run: step time, samples/s, bytes sent per step,
  final accuracy, time to the target accuracy, the cost model's prediction
  (`tf_decentral.cost_model`, fed with each worker's measured compute), the
  load average during the run, and a status (`ok`, `failed`,
  `not_available`);
- `evals.csv`: accuracy over training time, per worker;
- `loadavg.csv`: `/proc/loadavg` every 2 s; `machine.json`, `command.txt`;
- `runs/<run id>/`: every task's log and JSON result;
- `summary.md` and `runs_model.csv` (`bench/report.py`: the goals as
  measured ratios, the cost model's errors);
- the PNG plots of `bench/plots.py`.

Schemes are plug-ins (`Scheme`): which tasks to start in which hosts and
which worker flags; `requires` names the `tf_decentral` export a scheme
needs, so S-PSGD, Downpour and AD-PSGD report `not_available` until their
strategies land, and run unchanged afterwards.
"""

import csv
import dataclasses
import datetime
import itertools
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
_REPO_ROOT = os.path.dirname(_BENCH_DIR)
sys.path.insert(0, _BENCH_DIR)
sys.path.insert(1, _REPO_ROOT)
import netsim  # noqa: E402  (bench/netsim)
import stragglers as stragglers_lib  # noqa: E402  (bench/stragglers.py)
from metrics import summarize  # noqa: E402  (bench/metrics.py)
from schemes import ALL_SCHEMES  # noqa: E402  (bench/schemes.py)
from schemes import SCHEMES  # noqa: E402

from tf_decentral import cost_model  # noqa: E402  (NumPy only)

_WORKER = os.path.join(_BENCH_DIR, "worker.py")
_PORT_BASE = 23000


# Experiments: each fixes a grid; flags override. Networks are
# (rate or None for unshaped, one-way latency host to host in ms).
# Fields every experiment shares unless it says otherwise.
_EIGHT_WORKERS = dict(
    workers=(8,),
    warmup_steps=5,
    stragglers=("none",),
    compute_ms=0.0,
    eval_every=0,
    dataset="synthetic",
)

_COMPUTE_BOUND = dict(
    _EIGHT_WORKERS,
    schemes=("allreduce", "dpsgd_onepeer", "adpsgd", "adpsgd_overlap"),
    steps=20,
)

# The slept straggler's runs: 300 ms of slept compute per step.
_SLEPT = dict(
    _EIGHT_WORKERS,
    networks=(("1gbit", 1.0),),
    hidden="128",
    stragglers=("none", "3:4"),
    compute_ms=300.0,
)

# The CPU-quota straggler's runs (with --straggler_mode=cpu_quota): the
# slept ones' network, model and straggler, with 100 ms of burned CPU per
# step and 10 warm-up steps for the cap to settle.
_CPU_QUOTA = dict(_SLEPT, warmup_steps=10, compute_ms=100.0)

# Time to accuracy on Fashion-MNIST at 100 Mbit/s + 20 ms, 1.3 epochs.
_TIME_TO_ACCURACY = dict(
    _EIGHT_WORKERS,
    networks=(("100mbit", 20.0),),
    hidden="128",
    steps=300,
    eval_every=20,
    dataset="fashion_mnist",
)

EXPERIMENTS = {
    "smoke": dict(
        schemes=("allreduce", "dpsgd_ring", "dpsgd_onepeer"),
        networks=(("1gbit", 0.0), ("100mbit", 10.0)),
        workers=(4,),
        hidden="128",
        steps=10,
        warmup_steps=3,
        stragglers=("none",),
        compute_ms=0.0,
        eval_every=0,
        dataset="synthetic",
    ),
    "latency": dict(
        _EIGHT_WORKERS,
        schemes=ALL_SCHEMES,
        networks=(
            (None, 0.0),
            ("1gbit", 5.0),
            ("1gbit", 10.0),
            ("1gbit", 20.0),
        ),
        hidden="128",
        steps=30,
    ),
    "bandwidth": dict(
        _EIGHT_WORKERS,
        schemes=ALL_SCHEMES,
        networks=(("1gbit", 1.0), ("300mbit", 1.0), ("100mbit", 1.0)),
        hidden="1280",
        steps=20,
    ),
    "straggler": dict(_SLEPT, schemes=ALL_SCHEMES, steps=20),
    # The PS schemes as `straggler`, with the chief no longer sleeping
    # along (session 15: stragglers.process_delayed_dataset keeps an
    # endless dataset's size known); its own experiment, so that the
    # earlier runs stay apart.
    "straggler_ps": dict(
        _SLEPT, schemes=("downpour", "downpour_n4", "spsgd"), steps=20
    ),
    # The asynchronous schemes with a straggler, long enough that a 4x
    # straggler takes 10 or more steps in the window in which every worker
    # trains (the fast ones end 65 x 0.3 s after their start, the
    # straggler's 5 warm-up steps take 6 s).
    "straggler_async": dict(_SLEPT, schemes=("adpsgd", "adpsgd_all"), steps=60),
    # A CPU-quota straggler calibrated to 4x (issue 16), run with
    # --straggler_mode=cpu_quota: every worker burns 100 ms of CPU (on one
    # idle thread) per step, the straggler's cap is steered until its burns
    # take 4x the others'; long enough that it trains through the window,
    # with 10 warm-up steps for the cap to settle before the timing.
    "straggler_quota": dict(
        _CPU_QUOTA,
        schemes=("allreduce", "dpsgd_onepeer", "adpsgd", "downpour", "spsgd"),
        steps=40,
    ),
    # AD-PSGD with the CPU-quota straggler: its fast workers do not wait,
    # so with 40 timed steps they finished before the straggler's 10
    # warm-up steps at 4x had (session 13: no common window in 1 of 2
    # runs); 100 steps leave it 15 or more in the window.
    "straggler_quota_async": dict(_CPU_QUOTA, schemes=("adpsgd",), steps=100),
    # The PS schemes as `straggler_quota`, without the chief's burns
    # (see `straggler_ps`).
    "straggler_quota_ps": dict(
        _CPU_QUOTA, schemes=("downpour", "spsgd"), steps=40
    ),
    # Issue 15's AD-PSGD goals with compute-bound steps: slept compute
    # longer than either scheme's communication (at 20 ms one way, 0.4 MB;
    # at 100 Mbit/s, 4 MB, where AD-PSGD's exchange moves the model both
    # ways: about 0.7 s), so that overlap decides the step.
    "compute_latency": dict(
        _COMPUTE_BOUND,
        networks=(("1gbit", 20.0),),
        hidden="128",
        compute_ms=300.0,
    ),
    "compute_bandwidth": dict(
        _COMPUTE_BOUND,
        networks=(("100mbit", 1.0),),
        hidden="1280",
        compute_ms=1000.0,
    ),
    # The synchronous baselines' goals (issue 14), with --repeats=3.
    "sync_latency": dict(
        _EIGHT_WORKERS,
        schemes=(
            "allreduce",
            "allreduce_stock",
            "allreduce_loop",
            "dpsgd_onepeer",
            "dpsgd_ring",
        ),
        networks=((None, 0.0), ("1gbit", 20.0)),
        hidden="128",
        steps=30,
    ),
    "sync_bandwidth": dict(
        _EIGHT_WORKERS,
        schemes=("allreduce", "allreduce_loop", "dpsgd_onepeer"),
        networks=(("100mbit", 1.0),),
        hidden="1280",
        steps=20,
    ),
    # Downpour's best against AllReduceStrategy's best at 20 ms: run with
    # --steps_per_execution=4,8 (issue 15's 0.5x goal; one experiment, so
    # that the compared runs are interleaved repeat by repeat; 1 was the
    # slower setting for both in session 11's 5 + 20 steps with 1,4).
    # Warm-up and timed steps are whole executions of 8.
    "spe": dict(
        _EIGHT_WORKERS,
        schemes=("allreduce", "downpour_n4"),
        networks=(("1gbit", 20.0),),
        hidden="128",
        warmup_steps=8,
        steps=24,
    ),
    # Rudra (Gupta et al. 2016): staleness and accuracy of the PS
    # protocols with lambda = 8 learners (issue 16).
    "rudra": dict(
        _EIGHT_WORKERS,
        schemes=(
            "spsgd",
            "softsync_c1",
            "softsync_c2",
            "softsync_c4",
            "softsync_c8",
            "softsync_c1_lr",
            "softsync_c8_lr",
        ),  # (softsync_c1 applies every push alone: Downpour's async)
        networks=(("1gbit", 1.0),),
        hidden="128",
        steps=300,
        eval_every=50,
        dataset="fashion_mnist",
    ),
    # Dean et al. 2012: Adagrad vs plain SGD under asynchronous pushes
    # (issue 16), on the time-to-accuracy network, where plain SGD
    # diverged in session 12's `tta` (`downpour_i8*`: more staleness).
    "dean": dict(
        _EIGHT_WORKERS,
        schemes=("downpour", "downpour_adagrad"),
        networks=(("100mbit", 20.0),),
        hidden="128",
        steps=300,
        eval_every=50,
        dataset="fashion_mnist",
    ),
    "tta": dict(_TIME_TO_ACCURACY, schemes=ALL_SCHEMES),
    # Whether AD-PSGD's overlap (a gradient one exchange staler) costs
    # accuracy: `tta` for AD-PSGD with and without it, against AllReduce.
    "tta_overlap": dict(
        _TIME_TO_ACCURACY, schemes=("allreduce", "adpsgd", "adpsgd_overlap")
    ),
    # Several epochs (issue 16): 3 epochs of 8 x 32 examples per step,
    # the schemes of Lian et al.'s two papers against AllReduce.
    "tta_long": dict(
        _EIGHT_WORKERS,
        schemes=("allreduce", "dpsgd_ring", "adpsgd"),
        networks=(("100mbit", 20.0),),
        hidden="128",
        steps=700,
        eval_every=25,
        dataset="fashion_mnist",
    ),
    # The parameter-server schemes' round trips per step, measured once
    # (step at 10 ms one way - step unshaped) / 20 ms, for the cost model
    # (issue 16): a separate experiment from the ones it predicts.
    "round_trips": dict(
        _EIGHT_WORKERS,
        schemes=("spsgd", "downpour", "downpour_n4"),
        networks=((None, 0.0), ("1gbit", 10.0)),
        hidden="128",
        steps=20,
    ),
    # Lian et al. 2017's per-epoch comparison at 16 workers (issue 16):
    # 1.3 epochs as in `tta` (512 examples per step); unshaped, since the
    # comparison is per epoch and 16 processes share the machine's cores.
    "tta16": dict(
        _EIGHT_WORKERS,
        workers=(16,),
        schemes=("allreduce", "dpsgd_ring"),
        networks=((None, 0.0),),
        hidden="128",
        steps=150,
        eval_every=10,
        dataset="fashion_mnist",
    ),
    # AD-PSGD's case (Lian et al. 2018): time to accuracy with and without
    # one worker 4x slower, against D-PSGD and AllReduce. Slept compute of
    # 50 ms per step, so that the straggler's 200 ms matter at 20 ms one
    # way (issue 15's goal: at most 0.5x D-PSGD's time with the straggler).
    "tta_straggler": dict(
        _EIGHT_WORKERS,
        schemes=("allreduce", "dpsgd_onepeer", "adpsgd"),
        networks=(("100mbit", 20.0),),
        hidden="128",
        steps=200,  # every scheme reaches 80 % in about 100
        eval_every=20,
        dataset="fashion_mnist",
        stragglers=("none", "3:4"),
        compute_ms=50.0,
    ),
}

# Flags ------------------------------------------------------------------------

_EXPERIMENTS = flags.DEFINE_list(
    "experiments", ["smoke"], f"Presets among {sorted(EXPERIMENTS)}."
)
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_SCHEMES = flags.DEFINE_list("schemes", None, f"Override: among {ALL_SCHEMES}.")
_NETWORKS = flags.DEFINE_list(
    "networks",
    None,
    "Override: RATE:LATENCY_MS pairs (RATE 'none' = unshaped; latency "
    "one-way host to host), e.g. 1gbit:20,100mbit:1.",
)
_WORKERS = flags.DEFINE_list("workers", None, "Override: worker counts.")
_HIDDEN = flags.DEFINE_string("hidden", None, "Override: MLP widths, '128'.")
_STEPS = flags.DEFINE_integer("steps", None, "Override: timed steps.")
_WARMUP = flags.DEFINE_integer("warmup_steps", None, "Override.")
_STRAGGLERS = flags.DEFINE_list(
    "stragglers", None, "Override: 'none' and/or 'INDEX:FACTOR' specs."
)
_STRAGGLER_MODE = flags.DEFINE_enum(
    "straggler_mode", "sleep", list(stragglers_lib.MODES), "How to slow."
)
_COMPUTE_MS = flags.DEFINE_float("compute_ms", None, "Override.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", None, "Override.")
_DATASET = flags.DEFINE_string("dataset", None, "Override.")
_TARGET = flags.DEFINE_float(
    "target_accuracy", 0.80, "Test accuracy for time-to-accuracy."
)
_REPEATS = flags.DEFINE_integer(
    "repeats", 1, "Repeats of every run; repeat r runs with seed r."
)
_FIRST_REPEAT = flags.DEFINE_integer(
    "first_repeat",
    0,
    "Number of the first repeat (and seed), to add repeats to an existing "
    "--out directory: its CSVs are appended to.",
    lower_bound=0,
)
_EVAL_EXAMPLES = flags.DEFINE_integer(
    "eval_examples", 0, "Test examples per evaluation (0: the whole test set)."
)
_SPE = flags.DEFINE_list(
    "steps_per_execution",
    ["1"],
    "Keras' steps_per_execution values to run every scheme with (Downpour: "
    "local steps per closure); a grid dimension.",
)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Per worker.")
_LR = flags.DEFINE_float("learning_rate", 0.05, "Learning rate.")
_OVERHEAD_MS = flags.DEFINE_float(
    "overhead_ms", cost_model.DEFAULT_OVERHEAD * 1e3, "Cost model's o."
)
_RUN_TIMEOUT = flags.DEFINE_float("run_timeout", 900.0, "Seconds per run.")
_MTU = flags.DEFINE_integer("mtu", 9000, "Emulated links' MTU.")
_SLOW_HOST = flags.DEFINE_list(
    "slow_host",
    [],
    "Per-host link overrides, 'I:rate=10mbit,delay_ms=40' (host I of every "
    "network).",
)
_PLOTS = flags.DEFINE_bool("plots", True, "Write the PNG plots at the end.")
_KEEP_GOING = flags.DEFINE_bool(
    "keep_going", True, "After a failed run, go on with the next."
)
_VERIFY = flags.DEFINE_bool(
    "verify_network",
    True,
    "Ping and iperf3 every new network once (recorded in networks.csv).",
)


# Runs -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of the sweep."""

    experiment: str
    scheme: str
    workers: int
    rate: str | None
    latency_ms: float
    hidden: str
    steps: int
    warmup_steps: int
    stragglers: str
    straggler_mode: str
    compute_ms: float
    eval_every: int
    dataset: str
    repeat: int
    steps_per_execution: int = 1

    @property
    def run_id(self) -> str:
        rate = self.rate or "unshaped"
        strag = self.stragglers.replace(":", "x").replace(",", "+")
        k = self.steps_per_execution
        spe = f"-k{k}" if k != 1 else ""
        return (
            f"{self.experiment}-{self.scheme}-w{self.workers}-{rate}-"
            f"{self.latency_ms:g}ms-h{self.hidden.replace(',', '_')}-"
            f"s{strag}{spe}-r{self.repeat}"
        )

    @property
    def rate_mbit(self) -> float:
        return netsim.rate_bits_per_second(self.rate) / 1e6


def _parse_network(text):
    rate, _, latency = text.partition(":")
    rate = None if rate.strip().lower() in ("none", "unshaped", "") else rate
    return rate, float(latency or 0)


def expand(experiments) -> list[RunSpec]:
    """Returns the runs of the experiments, flags applied, network-major."""
    specs = []
    for name in experiments:
        if name not in EXPERIMENTS:
            raise app.UsageError(
                f"--experiments must be among {sorted(EXPERIMENTS)}. "
                f"Received: {name!r}"
            )
        grid = dict(EXPERIMENTS[name])
        if _SCHEMES.value:
            grid["schemes"] = tuple(_SCHEMES.value)
        if _NETWORKS.value:
            grid["networks"] = tuple(_parse_network(n) for n in _NETWORKS.value)
        if _WORKERS.value:
            grid["workers"] = tuple(int(w) for w in _WORKERS.value)
        for key, holder in (
            ("hidden", _HIDDEN),
            ("steps", _STEPS),
            ("warmup_steps", _WARMUP),
            ("compute_ms", _COMPUTE_MS),
            ("eval_every", _EVAL_EVERY),
            ("dataset", _DATASET),
        ):
            if holder.value is not None:
                grid[key] = holder.value
        if _STRAGGLERS.value:
            grid["stragglers"] = tuple(_STRAGGLERS.value)
        unknown = [s for s in grid["schemes"] if s not in SCHEMES]
        if unknown:
            raise app.UsageError(
                f"Unknown schemes {unknown}; known: {ALL_SCHEMES}"
            )
        grid_product = itertools.product(
            range(_FIRST_REPEAT.value, _FIRST_REPEAT.value + _REPEATS.value),
            grid["networks"],
            grid["workers"],
            grid["stragglers"],
            _steps_per_execution(),
            grid["schemes"],
        )
        for repeat, network, workers, strag, spe, scheme in grid_product:
            rate, latency = network
            # Keras calls back once per execution: the warm-up and the timed
            # steps must be whole executions, or the timed window is off.
            unit = SCHEMES[scheme].execution_unit(spe, workers)
            specs.append(
                RunSpec(
                    experiment=name,
                    scheme=scheme,
                    workers=workers,
                    rate=rate,
                    latency_ms=latency,
                    hidden=grid["hidden"],
                    steps=-(-grid["steps"] // unit) * unit,
                    warmup_steps=-(-grid["warmup_steps"] // unit) * unit,
                    stragglers=strag,
                    straggler_mode=_STRAGGLER_MODE.value,
                    compute_ms=grid["compute_ms"],
                    eval_every=grid["eval_every"],
                    dataset=grid["dataset"],
                    repeat=repeat,
                    steps_per_execution=spe,
                )
            )
    return specs


def _steps_per_execution():
    values = []
    for text in _SPE.value:
        if not text.strip().isdigit() or int(text) < 1:
            raise app.UsageError(
                "--steps_per_execution must be integers >= 1. Received: "
                f"{_SPE.value}"
            )
        values.append(int(text))
    return values


_AVAILABLE = {}


def availability(attribute: str | None) -> tuple[bool, str]:
    """Whether `tf_decentral.<attribute>` exists (checked in a subprocess,
    so this runner never imports TensorFlow)."""
    if attribute is None:
        return True, ""
    if attribute not in _AVAILABLE:
        code = (
            "import tf_decentral\n"
            "try:\n"
            f"    ok = hasattr(tf_decentral, {attribute!r})\n"
            "    why = '' if ok else 'tf_decentral has no ' + "
            f"{attribute!r}\n"
            "except Exception as e:\n"
            "    ok, why = False, f'importing it failed: {e!r}'\n"
            "print(ok, why)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=_REPO_ROOT,
            env=_task_env({}),
            check=False,
        )
        out = result.stdout.strip().splitlines()
        line = out[-1] if out else f"False check failed: {result.stderr[-300:]}"
        ok, _, why = line.partition(" ")
        _AVAILABLE[attribute] = (ok == "True", why)
    return _AVAILABLE[attribute]


def _task_env(extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [_REPO_ROOT, env.get("PYTHONPATH")])
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("TF_CONFIG", None)
    env.pop(stragglers_lib.STRAGGLERS_ENV, None)
    env.update(extra)
    return env


def _tf_config(net, tasks, port, task):
    from tf_decentral import cluster as cluster_lib

    cluster = {}
    for t in tasks:
        cluster.setdefault(t.job, []).append(f"{net.address(t.host)}:{port}")
    return cluster_lib.ClusterConfig(cluster, task.job, task.index).to_json()


class LoadSampler:
    """Samples /proc/loadavg every `period` s into a CSV, in a thread."""

    def __init__(self, path, period=2.0):
        self.path, self.period = path, period
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["time", "load1", "load5", "load15", "procs"])
            while not self._stop.is_set():
                with open("/proc/loadavg") as g:
                    fields = g.read().split()
                row = [time.time(), *map(float, fields[:3]), fields[3]]
                self.samples.append(row)
                writer.writerow(row)
                f.flush()
                self._stop.wait(self.period)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)

    def mean_between(self, t0, t1):
        values = [s[1] for s in self.samples if t0 <= s[0] <= t1]
        return sum(values) / len(values) if values else float("nan")


class CounterSampler:
    """Samples every host's byte counters at the router, in a thread."""

    def __init__(self, net, period=0.5):
        self.net, self.period = net, period
        self.samples = []  # (time, {host: {tx_bytes, rx_bytes}})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), self.net.port_counters()))
            except (netsim.NetsimError, OSError, ValueError):
                pass
            self._stop.wait(self.period)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)

    def rates(self, t0, t1):
        """Returns {host: (tx bytes/s, rx bytes/s)} over [t0, t1]."""
        inside = [s for s in self.samples if t0 - self.period <= s[0]]
        inside = [s for s in inside if s[0] <= t1 + self.period]
        if len(inside) < 2:
            return {}
        (ta, ca), (tb, cb) = inside[0], inside[-1]
        if tb <= ta:
            return {}
        return {
            h: (
                (cb[h]["tx_bytes"] - ca[h]["tx_bytes"]) / (tb - ta),
                (cb[h]["rx_bytes"] - ca[h]["rx_bytes"]) / (tb - ta),
            )
            for h in cb
            if h in ca
        }


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _pipeline_sleep_us(spec, strag, worker):
    """A PS scheme's worker sleeps its step's compute in its input pipeline,
    1/n of it per element: worker i of n reads every n-th element."""
    seconds = strag.compute_seconds(worker, spec.compute_ms)
    return round(seconds * 1e6 / spec.workers)


_BURN_SECONDS_PER_ITERATION = []


def _burn_iterations(compute_ms):
    """cpu_quota mode: `compute_ms` of burned compute on one idle thread,
    in `stragglers.burn` iterations (timed once per sweep, in a child
    process: this one imports no TensorFlow)."""
    if not _BURN_SECONDS_PER_ITERATION:
        code = (
            "import sys; sys.path.insert(0, 'bench'); import stragglers; "
            "print(stragglers.burn_seconds_per_iteration())"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=_REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        seconds = float(out.stdout.strip().splitlines()[-1])
        print(f"burn: {seconds * 1e6:.1f} us per iteration", flush=True)
        _BURN_SECONDS_PER_ITERATION.append(seconds)
    return max(1, round(compute_ms / 1e3 / _BURN_SECONDS_PER_ITERATION[0]))


def _burn_log_dir(run_dir, task):
    return os.path.join(run_dir, "burns", task.name.replace(":", "-"))


def launch_and_wait(net, spec, scheme, run_dir, port):
    """Starts every task in its host; returns (status, detail, results)."""
    tasks = scheme.tasks(spec.workers)
    strag = stragglers_lib.Stragglers.parse(
        spec.stragglers, spec.straggler_mode
    )
    no_straggler = stragglers_lib.Stragglers({}, spec.straggler_mode)
    burned = spec.straggler_mode == "cpu_quota" and spec.compute_ms > 0
    iterations = _burn_iterations(spec.compute_ms) if burned else 0
    training = [
        scheme.training_task(i, spec.workers) for i in range(spec.workers)
    ]
    common = [
        f"--strategy={scheme.strategy}",
        *scheme.worker_flags,
        f"--hidden={spec.hidden}",
        f"--dataset={spec.dataset}",
        f"--batch_size={_BATCH.value}",
        f"--steps_per_execution={spec.steps_per_execution}",
        f"--learning_rate={_LR.value}",
        f"--warmup_steps={spec.warmup_steps}",
        f"--steps={spec.steps}",
        # cpu_quota mode: no sleep, the compute is burned (and logged).
        f"--compute_ms={0.0 if burned else spec.compute_ms}",
        f"--burn_iterations={0 if scheme.parameter_servers else iterations}",
        f"--eval_every={spec.eval_every}",
        f"--eval_examples={_EVAL_EXAMPLES.value}",
        f"--seed={spec.repeat}",
        f"--result_file={os.path.join(run_dir, 'result.json')}",
        f"--barrier_dir={os.path.join(run_dir, 'barrier')}",
        f"--barrier_count={len(scheme.reporting_tasks(spec.workers))}",
        "--intra_op=1",
        "--inter_op=2",
    ]
    procs = {}
    quotas = {}
    steering = None
    counters = CounterSampler(net).start()
    try:
        for task in tasks:
            extra = {"TF_CONFIG": _tf_config(net, tasks, port, task)}
            if spec.straggler_mode == "sleep" and strag.factors:
                extra[stragglers_lib.STRAGGLERS_ENV] = str(strag)
            if scheme.parameter_servers and task.job in ("worker", "chief"):
                # The chief's is an ordinary worker's: its calibration
                # times a worker's pipeline with it.
                extra[stragglers_lib.PIPELINE_SLEEP_ENV] = str(
                    _pipeline_sleep_us(
                        spec,
                        strag if task.job == "worker" else no_straggler,
                        task.index,
                    )
                )
                if burned:  # 1/n of a step's burn per element, like sleep
                    extra[stragglers_lib.BURN_ITERATIONS_ENV] = str(
                        max(1, round(iterations / spec.workers))
                    )
            # A PS worker logs every element its pipeline produces (its
            # rate through the run: `metrics`' per-worker window).
            logged = scheme.parameter_servers and task in training
            if logged or (burned and (task in training or task.job == "chief")):
                log_dir = _burn_log_dir(run_dir, task)
                os.makedirs(log_dir, exist_ok=True)
                extra[stragglers_lib.COMPUTE_LOG_ENV] = log_dir
            preexec = None
            for worker in strag.factors:
                if (
                    spec.straggler_mode == "cpu_quota"
                    and scheme.training_task(worker, spec.workers) == task
                ):
                    cpus = strag.cpu_quota(worker, len(tasks))
                    quota = netsim.CpuQuota(
                        f"{net.name}-strag-{task.name}", cpus
                    )
                    net.add_cgroup(quota.path)
                    quotas[task.name] = quota
                    preexec = quota.preexec()
            log = open(os.path.join(run_dir, f"{task.name}.log"), "w")
            procs[task] = net.popen(
                task.host,
                [sys.executable, _WORKER, *common],
                env=_task_env(extra),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,
                cwd=_REPO_ROOT,
            )
            log.close()
        reporting = scheme.reporting_tasks(spec.workers)
        if burned and quotas:
            factors = {
                scheme.training_task(w, spec.workers).name: f
                for w, f in strag.factors.items()
            }
            steering = stragglers_lib.QuotaSteering(
                {t.name: _burn_log_dir(run_dir, t) for t in training},
                quotas,
                factors,
            )
        deadline = time.monotonic() + _RUN_TIMEOUT.value
        status, detail = "ok", ""
        while True:
            codes = {t: p.poll() for t, p in procs.items()}
            failed = {
                t: c for t, c in codes.items() if c is not None and c != 0
            }
            if failed:
                task, code = next(iter(failed.items()))
                status = "failed"
                detail = f"{task.name} exited with {code}"
                break
            if all(codes[t] is not None for t in reporting):
                break
            if not net.daemon_alive():
                status, detail = "failed", "the delay daemon died"
                break
            if time.monotonic() > deadline:
                status, detail = "failed", f"timeout {_RUN_TIMEOUT.value}s"
                break
            if steering is not None:
                steering.poll()
            time.sleep(0.5)
    finally:
        counters.stop()
        for proc in procs.values():
            _kill_group(proc)
        for proc in procs.values():
            proc.wait()
        leftovers = net.processes()
        for pid in leftovers:
            if pid != (net.daemon.pid if net.daemon else None):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for quota in quotas.values():
            netsim.emulator.remove_cgroup(quota.path)
    results = []
    for task in scheme.reporting_tasks(spec.workers):
        path = os.path.join(run_dir, f"result.{task.name}.json")
        if os.path.exists(path):
            with open(path) as f:
                results.append(json.load(f))
    errors = [r["error"] for r in results if r.get("error")]
    if errors and status == "ok":
        status = "failed"
    if errors and not detail:
        detail = errors[0]
    if status == "failed" and not detail.startswith("timeout"):
        tail = _log_tail(run_dir, procs)
        detail = f"{detail}; {tail}" if tail else detail
    if status == "not_available" and results:
        detail = results[0].get("error", detail)
    window = _timed_window(results)
    host_rates = counters.rates(*window) if window else {}
    for r in results:
        r["_host_rates"] = host_rates
        r["_tasks"] = tasks
    if steering is not None:
        steering.write(os.path.join(run_dir, "quota.csv"))
        achieved = steering.achieved(window)
        for r in results:
            r["_straggler_burns"] = achieved
    if scheme.parameter_servers:
        # Worker i of n reads every n-th element: n elements per step.
        elements = {
            t.name: stragglers_lib.element_times(_burn_log_dir(run_dir, t))
            for t in training
        }
        for r in results:
            r["_worker_elements"] = elements
            r["_elements_per_step"] = spec.workers
    stragglers_lib.compact_burns(os.path.join(run_dir, "burns"))
    return status, detail, results


def _timed_window(results):
    """`(start, end)` of the run's timed window (the last reporting task's
    first timed step to the first one's last step), None without timings."""
    try:
        return (
            max(r["timed_start"] for r in results),
            min(r["step_end_times"][-1] for r in results),
        )
    except (KeyError, TypeError, IndexError, ValueError):
        return None


def _log_tail(run_dir, procs):
    for task, proc in procs.items():
        if proc.returncode not in (0, None, -9):
            path = os.path.join(run_dir, f"{task.name}.log")
            with open(path, errors="replace") as f:
                lines = [ln for ln in f.read().splitlines() if ln.strip()]
            return " | ".join(lines[-3:])[-600:]
    return ""


def _median(values):
    values = sorted(values)
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else 0.5 * (values[mid - 1] + values[mid])


def predict(spec, scheme, results, overhead_ms):
    """Returns the cost model's (step time, textbook step time, samples/s)."""
    if not results or not all(r.get("calibration") for r in results):
        return {}
    by_node = sorted(results, key=lambda r: r.get("node", 0))
    compute = [r["calibration"]["median_s"] for r in by_node]
    if scheme.parameter_servers and len(compute) == 1:
        # The chief timed the twin; a straggler's pipeline sleeps (or
        # burns) its factor times that.
        strag = stragglers_lib.Stragglers.parse(spec.stragglers)
        compute = strag.per_worker(compute[0], spec.workers)
    if len(compute) != spec.workers:
        return {}
    network = cost_model.Network.from_netsim(
        spec.rate_mbit if spec.rate else None, spec.latency_ms, overhead_ms
    )
    kwargs = dict(
        model_bytes=results[0]["model_bytes"],
        num_workers=spec.workers,
        network=network,
        compute=compute,
        **scheme.cost_kwargs(),
    )
    times = cost_model.worker_step_times(scheme.cost, **kwargs)
    textbook = cost_model.worker_step_times(
        scheme.cost,
        **{**kwargs, "overlap": False, "extra_reductions": 0},
        textbook=True,
    )
    comm = cost_model.communication_time(
        scheme.cost,
        model_bytes=results[0]["model_bytes"],
        num_workers=spec.workers,
        network=network,
        degree=scheme.degree,
        num_shards=max(1, scheme.parameter_servers),
        extra_reductions=scheme.extra_reductions,
    )
    return {
        "predicted_step_s": float(_median(list(times))),
        "predicted_textbook_step_s": float(_median(list(textbook))),
        "predicted_comm_s": float(comm),
        "predicted_samples_per_s": float(sum(_BATCH.value / t for t in times)),
    }


# Output -----------------------------------------------------------------------

RUN_COLUMNS = (
    "run_id", "experiment", "scheme", "label", "workers", "rate", "rate_mbit",
    "latency_ms", "hidden", "params", "model_bytes", "dataset", "steps",
    "warmup_steps", "batch_size", "stragglers", "straggler_mode",
    "compute_ms", "repeat", "status", "detail", "step_time_s", "step_p10_s",
    "step_p90_s", "step_time_min_worker_s", "step_time_max_worker_s",
    "samples_per_s", "tx_bytes_per_step", "rx_bytes_per_step",
    "host_tx_bytes_per_step", "busiest_host", "busiest_host_bytes_per_step",
    "compute_s", "compute_max_s", "final_accuracy", "averaged_accuracy",
    "best_mean_accuracy", "time_to_target_s", "target_accuracy",
    "predicted_step_s", "predicted_textbook_step_s", "predicted_comm_s",
    "predicted_samples_per_s", "model_error", "loadavg_mean",
    "loadavg_end", "wall_s", "started", "window_s",
    "window_min_worker_steps", "step_time_active_s", "step_time_passive_s",
    "tx_bytes_per_step_active", "tx_bytes_per_step_passive",
    "exchanges_per_active_step", "steps_per_execution",
    "slowest_worker_slowdown", "staleness_mean", "staleness_histogram",
    "straggler_compute_slowdown", "straggler_cpus",
    "chief_window_samples_per_s",
)  # fmt: skip
EVAL_COLUMNS = (
    "run_id", "experiment", "scheme", "worker", "step", "train_clock_s",
    "accuracy",
)  # fmt: skip
NETWORK_COLUMNS = (
    "network", "workers_hosts", "rate", "latency_ms", "path",
    "expected_rtt_ms", "ping_rtt_ms", "rate_mbit", "iperf_mbit", "ok",
)  # fmt: skip


class CsvAppender:
    def __init__(self, path, columns):
        self.path, self.columns = path, columns
        if not os.path.exists(path):
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(columns)
            return
        with open(path, newline="") as f:
            header = tuple(next(csv.reader(f), ()))
        if header != tuple(columns):
            raise ValueError(
                f"{path} has other columns than this version writes; use a "
                f"new --out directory. Received: {len(header)} columns "
                f"{header[:3]}..., expected {len(columns)}."
            )

    def write(self, row):
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(
                f, self.columns, extrasaction="ignore", restval=""
            ).writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def machine_info():
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "cgroups": str(netsim.detect_cgroups()),
    }
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        info["mem_total"] = f.readline().split(":", 1)[1].strip()
    with open("/proc/loadavg") as f:
        info["loadavg_at_start"] = f.read().strip()
    info["commit"] = _git_commit()
    return info


def _git_commit():
    """The code's commit (`+modified` when the tree differs from it)."""
    try:
        rev = subprocess.run(
            ["git", "-C", _REPO_ROOT, "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", _REPO_ROOT, "status", "--porcelain",
             "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        return f"unknown ({e})"
    return rev + ("+modified" if dirty else "")


# Main -------------------------------------------------------------------------


def run_all(specs, out_dir):
    os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
    runs_csv = CsvAppender(os.path.join(out_dir, "runs.csv"), RUN_COLUMNS)
    evals_csv = CsvAppender(os.path.join(out_dir, "evals.csv"), EVAL_COLUMNS)
    nets_csv = CsvAppender(
        os.path.join(out_dir, "networks.csv"), NETWORK_COLUMNS
    )
    sampler = LoadSampler(os.path.join(out_dir, "loadavg.csv")).start()
    overrides = dict(netsim.parse_link_override(t) for t in _SLOW_HOST.value)
    net = None
    net_key = None
    port = _PORT_BASE
    try:
        for number, spec in enumerate(specs):
            scheme = SCHEMES[spec.scheme]
            row = {
                **dataclasses.asdict(spec),
                "run_id": spec.run_id,
                "label": scheme.label,
                "rate": spec.rate or "unshaped",
                "rate_mbit": spec.rate_mbit,
                "batch_size": _BATCH.value,
                "steps_per_execution": spec.steps_per_execution,
                "target_accuracy": _TARGET.value,
            }
            ok, why = availability(scheme.requires)
            if not ok:
                row.update(status="not_available", detail=why)
                runs_csv.write(row)
                print(f"[{number + 1}/{len(specs)}] {spec.run_id}: not "
                      f"available ({why})", flush=True)  # fmt: skip
                continue
            hosts = len(scheme.tasks(spec.workers))
            key = (hosts, spec.rate, spec.latency_ms)
            if key != net_key:
                if net is not None:
                    net.down()
                net = netsim.Network(
                    hosts,
                    netsim.Link(rate=spec.rate, delay_ms=spec.latency_ms / 2),
                    {i: link for i, link in overrides.items() if i < hosts},
                    mtu=_MTU.value,
                )
                net.up()
                net_key = key
                if _VERIFY.value:
                    _verify(net, nets_csv, spec, hosts)
            run_dir = os.path.join(out_dir, "runs", spec.run_id)
            os.makedirs(run_dir, exist_ok=True)
            for entry in os.listdir(run_dir):  # a rerun starts clean
                path = os.path.join(run_dir, entry)
                if os.path.isfile(path):
                    os.remove(path)
            port = _PORT_BASE + (port - _PORT_BASE + 1) % 1000
            started = time.time()
            status, detail, results = launch_and_wait(
                net, spec, scheme, run_dir, port
            )
            ended = time.time()
            row.update(
                status=status,
                detail=detail[:500],
                wall_s=ended - started,
                started=f"{started:.1f}",  # _fmt keeps 6 digits
                loadavg_mean=sampler.mean_between(started, ended),
            )
            if results and results[0].get("_straggler_burns"):
                # cpu_quota: the (first) straggler's achieved slowdown.
                name = min(results[0]["_straggler_burns"])
                slowdown, cpus = results[0]["_straggler_burns"][name]
                row.update(
                    straggler_compute_slowdown=slowdown, straggler_cpus=cpus
                )
                print(
                    f"  cpu_quota straggler: compute {slowdown:.2f}x the "
                    f"others' (burns in the timed window), cap {cpus:.3f} "
                    "CPUs",
                    flush=True,
                )
            if status == "ok" and results:
                row.update(summarize(results, _BATCH.value, _TARGET.value))
                row.update(predict(spec, scheme, results, _OVERHEAD_MS.value))
                if row.get("predicted_step_s") and row.get("step_time_s"):
                    row["model_error"] = (
                        row["predicted_step_s"] / row["step_time_s"] - 1.0
                    )
                for r in results:
                    for e in r.get("evals") or []:
                        evals_csv.write(
                            {
                                "run_id": spec.run_id,
                                "experiment": spec.experiment,
                                "scheme": spec.scheme,
                                "worker": r.get("node"),
                                "step": e["step"],
                                "train_clock_s": e["train_clock"],
                                "accuracy": e["accuracy"],
                            }
                        )
            runs_csv.write(row)
            print(
                f"[{number + 1}/{len(specs)}] {spec.run_id}: {status} "
                + (_progress(row) if status == "ok" else detail[:300]),
                flush=True,
            )
            if status == "failed" and not _KEEP_GOING.value:
                break
    finally:
        if net is not None:
            net.down()
        sampler.stop()


def _progress(row):
    nan = float("nan")
    return (
        f"step {row.get('step_time_s', nan) * 1e3:.1f} ms "
        f"(model {row.get('predicted_step_s', nan) * 1e3:.1f}), "
        f"{row.get('samples_per_s', nan):.0f} samples/s, "
        f"load {row['loadavg_mean']:.1f}"
    )


def _verify(net, nets_csv, spec, hosts):
    from netsim import cli

    try:
        rows, _ = cli.selftest(net, seconds=2.0)
    except netsim.NetsimError as e:
        rows = [{"path": "error", "ok": False, "iperf_mbit": str(e)[:200]}]
    for row in rows:
        nets_csv.write(
            {
                "network": net.name,
                "workers_hosts": hosts,
                "rate": spec.rate or "unshaped",
                "latency_ms": spec.latency_ms,
                **row,
            }
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    netsim.emulator.require_root_tools()
    stale = [
        ns
        for ns in netsim.emulator.list_namespaces()
        if ns.startswith(netsim.NAME_PREFIX)
    ]
    if stale:
        raise app.UsageError(
            f"Namespaces of an earlier run are left: {stale}. Remove them "
            "with `python -m bench.netsim down --all`."
        )
    specs = expand(_EXPERIMENTS.value)
    out_dir = _OUT.value
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "command.txt"), "a") as f:
        f.write(
            shlex.join([os.path.relpath(sys.executable, _REPO_ROOT), *sys.argv])
            + "\n"  # fmt: skip
        )
    with open(os.path.join(out_dir, "machine.json"), "w") as f:
        json.dump(machine_info(), f, indent=1)
    print(f"{len(specs)} runs -> {out_dir}", flush=True)
    run_all(specs, out_dir)
    import report

    print(report.summary(out_dir))
    if _PLOTS.value:
        import plots

        for path in plots.make_all(out_dir):
            print(f"wrote {path}")
    return 0


def _interrupted(signum, frame):
    del frame
    print(
        f"signal {signum}: stopping, tearing the emulated network down",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(128 + signum)


if __name__ == "__main__":
    # SIGTERM/SIGHUP unwind like Ctrl-C, so `finally` tears the network down;
    # SIGINT is re-armed in case it was inherited as ignored (`cmd &`).
    for _sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(_sig, _interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    app.run(main)
