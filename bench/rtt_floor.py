"""What TF's eager runtime costs in round trips, on one delayed link.

Two hosts in network namespaces (`bench.netsim`), host 0's access link
delayed `--delay_ms` one way (a round trip between the hosts is twice
that). Host 1 runs a TF server (`worker:1`); host 0 runs a TF server
(`worker:0`) and a client connected to both, as `AsyncGossipStrategy`'s
workers do, and times call patterns: an eager op on the remote server, a
remote function, functions that cross between the servers as an
AD-PSGD exchange does (read on `worker:0`, combine on `worker:1`, write
back on `worker:0`), with `tf.CriticalSection`s placed as TF places them or
pinned to their server, with and without `tf.cond` in the bodies.

Each pattern is timed `--calls` times after two warm-up calls; the median,
in milliseconds and in round trips, is printed (and written to `--out` as
CSV). Run as root (network namespaces):

    python bench/rtt_floor.py --delay_ms 20 --out /tmp/rtt_floor.csv

The TF servers listen on the namespaces' addresses only reachable inside
this machine's emulated network.
"""

import argparse
import csv
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIZES = {"4KB": 1000, "400KB": 100_000}


def _patterns(tf, devices):
    """Returns [(name, zero-argument callable)] of the timed patterns."""
    w0, w1, client = devices
    n_small, n_big = SIZES["4KB"], SIZES["400KB"]
    with tf.device(w1):
        counter = tf.Variable(0)
        v1 = {n: tf.Variable(tf.zeros([n])) for n in (n_small, n_big)}
    with tf.device(w0):
        v0 = {n: tf.Variable(tf.zeros([n])) for n in (n_small, n_big)}
        mutex0 = tf.CriticalSection(shared_name="rtt_floor/m0")
    with tf.device(w1):
        mutex1 = tf.CriticalSection(shared_name="rtt_floor/m1")

    @tf.function
    def remote_no_output():
        with tf.device(w1):
            counter.assign_add(1)

    def read_write(n):
        @tf.function
        def f():
            with tf.device(w0):
                a = v0[n].read_value()
            with tf.device(w1):
                m = (a + v1[n].read_value()) / 2
                v1[n].assign(m)
            with tf.device(w0):
                m = tf.identity(m)
                with tf.control_dependencies([v0[n].assign(m)]):
                    first = tf.identity(m[:1])
            with tf.device(client):
                return tf.identity(first)

        return f

    def sections(n, pinned, cond):
        def execute(mutex, device, body):
            if pinned:
                with tf.device(device):
                    return mutex.execute(body, exclusive_resource_access=False)
            return mutex.execute(body, exclusive_resource_access=False)

        def maybe(pred, fn, like):
            if cond:
                return tf.cond(pred, fn, lambda: tf.zeros_like(like))
            return fn()

        @tf.function
        def f():
            def read():
                with tf.device(w0):
                    return v0[n].read_value()

            a = execute(mutex0, w0, read)

            def combine():
                with tf.device(w1):
                    b = v1[n].read_value()
                    ok = tf.reduce_all(tf.math.is_finite(b[:1]))

                    def write():
                        m = (a + b) / 2
                        with tf.control_dependencies([v1[n].assign(m)]):
                            return tf.identity(m)

                    return maybe(ok, write, b)

            with tf.device(w1):
                a = tf.identity(a)
            m = execute(mutex1, w1, combine)

            def write_back():
                with tf.device(w0):
                    ok = tf.reduce_all(tf.math.is_finite(m[:1]))

                    def write():
                        with tf.control_dependencies([v0[n].assign(m)]):
                            return tf.identity(m[:1])

                    return maybe(ok, write, m[:1])

            with tf.device(w0):
                m = tf.identity(m)
            out = execute(mutex0, w0, write_back)
            with tf.device(client):
                return tf.identity(out)

        return f

    patterns = [
        (
            "eager op on worker:1, scalar result",
            lambda: counter.assign_add(1).numpy(),
        ),
        (
            "eager read of 4KB on worker:1",
            lambda: v1[n_small].read_value().numpy(),
        ),
        ("function on worker:1, no output", remote_no_output),
    ]
    for label, n in SIZES.items():
        patterns.append(
            (f"read w0, combine w1, write w0 ({label})", read_write(n))
        )
    for pinned in (False, True):
        for cond in (True, False):
            name = (
                f"3 critical sections, {'pinned' if pinned else 'as placed'}"
                f", {'tf.cond' if cond else 'no cond'} (400KB)"
            )
            patterns.append((name, sections(n_big, pinned, cond)))
    return patterns


