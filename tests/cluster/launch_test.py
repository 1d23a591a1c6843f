"""Tests of `python -m tf_decentral.launch`, run as a real subprocess."""

import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from unittest import mock

import pytest
from absl.testing import absltest
from absl.testing import parameterized

from tf_decentral import cluster
from tf_decentral.testing import cluster as cluster_testing

# Tasks find each other's ready files here (see `_PRELUDE`).
_SYNC_DIR_VAR = "LAUNCH_TEST_SYNC_DIR"
# Every task program starts with this: it prints the task's pid and defines
# `ready()` (announce this task) and `wait_for(name)` (block until `name`
# announced itself), so a test can sequence the tasks without sleeping.
_PRELUDE = textwrap.dedent(
    f"""
    import os, pathlib, signal, subprocess, sys, time
    TASK = os.environ["TF_DECENTRAL_TASK"]
    SYNC = pathlib.Path(os.environ["{_SYNC_DIR_VAR}"])
    print(f"pid={{os.getpid()}}", flush=True)

    def ready():
        (SYNC / TASK).touch()

    def wait_for(name):
        deadline = time.monotonic() + 30
        while not (SYNC / name).exists():
            if time.monotonic() > deadline:
                sys.exit(f"{{name}} never got ready")
            time.sleep(0.01)
    """
)


class _Run:
    """A launcher subprocess and what it printed."""

    def __init__(self, launch_args, code, sync_dir, env=None):
        command = [sys.executable, "-m", "tf_decentral.launch", *launch_args]
        if code is not None:
            program = _PRELUDE + textwrap.dedent(code)
            command += ["--", sys.executable, "-c", program]
        self.sync_dir = sync_dir
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            env={**os.environ, _SYNC_DIR_VAR: sync_dir, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.returncode = None
        self.stdout = self.stderr = ""
        self.elapsed = None

    def wait_ready(self, *names, timeout=30):
        deadline = time.monotonic() + timeout
        for name in names:
            path = os.path.join(self.sync_dir, name)
            while not os.path.exists(path):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} never got ready")
                time.sleep(0.01)

    def finish(self, timeout=30):
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Let the launcher clean up its tasks, then make sure it dies.
            self.process.terminate()
            try:
                stdout, stderr = self.process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                stdout, stderr = self.process.communicate()
            raise AssertionError(
                f"The launcher hung:\n{stdout.decode()}\n{stderr.decode()}"
            ) from None
        self.elapsed = time.monotonic() - self.started
        self.returncode = self.process.returncode
        self.stdout = stdout.decode()
        self.stderr = stderr.decode()
        return self

    def task_pids(self):
        return [int(pid) for pid in re.findall(r"\] pid=(\d+)", self.stdout)]

    def lines(self, task):
        prefix = f"[{task}] "
        return [
            line[len(prefix) :]
            for line in self.stdout.splitlines()
            if line.startswith(prefix)
        ]


class PickPortsTest(parameterized.TestCase):
    def test_free_distinct_and_below_the_ephemeral_range(self):
        import portpicker

        from tf_decentral.cluster import local_launcher

        ports = cluster.pick_unused_ports(20)
        self.assertLen(set(ports), 20)
        low, high = local_launcher._PICK_RANGE
        ephemeral = local_launcher._ephemeral_ports()
        if ephemeral is not None:
            high = min(high, ephemeral[0])
        for port in ports:
            self.assertBetween(port, low, high - 1)
            self.assertTrue(portpicker.is_port_free(port), port)

    def test_a_crowded_range_falls_back_to_portpicker(self):
        from tf_decentral.cluster import local_launcher

        with mock.patch.object(local_launcher, "_PICK_RANGE", (30, 30)):
            ports = cluster.pick_unused_ports(3)
        self.assertLen(set(ports), 3)
        self.assertTrue(all(p > 1024 for p in ports), ports)


class LaunchTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        sync_dir = tempfile.TemporaryDirectory(prefix="launch_test_")
        self.addCleanup(sync_dir.cleanup)
        self._sync_dir = sync_dir.name
        self._runs = []

    def tearDown(self):
        for run in self._runs:
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()
            pids = run.task_pids() + [
                int(pid) for pid in re.findall(r"child=(\d+)", run.stdout)
            ]
            self.assertEqual(cluster_testing.live_pids(pids, timeout=5), [])
        self.assertEqual(cluster_testing.child_pids(), [])
        super().tearDown()

    def _launch(self, launch_args, code=None, env=None):
        run = _Run(launch_args, code, self._sync_dir, env)
        self._runs.append(run)
        return run

    @pytest.mark.timeout(30)
    def test_runs_every_worker_and_prefixes_lines(self):
        run = self._launch(
            ["--workers", "3"],
            """
            from tf_decentral import cluster
            config = cluster.from_env()
            print(f"hello {TASK} rank {config.worker_index}")
            print("to stderr", file=sys.stderr)
            sys.stdout.write("first\\nsecond without newline")
            """,
        ).finish()
        self.assertEqual(run.returncode, 0, msg=run.stderr)
        for index in range(3):
            task = f"worker:{index}"
            self.assertEqual(
                run.lines(task)[1:],
                [
                    f"hello {task} rank {index}",
                    "first",
                    "second without newline",
                ],
            )
            self.assertIn(f"[{task}] to stderr", run.stderr.splitlines())
        self.assertLen(set(run.task_pids()), 3)

    @pytest.mark.timeout(30)
    def test_chatty_tasks_do_not_block(self):
        # More than a pipe buffer (64 KiB) from each task, on both streams.
        run = self._launch(
            ["--workers", "2"],
            """
            for i in range(20000):
                print(f"line {i:05d} " + "x" * 40)
                print(f"err {i}", file=sys.stderr)
            """,
        ).finish()
        self.assertEqual(run.returncode, 0)
        for task in ("worker:0", "worker:1"):
            lines = run.lines(task)
            self.assertLen(lines, 20001)
            self.assertTrue(lines[-1].startswith("line 19999 "))

    @pytest.mark.timeout(30)
    def test_failing_task_stops_the_others(self):
        run = self._launch(
            ["--workers", "3"],
            """
            if TASK == "worker:1":
                wait_for("worker:0")
                wait_for("worker:2")
                sys.exit(3)
            child = subprocess.Popen(["sleep", "60"])
            print(f"child={child.pid}", flush=True)
            ready()
            time.sleep(60)
            """,
        ).finish()
        self.assertEqual(run.returncode, 3, msg=run.stderr)
        self.assertIn(
            "[launch] worker:1 exited with code 3; stopping the other tasks.",
            run.stderr,
        )
        # The sleepers die at SIGTERM; no grace period is needed.
        self.assertLess(run.elapsed, 4.5)
        self.assertLen(re.findall(r"child=\d+", run.stdout), 2)

    @pytest.mark.timeout(30)
    def test_task_killed_by_a_signal(self):
        run = self._launch(
            ["--workers", "1"], "os.kill(os.getpid(), signal.SIGKILL)"
        ).finish()
        self.assertEqual(run.returncode, 128 + signal.SIGKILL)
        self.assertIn(
            "worker:0 was killed by SIGKILL (exit code 137)", run.stderr
        )

    @pytest.mark.timeout(30)
    def test_task_ignoring_sigterm_is_killed_after_the_grace_period(self):
        grace = 1.0
        run = self._launch(
            ["--workers", "2", "--grace-seconds", str(grace)],
            """
            if TASK == "worker:0":
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                ready()
                time.sleep(60)
            wait_for("worker:0")
            sys.exit(5)
            """,
        ).finish()
        self.assertEqual(run.returncode, 5, msg=run.stderr)
        self.assertIn(
            "worker:0 still running 1s after SIGTERM; sending SIGKILL.",
            run.stderr,
        )
        self.assertGreaterEqual(run.elapsed, grace)
        self.assertLess(run.elapsed, grace + 4)

    @parameterized.named_parameters(
        ("sigint", signal.SIGINT), ("sigterm", signal.SIGTERM)
    )
    @pytest.mark.timeout(30)
    def test_signal_to_the_launcher_is_forwarded(self, signum):
        run = self._launch(
            ["--workers", "2", "--ps", "1"],
            """
            def on_signal(signum, frame):
                print(f"got {signal.Signals(signum).name}", flush=True)
                sys.exit(0)

            signal.signal(signal.SIGINT, on_signal)
            signal.signal(signal.SIGTERM, on_signal)
            ready()
            time.sleep(60)
            """,
        )
        run.wait_ready("worker:0", "worker:1", "ps:0")
        run.process.send_signal(signum)
        run.finish()
        name = signal.Signals(signum).name
        self.assertEqual(run.returncode, 128 + signum)
        self.assertIn(f"[launch] Got {name}; stopping every task.", run.stderr)
        for task in ("worker:0", "worker:1", "ps:0"):
            self.assertIn(f"got {name}", run.lines(task))
        self.assertLess(run.elapsed, 10)

    @pytest.mark.timeout(30)
    def test_second_sigint_skips_the_grace_period(self):
        run = self._launch(
            ["--workers", "2", "--grace-seconds", "60"],
            """
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            ready()
            time.sleep(60)
            """,
        )
        run.wait_ready("worker:0", "worker:1")
        run.process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        run.process.send_signal(signal.SIGINT)
        run.finish()
        self.assertEqual(run.returncode, 128 + signal.SIGINT)
        self.assertLess(run.elapsed, 15)

    @pytest.mark.timeout(30)
    def test_ps_tasks_are_stopped_after_the_workers_succeed(self):
        run = self._launch(
            ["--workers", "2", "--ps", "2", "--chief"],
            """
            if TASK.startswith("ps:"):
                ready()
                time.sleep(60)
            wait_for("ps:0")
            wait_for("ps:1")
            print("trained")
            """,
        ).finish()
        self.assertEqual(run.returncode, 0, msg=run.stderr)
        self.assertIn(
            "[launch] Every chief and worker task succeeded; stopping "
            "ps:0, ps:1.",
            run.stderr,
        )
        for task in ("chief:0", "worker:0", "worker:1"):
            self.assertEqual(run.lines(task)[1:], ["trained"])
        self.assertLen(run.task_pids(), 5)
        self.assertLess(run.elapsed, 10)

    @pytest.mark.timeout(30)
    def test_failing_ps_task_fails_the_run(self):
        run = self._launch(
            ["--workers", "1", "--ps", "1"],
            """
            if TASK == "ps:0":
                wait_for("worker:0")
                sys.exit(4)
            ready()
            time.sleep(60)
            """,
        ).finish()
        self.assertEqual(run.returncode, 4)
        self.assertIn("ps:0 exited with code 4", run.stderr)

    @pytest.mark.timeout(30)
    def test_missing_program(self):
        run = self._launch(
            ["--workers", "2", "--", "/nonexistent/tf_decentral_program"]
        ).finish()
        self.assertEqual(run.returncode, 127)
        self.assertIn("Cannot start worker:0", run.stderr)
        self.assertIn("Check the command after `--`", run.stderr)

    @pytest.mark.timeout(30)
    def test_dry_run_prints_one_export_per_task(self):
        run = self._launch(
            [
                "--workers",
                "3",
                "--ps",
                "2",
                "--chief",
                "--dry-run",
                "--",
                "python",
                "train.py",
                "--lr=0.1",
            ]
        ).finish()
        self.assertEqual(run.returncode, 0, msg=run.stderr)
        self.assertEqual(run.stderr, "")
        exports = [
            line
            for line in run.stdout.splitlines()
            if line.startswith("export TF_CONFIG=")
        ]
        configs = []
        for line in exports:
            (assignment,) = shlex.split(line.removeprefix("export "))
            text = assignment.removeprefix("TF_CONFIG=")
            json.loads(text)
            configs.append(cluster.parse_tf_config(text))
        self.assertEqual(
            [c.task_name for c in configs],
            ["chief:0", "worker:0", "worker:1", "worker:2", "ps:0", "ps:1"],
        )
        self.assertLen({json.dumps(c.cluster) for c in configs}, 1)
        addresses = [c.address for c in configs]
        self.assertLen(set(addresses), 6)
        self.assertTrue(all(a.startswith("localhost:") for a in addresses))
        self.assertEqual(
            run.stdout.count("python train.py --lr=0.1\n"), len(configs)
        )


