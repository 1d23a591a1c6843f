"""Tasks forked from the preloader behave as fresh interpreters would.

`tests/conftest.py` turns preloading on for the whole suite (so every
multi-process test also exercises it); these tests check what a task sees
and how it ends, and that `preload=False` still starts real interpreters.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from absl.testing import absltest
from absl.testing import parameterized

from tf_decentral.testing import cluster as cluster_testing
from tf_decentral.testing import preload

_PROBE = """
import atexit, json, os, sys
atexit.register(lambda: print("atexit ran", flush=True))
sys.excepthook = lambda *info: print("excepthook:", info[1], file=sys.stderr)
print("RESULT " + json.dumps({
    "argv": sys.argv,
    "path0": sys.path[0],
    "task": os.environ["TF_DECENTRAL_TASK"],
    "extra": os.environ.get("PRELOAD_TEST_VALUE"),
    "tf_preloaded": "tensorflow" in sys.modules,
    "tfd_from": os.path.dirname(__import__("tf_decentral").__file__),
    "ppid_is_preloader": os.getppid() in PRELOADERS,
    "own_group": os.getpgid(0) == os.getpid(),
}), flush=True)
if sys.argv[-1] == "fail":
    raise ValueError("a failing task")
sys.exit(int(sys.argv[-1]))
"""


def _probe(preloaders):
    return f"PRELOADERS = {sorted(preloaders)!r}\n" + _PROBE


class PreloadTest(parameterized.TestCase):
    def tearDown(self):
        self.assertEqual(cluster_testing.child_pids(), [])
        super().tearDown()

    def test_preloadable_commands(self):
        self.assertTrue(preload.is_preloadable([sys.executable, "-c", "x"]))
        self.assertTrue(preload.is_preloadable([sys.executable, "w.py", "1"]))
        self.assertFalse(preload.is_preloadable([sys.executable, "-c"]))
        self.assertTrue(preload.is_preloadable([sys.executable, "-m", "x"]))
        self.assertFalse(preload.is_preloadable([sys.executable, "-m"]))
        self.assertFalse(preload.is_preloadable([sys.executable, "-u", "x"]))
        self.assertFalse(preload.is_preloadable(["sleep", "1"]))

    @parameterized.parameters(True, False)
    @pytest.mark.timeout(120)
    def test_a_task_sees_what_a_fresh_interpreter_would(self, preloaded):
        preloaders = preload.pids() if preloaded else set()
        if preloaded:
            preloaders.add(preload.get().pid)
        code = _probe(preloaders)
        with cluster_testing.local_cluster(
            cluster_testing.python_command(code, "a", "3"),
            num_workers=1,
            timeout=60,
            env={"PRELOAD_TEST_VALUE": "x"},
            preload=preloaded,
        ) as local:
            result = local.wait()["worker:0"]
        self.assertEqual(result.returncode, 3, result.describe())
        report = result.report()
        self.assertEqual(report["argv"], ["-c", "a", "3"])
        self.assertEqual(report["path0"], "")
        self.assertEqual(report["task"], "worker:0")
        self.assertEqual(report["extra"], "x")
        self.assertTrue(report["own_group"])
        self.assertEqual(report["ppid_is_preloader"], preloaded)
        self.assertEqual(report["tf_preloaded"], preloaded)
        # The code under test, imported afresh from this checkout.
        self.assertEqual(
            report["tfd_from"],
            os.path.dirname(os.path.dirname(preload.__file__)),
        )
        self.assertIn("atexit ran", result.stdout)

    @pytest.mark.timeout(120)
    def test_a_script_its_exceptions_and_signals(self):
        script = os.path.join(tempfile.mkdtemp(), "task.py")
        with open(script, "w") as f:
            f.write(_probe(preload.pids() | {preload.get().pid}))
        runs = {}
        for last in ("0", "fail"):
            with cluster_testing.local_cluster(
                [sys.executable, script, last],
                num_workers=1,
                timeout=60,
                preload=True,
            ) as local:
                runs[last] = local.wait()["worker:0"]
        report = runs["0"].report()
        self.assertEqual(runs["0"].returncode, 0, runs["0"].describe())
        self.assertEqual(report["argv"], [script, "0"])
        self.assertEqual(report["path0"], os.path.dirname(script))
        self.assertTrue(report["ppid_is_preloader"])
        self.assertEqual(runs["fail"].returncode, 1)
        self.assertIn("excepthook: a failing task", runs["fail"].stderr)
        # A signal: the group is killed as with a real process.
        code = "import time; print('up', flush=True); time.sleep(60)"
        with cluster_testing.local_cluster(
            cluster_testing.python_command(code),
            num_workers=1,
            timeout=60,
            preload=True,
        ) as local:
            (pid,) = local.pids
            deadline = time.monotonic() + 30
            while "up" not in local.poll()["worker:0"].stdout:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.05)
            os.killpg(pid, signal.SIGKILL)
            result = local.wait()["worker:0"]
        self.assertEqual(result.returncode, -signal.SIGKILL)

    @pytest.mark.timeout(120)
    def test_a_module(self):
        with cluster_testing.local_cluster(
            [sys.executable, "-m", "json.tool", "--help"],
            num_workers=1,
            timeout=60,
            preload=True,
        ) as local:
            result = local.wait()["worker:0"]
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertIn("usage:", result.stdout)
        self.assertIn("json.tool", result.stdout)

    def test_a_broken_request_is_explained(self):
        with self.assertRaisesRegex(ValueError, r"Received: \['sleep'"):
            preload.get().spawn(["sleep", "1"], {}, os.devnull, os.devnull)

    def test_a_client_gone_before_ready_ends_it_quietly(self):
        # A test process that finishes before the preloader has imported
        # TensorFlow closes the pipe; the preloader exits 0, no traceback.
        process = subprocess.Popen(
            [sys.executable, "-c", preload.MAIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        process.stdin.close()
        process.stdout.close()
        with process.stderr:
            stderr = process.stderr.read()  # until the preloader exits
        process.wait(timeout=120)
        self.assertEqual(process.returncode, 0, stderr.decode()[-2000:])
        self.assertNotIn(b"Traceback", stderr)

    def test_enabled_reads_the_environment(self):
        self.assertEqual(
            preload.enabled(), os.environ.get(preload.ENV_VAR) == "1"
        )


if __name__ == "__main__":
    absltest.main()
