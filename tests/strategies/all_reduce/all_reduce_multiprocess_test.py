"""AllReduceStrategy across real TF worker processes.

Every test starts a local cluster (one process per worker, see
`tf_decentral.testing.cluster`), runs `all_reduce_worker.py` in every
process, and compares what the workers report with MirroredStrategy run on
the same global batches in this process. Processes are SIGKILLed on
teardown.
"""

import os
import shutil
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

import tf_decentral as tfd
from tf_decentral.testing import cluster

sys.path.insert(0, os.path.dirname(__file__))
import all_reduce_worker as worker  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "all_reduce_worker.py")
COLLECTIVE_TIMEOUT = 20
NUM_WORKERS = 2


def run_cluster(phase, step_logs="local", num_workers=NUM_WORKERS, env=None):
    """Runs `phase` on every worker; returns their RESULT dicts by node."""
    command = [sys.executable, WORKER, phase, step_logs]
    command.append(str(COLLECTIVE_TIMEOUT))
    results, reports = cluster.run_workers(command, num_workers, env=env)
    for name, result in results.items():
        if name in reports:
            continue
        if phase not in ("kill", "hang", "checkpoint") or name != "worker:1":
            raise AssertionError(f"{name} reported nothing:\n{result}")
    return {report["node"]: report for report in reports.values()}


def mirrored_reference(num_workers=NUM_WORKERS, epochs=1):
    """Weights, History and per-step logs of MirroredStrategy on the same
    global batches (replica i gets worker i's rows)."""
    devices = [f"/device:CPU:{i}" for i in range(num_workers)]
    strategy = tfd.strategies.get("mirrored", devices=devices)
    model = worker.linear_model(strategy)
    x, y = worker.data(num_workers)
    batch_logs = worker.BatchLogs()
    history = model.fit(
        x,
        y,
        batch_size=num_workers * worker.PER_WORKER_BATCH,
        shuffle=False,
        epochs=epochs,
        verbose=0,
        callbacks=[batch_logs],
    )
    return model.get_weights(), history.history, batch_logs.logs


