"""`run_server`'s life cycle on real TF servers: it ends when the chief says
so, and only then with code 0.

Each test runs a chief, a worker and a ps task (`local_cluster`, SIGKILLed
on teardown): the worker and the ps run `run_server` with short timeouts;
the chief connects to them, starts its heartbeats, then ends as the
scenario says. The test waits for the two serving tasks and checks their
exit codes and messages.
"""

import time

import pytest
from absl.testing import absltest
from absl.testing import parameterized

from tf_decentral.cluster import lifecycle
from tf_decentral.testing import cluster as cluster_testing

GRACE_SECONDS = 3
START_TIMEOUT_SECONDS = 6
_PROGRAM = f"""
import os, signal, sys, time
from tf_decentral import cluster
from tf_decentral.cluster import lifecycle

scenario = sys.argv[1]
config = cluster.from_env()
if config.task_type != "chief":
    cluster.run_server(
        config,
        chief_grace_seconds={GRACE_SECONDS},
        chief_start_timeout_seconds={START_TIMEOUT_SECONDS},
    )
    raise SystemExit("run_server returned on a serving task")
if scenario == "no_chief":
    raise SystemExit(0)
import tensorflow as tf

tf.config.experimental_connect_to_cluster(
    tf.train.ClusterSpec(config.to_cluster_spec_dict()),
    job_name="chief",
    task_index=0,
)
chief = lifecycle.start_chief_lifecycle(config.to_cluster_spec_dict())
while min(chief.beats.values()) < 3:
    time.sleep(0.2)
print("beating", flush=True)
if scenario == "fail":
    raise RuntimeError("the training program failed")
if scenario == "stop":
    os.kill(os.getpid(), signal.SIGSTOP)
if scenario == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def run(scenario, timeout=90):
    """Returns the serving tasks' `TaskResult`s once both have exited."""
    command = cluster_testing.python_command(_PROGRAM, scenario)
    with cluster_testing.local_cluster(
        command,
        num_workers=1,
        num_ps=1,
        has_chief=True,
        timeout=timeout,
        env=cluster_testing.thread_env(),
    ) as local:
        deadline = time.monotonic() + timeout - 5
        while time.monotonic() < deadline:
            results = local.poll()
            serving = [results["worker:0"], results["ps:0"]]
            if all(r.returncode is not None for r in serving):
                return serving, results["chief:0"]
            time.sleep(0.2)
        raise AssertionError(
            "The serving tasks did not exit:\n"
            + "\n".join(r.describe() for r in local.poll().values())
        )


class ServerLifecycleTest(parameterized.TestCase):
    def tearDown(self):
        self.assertEqual(cluster_testing.child_pids(), [])
        super().tearDown()

    @parameterized.named_parameters(
        ("done", "done", lifecycle.EXIT_DONE, "the job is done"),
        ("chief_failed", "fail", lifecycle.EXIT_CHIEF_FAILED, "failed"),
        ("chief_stopped", "stop", lifecycle.EXIT_CHIEF_LOST, "stopped"),
        ("chief_killed", "kill", lifecycle.EXIT_CHIEF_LOST, "stopped"),
        ("no_chief", "no_chief", lifecycle.EXIT_NO_CHIEF, "no chief has"),
    )
    @pytest.mark.timeout(120)
    def test_serving_tasks_exit_as_the_chief_says(
        self, scenario, code, message
    ):
        started = time.monotonic()
        serving, chief = run(scenario)
        for result in serving:
            self.assertEqual(result.returncode, code, result.describe())
            self.assertIn(message, result.stderr)
            self.assertIn("no authentication", result.stderr)
        if scenario in ("stop", "kill"):
            self.assertIn("beating", chief.stdout)
        # Nobody waited for a timeout that was not theirs.
        self.assertLess(time.monotonic() - started, 60)


if __name__ == "__main__":
    absltest.main()
