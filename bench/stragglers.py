"""Stragglers for the benchmarks: slept compute per step, or a real CPU cap.

Two mechanisms, because this machine has 2 cores shared by 8 or more TF
processes (and by neighbours), so real compute time is noisy:

* **Emulated compute (`mode="sleep"`, reproducible).** Every worker spends
  `compute_ms` per training step asleep, as if computing; a straggler with
  multiplier `f` spends `f * compute_ms`. The bench worker puts the sleep
  either inside the step (`delay_layer`: a `tf.py_function` as the model's
  first layer, so it runs inside Keras' train function like real compute
  and overlaps whatever TF can run beside compute, e.g. the neighbour
  receives of `GossipStrategy`) or between steps (`step_delay_callback`:
  compute that nothing overlaps). The multipliers reach the workers as
  `--stragglers` or the environment variable `STRAGGLERS_ENV`.
  Parameter-server schemes run their steps on the workers' TF servers,
  driven by the chief: there the sleep goes into the input pipeline the
  chief builds and every worker runs (`process_delayed_dataset`), and each
  worker's process reads its own sleep from its environment
  (`PIPELINE_SLEEP_ENV`, set per task by the runner), so a sleep straggler
  is one worker of a PS scheme too.
* **Real CPU cap (`mode="cpu_quota"`), calibrated.** Every worker's
  compute is real: `burn`, products of 64 x 64 matrices, in the same
  places as the sleep (`burn_layer` inside the train step; for PS schemes
  `process_delayed_dataset`, iterations per element from
  `BURN_ITERATIONS_ENV`), each burn's wall time logged to the process's
  `COMPUTE_LOG_ENV` directory. The runner puts the straggler's whole
  process into a CPU-quota cgroup (`bench/netsim/cgroups.py`: cgroup v2
  `cpu.max` where the `cpu` controller is enabled, else cgroup v1
  `cpu.cfs_quota_us`; here only v1 works, v2's unified hierarchy offers
  only `hugetlb`) and steers its cap while the job runs
  (`QuotaController`) until the straggler's burns take `f` times the
  others' median: on 2 cores shared by 8-10 processes no fixed cap gives
  a fixed slowdown (each worker's share depends on what the others do;
  session 3's fixed `share / f` gave 60-200x). The achieved slowdown
  over the timed window is measured from the logs and recorded.

Importing this module imports neither TensorFlow nor Keras; the Keras pieces
import them when called.
"""

import dataclasses
import os

STRAGGLERS_ENV = "TFD_BENCH_STRAGGLERS"
"""`"3:4"` or `"3:4,5:2"`: worker index `:` compute multiplier."""

MODES = ("sleep", "cpu_quota")

PIPELINE_SLEEP_ENV = "TFD_BENCH_PIPELINE_SLEEP_US"
"""Microseconds a PS worker's input pipeline sleeps per element read (see
`process_delayed_dataset`); set in the worker process's environment."""

BURN_ITERATIONS_ENV = "TFD_BENCH_BURN_ITERATIONS"
"""Matrix products a PS worker's input pipeline burns per element read
(cpu_quota mode, `process_delayed_dataset`); set per worker process."""

COMPUTE_LOG_ENV = "TFD_BENCH_COMPUTE_LOG"
"""Directory in which a process logs each burn: an empty file named
`<end>_<seconds>` (epoch seconds, wall seconds of the burn); unset: none.
A PS worker's pipeline logs every element it produces, with a burn of 0
iterations in sleep mode (`process_delayed_dataset`): the runner measures
each worker's rate from those times (`element_times`)."""

BURN_SIZE = 64  # the burned products' matrices are BURN_SIZE x BURN_SIZE


