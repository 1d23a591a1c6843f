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
* **Real CPU cap (`mode="cpu_quota"`).** The runner puts the straggler's
  process into a CPU-quota cgroup (`bench/netsim/cgroups.py`): cgroup v2
  `cpu.max` where the `cpu` controller is enabled, else cgroup v1
  `cpu.cfs_quota_us`. Here only v1 works (v2's unified hierarchy offers
  only `hugetlb`). A worker capped at `share / f` CPUs, where `share` is
  its fair share of the machine, computes about `f` times slower, but only
  as far as it would otherwise get its share.

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

    def compute_seconds(self, worker: int, compute_ms: float) -> float:
        """Returns the slept compute per step of `worker` (sleep mode)."""
        if self.mode != "sleep":
            return compute_ms / 1e3
        return self.factor(worker) * compute_ms / 1e3

    def cpu_quota(self, worker: int, num_processes: int) -> float | None:
        """Returns the CPU cap of `worker` in CPUs (cpu_quota mode) or None.

        The cap is the worker's fair share of this machine's CPUs
        (`cpus / num_processes`, at most 1) divided by its multiplier.
        """
        if self.mode != "cpu_quota" or worker not in self.factors:
            return None
        share = min(1.0, (os.cpu_count() or 1) / max(1, num_processes))
        return share / self.factor(worker)


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


def pipeline_sleep_microseconds(environ_path="/proc/self/environ"):
    """Returns (as an int64 tensor) `PIPELINE_SLEEP_ENV` of the environment
    file `environ_path` (NUL-separated `NAME=value`), 0 if it is absent."""
    import tensorflow as tf

    pattern = f"(?s)(?:.*\\x00)?{PIPELINE_SLEEP_ENV}=([0-9]+)(?:\\x00.*)?"
    environ = tf.io.read_file(environ_path)
    found = tf.strings.regex_full_match(environ, pattern)
    digits = tf.strings.regex_replace(environ, pattern, "\\1")
    digits = tf.where(found, digits, "0")
    return tf.strings.to_number(digits, tf.int64)


def process_delayed_dataset(dataset):
    """Returns `dataset` whose elements each take a sleep of this process's
    `PIPELINE_SLEEP_ENV` microseconds (0 if unset) to produce.

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
    every step waits for it.
    """
    import tensorflow as tf

    # Private: TF 2.21 exports no sleep transformation (tf.data's own tests
    # use this one, a thin wrapper of the public `tf.raw_ops.SleepDataset`).
    from tensorflow.python.data.experimental.ops import testing

    def endless_sleeper(_):
        ticks = tf.data.Dataset.from_tensors(0).repeat()
        return ticks.apply(testing.sleep(pipeline_sleep_microseconds()))

    sleeper = tf.data.Dataset.from_tensors(0).flat_map(endless_sleeper)
    options = tf.data.Options()
    options.experimental_optimization.inject_prefetch = False
    options.autotune.enabled = False
    delayed = tf.data.Dataset.zip((dataset, sleeper))
    return delayed.map(lambda element, _: element).with_options(options)


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
