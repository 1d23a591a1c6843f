"""Tests of the local-cluster test helpers in `tf_decentral.testing.cluster`."""

import json
import os
import re
import subprocess
import time

import pytest
from absl.testing import absltest
from absl.testing import parameterized

from tf_decentral import cluster
from tf_decentral.testing import cluster as cluster_testing

# Prints the task's pid and the pid of a `sleep` child it starts, then sleeps.
_SLEEPER = """
    import os, subprocess, time
    child = subprocess.Popen(["sleep", "60"])
    print(f"pid={os.getpid()} child={child.pid}", flush=True)
    time.sleep(60)
"""


def _wait_for_output(local, names, pattern, timeout=20):
    """Waits until every task in `names` printed a line matching `pattern`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        results = local.poll()
        if all(re.search(pattern, results[name].stdout) for name in names):
            return results
        time.sleep(0.01)
    raise TimeoutError(f"{names} never printed {pattern!r}")


def _pids(results):
    text = "".join(result.stdout for result in results.values())
    return [int(pid) for pid in re.findall(r"(?:pid|child)=(\d+)", text)]


class PortsAndConfigsTest(parameterized.TestCase):
    def test_pick_ports(self):
        ports = cluster_testing.pick_ports(5)
        self.assertLen(set(ports), 5)
        self.assertTrue(all(0 < port < 65536 for port in ports))
        self.assertEqual(cluster_testing.pick_ports(0), [])
        with self.assertRaisesRegex(ValueError, "Received: num_ports=-1"):
            cluster_testing.pick_ports(-1)

    def test_make_tf_config(self):
        tasks = cluster_testing.make_tf_config(2, num_ps=2, has_chief=True)
        self.assertEqual(
            [(task_type, index) for task_type, index, _ in tasks],
            [("chief", 0), ("worker", 0), ("worker", 1), ("ps", 0), ("ps", 1)],
        )
        configs = [cluster.parse_tf_config(text) for _, _, text in tasks]
        for (task_type, index, text), config in zip(tasks, configs):
            self.assertEqual(json.loads(text)["task"]["type"], task_type)
            self.assertEqual(config.task_id, index)
            self.assertEqual(config.cluster, configs[0].cluster)
        self.assertLen({config.address for config in configs}, 5)

    def test_make_tf_config_with_ports(self):
        tasks = cluster_testing.make_tf_config(2, num_ps=1, ports=[5, 6, 7])
        self.assertEqual(
            json.loads(tasks[0][2])["cluster"],
            {"worker": ["localhost:5", "localhost:6"], "ps": ["localhost:7"]},
        )

    @parameterized.named_parameters(
        ("too_few", [5, 6], "must hold 3 distinct ports"),
        ("repeated", [5, 6, 5], "Received: ports=[5, 6, 5]"),
    )
    def test_make_tf_config_rejects_bad_ports(self, ports, message):
        with self.assertRaisesRegex(ValueError, re.escape(message)):
            cluster_testing.make_tf_config(3, ports=ports)

    def test_make_tf_config_rejects_zero_workers(self):
        with self.assertRaisesRegex(
            ValueError, "`num_workers` must be an integer >= 1"
        ):
            cluster_testing.make_tf_config(0)

    def test_thread_env(self):
        self.assertEqual(
            cluster_testing.thread_env(2, 3),
            {
                "TF_NUM_INTRAOP_THREADS": "2",
                "TF_NUM_INTEROP_THREADS": "3",
                "OMP_NUM_THREADS": "2",
            },
        )
        with self.assertRaisesRegex(ValueError, "Received: inter_op=0"):
            cluster_testing.thread_env(1, 0)


class LocalClusterTest(parameterized.TestCase):
    def tearDown(self):
        self.assertEqual(cluster_testing.child_pids(), [])
        super().tearDown()

    @pytest.mark.timeout(30)
    def test_runs_every_task_with_its_environment(self):
        code = """
            import json, os, sys
            from tf_decentral import cluster
            config = cluster.from_env()
            print(json.dumps({
                "task": os.environ["TF_DECENTRAL_TASK"],
                "name": config.task_name,
                "log_level": os.environ["TF_CPP_MIN_LOG_LEVEL"],
                "threads": os.environ["TF_NUM_INTEROP_THREADS"],
                "extra": os.environ["EXTRA"],
            }))
            print("on stderr", file=sys.stderr)
        """
        with cluster_testing.local_cluster(
            cluster_testing.python_command(code),
            num_workers=2,
            has_chief=True,
            timeout=30,
            env={"EXTRA": "yes", **cluster_testing.thread_env()},
        ) as local:
            results = local.wait(check=True)
        self.assertEqual(list(results), ["chief:0", "worker:0", "worker:1"])
        self.assertEqual(results, local.results)
        for name, result in results.items():
            self.assertEqual(result.returncode, 0)
            self.assertEqual(result.name, name)
            self.assertEqual(result.stderr, "on stderr\n")
            self.assertEqual(
                json.loads(result.stdout),
                {
                    "task": name,
                    "name": name,
                    "log_level": "2",
                    "threads": "1",
                    "extra": "yes",
                },
            )
        self.assertEqual([c.task_name for c in local.configs], list(results))

    @pytest.mark.timeout(30)
    def test_command_per_task(self):
        def command(task_type, task_id):
            return cluster_testing.python_command(
                "import sys; sys.exit(int(sys.argv[1]))", str(task_id)
            )

        with cluster_testing.local_cluster(
            command, num_workers=3, timeout=30
        ) as local:
            results = local.wait(fail_fast=False)
        self.assertEqual(
            [result.returncode for result in results.values()], [0, 1, 2]
        )

    @pytest.mark.timeout(30)
    def test_run_workers_collects_the_reports(self):
        # Worker 1 reports and exits 3; worker 0 prints no RESULT line.
        code = """
            import os, sys
            if os.environ["TF_DECENTRAL_TASK"] == "worker:1":
                print('RESULT {"node": 1}', flush=True)
                sys.exit(3)
            print(os.environ["TF_NUM_INTEROP_THREADS"], os.environ["X"])
        """
        results, reports = cluster_testing.run_workers(
            cluster_testing.python_command(code), 2, timeout=30, env={"X": "x"}
        )
        self.assertEqual(results["worker:0"].stdout, "2 x\n")
        self.assertEqual(reports, {"worker:1": {"node": 1, "returncode": 3}})

    @pytest.mark.timeout(30)
    def test_check_raises_with_the_failing_output(self):
        code = """
            import os, sys, time
            if os.environ["TF_DECENTRAL_TASK"] == "worker:1":
                sys.exit("worker 1 is broken")
            time.sleep(60)
        """
        with cluster_testing.local_cluster(
            cluster_testing.python_command(code), num_workers=2, timeout=30
        ) as local:
            start = time.monotonic()
            with self.assertRaisesRegex(
                RuntimeError,
                r"(?s)but worker:1 did not:.*exit code 1.*worker 1 is broken",
            ):
                local.wait(check=True)
        # fail_fast: no waiting for the sleeping worker 0.
        self.assertLess(time.monotonic() - start, 10)
        self.assertEqual(local.results["worker:0"].returncode, -9)

    @pytest.mark.timeout(30)
    def test_exception_in_the_block_kills_every_group(self):
        with self.assertRaisesRegex(KeyError, "boom"):
            with cluster_testing.local_cluster(
                cluster_testing.python_command(_SLEEPER),
                num_workers=2,
                timeout=30,
            ) as local:
                results = _wait_for_output(
                    local, ["worker:0", "worker:1"], r"child=\d+"
                )
                raise KeyError("boom")
        pids = _pids(results)
        self.assertLen(pids, 4)
        self.assertEqual(cluster_testing.live_pids(pids, timeout=5), [])
        self.assertEqual(local.leftover_pids(), [])
        for result in local.results.values():
            self.assertEqual(result.returncode, -9)

    @pytest.mark.timeout(30)
    def test_timeout_kills_the_tasks(self):
        start = time.monotonic()
        with cluster_testing.local_cluster(
            cluster_testing.python_command(_SLEEPER),
            num_workers=2,
            timeout=1.5,
        ) as local:
            with self.assertRaisesRegex(
                TimeoutError, r"(?s)Raise `timeout`.*worker:1"
            ):
                local.wait()
            self.assertTrue(local.timed_out)
        self.assertLess(time.monotonic() - start, 8)
        self.assertEqual(
            cluster_testing.live_pids(_pids(local.results), timeout=5), []
        )

    @pytest.mark.timeout(30)
    def test_watchdog_kills_tasks_while_the_test_is_busy(self):
        with cluster_testing.local_cluster(
            cluster_testing.python_command(_SLEEPER),
            num_workers=1,
            timeout=0.5,
        ) as local:
            time.sleep(1.0)  # The test is stuck elsewhere past the timeout.
            self.assertTrue(local.timed_out)
            self.assertEqual(local.poll()["worker:0"].returncode, -9)

    @pytest.mark.timeout(30)
    def test_wait_timeout_shorter_than_the_cluster_timeout(self):
        with cluster_testing.local_cluster(
            cluster_testing.python_command("import time; time.sleep(60)"),
            num_workers=1,
            timeout=30,
        ) as local:
            with self.assertRaises(TimeoutError):
                local.wait(timeout=0.2)
            self.assertFalse(local.timed_out)

    @pytest.mark.timeout(30)
    def test_ps_tasks_are_not_waited_for(self):
        code = """
            import os, time
            print(f"pid={os.getpid()}", flush=True)
            if os.environ["TF_DECENTRAL_TASK"].startswith("ps:"):
                time.sleep(60)
        """
        with cluster_testing.local_cluster(
            cluster_testing.python_command(code),
            num_workers=2,
            num_ps=1,
            timeout=30,
        ) as local:
            results = local.wait(check=True)
            self.assertIsNone(results["ps:0"].returncode)
            self.assertEqual(results["worker:1"].returncode, 0)
        self.assertEqual(local.results["ps:0"].returncode, -9)
        self.assertEqual(local.leftover_pids(), [])

    @pytest.mark.timeout(30)
    def test_large_output(self):
        code = "import sys; sys.stdout.write('x' * (1 << 20))"
        with cluster_testing.local_cluster(
            cluster_testing.python_command(code), num_workers=1, timeout=30
        ) as local:
            results = local.wait(check=True)
        self.assertLen(results["worker:0"].stdout, 1 << 20)

    def test_bad_command(self):
        with self.assertRaisesRegex(ValueError, "Received for worker:0: ''"):
            with cluster_testing.local_cluster("", num_workers=1):
                pass
        with self.assertRaises(FileNotFoundError):
            with cluster_testing.local_cluster(
                ["/nonexistent/tf_decentral_program"], num_workers=1
            ):
                pass

    def test_bad_timeout(self):
        with self.assertRaisesRegex(ValueError, "Received: timeout=0"):
            with cluster_testing.local_cluster(["true"], 1, timeout=0):
                pass

    def test_tasks_import_this_checkout(self):
        code = "import tf_decentral; print(tf_decentral.__file__)"
        with cluster_testing.local_cluster(
            cluster_testing.python_command(code),
            num_workers=1,
            timeout=30,
            env={"PYTHONPATH": ""},
        ) as local:
            results = local.wait(check=True)
        import tf_decentral

        self.assertEqual(
            os.path.realpath(results["worker:0"].stdout.strip()),
            os.path.realpath(tf_decentral.__file__),
        )


class ProcessHelpersTest(absltest.TestCase):
    def test_live_pids(self):
        self.assertEqual(
            cluster_testing.live_pids([os.getpid()]), [os.getpid()]
        )
        self.assertEqual(cluster_testing.live_pids([]), [])

    def test_child_pids_and_zombies(self):
        child = subprocess.Popen(["sleep", "60"])
        try:
            self.assertIn(child.pid, cluster_testing.child_pids())
            self.assertEqual(
                cluster_testing.live_pids([child.pid]), [child.pid]
            )
            child.kill()
            # Dead but not reaped yet: a zombie counts as dead.
            self.assertEqual(
                cluster_testing.live_pids([child.pid], timeout=5), []
            )
            self.assertNotIn(child.pid, cluster_testing.child_pids())
        finally:
            child.kill()
            child.wait()


if __name__ == "__main__":
    absltest.main()