@dataclasses.dataclass(frozen=True)
class Stragglers:
    """Which workers are slow, by how much, and how they are made slow.

    Attributes:
        factors: `{worker index: compute multiplier}`; multipliers >= 1.
        mode: `"sleep"` or `"cpu_quota"` (see the module docstring).
    """

    factors: dict = dataclasses.field(default_factory=dict)
    mode: str = "sleep"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(
                f"`mode` must be one of {MODES}. Received: mode={self.mode!r}"
            )
        for index, factor in self.factors.items():
            if not (isinstance(index, int) and index >= 0 and factor >= 1):
                raise ValueError(
                    "Stragglers must map worker indices >= 0 to multipliers"
                    f" >= 1. Received: {index!r}: {factor!r}"
                )

    @classmethod
    def parse(cls, text: str | None, mode: str = "sleep") -> "Stragglers":
        """Parses `"3:4,5:2"` (or `""`/`"none"`: no straggler).

        Example:
            >>> Stragglers.parse("3:4").factors
            {3: 4.0}
        """
        factors = {}
        if text and text.strip().lower() not in ("none", "0"):
            for item in text.split(","):
                index, sep, factor = item.partition(":")
                if not sep or not index.strip().isdigit():
                    raise ValueError(
                        "Stragglers must look like 'INDEX:FACTOR[,...]', "
                        f"e.g. '3:4'. Received: {text!r}"
                    )
                factors[int(index)] = float(factor)
        return cls(factors, mode)

    @classmethod
    def from_env(cls, environ=None) -> "Stragglers":
        """Reads `STRAGGLERS_ENV` (sleep mode)."""
        environ = os.environ if environ is None else environ
        return cls.parse(environ.get(STRAGGLERS_ENV, ""))

    def __str__(self):
        if not self.factors:
            return "none"
        return ",".join(f"{i}:{f:g}" for i, f in sorted(self.factors.items()))

    def factor(self, worker: int) -> float:
        """Returns the compute multiplier of `worker` (1 if not slow)."""
        return float(self.factors.get(worker, 1.0))

    def per_worker(self, seconds: float, num_workers: int) -> list[float]:
        """Returns `seconds` of compute for each of `num_workers` workers,
        a straggler's multiplied by its factor (the cost model's compute of
        a PS scheme's workers: the chief's twin, times each one's factor).
        """
        return [seconds * self.factor(i) for i in range(num_workers)]

    def compute_seconds(self, worker: int, compute_ms: float) -> float:
        """Returns the slept compute per step of `worker`: sleep mode's
        (the straggler's multiplied); none in cpu_quota mode, whose
        compute is burned (`burn`)."""
        if self.mode != "sleep":
            return 0.0
        return self.factor(worker) * compute_ms / 1e3

    def cpu_quota(self, worker: int, num_processes: int) -> float | None:
        """Returns the initial CPU cap of `worker` in CPUs (cpu_quota mode)
        or None; `QuotaController` steers it from there.

        The cap is the worker's fair share of this machine's CPUs
        (`cpus / num_processes`, at most 1) divided by its multiplier.
        """
        if self.mode != "cpu_quota" or worker not in self.factors:
            return None
        share = min(1.0, (os.cpu_count() or 1) / max(1, num_processes))
        return share / self.factor(worker)


