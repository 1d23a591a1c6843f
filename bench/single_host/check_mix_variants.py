"""Checks that every `mix_variants` variant computes the package's `mix`.

For each topology, replica count (4 and 8 of 8 logical CPUs) and round
`t = 0..period`, gives every replica different values, runs the package's
`mix` and each variant's `mix` in a `tf.function` with `step=t`, and compares
all copies (max abs difference, float32).

    python bench/single_host/check_mix_variants.py
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_decentral import testing  # noqa: E402

ALL = testing.logical_cpus(8)

import mix_variants  # noqa: E402

SHAPES = [(7, 5), (5,), (3, 3, 2, 4), (1,)]


def mixed_copies(topology, devices, variant, t):
    strategy = mix_variants.make_strategy(topology, devices, "dpsgd", variant)
    with strategy.scope():
        variables = [tf.Variable(tf.zeros(s)) for s in SHAPES]
    rng = np.random.default_rng(0)
    for v in variables:
        for c in v.values:
            c.assign(rng.normal(size=v.shape).astype(np.float32))

    @tf.function
    def mix(step):
        strategy.extended.mix(variables, step=step)

    mix(tf.constant(t, tf.int64))
    return [np.stack([c.numpy() for c in v.values]) for v in variables]


def main():
    worst = 0.0
    for n in (4, 8):
        devices = ALL[:n]
        for topology in ("ring", "exponential", "one_peer_exponential"):
            from tf_decentral import topology as topology_lib

            period = topology_lib.resolve(topology, n).period
            for t in range(period + 1):
                want = mixed_copies(topology, devices, "package", t)
                for variant in ("addn", "active", "xla", "pervar"):
                    got = mixed_copies(topology, devices, variant, t)
                    err = max(
                        float(np.abs(a - b).max()) for a, b in zip(want, got)
                    )
                    worst = max(worst, err)
                    status = "ok" if err < 1e-5 else "MISMATCH"
                    print(
                        f"n={n} {topology:22s} t={t} {variant:7s} "
                        f"max|diff|={err:.2e} {status}"
                    )
    print(f"worst max|diff| = {worst:.2e}")
    sys.exit(0 if worst < 1e-5 else 1)


if __name__ == "__main__":
    main()