class AllReduceMultiWorkerTest(tf.test.TestCase, parameterized.TestCase):
    def tearDown(self):
        self.assertEqual(cluster.child_pids(), [])
        super().tearDown()

    @pytest.mark.timeout(300)
    def test_one_collective_per_step_same_weights_and_epoch_logs(self):
        reports = run_cluster("fit", "local")
        weights, history, step_logs = mirrored_reference()
        self.assertEqual(sorted(reports), list(range(NUM_WORKERS)))
        for report in reports.values():
            # The gradients' all-reduce and nothing else (stock MWMS adds
            # one per logged scalar: the loss and the metric).
            self.assertEqual(report["collectives"], 1)
            for got, want in zip(report["weights"], weights):
                self.assertAllClose(got, want, atol=1e-5)
            # Epoch logs are global: equal to MirroredStrategy's.
            for key in ("loss", "mae"):
                self.assertAllClose(report["history"][key], history[key])
            self.assertGreater(report["hook_counts"]["local_step_logs"], 0)
        # Step logs are each worker's own; their mean is the global log.
        local = [
            [step["loss"] for step in reports[node]["batch_logs"]]
            for node in range(NUM_WORKERS)
        ]
        self.assertNotAllClose(local[0], local[1])
        self.assertAllClose(
            np.mean(local, axis=0),
            [step["loss"] for step in step_logs],
            rtol=1e-5,
        )

    @parameterized.parameters("local", "global")
    @pytest.mark.timeout(300)
    def test_steps_hold_no_thread_per_collective(self, step_logs):
        # TF's per-op collective timeout holds two threads per op for the
        # whole timeout: 300 steps would leave about 600 (1200 with the
        # global step logs' collective). Keras' step has a watchdog thread
        # instead (_collective.StepWatchdog).
        reports = run_cluster("threads", step_logs)
        for report in reports.values():
            grown = report["threads_after"] - report["threads_before"]
            self.assertLess(grown, 100, report)
            self.assertEqual(report["hook_counts"]["watched_steps"], 320)

    @parameterized.parameters("local", "global")
    @pytest.mark.timeout(300)
    def test_steps_per_execution(self, step_logs):
        # Keras runs the steps of one call in a tf.while_loop, each in a
        # tf.cond calling its step function (a nested tf.function): TF's
        # deferred instance keys failed there ("You must feed a value for
        # placeholder tensor"); see
        # _tf_private.defer_instance_keys_past_nested_functions.
        reports = run_cluster("fit_spe", step_logs)
        weights, history, _ = mirrored_reference()
        self.assertEqual(sorted(reports), list(range(NUM_WORKERS)))
        for report in reports.values():
            self.assertNotIn("error", report)
            for got, want in zip(report["weights"], weights):
                self.assertAllClose(got, want, atol=1e-5)
            for key in ("loss", "mae"):
                self.assertAllClose(report["history"][key], history[key])
            # Keras calls back once per execution: 4 steps, 2 calls.
            self.assertLen(report["batch_logs"], 2)

    @pytest.mark.timeout(300)
    def test_global_step_logs_cost_one_packed_collective(self):
        reports = run_cluster("fit", "global")
        _, history, step_logs = mirrored_reference()
        for report in reports.values():
            self.assertEqual(report["collectives"], 2)
            self.assertEqual(report["hook_counts"]["packed_step_logs"], 1)
            for got, want in zip(report["batch_logs"], step_logs):
                self.assertAllClose(
                    [got["loss"], got["mae"]],
                    [want["loss"], want["mae"]],
                    rtol=1e-5,
                )
            self.assertAllClose(report["history"]["loss"], history["loss"])

    @parameterized.parameters("kill", "hang")
    @pytest.mark.timeout(300)
    def test_dead_worker_gives_an_error_that_names_it(self, failure):
        # Worker 1 crashes, or hangs (alive, its server answering, but in no
        # collective): worker 0 raises within the collective timeout. A
        # crashed worker is named; a hung one cannot be told from the
        # others (every server accepts connections), and the error says so.
        reports = run_cluster(failure)
        self.assertEqual(sorted(reports), [0])
        report = reports[0]
        self.assertIn(
            report["error_type"],
            ("UnavailableError", "DeadlineExceededError", "CancelledError"),
            report,
        )
        self.assertIn("All-reduce training on worker:0", report["error"])
        lost = {
            "kill": "lost contact with worker:1",
            "hang": "lost contact with a peer (TF did not say which)",
        }
        self.assertIn(lost[failure], report["error"])
        # The probe of the peers: the dead one refuses connections, the
        # hung one does not.
        probed = {
            "kill": "Not accepting connections any more: worker:1",
            "hang": "Every peer still accepts connections",
        }
        self.assertIn(probed[failure], report["error"])
        self.assertIn("BackupAndRestore", report["error"])
        self.assertLess(report["seconds"], COLLECTIVE_TIMEOUT + 30)

    @parameterized.named_parameters(("shared_folder", "0"), ("per_task", "1"))
    @pytest.mark.timeout(400)
    def test_checkpoints_and_resume_after_a_killed_worker(self, per_task):
        # TensorFlow's multi-worker tutorial: every worker runs the same
        # script with BackupAndRestore and ModelCheckpoint on one shared
        # folder (or one folder per task).
        root = tempfile.mkdtemp(prefix="all_reduce_checkpoints_")
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        env = {"CHECKPOINT_DIR": root, "PER_TASK": per_task}
        killed = run_cluster("checkpoint", env={**env, "KILL_EPOCH": "1"})
        # Worker 1 died in epoch 1; worker 0 lost it and stopped.
        self.assertIn("error_type", killed[0], killed[0])
        resumed = run_cluster("checkpoint", env=env)
        weights, _, _ = mirrored_reference(epochs=3)
        chief_dir = os.path.join(root, "task0") if per_task == "1" else root
        for node, report in resumed.items():
            self.assertNotIn("error_type", report, report)
            # Resumed after the last complete epoch, on every worker.
            self.assertEqual(report["epochs_run"], [1, 2], node)
            for got, want in zip(report["weights"], weights):
                self.assertAllClose(got, want, atol=1e-5)
        counts = resumed[1]["hook_counts"]
        self.assertGreater(counts["backup_scratch"], 0)
        self.assertGreater(counts["checkpoint_scratch"], 0)
        self.assertGreater(resumed[0]["hook_counts"]["backup_write"], 0)
        # Only the chief wrote where the user asked; BackupAndRestore
        # removed its backup at the end of the successful run.
        self.assertEqual(
            sorted(os.listdir(chief_dir)),
            ["model-1.weights.h5", "model-2.weights.h5", "model-3.weights.h5"],
        )
        if per_task == "1":
            task1 = os.path.join(root, "task1")
            self.assertEqual(
                os.listdir(task1) if os.path.exists(task1) else [], []
            )

    def test_reference_sees_the_same_batches(self):
        # Replica i of the reference gets exactly worker i's rows.
        x, y = worker.data(NUM_WORKERS)
        shard, _ = worker.worker_shard(x, y, 1, NUM_WORKERS)
        batch = NUM_WORKERS * worker.PER_WORKER_BATCH
        second_half = x[: batch][worker.PER_WORKER_BATCH :]
        self.assertAllEqual(shard[: worker.PER_WORKER_BATCH], second_half)


if __name__ == "__main__":
    tf.test.main()