class QuotaController:
    """Steers a CPU-quota straggler's cap to a target compute slowdown.

    Every `update` compares the straggler's last `own` burns (wall
    seconds; few, so that burns under an older cap soon stop counting: a
    longer memory oscillates) with the median of the other workers'
    medians over their last `window`, and scales the cap by
    `(ratio / target) ** gain`: too slow, more CPU; too fast, less. The
    cap stays within `bounds` (CPUs) and changes by at most 4x per update.

    Args:
        target: The slowdown to reach, e.g. 4.0.
        cpus: The initial cap.
        bounds: `(lowest, highest)` cap.
        gain: Exponent of the correction, in (0, 1].
        window: Recent burns per other worker that count.
        own: Recent burns of the straggler that count.
    """

    def __init__(
        self, target, cpus, bounds=(0.005, 2.0), gain=0.5, window=6, own=2
    ):
        if not target >= 1 or not cpus > 0 or not 0 < gain <= 1:
            raise ValueError(
                "QuotaController needs target >= 1, cpus > 0 and gain in "
                f"(0, 1]. Received: target={target!r}, cpus={cpus!r}, "
                f"gain={gain!r}"
            )
        self.target, self.cpus, self.bounds = target, cpus, bounds
        self.gain, self.window, self.own = gain, window, own
        self._seen = 0  # the straggler's burns at the last correction

    def ratio(self, straggler, others):
        """Returns `burn_ratio` over the straggler's last `own` burns and
        the others' last `window`."""
        return burn_ratio(straggler, others, own=self.own, window=self.window)

    def update(self, straggler, others):
        """Returns the new cap, or None (not enough burns yet, or none of
        the straggler's since the last correction).

        Args:
            straggler: The straggler's burns so far, oldest first.
            others: `{worker: burns}` of the other workers.
        """
        # Without a new burn of the straggler the same ratio would be
        # corrected for again (and again): wait for one.
        if len(straggler) == self._seen:
            return None
        ratio = self.ratio(straggler, others)
        if ratio != ratio:  # NaN
            return None
        self._seen = len(straggler)
        step = min(4.0, max(0.25, (ratio / self.target) ** self.gain))
        low, high = self.bounds
        self.cpus = min(high, max(low, self.cpus * step))
        return self.cpus


def burn_ratio(straggler, others, own=None, window=None):
    """Returns the median of the straggler's burns (its last `own`; None:
    all) over the median of the other workers' medians (each over its last
    `window`); NaN without 2 burns of the straggler and of some other."""
    import statistics

    recent = [d[-window:] if window else d for d in others.values()]
    recent = [d for d in recent if len(d) >= 2]
    if len(straggler) < 2 or not recent:
        return float("nan")
    theirs = statistics.median(statistics.median(d) for d in recent)
    mine = statistics.median(straggler[-own:] if own else straggler)
    return mine / theirs if theirs > 0 else float("nan")


class QuotaSteering:
    """Steers each CPU-quota straggler's cap (a `QuotaController` each)
    from the training tasks' burn logs, at most every `period` seconds,
    and keeps the trajectory.

    Args:
        log_dirs: `{task: its COMPUTE_LOG_ENV directory}` of every
            training task.
        quotas: `{task: cap}` of the stragglers; a cap has `cpus` and
            `set(cpus)` (`bench/netsim/cgroups.CpuQuota`).
        factors: `{task: target slowdown}` of the stragglers.
        period: Seconds between corrections.
        bounds: The caps' `(lowest, highest)` CPUs.
    """

    def __init__(self, log_dirs, quotas, factors, period=2.0, bounds=None):
        import time

        self._clock = time.monotonic
        self.log_dirs, self.quotas, self.period = log_dirs, quotas, period
        self.controllers = {
            name: QuotaController(
                factors[name], quota.cpus, bounds=bounds or (0.02, 2.0)
            )
            for name, quota in quotas.items()
        }
        self.next, self.trajectory = -float("inf"), []

    def burns(self, start=None, end=None):
        """`{task: its burns' wall seconds}` ended within [start, end]."""
        return {
            name: read_burns(log_dir, start, end)
            for name, log_dir in self.log_dirs.items()
        }

    def _others(self, burns):
        return {k: v for k, v in burns.items() if k not in self.quotas}

    def poll(self):
        """Corrects every cap if `period` has passed since the last time."""
        import time

        if self._clock() < self.next:
            return
        self.next = self._clock() + self.period
        burns = self.burns()
        others = self._others(burns)
        for name, controller in self.controllers.items():
            ratio = controller.ratio(burns[name], others)
            cpus = controller.update(burns[name], others)
            if cpus is not None:
                self.quotas[name].set(cpus)
            self.trajectory.append(
                (time.time(), name, ratio, self.quotas[name].cpus)
            )

    def achieved(self, window):
        """`{task: (slowdown, final cap)}`: `burn_ratio` over every burn in
        the run's timed `window` (`(start, end)`; every burn if it is None
        or empty)."""
        start, end = window if window and window[1] > window[0] else (None,) * 2
        burns = self.burns(start, end)
        others = self._others(burns)
        return {
            name: (burn_ratio(burns[name], others), self.quotas[name].cpus)
            for name in self.quotas
        }

    def write(self, path):
        """Writes the trajectory as CSV: time, task, ratio, cpus."""
        with open(path, "w") as f:
            f.write("time,task,ratio,cpus\n")
            for t, name, ratio, cpus in self.trajectory:
                f.write(f"{t:.3f},{name},{ratio:.4g},{cpus:.4g}\n")


