"""bench/faults.py: its scenarios exist, and its table counts outcomes."""

import csv
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
import faults  # noqa: E402


class FaultsTest(absltest.TestCase):
    def test_every_scenario_names_a_collected_test(self):
        files = sorted({s.node.split("::")[0] for s in faults.SCENARIOS})
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", *files],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        collected = set(done.stdout.split())
        missing = [
            s.node for s in faults.SCENARIOS if s.node not in collected
        ]
        self.assertEqual(missing, [], done.stdout[-2000:])

    def test_table_counts_each_outcome(self):
        rows = [
            dict(strategy="A", scenario="kill", outcome=o, seconds=s)
            for o, s in (("behaved", 10), ("hung", 600), ("lost data", 20))
        ]
        rows[2]["failed_tests"] = "t.T.test_push t.T.test_other"
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "table.md")
        table = faults.write_table(rows, path)
        self.assertIn("| A | kill | 3 | 1 | 1 | 1 | 0 | 20 |", table)
        self.assertIn("- t.T.test_push: 1", table)
        with open(path) as f:
            self.assertEqual(f.read().strip(), table)

    def test_combine_tables_several_runs_files(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        paths = []
        for index, outcome in enumerate(("behaved", "hung")):
            paths.append(os.path.join(directory, f"runs{index}.csv"))
            with open(paths[-1], "w", newline="") as f:
                writer = csv.DictWriter(f, faults._COLUMNS)
                writer.writeheader()
                writer.writerow(
                    dict(repeat=0, strategy="A", scenario="kill",
                         outcome=outcome, seconds=10, load=1.0,
                         failed_tests="", tail="")
                )  # fmt: skip
        out = os.path.join(directory, "out")
        faults.main(["--combine", *paths, "--out", out])
        with open(os.path.join(out, "scenarios_table.md")) as f:
            self.assertIn("| A | kill | 2 | 1 | 1 | 0 | 0 | 10 |", f.read())

    def test_outcome_of_a_run_from_its_output(self):
        def failure(line):
            return f"== FAILURES ==\nE   {line}\n== 1 failed =="

        self.assertEqual(faults.outcome("== 3 passed ==", 0), "behaved")
        self.assertEqual(faults.outcome("no tests ran", 5), "not collected")
        self.assertEqual(
            faults.outcome(failure("Failed: Timeout >300.0s"), 1), "hung"
        )
        self.assertEqual(
            faults.outcome(failure("AssertionError: 19 pushes != 20"), 1),
            "lost data",
        )
        self.assertEqual(
            faults.outcome(failure("AssertionError: 1 lost update"), 1),
            "lost data",
        )
        # An error message that names a lost worker is not lost data.
        self.assertEqual(
            faults.outcome(
                failure("'lost contact with worker:3' not found in ..."), 1
            ),
            "failed",
        )

    def test_failed_tests_are_read_from_junit_xml(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "junit.xml")
        with open(path, "w") as f:
            f.write(
                '<testsuites><testsuite name="pytest">'
                '<testcase classname="a.T" name="test_ok"/>'
                '<testcase classname="a.T" name="test_bad">'
                '<failure message="x"/></testcase>'
                '<testcase classname="b.U" name="test_err">'
                '<error message="y"/></testcase>'
                '<testcase classname="b.U" name="test_skip">'
                '<skipped message="z"/></testcase>'
                "</testsuite></testsuites>"
            )
        self.assertEqual(
            faults.failed_tests(path), ["a.T.test_bad", "b.U.test_err"]
        )
        self.assertEqual(faults.failed_tests(path + ".missing"), [])

    def test_every_multiprocess_file_is_found(self):
        names = {s.name for s in faults.multiprocess_files()}
        self.assertIn("all_reduce_multiprocess_test.py", names)
        self.assertIn("downpour_multiprocess_test.py", names)
        self.assertIn("server_lifecycle_test.py", names)


if __name__ == "__main__":
    absltest.main()
