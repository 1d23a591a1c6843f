"""GossipStrategy across real TF worker processes.

Every test starts a local cluster of TF servers on loopback ports (one
process per worker, see `tf_decentral.testing.cluster`), runs
`gossip_worker.py` in every process and compares what the workers report
with NumPy references and with the single-host strategies run in this
process. Processes are SIGKILLed on teardown.
"""

import os
import shutil
import sys
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

import tf_decentral as tfd
from tf_decentral import topology as topo
from tf_decentral.testing import cluster

sys.path.insert(0, os.path.dirname(__file__))
import gossip_worker  # noqa: E402
import numpy_reference  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "gossip_worker.py")
COLLECTIVE_TIMEOUT = 20


def run_cluster(
    phase, topology="ring", update="dpsgd", num_workers=4, env=None
):
    """Runs `phase` on every worker; returns their RESULT dicts by node.

    No retry: the crashes once retried here as a start-up race were a TF
    crash in the error path after a collective abort (see
    `_tf_private.skip_error_interpolation_on_collective_aborts`), and the
    multi-client start-up race of research/multiclient_segfault.md does
    not affect GossipStrategy (collective ops, no remote eager contexts).
    """
    command = [sys.executable, WORKER, phase, topology, update]
    command.append(str(COLLECTIVE_TIMEOUT))
    results, reports = cluster.run_workers(command, num_workers, env=env)
    missing = [name for name in results if name not in reports]
    if phase in ("kill", "hang"):  # The last worker dies or hangs.
        missing = [m for m in missing if m != f"worker:{num_workers - 1}"]
    if missing and not (env or {}).get("KILL_EPOCH"):
        details = "\n".join(results[m].describe() for m in missing)
        raise AssertionError(f"No RESULT from {missing}:\n{details}")
    return {r["node"]: r for r in reports.values()}


def _reference(topology, update, num_workers, x0, b0):
    """NumPy D-PSGD/ATC on the workers' data split (gossip_worker.data)."""
    x, y = gossip_worker.data(num_workers)
    w = np.repeat(np.asarray(x0)[None], num_workers, 0).astype(np.float64)
    b = np.repeat(np.asarray(b0)[None], num_workers, 0).astype(np.float64)
    batch = gossip_worker.PER_WORKER_BATCH
    lr = gossip_worker.LR
    for t in range(gossip_worker.STEPS):
        grads = []
        for node in range(num_workers):
            xs, ys = gossip_worker.worker_shard(x, y, node, num_workers)
            xs = xs[t * batch : (t + 1) * batch]
            ys = ys[t * batch : (t + 1) * batch]
            grads.append(numpy_reference.mse_grads(xs, ys, w[node], b[node]))
        w, b = numpy_reference.gossip_step(
            update, topology.weights(t), w, b, grads, lr
        )
    return w, b


def _single_host(strategy, num_workers):
    """The same job on logical CPUs in this process."""
    x, y = gossip_worker.data(num_workers)
    model = gossip_worker.linear_model(strategy, gossip_worker.LR)
    model.fit(
        x,
        y,
        batch_size=num_workers * gossip_worker.PER_WORKER_BATCH,
        shuffle=False,
        verbose=0,
    )
    return model