def _parse_burn(name):
    """`(end, seconds)` of a burn log's file name, or None if it is not."""
    ended, sep, seconds = name.partition("_")
    try:
        return (float(ended), float(seconds)) if sep else None
    except ValueError:
        return None


def _logged_burns(log_dir):
    """`[(end, seconds)]` of the burns logged in `log_dir` (see
    `COMPUTE_LOG_ENV`), oldest first; none if it does not exist."""
    try:
        names = os.listdir(log_dir)
    except OSError:
        return []
    return sorted(filter(None, map(_parse_burn, names)))


def read_burns(log_dir, start=None, end=None):
    """Returns the wall seconds of the burns logged in `log_dir` (see
    `COMPUTE_LOG_ENV`), oldest first, that ended within [start, end]."""
    return [
        seconds
        for ended, seconds in _logged_burns(log_dir)
        if (start is None or ended >= start) and (end is None or ended <= end)
    ]


def element_times(log_dir):
    """Returns the end times (epoch seconds) of the burns logged in
    `log_dir`, oldest first: in a PS worker's pipeline, the time each
    element was produced (`process_delayed_dataset`)."""
    return [ended for ended, _ in _logged_burns(log_dir)]


def compact_burns(burns_dir):
    """Writes the burn logs below `burns_dir` (one directory per task, see
    `COMPUTE_LOG_ENV`) as `burns_dir + ".csv"` (task, end, seconds) and
    removes the directories: one file per run instead of one per burn."""
    import csv
    import shutil

    if not os.path.isdir(burns_dir):
        return None
    path = burns_dir.rstrip("/") + ".csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("task", "end", "seconds"))
        for task in sorted(os.listdir(burns_dir)):
            for name in sorted(os.listdir(os.path.join(burns_dir, task))):
                if _parse_burn(name):
                    writer.writerow((task, *name.split("_", 1)))
    shutil.rmtree(burns_dir)
    return path


def burn(iterations, log_dir, after=None):
    """Burns CPU: `iterations` products of BURN_SIZE^2 matrices (one thread
    at `intra_op=1`), then logs the burn's wall time to `log_dir` (a file,
    see `COMPUTE_LOG_ENV`; `""`: no log). Returns a scalar that depends on
    it (graph or eager). `after`: a tensor the burn waits for (so that it
    runs in the step, not folded into a constant)."""
    import tensorflow as tf

    deps = [] if after is None else [after]
    with tf.control_dependencies(deps):
        start = tf.timestamp()
    with tf.control_dependencies([start]):
        block = tf.ones([BURN_SIZE, BURN_SIZE])
    eye = tf.eye(BURN_SIZE)
    _, block = tf.while_loop(
        lambda i, _: i < tf.cast(iterations, tf.int64),
        lambda i, b: (i + 1, tf.matmul(b, eye)),
        (tf.constant(0, tf.int64), block),
    )
    done = block[0, 0]
    with tf.control_dependencies([done]):
        end = tf.timestamp()
    log_dir = tf.convert_to_tensor(log_dir, tf.string)
    name = tf.strings.join(
        [
            log_dir,
            "/",
            tf.strings.as_string(end, precision=6),
            "_",
            tf.strings.as_string(end - start, precision=6),
        ]
    )

    def write():
        with tf.control_dependencies([tf.io.write_file(name, "")]):
            return tf.identity(done)

    return tf.cond(tf.strings.length(log_dir) > 0, write, lambda: done)