class CommandLineTest(parameterized.TestCase):
    """Argument handling, through `main()` in this process."""

    def _main(self, argv):
        stdout, stderr = io.StringIO(), io.StringIO()
        with (
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            try:
                code = cluster.main(argv)
            except SystemExit as e:
                code = e.code
        return code, stdout.getvalue(), stderr.getvalue()

    def test_dry_run_with_port_base(self):
        code, stdout, _ = self._main(
            ["--workers", "2", "--chief", "--port-base", "7000", "--dry-run"]
        )
        self.assertEqual(code, 0)
        self.assertEqual(
            stdout.splitlines()[::2],
            [
                "# chief:0 at localhost:7000",
                "# worker:0 at localhost:7001",
                "# worker:1 at localhost:7002",
            ],
        )
        config = cluster.parse_tf_config(
            shlex.split(stdout.splitlines()[3])[1].removeprefix("TF_CONFIG=")
        )
        self.assertEqual(config.task_name, "worker:0")

    @parameterized.named_parameters(
        (
            "zero_workers",
            ["--workers", "0", "--", "true"],
            "argument --workers: must be an integer in [1, 64] (one machine "
            "runs at most 64 tasks: each is a TensorFlow process of about "
            "600 MB). Received: '0'",
        ),
        (
            "workers_not_a_number",
            ["--workers", "two", "--", "true"],
            "argument --workers: must be an integer in [1, 64]",
        ),
        (
            "no_workers",
            ["--", "true"],
            "the following arguments are required: --workers",
        ),
        (
            "negative_ps",
            ["--workers", "1", "--ps", "-1", "--", "true"],
            "argument --ps: must be an integer in [0, 64]",
        ),
        (
            "too_many_workers",
            ["--workers", "10000", "--", "true"],
            "argument --workers: must be an integer in [1, 64]",
        ),
        (
            "too_many_tasks",
            ["--workers", "60", "--ps", "10", "--", "true"],
            "the cluster has 70 tasks; one machine runs at most 64",
        ),
        (
            "huge_grace",
            ["--workers", "1", "--grace-seconds", "1e308", "--", "true"],
            "argument --grace-seconds: must be a number of seconds in "
            "[0, 3600]. Received: '1e308'",
        ),
        (
            "privileged_port_base",
            ["--workers", "1", "--port-base", "22", "--", "true"],
            "argument --port-base: must be an integer in [1024, 65535] "
            "(lower ports are privileged or well known). Received: '22'",
        ),
        (
            "negative_grace",
            ["--workers", "1", "--grace-seconds", "-1", "--", "true"],
            "argument --grace-seconds: must be a number of seconds in",
        ),
        (
            "port_base_out_of_range",
            ["--workers", "1", "--port-base", "70000", "--", "true"],
            "argument --port-base: must be an integer in [1024, 65535]",
        ),
        (
            "ports_past_65535",
            ["--workers", "2", "--port-base", "65535", "--", "true"],
            "the 2 tasks need ports 65535..65536, past 65535",
        ),
        (
            "missing_command",
            ["--workers", "2"],
            "missing CMD: put the command every task runs after `--`",
        ),
        (
            "empty_command",
            ["--workers", "2", "--"],
            "missing CMD",
        ),
        (
            "command_without_separator",
            ["--workers", "2", "python", "train.py"],
            "unrecognized arguments: python train.py. Put the command to run "
            "after `--`",
        ),
    )
    def test_usage_error(self, argv, message):
        code, stdout, stderr = self._main(argv)
        self.assertEqual(code, 2)
        self.assertEqual(stdout, "")
        self.assertIn("usage: python -m tf_decentral.launch", stderr)
        self.assertIn(message, stderr)

    def test_help(self):
        code, stdout, _ = self._main(["--help"])
        self.assertEqual(code, 0)
        for option in ("--workers", "--ps", "--chief", "--port-base"):
            self.assertIn(option, stdout)
        self.assertIn("--grace-seconds", stdout)
        self.assertIn("--dry-run", stdout)
        self.assertIn("--private-network", stdout)

    def test_warns_when_other_hosts_can_reach_the_servers(self):
        stderr = io.StringIO()
        with mock.patch.object(
            cluster.exposure,
            "non_loopback_addresses",
            return_value=["192.0.2.2 (eth0)"],
        ):
            code = cluster.launch(
                ["true"],
                cluster.local_cluster_configs(2, ports=[7001, 7002]),
                stdout=io.StringIO(),
                stderr=stderr,
            )
        self.assertEqual(code, 0)
        message = stderr.getvalue()
        self.assertIn("(ports 7001, 7002) listen on EVERY network", message)
        self.assertIn("including 192.0.2.2 (eth0)", message)
        self.assertIn("no authentication", message)
        self.assertIn("--private-network", message)

    def test_no_warning_when_only_loopback_exists(self):
        stderr = io.StringIO()
        with mock.patch.object(
            cluster.exposure, "non_loopback_addresses", return_value=[]
        ):
            cluster.launch(
                ["true"],
                cluster.local_cluster_configs(1, ports=[7001]),
                stdout=io.StringIO(),
                stderr=stderr,
            )
        self.assertNotIn("EVERY network interface", stderr.getvalue())

    @pytest.mark.skipif(
        not cluster_testing.can_unshare_network(),
        reason="needs Linux network namespaces (unshare --net)",
    )
    def test_private_network_tasks_see_only_loopback(self):
        code = "import socket; print(sorted(n for _, n in socket.if_nameindex()))"  # noqa: E501
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tf_decentral.launch",
                "--workers",
                "2",
                "--private-network",
                "--",
                sys.executable,
                "-c",
                code,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            sorted(result.stdout.splitlines()),
            ["[worker:0] ['lo']", "[worker:1] ['lo']"],
        )
        self.assertNotIn("EVERY network interface", result.stderr)

    def test_launch_validates_its_arguments(self):
        configs = cluster.local_cluster_configs(1, ports=[2000])
        with self.assertRaisesRegex(ValueError, "`command` must be a non"):
            cluster.launch("python train.py", configs)
        with self.assertRaisesRegex(ValueError, "`configs` must hold"):
            cluster.launch(["true"], [])
        with self.assertRaisesRegex(ValueError, "Received: grace_seconds=-1"):
            cluster.launch(["true"], configs, grace_seconds=-1)

    def test_launch_in_process(self):
        stdout, stderr = io.StringIO(), io.StringIO()
        code = cluster.launch(
            [sys.executable, "-c", "import os; print(os.environ['TF_CONFIG'])"],
            cluster.local_cluster_configs(2),
            env={"PATH": os.environ.get("PATH", "")},
            stdout=stdout,
            stderr=stderr,
        )
        self.assertEqual(code, 0, msg=stderr.getvalue())
        self.assertEqual(
            sorted(
                line.split("] ")[0] for line in stdout.getvalue().splitlines()
            ),
            ["[worker:0", "[worker:1"],
        )
        self.assertEqual(cluster_testing.child_pids(), [])


if __name__ == "__main__":
    absltest.main()
