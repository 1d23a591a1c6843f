"""A real two-worker TensorFlow cluster on loopback: MWMS all-reduce.

Each worker reads the `TF_CONFIG` our tools wrote, both with
`tf_decentral.cluster.from_env` and with TensorFlow's own
`TFConfigClusterResolver`, checks they agree, and all-reduces its task index
with `MultiWorkerMirroredStrategy`: both must print 1.0 (= 0 + 1).
"""

import os
import re
import subprocess
import sys

import pytest
from absl.testing import absltest
from absl.testing import parameterized

from tf_decentral.testing import cluster as cluster_testing

# Seconds before a collective gives up on a dead peer.
_COLLECTIVE_TIMEOUT = 30
_WORKER = f"""
import tensorflow as tf

from tf_decentral import cluster

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
config = cluster.from_env()
resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
if (resolver.task_type, resolver.task_id) != (
    config.task_type, config.task_id
) or resolver.cluster_spec().as_dict() != config.to_cluster_spec_dict():
    raise SystemExit(f"TF reads another cluster: {{resolver.cluster_spec()}}")
strategy = tf.distribute.MultiWorkerMirroredStrategy(
    cluster_resolver=resolver,
    communication_options=tf.distribute.experimental.CommunicationOptions(
        timeout_seconds={_COLLECTIVE_TIMEOUT}
    ),
)


@tf.function
def all_reduce():
    return tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, tf.constant(float(config.task_id))
    )


(total,) = strategy.experimental_local_results(strategy.run(all_reduce))
print(
    f"sum={{float(total)}} replicas={{strategy.num_replicas_in_sync}} "
    f"chief={{config.is_chief}}",
    flush=True,
)
"""


class MultiWorkerAllReduceTest(parameterized.TestCase):
    def tearDown(self):
        self.assertEqual(cluster_testing.child_pids(), [])
        super().tearDown()

    @pytest.mark.timeout(90)
    def test_local_cluster(self):
        with cluster_testing.local_cluster(
            cluster_testing.python_command(_WORKER),
            num_workers=2,
            timeout=75,
            env=cluster_testing.thread_env(),
        ) as local:
            results = local.wait(check=True)
        self.assertEqual(
            results["worker:0"].stdout, "sum=1.0 replicas=2 chief=True\n"
        )
        self.assertEqual(
            results["worker:1"].stdout, "sum=1.0 replicas=2 chief=False\n"
        )
        self.assertEqual(local.leftover_pids(), [])

    @pytest.mark.timeout(90)
    def test_launcher(self):
        env = {"TF_CPP_MIN_LOG_LEVEL": "2", **cluster_testing.thread_env()}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tf_decentral.launch",
                "--workers",
                "2",
                "--grace-seconds",
                "1",
                "--",
                *cluster_testing.python_command(_WORKER),
            ],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=75)
        finally:
            if process.poll() is None:
                process.terminate()  # The launcher stops its tasks.
                process.communicate(timeout=15)
        self.assertEqual(process.returncode, 0, msg=stderr)
        lines = sorted(
            line for line in stdout.splitlines() if re.search("sum=", line)
        )
        self.assertEqual(
            lines,
            [
                "[worker:0] sum=1.0 replicas=2 chief=True",
                "[worker:1] sum=1.0 replicas=2 chief=False",
            ],
        )


if __name__ == "__main__":
    absltest.main()
