"""Repeated `fit` + `evaluate` under AsyncGossipStrategy: a crash counter.

    .venv/bin/python bench/iterator_stress.py --runs 20 --rounds 30

Each run starts a local cluster of `--workers` AsyncGossipStrategy workers
(`tf_decentral.testing.cluster`); every worker runs `--rounds` rounds of an
8-step `fit` and an `evaluate` on random data, so Keras drops a partly read
input iterator twice per round (`EpochIterator.reset`). Prints one line per
run with every worker's exit code and the count of runs in which a worker
was killed by a signal. Not a unit test: it measures a crash rate.

It found TF 2.21's MultiDeviceIterator teardown race (a SIGSEGV in 9 of 20
runs of 30 rounds, 0 of 20 once `_tf_private.OneDeviceExtended` iterates
without a MultiDeviceIterator; bench/results/iterator_stress_s8/).
"""

import json
import os
import sys
import time

from absl import app
from absl import flags

_RUNS = flags.DEFINE_integer("runs", 20, "Runs (clusters started).")
_ROUNDS = flags.DEFINE_integer("rounds", 30, "fit + evaluate per worker.")
_WORKERS = flags.DEFINE_integer("workers", 4, "Workers per run.")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(rounds):
    """One worker's program (run under TF_CONFIG)."""
    import faulthandler

    faulthandler.enable()
    import keras
    import numpy as np

    import tf_decentral as tfd

    strategy = tfd.AsyncGossipStrategy("ring", seed=0)
    node = strategy.node
    rng = np.random.default_rng(node)
    x = rng.normal(size=(512, 16)).astype("float32")
    y = rng.integers(0, 4, 512).astype("int32")
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((16,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(4, activation="softmax"),
            ]
        )
        model.compile("sgd", "sparse_categorical_crossentropy")
    for _ in range(rounds):
        model.fit(x, y, batch_size=32, steps_per_epoch=8, verbose=0)
        model.evaluate(x, y, batch_size=128, verbose=0)
    strategy.extended.locks.barrier(range(strategy.num_workers), 120, "the end")
    print("RESULT " + json.dumps({"node": node}), flush=True)


def main(argv):
    del argv
    sys.path.insert(0, _ROOT)
    from tf_decentral.testing import cluster

    crashed = 0
    for run in range(_RUNS.value):
        start = time.monotonic()
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker_rounds",
            str(_ROUNDS.value),
        ]
        with cluster.local_cluster(
            command,
            num_workers=_WORKERS.value,
            timeout=600,
            env=cluster.thread_env(intra_op=1, inter_op=2),
        ) as local:
            results = local.wait(fail_fast=False)
        codes = {name: r.returncode for name, r in results.items()}
        signalled = any(c is not None and c < 0 for c in codes.values())
        crashed += signalled
        print(
            f"run {run}: {time.monotonic() - start:.0f} s, exit codes {codes}"
            f"{' (signal)' if signalled else ''}",
            flush=True,
        )
    print(f"runs with a worker killed by a signal: {crashed} of {_RUNS.value}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker_rounds":
        sys.path.insert(0, _ROOT)
        worker(int(sys.argv[2]))
    else:
        app.run(main)