def _host0(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    cluster = {"worker": [args.a0, args.a1]}
    server = tf.distribute.Server(  # noqa: F841 - serves worker:0
        tf.train.ClusterSpec(cluster), job_name="worker", task_index=0
    )
    tf.config.experimental_connect_to_cluster(
        tf.train.ClusterSpec({**cluster, "client": {0: args.client}}),
        job_name="client",
        task_index=0,
    )
    devices = (
        "/job:worker/replica:0/task:0/device:CPU:0",
        "/job:worker/replica:0/task:1/device:CPU:0",
        "/job:client/replica:0/task:0/device:CPU:0",
    )
    for name, call in _patterns(tf, devices):
        for _ in range(2):
            _result(call())
        times = []
        for _ in range(args.calls):
            start = time.perf_counter()
            _result(call())
            times.append(time.perf_counter() - start)
        times.sort()
        print(
            "ROW "
            + json.dumps(
                {
                    "pattern": name,
                    "ms": times[len(times) // 2] * 1e3,
                    "min_ms": times[0] * 1e3,
                    "max_ms": times[-1] * 1e3,
                }
            ),
            flush=True,
        )


def _result(value):
    return value.numpy() if hasattr(value, "numpy") else value


def _host1(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.distribute.Server(
        tf.train.ClusterSpec({"worker": [args.a0, args.a1]}),
        job_name="worker",
        task_index=1,
    ).join()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delay_ms", type=float, default=20.0)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--out", default=None, help="CSV of the rows")
    parser.add_argument("--role", choices=("host0", "host1"), default=None)
    parser.add_argument("--a0")
    parser.add_argument("--a1")
    parser.add_argument("--client")
    args = parser.parse_args(argv)
    if args.role == "host0":
        return _host0(args)
    if args.role == "host1":
        return _host1(args)

    import portpicker

    from bench.netsim.emulator import Link
    from bench.netsim.emulator import Network
    from bench.netsim.emulator import parse_link_override

    override = dict([parse_link_override(f"0:delay_ms={args.delay_ms:g}")])
    rtt_ms = 2 * args.delay_ms
    ports = [portpicker.pick_unused_port() for _ in range(3)]
    with Network(2, Link(rate=None, delay_ms=0.0), override) as net:
        a0 = f"{net.address(0)}:{ports[0]}"
        a1 = f"{net.address(1)}:{ports[1]}"
        client = f"{net.address(0)}:{ports[2]}"
        common = ["--a0", a0, "--a1", a1, "--client", client]
        script = [sys.executable, os.path.abspath(__file__)]
        host1 = net.popen(1, [*script, "--role", "host1", *common])
        try:
            time.sleep(3)
            done = net.run(
                0,
                [
                    *script,
                    "--role",
                    "host0",
                    "--calls",
                    str(args.calls),
                    *common,
                ],
                timeout=900,
            )
        finally:
            host1.kill()
            host1.wait()
    rows = []
    for line in done.stdout.splitlines():
        if line.startswith("ROW "):
            row = json.loads(line[4:])
            row["round_trips"] = row["ms"] / rtt_ms
            row["rtt_ms"] = rtt_ms
            rows.append(row)
            print(
                f"{row['pattern']:62s} {row['ms']:7.1f} ms "
                f"{row['round_trips']:5.2f} round trips"
            )
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
