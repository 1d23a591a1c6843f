"""Tests of the benchmark tools in bench/: emulation, stragglers, metrics.

Pure parts run everywhere; building a real emulated network needs root,
`ip` and `tc`, and is skipped otherwise. Under Bazel, bench/ is not among
the test's inputs, so the whole file is skipped there.
"""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

_BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
if not (_BENCH / "netsim" / "emulator.py").exists():
    pytest.skip("bench/ is not available here", allow_module_level=True)
sys.path.insert(0, str(_BENCH))

import netsim  # noqa: E402
import stragglers  # noqa: E402
from netsim import delayd  # noqa: E402


def test_rate_parsing():
    assert netsim.rate_bits_per_second("100mbit") == 100e6
    assert netsim.rate_bits_per_second("1gbit") == 1e9
    assert netsim.rate_bits_per_second("12.5mbps") == 100e6
    assert netsim.rate_bits_per_second(None) == float("inf")
    with pytest.raises(ValueError, match="rate"):
        netsim.rate_bits_per_second("fast")


def test_link_override_keeps_default_fields():
    index, partial = netsim.parse_link_override("3:delay_ms=40")
    network = netsim.Network(
        4, netsim.Link(rate="100mbit", delay_ms=10), {index: partial}
    )
    assert network.link(3) == netsim.Link(rate="100mbit", delay_ms=40)
    assert network.link(0) == netsim.Link(rate="100mbit", delay_ms=10)
    assert network.one_way_ms(0, 3) == 50
    assert network.address(3) == "10.77.3.2"
    assert network.netns(3) == f"{network.name}-h3"
    assert network.name.startswith(netsim.NAME_PREFIX)


def test_bad_network_arguments_raise():
    with pytest.raises(ValueError, match="delay_ms"):
        netsim.Link(delay_ms=-1)
    with pytest.raises(ValueError, match="indices"):
        netsim.Network(2, overrides={5: netsim.Link()})
    with pytest.raises(ValueError, match="name"):
        netsim.Network(2, name="mine")
    with pytest.raises(ValueError, match="INDEX"):
        netsim.parse_link_override("rate=10mbit")


def test_packet_delay_adds_both_ends():
    delays = [0.005, 0.01, 0.02]
    header = bytes(12) + bytes([10, 77, 1, 2]) + bytes([10, 77, 2, 2])
    assert delayd.packet_delay(header, delays, b"\x0a\x4d") == 0.03
    other = bytes(12) + bytes([192, 168, 1, 2]) + bytes([10, 77, 0, 2])
    assert delayd.packet_delay(other, delays, b"\x0a\x4d") == 0.005
    assert delayd.packet_delay(b"short", delays, b"\x0a\x4d") == 0.0


def test_stragglers():
    spec = stragglers.Stragglers.parse("3:4,5:2")
    assert spec.factor(3) == 4.0 and spec.factor(0) == 1.0
    assert spec.compute_seconds(3, 100) == pytest.approx(0.4)
    assert str(spec) == "3:4,5:2"
    assert stragglers.Stragglers.parse("none").factors == {}
    env = {stragglers.STRAGGLERS_ENV: "1:3"}
    assert stragglers.Stragglers.from_env(env).factor(1) == 3.0
    quota = stragglers.Stragglers.parse("1:4", mode="cpu_quota")
    assert quota.compute_seconds(1, 100) == 0.0  # burned, not slept
    assert quota.cpu_quota(0, 8) is None
    share = min(1.0, (os.cpu_count() or 1) / 8)
    assert quota.cpu_quota(1, 8) == pytest.approx(share / 4)
    with pytest.raises(ValueError):
        stragglers.Stragglers.parse("3")
    with pytest.raises(ValueError):
        stragglers.Stragglers({0: 0.5})