class GossipMultiprocessTest(tf.test.TestCase, parameterized.TestCase):
    @pytest.mark.timeout(300)
    def test_lr_zero_contracts_at_spectral_rate_on_every_worker(self):
        reports = run_cluster("contract", "ring")
        self.assertEqual(sorted(reports), [0, 1, 2, 3])
        for report in reports.values():
            # Every non-consensus eigenvalue of the 4-ring is +-1/3.
            ratio = report["d1"] / report["d0"]
            self.assertAllClose(ratio, (1 / 9) ** report["steps"], rtol=1e-3)
            for before, after in zip(
                report["mean_before"], report["mean_after"]
            ):
                self.assertAllClose(before, after, atol=1e-5)

    @pytest.mark.timeout(200)
    def test_dpsgd_exchange_overlaps_the_gradient(self):
        """The exchange of `x_t` waits for nothing of the step's compute.

        In the graph of Keras' step, the sends and receives (in a `Case`
        op for a time-varying topology) have no path from any gradient op or
        from a stateful side op (a `py_function`, as the benchmark's slept
        compute), and the side op has no path from them: TF runs them
        concurrently. Measured at 20 ms one way, 2 workers, ring: 50 ms of
        slept compute per step gives 60-64 ms steps, no compute 63 ms.
        """
        reports = run_cluster("overlap", "two_rounds", num_workers=2)
        topology = topo.resolve(gossip_worker.TWO_ROUNDS, 2)
        x0, b0 = reports[0]["initial"]
        w_ref, b_ref = _reference(topology, "dpsgd", 2, x0, b0)
        for node, report in reports.items():
            kernel, bias = (np.asarray(a) for a in report["weights"])
            self.assertAllClose(kernel, w_ref[node], atol=1e-5)
            self.assertAllClose(bias, b_ref[node], atol=1e-5)
            order = report["order"]
            self.assertGreaterEqual(order["exchange_ops"], 1)
            self.assertGreater(order["gradient_ops"], 0)
            self.assertEqual(order["py_functions"], 1)
            self.assertFalse(order["exchange_waits_for_gradient"])
            self.assertFalse(order["exchange_waits_for_py_function"])
            self.assertFalse(order["py_function_waits_for_exchange"])

    @pytest.mark.timeout(300)
    @parameterized.named_parameters(
        ("ring_dpsgd", "ring", "dpsgd"),
        ("one_peer_exponential_atc", "one_peer_exponential", "atc"),
    )
    def test_multi_worker_equals_single_host(self, topology_name, update):
        n = 4
        saved = os.path.join(self.get_temp_dir(), "consensus.keras")
        reports = run_cluster(
            "equiv",
            topology_name,
            update,
            num_workers=n,
            env={"GOSSIP_TEST_SAVE": saved},
        )
        topology = topo.get(topology_name, n)
        x0, b0 = reports[0]["initial"]
        for report in reports.values():
            self.assertAllClose(report["initial"][0], x0)  # same start
        w_ref, b_ref = _reference(topology, update, n, x0, b0)
        devices = [f"/device:CPU:{i}" for i in range(n)]
        single = _single_host(
            tfd.GossipStrategy(topology, devices, update=update), n
        )
        copies = [
            np.stack([c.numpy() for c in v.value.values])
            for v in single.weights
        ]
        for node, report in reports.items():
            kernel, bias = (np.asarray(a) for a in report["weights"])
            self.assertAllClose(kernel, w_ref[node], atol=1e-5)
            self.assertAllClose(bias, b_ref[node], atol=1e-5)
            self.assertAllClose(kernel, copies[0][node], atol=1e-5)
            self.assertAllClose(bias, copies[1][node], atol=1e-5)
            # The hooks fired: local gradients, neighbour mixing, and local
            # (not global) reductions of the step's loss.
            counts = report["hook_counts"]
            self.assertGreaterEqual(counts["local_gradients"], 1)
            self.assertGreaterEqual(counts["mix"], 1)
            self.assertGreaterEqual(counts["local_reduce"], 1)
            # average_weights is the exact global average.
            self.assertAllClose(report["averaged"][0], w_ref.mean(0), atol=1e-5)
        # Only the chief (worker 0) wrote the consensus model, and saving
        # did not change any worker's own model.
        self.assertEqual(
            [r["wrote"] for _, r in sorted(reports.items())],
            [True, False, False, False],
        )
        for report in reports.values():
            for got, want in zip(report["after_save"], report["weights"]):
                self.assertAllClose(got, want)
        loaded = keras.saving.load_model(saved).get_weights()
        self.assertAllClose(loaded[0], w_ref.mean(0), atol=1e-5)
        self.assertAllClose(loaded[1], b_ref.mean(0), atol=1e-5)
        exported = tf.saved_model.load(saved + ".exported")  # kept alive
        probe = np.ones((2, gossip_worker.DIM), "float32")
        self.assertAllClose(
            exported.serve(probe).numpy(),
            probe @ w_ref.mean(0) + b_ref.mean(0),
            atol=1e-4,
        )
        distance = np.mean(
            [((w_ref[i] - w_ref.mean(0)) ** 2).sum() for i in range(n)]
        ) + np.mean([((b_ref[i] - b_ref.mean(0)) ** 2).sum() for i in range(n)])
        self.assertAllClose(reports[0]["distance"], distance, rtol=1e-3)

    @pytest.mark.timeout(600)
    def test_checkpoints_in_one_shared_folder_and_resume(self):
        # TensorFlow's multi-worker tutorial: every worker runs the same
        # script with BackupAndRestore and ModelCheckpoint in one folder.
        n = 3
        roots = [tempfile.mkdtemp(prefix="gossip_ckpt_") for _ in range(2)]
        for root in roots:
            self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        whole = run_cluster(
            "checkpoint", num_workers=n, env={"CHECKPOINT_DIR": roots[0]}
        )
        killed = run_cluster(
            "checkpoint",
            num_workers=n,
            env={"CHECKPOINT_DIR": roots[1], "KILL_EPOCH": "1"},
        )
        self.assertNotIn(n - 1, killed)
        for report in killed.values():
            self.assertIn("error_type", report, report)
        resumed = run_cluster(
            "checkpoint", num_workers=n, env={"CHECKPOINT_DIR": roots[1]}
        )
        self.assertEqual(sorted(resumed), list(range(n)))
        for node, report in resumed.items():
            # Resumed after the last complete epoch, every worker from the
            # chief's backup: the consensus model (distance 0).
            self.assertEqual(report["epochs_run"], [1, 2], node)
            self.assertLess(report["start_distance"], 1e-12, node)
            for got, want in zip(
                report["start_weights"], killed[0]["epoch0_mean"]
            ):
                self.assertAllClose(got, want, atol=1e-6)
            self.assertAllClose(
                report["loss"][-1], whole[node]["loss"][-1], rtol=0.2
            )
        for root in roots:
            # Only the chief wrote, only where the user asked; the backup
            # was removed at the end of the successful run.
            expected = [f"model-{e}.weights.h5" for e in (1, 2, 3)]
            self.assertEqual(sorted(os.listdir(root)), expected)

    @pytest.mark.timeout(300)
    @parameterized.parameters("kill", "hang")
    def test_dead_worker_gives_clear_error_not_a_hang(self, failure):
        # kill: the process crashes (peers see the connection reset at once);
        # hang: it stays up but never joins the exchange: the timeout saves
        # them.
        reports = run_cluster(failure, "ring")
        survivors = {node: r for node, r in reports.items() if node != 3}
        self.assertEqual(sorted(survivors), [0, 1, 2], reports.keys())
        for node, report in survivors.items():
            self.assertIn(
                report["error_type"],
                ("UnavailableError", "DeadlineExceededError"),
                report,
            )
            self.assertIn("lost contact with", report["error"])
            self.assertLess(report["seconds"], COLLECTIVE_TIMEOUT + 30)
            self.assertIn(f"Gossip training on worker:{node}", report["error"])
            self.assertIn("BackupAndRestore", report["error"])
        if failure == "kill":
            # The dead worker's ring neighbours name it, among the workers
            # that no longer accept connections (the others may have exited
            # after their own error by then; TF's message may name worker 0,
            # the coordination service's task, instead).
            for node in (0, 2):
                self.assertRegex(
                    survivors[node]["error"],
                    r"lost contact with (worker:\d \([^)]*\), )*worker:3 \(",
                )
                self.assertIn(
                    "Not accepting connections any more",
                    survivors[node]["error"],
                )

    @pytest.mark.timeout(400)
    @pytest.mark.timeout(300)
    def test_steps_hold_no_thread_per_exchange(self):
        # TF's per-op collective timeout holds a thread per op (two) for the
        # whole timeout (20 s here): 300 steps of 2 exchanges would leave
        # about 1200 threads. Keras' step has a watchdog thread instead.
        reports = run_cluster("threads", "ring", num_workers=2)
        for report in reports.values():
            grown = report["threads_after"] - report["threads_before"]
            self.assertLess(grown, 100, report)
            self.assertEqual(report["hook_counts"]["watched_steps"], 320)

    def test_bytes_per_worker_grow_with_degree_not_workers(self):
        per_worker = {}
        for name, n in (("ring", 3), ("ring", 5), ("one_peer_exponential", 2)):
            reports = run_cluster("bytes", name, num_workers=n)
            # What each worker sent (its own TCP sockets), in parameters.
            per_worker[name, n] = [
                r["bytes_sent_per_step"] / r["parameter_bytes"]
                for r in reports.values()
            ]
        # A ring worker sends its buffer to 2 neighbours, whatever n is;
        # a one-peer worker sends it once.
        self.assertAllClose(per_worker["ring", 3], [2.0] * 3, rtol=0.1)
        self.assertAllClose(per_worker["ring", 5], [2.0] * 5, rtol=0.1)
        self.assertAllClose(
            per_worker["one_peer_exponential", 2], [1.0] * 2, rtol=0.1
        )

    def test_devices_and_cluster_are_exclusive(self):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": ["localhost:1", "localhost:2"]}),
            task_type="worker",
            task_id=0,
        )
        with self.assertRaisesRegex(ValueError, "`devices` cannot be set"):
            tfd.GossipStrategy(
                "ring", ["/cpu:0", "/cpu:1"], cluster_resolver=resolver
            )

    def test_communication_options_need_a_cluster(self):
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=5
        )
        with self.assertRaisesRegex(ValueError, "communication_options"):
            tfd.GossipStrategy(
                "ring", ["/cpu:0", "/cpu:1"], communication_options=options
            )


if __name__ == "__main__":
    tf.test.main()