def burn_seconds_per_iteration(iterations=3000):
    """Returns the wall seconds of one `burn` iteration on one idle thread
    (the runner converts `compute_ms` to iterations with it, once)."""
    import time

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    run = tf.function(lambda n: burn(n, ""))
    run(tf.constant(10, tf.int64))  # trace
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        run(tf.constant(iterations, tf.int64)).numpy()
        best = min(best, time.perf_counter() - start)
    return best / iterations


def burn_layer(iterations: int, log_dir: str = ""):
    """Returns a Keras layer that burns `iterations` products per training
    call (`burn`), before the forward pass, logging to `log_dir`; identity
    at inference. The cpu_quota straggler's counterpart of `delay_layer`."""
    import keras
    import tensorflow as tf

    class ComputeBurn(keras.layers.Layer):
        def __init__(self, iterations, log_dir="", **kwargs):
            super().__init__(**kwargs)
            self.iterations, self.log_dir = int(iterations), str(log_dir)

        def call(self, inputs, training=None):
            if not training or self.iterations <= 0:
                return inputs
            first = tf.reshape(inputs, [-1])[:1]
            done = burn(self.iterations, self.log_dir, after=first)
            with tf.control_dependencies([done]):
                return tf.identity(inputs)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {
                **super().get_config(),
                "iterations": self.iterations,
                "log_dir": self.log_dir,
            }

    return ComputeBurn(iterations, log_dir, name="compute_burn")


def delay_layer(seconds: float):
    """Returns a Keras layer that sleeps `seconds` per training call.

    Put it first in the model: it passes its input through a
    `tf.py_function` that sleeps, so the sleep happens inside the train
    function, before the forward pass (which depends on it), concurrently
    with any op that does not (TF needs >= 2 inter-op threads for that).
    Identity at inference.
    """
    import time

    import keras
    import tensorflow as tf

    class ComputeDelay(keras.layers.Layer):
        def __init__(self, seconds, **kwargs):
            super().__init__(**kwargs)
            self.seconds = float(seconds)

        def call(self, inputs, training=None):
            if not training or self.seconds <= 0:
                return inputs

            def sleep(x):
                time.sleep(self.seconds)
                return x

            out = tf.py_function(sleep, [inputs], inputs.dtype)
            out.set_shape(inputs.shape)
            return out

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "seconds": self.seconds}

    return ComputeDelay(seconds, name="compute_delay")


def _environment_value(name, value, default, environ_path):
    """Returns (a string tensor) variable `name` of the environment file
    `environ_path` (NUL-separated `NAME=value`) if its value matches the
    regex `value`, else `default`."""
    import tensorflow as tf

    pattern = f"(?s)(?:.*\\x00)?{name}=({value})(?:\\x00.*)?"
    environ = tf.io.read_file(environ_path)
    found = tf.strings.regex_full_match(environ, pattern)
    text = tf.strings.regex_replace(environ, pattern, "\\1")
    return tf.where(found, text, default)


def pipeline_sleep_microseconds(environ_path="/proc/self/environ"):
    """Returns (as an int64 tensor) `PIPELINE_SLEEP_ENV` of the environment
    file `environ_path` (NUL-separated `NAME=value`), 0 if it is absent."""
    import tensorflow as tf

    digits = _environment_value(PIPELINE_SLEEP_ENV, "[0-9]+", "0", environ_path)
    return tf.strings.to_number(digits, tf.int64)