@pytest.mark.parametrize(
    "environ, expected",
    [
        (b"A=1\x00TFD_BENCH_PIPELINE_SLEEP_US=2500\x00B=2\x00", 2500),
        (b"TFD_BENCH_PIPELINE_SLEEP_US=7\x00", 7),
        (b"X=1\x00TFD_BENCH_PIPELINE_SLEEP_US=9", 9),
        (b"XTFD_BENCH_PIPELINE_SLEEP_US=5\x00", 0),  # another variable
        (b"B=TFD_BENCH_PIPELINE_SLEEP_US=5\x00", 0),  # in another's value
        (b"TFD_BENCH_PIPELINE_SLEEP_US=\x00", 0),
        (b"", 0),
    ],
)
def test_pipeline_sleep_is_read_from_the_process_environment(
    tmp_path, environ, expected
):
    path = tmp_path / "environ"
    path.write_bytes(environ)
    assert stragglers.PIPELINE_SLEEP_ENV == "TFD_BENCH_PIPELINE_SLEEP_US"
    value = stragglers.pipeline_sleep_microseconds(str(path))
    assert int(value) == expected


def test_process_delayed_dataset_sleeps_in_the_graph_it_ships():
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices(
        (tf.range(6), 2 * tf.range(6))
    ).batch(2)
    delayed = stragglers.process_delayed_dataset(data)
    # Elements (tuples) pass through unchanged.
    got = [(a.tolist(), b.tolist()) for a, b in delayed.as_numpy_iterator()]
    assert got == [([0, 1], [0, 2]), ([2, 3], [4, 6]), ([4, 5], [8, 10])]
    # The serialized graph (what a PS worker runs) reads the environment and
    # sleeps, per element: the duration is no constant of the chief's.
    graph = tf.raw_ops.DatasetToGraphV2(input_dataset=delayed._variant_tensor)
    text = graph.numpy().decode("latin-1")
    for op in ("ReadFile", "SleepDataset", "ZipDataset"):
        assert op in text


