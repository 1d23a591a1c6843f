"""DownpourParameterServerStrategy on real processes: faults and recovery.

Each test starts a local cluster (a chief running `downpour_worker.py`,
worker and ps tasks running `python -m tf_decentral.cluster.server`, every
task its own process on loopback ports), kills a worker or a ps while the
chief trains, and checks what the chief reports. Every process is
SIGKILLed on teardown.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
import tensorflow as tf
from absl.testing import parameterized

from tf_decentral.testing import cluster

WORKER = os.path.join(os.path.dirname(__file__), "downpour_worker.py")
SERVER = [sys.executable, "-m", "tf_decentral.cluster.server"]
STEPS_PER_EPOCH = 32


def _command(scenario):
    def command(task_type, task_id):
        del task_id
        if task_type == "chief":
            return [sys.executable, WORKER, scenario]
        return SERVER

    return command


def _lines(stdout, prefix):
    return [
        json.loads(line[len(prefix) :])
        for line in stdout.splitlines()
        if line.startswith(prefix)
    ]


def _chief(local):
    return local.poll()["chief:0"]


def _wait_for_epoch(local, epoch, timeout=120):
    """Waits until the chief printed the end of `epoch`; returns the line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chief = _chief(local)
        for line in _lines(chief.stdout, "EPOCH "):
            if line["epoch"] >= epoch:
                return line
        if chief.returncode is not None:
            break
        time.sleep(0.05)
    raise AssertionError(
        f"The chief did not finish epoch {epoch}:\n{chief.describe()}"
    )