def pipeline_burn(environ_path="/proc/self/environ"):
    """Returns `(iterations, log directory)` tensors: `BURN_ITERATIONS_ENV`
    (0 if absent) and `COMPUTE_LOG_ENV` (`""`) of the environment file."""
    import tensorflow as tf

    digits = _environment_value(
        BURN_ITERATIONS_ENV, "[0-9]+", "0", environ_path
    )
    log_dir = _environment_value(COMPUTE_LOG_ENV, "[^\\x00]+", "", environ_path)
    return tf.strings.to_number(digits, tf.int64), log_dir


def process_delayed_dataset(dataset, environ_path="/proc/self/environ"):
    """Returns `dataset` whose elements each take a sleep of this process's
    `PIPELINE_SLEEP_ENV` microseconds (0 if unset) to produce, and a burn
    of its `BURN_ITERATIONS_ENV` products (none if unset), logged to its
    `COMPUTE_LOG_ENV` if set: then every element is logged, with a burn of
    0 iterations if none is set (sleep mode), so that the log holds the
    time each element was produced (a worker's rate, `element_times`).

    For parameter-server schemes, whose steps run as closures on the
    workers' TF servers: a `tf.py_function` there would run back on the
    chief (measured: every sleep ran in the chief's process), but a
    `tf.data` sleep runs in the worker's input pipeline. The chief builds
    one pipeline, serializes it and every worker's TF server runs it, so
    the duration cannot be a constant of the graph. It is read when the
    pipeline starts, by the process that runs it, from `/proc/self/environ`
    (that process's environment at its start: the runner sets the variable
    per task), and slept by an endless sleeping dataset zipped with
    `dataset` (one sleep per element; a sleeping dataset of one element per
    element would sleep twice, once more to find its end). No prefetch may
    follow it (tf.data's automatic prefetch injection is turned off), so
    every step waits for it. The burn is a map after the sleep, with the
    same environment read. `environ_path`: for tests.
    """
    import tensorflow as tf

    # Private: TF 2.21 exports no sleep transformation (tf.data's own tests
    # use this one, a thin wrapper of the public `tf.raw_ops.SleepDataset`).
    from tensorflow.python.data.experimental.ops import testing

    def endless_sleeper(_):
        ticks = tf.data.Dataset.from_tensors(0).repeat()
        sleep = pipeline_sleep_microseconds(environ_path)
        return ticks.apply(testing.sleep(sleep))

    def burned(element, _):
        # This process's burn per element (cpu_quota mode; none if unset),
        # logged with the element's time if it has a log directory.
        iterations, log_dir = pipeline_burn(environ_path)
        first = tf.reshape(tf.nest.flatten(element)[0], [-1])[:1]

        def run():
            return burn(iterations, log_dir, after=first)

        wanted = tf.logical_or(iterations > 0, tf.strings.length(log_dir) > 0)
        done = tf.cond(wanted, run, lambda: tf.constant(0.0))
        with tf.control_dependencies([done]):
            return tf.nest.map_structure(tf.identity, element)

    sleeper = tf.data.Dataset.from_tensors(0).flat_map(endless_sleeper)
    options = tf.data.Options()
    options.experimental_optimization.inject_prefetch = False
    options.autotune.enabled = False
    delayed = tf.data.Dataset.zip((dataset, sleeper)).map(burned)
    if int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY:
        # The endless sleeper's flat_map leaves the zip's size unknown, and
        # a Downpour chief reads a dataset of unknown size along with its
        # workers to find the epoch's end, in its own process, which sleeps
        # (and burns) like a worker's: 1/n of the compute per step on the
        # chief's dispatch path (found in session 15). Infinite, it does not.
        infinite = tf.data.experimental.assert_cardinality(
            tf.data.INFINITE_CARDINALITY
        )
        delayed = delayed.apply(infinite)
    return delayed.with_options(options)


def step_delay_callback(seconds: float):
    """Returns a Keras callback sleeping `seconds` before every train step.

    Compute that nothing overlaps: the step's function starts after it.
    """
    import time

    import keras

    class StepDelay(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            del batch, logs
            if seconds > 0:
                time.sleep(seconds)

    return StepDelay()