def test_process_delayed_dataset_keeps_an_endless_dataset_endless():
    # A Downpour chief reads a dataset of unknown size along with its
    # workers (`_consume_chief_batches` in its driver; it would sleep the
    # compute in its own process): an endless input must stay of known,
    # infinite size; a finite one's size is not claimed.
    import tensorflow as tf

    endless = tf.data.Dataset.range(4).repeat()
    delayed = stragglers.process_delayed_dataset(endless)
    assert int(delayed.cardinality()) == tf.data.INFINITE_CARDINALITY
    assert list(delayed.take(5).as_numpy_iterator()) == [0, 1, 2, 3, 0]
    finite = stragglers.process_delayed_dataset(tf.data.Dataset.range(4))
    assert int(finite.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    assert list(finite.as_numpy_iterator()) == [0, 1, 2, 3]


class _Cap:
    """A cgroup cap's stand-in: the straggler's burns take `work / cpus`."""

    def __init__(self, cpus):
        self.cpus = cpus

    def set(self, cpus):
        self.cpus = cpus


def _log_burns(log_dir, seconds, start=1000.0):
    log_dir.mkdir(exist_ok=True)
    ended = start
    for duration in seconds:
        ended += duration
        (log_dir / f"{ended:.6f}_{duration:.6f}").touch()
    return ended


def test_quota_controller_steers_the_cap_to_the_target_slowdown():
    # The others burn 0.4 s; the straggler's 0.1 CPU-seconds take 0.1 /
    # cpus: 4x is 1.6 s, at 0.0625 CPUs. Start 4x too generous.
    cap = _Cap(0.25)
    controller = stragglers.QuotaController(4.0, cap.cpus)
    others = {"w0": [0.4] * 6, "w1": [0.41] * 6}
    straggler = []
    for _ in range(12):
        straggler.append(0.1 / cap.cpus)  # a burn per correction
        cap.set(controller.update(straggler, others) or cap.cpus)
    assert controller.ratio(straggler, others) == pytest.approx(4.0, rel=0.05)
    assert cap.cpus == pytest.approx(0.0625, rel=0.05)
    # No new burn of the straggler: no correction again for the old ones.
    assert controller.update(straggler, others) is None
    # Not enough burns: no correction; a bound holds.
    assert controller.update([1.0], others) is None
    assert math.isnan(controller.ratio([1.0, 1.0], {"w0": [0.4]}))
    bounded = stragglers.QuotaController(4.0, 0.05, bounds=(0.04, 2.0))
    assert bounded.update([0.1, 0.1], others) == 0.04  # 1x: less CPU
    with pytest.raises(ValueError, match="target >= 1"):
        stragglers.QuotaController(0.5, 0.1)


def test_quota_steering_reads_the_logs_and_measures_the_timed_window(
    tmp_path,
):
    logs = {name: tmp_path / name for name in ("w0", "w1", "w2")}
    _log_burns(logs["w0"], [0.4] * 20)
    _log_burns(logs["w1"], [0.5] * 20)
    # Two slow burns before the window (1000-1004), four at 4x after.
    _log_burns(logs["w2"], [2.0, 2.0, 1.6, 1.6, 1.6, 1.6])
    (logs["w2"] / "not-a-burn").touch()
    assert stragglers.read_burns(logs["w2"], 1004.5) == [1.6] * 4
    assert stragglers.read_burns(tmp_path / "missing") == []
    cap = _Cap(0.1)
    steering = stragglers.QuotaSteering(
        {k: str(v) for k, v in logs.items()}, {"w2": cap}, {"w2": 4.0}
    )
    steering.poll()
    steering.poll()  # within the period: no second correction
    assert len(steering.trajectory) == 1
    # Its last two, 1.6, over the others' 0.45: 3.56x, too fast: less CPU.
    assert steering.trajectory[0][2] == pytest.approx(1.6 / 0.45)
    assert cap.cpus < 0.1
    slowdown, cpus = steering.achieved((1004.5, 1011.0))["w2"]
    # In [1004.5, 1011]: w2's four 1.6 s burns over the medians of w0's
    # (ended 1004.8-1008) and w1's (1005-1010), 0.4 and 0.5.
    assert slowdown == pytest.approx(1.6 / 0.45)
    assert cpus == cap.cpus
    path = tmp_path / "quota.csv"
    steering.write(path)
    assert path.read_text().splitlines()[0] == "time,task,ratio,cpus"
    # One CSV per run instead of a file per burn.
    root = tmp_path / "burns"
    root.mkdir()
    for name in ("w0", "w2"):
        shutil.move(logs[name], root / name)
    written = stragglers.compact_burns(str(root))
    lines = pathlib.Path(written).read_text().splitlines()
    assert lines[0] == "task,end,seconds" and len(lines) == 1 + 20 + 6
    assert lines[-1] == "w2,1010.400000,1.600000"
    assert not root.exists()


def test_burns_log_their_wall_time_in_the_step_and_the_pipeline(tmp_path):
    import keras
    import tensorflow as tf

    logs = tmp_path / "logs"
    logs.mkdir()
    # The pipeline (PS schemes) reads its burn from the process's
    # environment; elements pass through unchanged, one burn each.
    environ = tmp_path / "environ"
    environ.write_bytes(
        f"A=1\x00{stragglers.BURN_ITERATIONS_ENV}=200\x00"
        f"{stragglers.COMPUTE_LOG_ENV}={logs}\x00".encode()
    )
    data = tf.data.Dataset.range(6).batch(2)
    burned = stragglers.process_delayed_dataset(data, str(environ))
    assert [x.tolist() for x in burned.as_numpy_iterator()] == [
        [0, 1],
        [2, 3],
        [4, 5],
    ]
    burns = stragglers.read_burns(logs)
    assert len(burns) == 3 and all(b > 0 for b in burns)
    # Without the variables: no burn, no log.
    environ.write_bytes(b"A=1\x00")
    list(stragglers.process_delayed_dataset(data, str(environ)))
    assert len(stragglers.read_burns(logs)) == 3
    # A log directory without a burn (sleep mode): every element is still
    # logged, at the time it was produced, with a burn of 0 iterations.
    elements = tmp_path / "elements"
    elements.mkdir()
    environ.write_bytes(f"{stragglers.COMPUTE_LOG_ENV}={elements}\x00".encode())
    before = time.time()
    list(stragglers.process_delayed_dataset(data, str(environ)))
    times = stragglers.element_times(elements)
    assert len(times) == 3 and before <= times[0] <= times[-1] <= time.time()
    assert times == sorted(times)
    assert stragglers.element_times(tmp_path / "missing") == []
    # In the train step: one burn per step, none at inference.
    model = keras.Sequential(
        [
            keras.Input((3,)),
            stragglers.burn_layer(200, str(logs)),
            keras.layers.Dense(1),
        ]
    )
    model.compile("sgd", "mse")
    x, y = tf.ones((8, 3)), tf.ones((8, 1))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert len(stragglers.read_burns(logs)) == 5
    model.predict(x, verbose=0)
    assert len(stragglers.read_burns(logs)) == 5


def test_runner_metrics_and_schemes():
    import metrics
    import schemes

    base = 1000.0

    def result(node, step, evals):
        times = [base + step * i for i in range(12)]
        return {
            "node": node,
            "warmup_steps": 2,
            "step_end_times": times,
            "timed_start": times[1],
            "eval_pauses": [],
            "tx_bytes": 10 * 1000,
            "rx_bytes": 10 * 2000,
            "final_accuracy": 0.8,
            "calibration": {"median_s": 0.05},
            "evals": evals,
            "model_bytes": 400,
        }

    results = [
        result(0, 0.1, [{"train_clock": 0.0, "accuracy": 0.1},
                        {"train_clock": 1.0, "accuracy": 0.9}]),
        result(1, 0.1, [{"train_clock": 0.0, "accuracy": 0.3},
                        {"train_clock": 2.0, "accuracy": 0.7}]),
    ]  # fmt: skip
    out = metrics.summarize(results, batch_size=32, target=0.8)
    assert out["step_time_s"] == pytest.approx(0.1)
    assert out["samples_per_s"] == pytest.approx(2 * 32 / 0.1)
    # steps_per_execution 4: four steps end together; the window from the
    # last worker's first timed end to the first worker's last end counts
    # the steps in progress at its edges in part (not a whole execution
    # lost per worker).
    grouped = []
    for offset in (0.0, 0.01):
        r = result(0, 0.1, [])
        times = [base + offset + 0.4 * (i // 4 + 1) for i in range(28)]
        r.update(step_end_times=times, warmup_steps=4, timed_start=times[3])
        grouped.append(r)
    grouped_out = metrics.summarize(grouped, batch_size=32, target=0.8)
    assert grouped_out["samples_per_s"] == pytest.approx(2 * 32 / 0.1)
    assert out["tx_bytes_per_step"] == pytest.approx(1000)
    assert out["time_to_target_s"] == pytest.approx(2.0)
    assert metrics.accuracy_curve(results) == [
        (0.0, pytest.approx(0.2)),
        (1.0, pytest.approx(0.6)),
        (2.0, pytest.approx(0.8)),
    ]
    assert out["window_s"] == pytest.approx(1.0)
    assert out["window_min_worker_steps"] == 10
    # AD-PSGD: active and passive workers apart; exchanges per active step.
    active = result(0, 0.2, [])
    active.update(role="active", exchange_counts={"1": 9, "3": 3, "busy": 5})
    passive = result(1, 0.05, [])
    passive.update(role="passive", exchange_counts={"served": 12})
    out = metrics.summarize([active, passive], batch_size=32, target=0.8)
    assert out["step_time_active_s"] == pytest.approx(0.2)
    assert out["step_time_passive_s"] == pytest.approx(0.05)
    assert out["tx_bytes_per_step_active"] == pytest.approx(1000)
    assert out["exchanges_per_active_step"] == pytest.approx(12 / 12)
    # Workers whose timed steps never overlap: no throughput, no stand-in.
    late = result(1, 0.1, [])
    late["step_end_times"] = [t + 100 for t in late["step_end_times"]]
    late["timed_start"] += 100
    out = metrics.summarize([result(0, 0.1, []), late], 32, 0.8)
    assert out["window_s"] < 0
    assert math.isnan(out["samples_per_s"])
    # A PS scheme's chief counts each worker's applied steps: the slowest
    # worker's slowdown is the median count over its count.
    chief = result(0, 0.1, [])
    chief["pushes_by_worker"] = {"0": 28, "1": 27, "2": 8, "3": 26}
    out = metrics.summarize([chief], 32, 0.8)
    assert out["slowest_worker_slowdown"] == pytest.approx(26.5 / 8)
    assert "slowest_worker_slowdown" not in metrics.summarize(
        [result(0, 0.1, [])], 32, 0.8
    )

    # With its workers' element logs (2 elements per step), the chief's
    # window of fixed work is replaced by the per-worker one: from its
    # timed start to the first worker's last element. Workers 0 and 1 step
    # every 0.1 s until 1012; worker 2, a 4x straggler, until 1014, while
    # the chief's last step ends (the drain) at 1014.4.
    def elements(step, end):
        count = round((end - base) * 2 / step)
        return [base + step / 2 * i for i in range(count + 1)]

    chief = result(0, 0.1, [])
    chief.update(
        # 268 timed Keras steps from 1001 to the drain's end at 1014.4.
        step_end_times=[base, base + 1.0]
        + [base + 1.0 + 0.05 * k for k in range(1, 269)],
        timed_start=base + 1.0,
        _elements_per_step=2,
        _worker_elements={
            "worker_0": elements(0.1, base + 12),
            "worker_1": elements(0.1, base + 12),
            "worker_2": elements(0.4, base + 14),
        },
    )
    out = metrics.summarize([chief], 32, 0.8)
    assert out["window_s"] == pytest.approx(11.0)
    assert out["window_min_worker_steps"] == pytest.approx(11 / 0.4)
    kept = 110 + 110 + 11 / 0.4
    assert out["samples_per_s"] == pytest.approx(kept * 32 / 11)
    # The chief's own window (the drain in it) stays beside it.
    assert out["chief_window_samples_per_s"] == pytest.approx(268 * 32 / 13.4)
    # A worker that never read an element: no common window, no stand-in.
    chief["_worker_elements"]["worker_2"] = []
    out = metrics.summarize([chief], 32, 0.8)
    assert math.isnan(out["samples_per_s"])
    assert out["window_min_worker_steps"] == 0
    # Its staleness histogram: the mean, and the histogram as text.
    chief["staleness_histogram"] = {"0": 2, "1": 5, "3": 3}
    out = metrics.summarize([chief], 32, 0.8)
    assert out["staleness_mean"] == pytest.approx((5 + 9) / 10)
    assert out["staleness_histogram"] == "0:2 1:5 3:3"
    softsync = schemes.SCHEMES["softsync_c8_lr"].worker_flags
    assert softsync == (
        "--ps_protocol=softsync", "--softsync_n=8", "--staleness_lr",
    )  # fmt: skip
    scheme = schemes.SCHEMES["spsgd"]
    tasks = scheme.tasks(3)
    assert [t.name for t in tasks] == [
        "chief_0", "worker_0", "worker_1", "worker_2", "ps_0",
    ]  # fmt: skip
    assert scheme.training_task(1, 3).name == "worker_1"
    assert [t.host for t in schemes.SCHEMES["allreduce"].tasks(3)] == [0, 1, 2]


def test_sync_goals_pair_runs_of_one_repeat():
    import report

    def run(scheme, repeat, step, latency=20.0, experiment="sync_latency"):
        return {
            "experiment": experiment,
            "scheme": scheme,
            "status": "ok",
            "latency_ms": str(latency),
            "repeat": str(repeat),
            "run_id": f"x-r{repeat}",
            "step_time_s": str(step),
        }

    runs = [
        run("allreduce", 0, 0.110),
        run("allreduce_loop", 0, 0.100),
        run("allreduce", 1, 0.300),  # a loaded repeat: both slower
        run("allreduce_loop", 1, 0.200),
        run("dpsgd_onepeer", 0, 0.050),
        run("dpsgd_onepeer", 0, 0.010, latency=0.0),
        run("allreduce", 2, 0.500),  # no partner in repeat 2: left out
    ]
    lines = report.sync_goals(runs)
    text = "\n".join(lines)
    ratio = next(line for line in lines if "custom loop (1" in line)
    assert "1.30 [1.10-1.50] (n=2)" in ratio
    latency = next(line for line in lines if "one-way latency" in line)
    assert "2.00 [2.00-2.00] (n=1)" in latency
    assert "| allreduce | 1 Gbit/s, 20 ms | 300 [110-500] (n=3) |" in text
    assert "stock MWMS step (3 all-reduces) / custom loop, 20 ms | n/a" in text
    assert report.sync_goals([]) == []


def test_async_goals_pair_runs_of_one_repeat_and_execution_size():
    import report

    def run(scheme, repeat, spe=None, **columns):
        row = {
            "experiment": "straggler",
            "scheme": scheme,
            "status": "ok",
            "latency_ms": "1.0",
            "repeat": str(repeat),
            "run_id": f"x-r{repeat}",
            "stragglers": "none",
            "straggler_mode": "sleep",
            **columns,
        }
        if spe is not None:  # runs.csv before the column: no key at all
            row["steps_per_execution"] = str(spe)
        return row

    slow = dict(stragglers="3:4", slowest_worker_slowdown="3.5")
    runs = [
        run("downpour", 0, samples_per_s="400"),
        run("downpour", 0, samples_per_s="360", **slow),
        run("downpour", 1, spe=1, samples_per_s="500"),  # loaded repeat
        run("downpour", 1, spe=1, samples_per_s="400", **slow),
        run("downpour", 0, spe=4, samples_per_s="440"),
        run("downpour", 0, spe=4, samples_per_s="418", **slow),
        run("downpour", 2, samples_per_s="350", **slow),  # no partner
    ]
    text = "\n".join(report.straggler_goals(runs))
    assert "| downpour | 3:4 | sleep | 1 | 85.0 [80.0-90.0] (n=2) % | " in text
    assert "| downpour | 3:4 | sleep | 4 | 95.0 [95.0-95.0] (n=1) % | " in text
    assert "3.50 [3.50-3.50] (n=3) |" in text

    def step(scheme, repeat, spe, seconds):
        return run(
            scheme,
            repeat,
            spe,
            experiment="sync_latency",
            latency_ms="20.0",
            step_time_s=str(seconds),
        )

    runs = [
        step("allreduce", 0, 1, 0.400),
        step("allreduce", 0, 4, 0.300),  # the best AllReduce of repeat 0
        step("downpour", 0, 1, 0.600),
        step("downpour", 0, 4, 0.450),
        step("downpour", 1, 4, 0.450),  # no AllReduce in repeat 1
    ]
    text = "\n".join(report.ps_latency_goals(runs))
    assert (
        "| downpour | 1 | 600 [600-600] (n=1) | 1.50 [1.50-1.50] (n=1) | "
        "2.00 [2.00-2.00] (n=1) |"
    ) in text
    assert (
        "| downpour | 4 | 450 [450-450] (n=2) | 1.50 [1.50-1.50] (n=1) | "
        "1.50 [1.50-1.50] (n=1) |"
    ) in text
    assert report.ps_latency_goals(runs[:2]) == []  # no PS scheme
    assert report.straggler_goals([]) == []


def _can_emulate():
    return (
        os.geteuid() == 0
        and shutil.which("ip")
        and shutil.which("tc")
        and shutil.which("ping")
    )


@pytest.mark.skipif(not _can_emulate(), reason="needs root, ip, tc, ping")
def test_network_up_ping_down():
    with netsim.Network(
        2, netsim.Link(rate="50mbit", delay_ms=15), mtu=1500
    ) as net:
        name = net.name
        assert set(net.namespaces) <= set(netsim.emulator.list_namespaces())
        rtt = net.ping(0, 1, count=3)
        counters = net.counters(0)
        ports = net.port_counters()
        proc = net.popen(1, ["sleep", "60"])
        assert proc.pid in net.processes()
    assert 55 <= rtt <= 90  # 2 x (15 + 15) ms, plus a loaded machine
    assert counters["tx_bytes"] > 0 and ports[0]["tx_bytes"] > 0
    left = [n for n in netsim.emulator.list_namespaces() if name in n]
    assert left == []
    assert proc.wait(timeout=10) != 0  # killed by the tear-down
    assert not os.path.exists(os.path.join(netsim.STATE_DIR, name + ".json"))


@pytest.mark.skipif(not _can_emulate(), reason="needs root, ip, tc, ping")
def test_down_all_cleans_after_a_killed_owner(tmp_path):
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(_BENCH)!r})\n"
        "import netsim\n"
        "net = netsim.Network(2, netsim.Link(delay_ms=1)).up()\n"
        "print(net.name, flush=True)\n"
        "time.sleep(120)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    name = owner.stdout.readline().strip()
    owner.kill()  # no clean-up runs
    owner.wait()
    assert any(n.startswith(name) for n in netsim.emulator.list_namespaces())
    result = subprocess.run(
        [sys.executable, "-m", "netsim", "down", name],
        cwd=_BENCH,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not any(
        n.startswith(name) for n in netsim.emulator.list_namespaces()
    )
    state = os.path.join(netsim.STATE_DIR, name + ".json")
    assert not os.path.exists(state), json.dumps(result.stdout)


def test_plots_give_the_median_and_spread_of_repeats():
    import plots

    rows = [
        {"latency_ms": "20", "step_time_s": v} for v in ("0.3", "0.1", "0.2")
    ] + [
        {"latency_ms": "0", "step_time_s": "0.05"},
        {"latency_ms": "0", "step_time_s": ""},  # a failed repeat: no value
    ]
    assert plots._spread_by(rows, "latency_ms", "step_time_s") == [
        (0.0, 0.05, 0.05, 0.05),
        (20.0, 0.2, 0.1, 0.3),
    ]


def test_every_scheme_has_a_colour_of_its_own():
    import plots
    import schemes

    assert set(plots._COLORS) == set(schemes.ALL_SCHEMES)
    assert len(set(plots._COLORS.values())) == len(plots._COLORS)


def test_timed_steps_are_whole_keras_executions():
    import schemes

    ps, plain = schemes.SCHEMES["downpour"], schemes.SCHEMES["allreduce"]
    # AllReduce: every 4 steps are one execution (warm-up 5 -> 8).
    assert plain.execution_unit(4, workers=8) == 4
    # Downpour: a worker step is 8 (or 2) Keras steps.
    assert ps.execution_unit(4, workers=8) == 1
    assert ps.execution_unit(4, workers=2) == 2
    assert plain.execution_unit(1, workers=8) == 1


def test_summary_time_to_accuracy_pairs_seeds():
    import report

    def run(scheme, seed, tta, acc):
        return {
            "experiment": "tta", "scheme": scheme, "status": "ok",
            "repeat": str(seed), "run_id": f"tta-{scheme}-r{seed}",
            "time_to_target_s": tta, "final_accuracy": acc,
            "target_accuracy": "0.8",
        }  # fmt: skip

    runs = [
        run("allreduce", 0, "40", "0.84"),
        run("adpsgd", 0, "20", "0.85"),
        run("allreduce", 1, "20", "0.83"),
        run("adpsgd", 1, "", "0.79"),  # never reached
    ]
    (line,) = [x for x in report.goals(runs) if x.startswith("- Time to")]
    # Paired: 20 / 40 = 0.5 for seed 0; seed 1 never reached (no ratio).
    assert (
        "adpsgd 20 [20-20] (n=1) s (1 of 2 never), x0.50 [0.50-0.50] (n=1) "
        "of AllReduce; final acc 0.820 [0.790-0.850] (n=2), -1.5 "
        "[-4.0-1.0] (n=2) pt" in line
    )


def test_every_experiment_has_a_row_in_the_bench_readme():
    # bench/README.md's experiments table lists each of run.py's presets
    # (read from the source: importing run.py would parse its flags).
    import ast

    tree = ast.parse((_BENCH / "run.py").read_text())
    (presets,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [t.id for t in node.targets if isinstance(t, ast.Name)]
        == ["EXPERIMENTS"]
    ]
    names = [key.value for key in presets.keys]
    assert "straggler_ps" in names and "tta16" in names
    rows = [
        line.split(" | ")[0][2:].strip("`")
        for line in (_BENCH / "README.md").read_text().splitlines()
        if line.startswith("| `")
    ]
    assert [n for n in names if n not in rows] == []