def _wait_for_held_push(local, timeout=120):
    """Waits until the chief held a push of worker 1; returns its line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chief = _chief(local)
        held = _lines(chief.stdout, "HELD ")
        if held:
            return held[0]
        if chief.returncode is not None:
            break
        time.sleep(0.02)
    raise AssertionError(f"No push was held:\n{chief.describe()}")


def _kill(local, task_name):
    index = [c.task_name for c in local.configs].index(task_name)
    os.killpg(local.pids[index], signal.SIGKILL)
    return time.time()


def _result(results):
    chief = results["chief:0"]
    lines = _lines(chief.stdout, "RESULT ")
    if not lines:
        raise AssertionError(chief.describe())
    return lines[-1], chief


def _run(env, on_start=None, num_workers=2, num_ps=1, timeout=200):
    """Runs the `faults` scenario; `on_start(local)` acts meanwhile."""
    with cluster.local_cluster(
        _command("faults"),
        num_workers=num_workers,
        num_ps=num_ps,
        has_chief=True,
        timeout=timeout,
        env={**cluster.thread_env(intra_op=1, inter_op=2), **env},
    ) as local:
        extra = on_start(local) if on_start else None
        results = local.wait(fail_fast=False)
    return results, extra


# A worker's replacement: imports TensorFlow first (on a loaded 2-core
# machine that alone takes 10-20 s), then serves once the file argv[1]
# exists, at the address of the worker it replaces.
STANDBY = textwrap.dedent(
    """
    import os, sys, time
    import tensorflow
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.05)
    import tf_decentral
    tf_decentral.cluster.run_server()
    """
)


def _wait_for(local, predicate, what, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chief = _chief(local)
        if predicate(_lines(chief.stdout, "EPOCH ")):
            return
        if chief.returncode is not None:
            break
        time.sleep(0.05)
    raise AssertionError(
        f"The chief never reported {what}:\n{chief.describe()}"
    )


def _kill_and_restart(local, go, stop, release, times):
    """Kills worker 1 while the chief holds one of its pushes between its
    claim and its apply (after epoch 1, `push_gate`), lets the push go on
    (`release`), restarts worker 1 once training went on without it, waits
    until it takes closures again; records the times in `times`; finally
    stops training (`stop`)."""
    config = local.configs[
        [c.task_name for c in local.configs].index("worker:1")
    ]
    standby = subprocess.Popen(
        [sys.executable, "-c", STANDBY, str(go)],
        env={
            **os.environ,
            **cluster.thread_env(intra_op=1, inter_op=2),
            "TF_CONFIG": config.to_json(),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        times["held"] = _wait_for_held_push(local)["push"]
        times["killed"] = _kill(local, "worker:1")
        release.touch()
        # Training goes on without worker 1 ...
        _wait_for(
            local,
            lambda epochs: any(
                e["time"] > times["killed"] + 0.5
                and e["workers"] == [0]
                for e in epochs
            ),
            "an epoch on worker 0 alone",
            timeout=60,
        )
        times["restarted"] = time.time()
        go.touch()
        # ... and worker 1 takes closures again once it is back.
        _wait_for(
            local,
            lambda epochs: any(
                e["time"] > times["restarted"] and 1 in e["workers"]
                for e in epochs
            ),
            "worker 1 back",
            timeout=90,
        )
    finally:
        stop.touch()
        local.wait(fail_fast=False)
        os.killpg(standby.pid, signal.SIGKILL)
        standby.wait()


class DownpourFaultsTest(tf.test.TestCase, parameterized.TestCase):
    def _tmp(self):
        return pathlib.Path(tempfile.mkdtemp(dir=self.get_temp_dir()))

    @parameterized.parameters("async", "softsync")
    @pytest.mark.timeout(300)
    def test_killed_worker_training_continues_and_restarted_worker_rejoins(
        self, protocol
    ):
        tmp_path = self._tmp()
        go, stop = tmp_path / "restart", tmp_path / "stop"
        release = tmp_path / "release"
        times = {}

        env = {
            "DOWNPOUR_TEST_STOP_FILE": str(stop),
            "DOWNPOUR_TEST_PROTOCOL": protocol,
            "DOWNPOUR_TEST_GATE_RELEASE": str(release),
        }
        results, _ = _run(
            env,
            lambda local: _kill_and_restart(local, go, stop, release, times),
        )
        result, chief = _result(results)
        self.assertNotIn("error", result)
        stats = result["stats"]
        # Worker 1 died between the claim and the apply of a push: the push
        # was applied all the same, and its closure's re-run was dropped as
        # a duplicate. Every scheduled step was pushed exactly once and the
        # counters agree.
        self.assertEqual(
            stats["pushes"], result["epochs"] * STEPS_PER_EPOCH, stats
        )
        self.assertGreaterEqual(stats["duplicates"], 1, stats)
        self.assertEqual(stats["clock"], stats["iterations"], stats)
        required = 2 if protocol == "softsync" else 1
        self.assertEqual(
            (stats["clock"] - stats["flushes"]) * required
            + stats["flushed"]
            + stats["pending"],
            stats["pushes"],
            stats,
        )
        epochs = _lines(chief.stdout, "EPOCH ")
        self.assertTrue(
            any(
                1 in e["workers"]
                for e in epochs
                if e["time"] < times["killed"]
            )
        )
        self.assertLess(result["loss"], 1.0, result)

    @pytest.mark.timeout(300)
    def test_killed_ps_raises_clear_error_quickly_then_backup_resumes(self):
        env = {
            "DOWNPOUR_TEST_BACKUP": str(self._tmp() / "backup"),
            "DOWNPOUR_TEST_EPOCHS": "4",
        }

        def kill_ps(local):
            _wait_for_epoch(local, 1)
            return _kill(local, "ps:0")

        results, killed_at = _run(env, kill_ps)
        result, chief = _result(results)
        self.assertIn(
            result.get("error_type"),
            (
                "UnavailableError",
                "PSUnavailableError",
                "AbortedError",
                "CancelledError",
            ),
            result,
        )
        self.assertIn("lost parameter server ps:0", result["error"])
        self.assertIn("BackupAndRestore", result["error"])
        self.assertLess(result["error_time"] - killed_at, 10, result)
        saved = _lines(chief.stdout, "EPOCH ")[-1]

        # A new job with the same backup directory resumes where the last
        # completed epoch left the parameters and the optimizer.
        results, _ = _run(env)
        resumed, chief = _result(results)
        self.assertNotIn("error", resumed)
        begin = _lines(chief.stdout, "BEGIN ")[-1]
        self.assertEqual(begin["iterations"], saved["iterations"])
        self.assertAllClose(begin["checksum"], saved["checksum"], rtol=1e-6)
        self.assertEqual(resumed["epochs"], 4 - (saved["epoch"] + 1))
        self.assertEqual(
            resumed["stats"]["iterations"], 4 * STEPS_PER_EPOCH, resumed
        )


if __name__ == "__main__":
    tf.test.main()
