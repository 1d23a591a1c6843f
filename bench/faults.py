"""The fault matrix: every fault scenario run N times, as figures.

Each scenario is a multi-process test of `tests/` that injects one fault
into a real cluster (a worker, ps or chief killed or hung; a job killed and
restarted) and asserts what must happen: training goes on or stops with an
error that names the lost task, nothing hangs, no push is lost, a resumed
job starts at the right epoch from the right state. This script runs every
scenario `--repeats` times, interleaved (scenario A, B, ..., then A, B, ...
again), each under a hard time limit, and writes one row per run and a
table:

    runs | behaved as specified | hung | lost data | failed otherwise

"hung" is a run stopped by the time limit; "lost data" a failed run whose
assertion is about data (push counts, sum conservation, resumed weights or
epochs); "failed otherwise" any other failure (its output is kept).

In `--files` mode every multi-process test file is one run, and a failed
run names its failed tests (from pytest's JUnit XML), so a flaky test is
found, not just a flaky file. No test retries a task that crashed at
start-up (the retry that once hid crashes is gone), so a crash is a failed
run, not a hidden retry. `--lanes 2` runs two at a time, as CI's
`pytest -n 2` does (the machine's load is part of the conditions: the
command file records it).

Usage:
    python bench/faults.py --repeats 10 --out bench/results/faults
    python bench/faults.py --repeats 20 --files   # every multi-process test
                                                  # file, as the failure rate
"""

import argparse
import concurrent.futures
import contextlib
import csv
import dataclasses
import datetime
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = "tests/strategies"


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    strategy: str
    node: str  # a pytest node id (file::class::test)
    time_limit: float = 600.0


_DP = f"{TESTS}/downpour/downpour_multiprocess_test.py::DownpourFaultsTest"
_AG = f"{TESTS}/async_gossip/async_gossip_multiprocess_test.py"
_GO = f"{TESTS}/gossip/gossip_multiprocess_test.py::GossipMultiprocessTest"
_AR = f"{TESTS}/all_reduce/all_reduce_multiprocess_test.py"
_AR += "::AllReduceMultiWorkerTest"
_LC = "tests/cluster/server_lifecycle_test.py::ServerLifecycleTest"

SCENARIOS = (
    Scenario(
        "worker kill, restart (async)",
        "Downpour",
        f"{_DP}::test_killed_worker_training_continues_and_restarted_worker"
        "_rejoins0",
    ),
    Scenario(
        "worker kill, restart (softsync)",
        "Downpour",
        f"{_DP}::test_killed_worker_training_continues_and_restarted_worker"
        "_rejoins1",
    ),
    Scenario(
        "ps kill, then resume from backup",
        "Downpour",
        f"{_DP}::test_killed_ps_raises_clear_error_quickly_then_backup_resumes",
    ),
    Scenario(
        "chief kill (serving tasks exit 2)",
        "Downpour",
        f"{_LC}::test_serving_tasks_exit_as_the_chief_says_chief_killed",
    ),
    Scenario(
        "chief stopped (SIGSTOP)",
        "Downpour",
        f"{_LC}::test_serving_tasks_exit_as_the_chief_says_chief_stopped",
    ),
    Scenario(
        "worker kill holding a peer's lock",
        "AsyncGossip",
        f"{_AG}::FailureTest::"
        "test_a_worker_killed_holding_a_peers_lock_does_not_wedge_it",
    ),
    Scenario(
        "SIGKILL + resume (shared folder)",
        "AsyncGossip",
        f"{_AG}::CheckpointTest::"
        "test_one_writer_and_every_worker_resumes_from_its_backup",
    ),
    Scenario(
        "peer kill",
        "Gossip",
        f"{_GO}::test_dead_worker_gives_clear_error_not_a_hang0",
    ),
    Scenario(
        "peer hang",
        "Gossip",
        f"{_GO}::test_dead_worker_gives_clear_error_not_a_hang1",
    ),
    Scenario(
        "SIGKILL + resume (shared folder)",
        "Gossip",
        f"{_GO}::test_checkpoints_in_one_shared_folder_and_resume",
    ),
    Scenario(
        "peer kill",
        "AllReduce",
        f"{_AR}::test_dead_worker_gives_an_error_that_names_it0",
    ),
    Scenario(
        "peer hang",
        "AllReduce",
        f"{_AR}::test_dead_worker_gives_an_error_that_names_it1",
    ),
    Scenario(
        "SIGKILL + resume (shared folder)",
        "AllReduce",
        f"{_AR}::test_checkpoints_and_resume_after_a_killed_worker_shared_folder",
    ),
    Scenario(
        "SIGKILL + resume (folder per task)",
        "AllReduce",
        f"{_AR}::test_checkpoints_and_resume_after_a_killed_worker_per_task",
    ),
)

# Multi-process test files whose name does not say so.
_ALSO_FILES = ("server_lifecycle_test.py",)

# Words of an assertion about data, in a failed run's output.
_DATA_WORDS = re.compile(
    # "lost contact with worker:N" is an error message, not lost data.
    r"push|pushes|conserv|sum of|epochs_run|start_weights|weights|"
    r"lost(?! contact)",
    re.IGNORECASE,
)


def failed_tests(junit_xml: str) -> list[str]:
    """The failed or errored test ids of a pytest JUnit XML report."""
    try:
        root = ET.parse(junit_xml).getroot()
    except (OSError, ET.ParseError):
        return []
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}.{case.get('name')}")
    return failed


_COLUMNS = (
    "repeat", "strategy", "scenario", "outcome", "seconds", "load",
    "failed_tests", "tail",
)  # fmt: skip


@dataclasses.dataclass
class Run:
    outcome: str
    seconds: float
    failed_tests: list[str] = dataclasses.field(default_factory=list)
    tail: str = ""
    output: str = ""  # All of a run's output, kept when it did not behave.


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (tasks run in sessions of their own,
    so a process group does not reach them)."""
    table = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True
    ).stdout.split()
    children = {}
    for child, parent in zip(table[::2], table[1::2]):
        children.setdefault(int(parent), []).append(int(child))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_once(node: str, time_limit: float) -> Run:
    """Runs one pytest node under a hard time limit."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, "junit.xml")
        output = os.path.join(tmp, "output.txt")
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
            f"--junitxml={junit}", node,
        ]  # fmt: skip
        with open(output, "w") as f:
            process = subprocess.Popen(
                command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT
            )
            try:
                returncode = process.wait(timeout=time_limit)
            except subprocess.TimeoutExpired:
                for pid in [process.pid, *descendants(process.pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                process.wait()
                returncode = None
        with open(output, errors="replace") as f:
            out = f.read()
        failed = failed_tests(junit)
    run = Run("", time.monotonic() - start, failed)
    if returncode is None:
        run.outcome, run.tail, run.output = "hung", out[-3000:], out
        return run
    run.outcome = outcome(out, returncode)
    if run.outcome == "behaved":
        return run
    run.output = out
    # The assertion (pytest's first "E " lines) first: the end of a failed
    # run's output is often only TF's shutdown noise.
    first_errors = [line for line in out.splitlines() if line.startswith("E ")]
    run.tail = "\n".join(first_errors[:20])[:3000] + "\n...\n" + out[-2000:]
    return run


def outcome(out: str, returncode: int) -> str:
    """The outcome of a pytest run that ended by itself, from its output."""
    if returncode == 0 and " passed" in out:
        return "behaved"
    if "no tests ran" in out or returncode == 5:
        return "not collected"
    failure = out[out.find("FAILURES") :] if "FAILURES" in out else out
    errors = "\n".join(
        line for line in failure.splitlines() if line.startswith("E ")
    )
    if re.search(r"Failed: Timeout", failure):
        return "hung"  # pytest-timeout stopped a test
    if _DATA_WORDS.search(errors):
        return "lost data"
    return "failed"


def multiprocess_files() -> list[Scenario]:
    """Every multi-process test file, as one scenario each."""
    found = []
    for root, _, files in os.walk(os.path.join(REPO, "tests")):
        for name in sorted(files):
            if name.endswith("_multiprocess_test.py") or name in _ALSO_FILES:
                path = os.path.relpath(os.path.join(root, name), REPO)
                found.append(Scenario(name, "file", path, 1800.0))
    return sorted(found, key=lambda s: s.node)


def write_table(rows, path):
    outcomes = ("behaved", "hung", "lost data", "failed", "not collected")
    by_scenario = {}
    for row in rows:
        key = (row["strategy"], row["scenario"])
        by_scenario.setdefault(key, []).append(row)
    lines = [
        "| strategy | scenario | runs | behaved as specified | hung | "
        "lost data | failed otherwise | seconds (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (strategy, scenario), runs in by_scenario.items():
        counts = {o: sum(r["outcome"] == o for r in runs) for o in outcomes}
        seconds = sorted(float(r["seconds"]) for r in runs)
        median = seconds[len(seconds) // 2]
        lines.append(
            f"| {strategy} | {scenario} | {len(runs)} | {counts['behaved']} |"
            f" {counts['hung']} | {counts['lost data']} | "
            f"{counts['failed'] + counts['not collected']} | {median:.0f} |"
        )
    failed = {}
    for row in rows:
        for test in row.get("failed_tests", "").split():
            failed[test] = failed.get(test, 0) + 1
    if failed:
        lines += ["", "Failed tests (runs):"]
        lines += [f"- {t}: {n}" for t, n in sorted(failed.items())]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def combine(paths, out, files) -> int:
    """Writes the table of the runs in the `*_runs.csv` files `paths`."""
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    os.makedirs(out, exist_ok=True)
    stem = "files" if files else "scenarios"
    print(write_table(rows, os.path.join(out, f"{stem}_table.md")))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="bench/results/faults")
    parser.add_argument(
        "--files",
        action="store_true",
        help="run every multi-process test file instead of the scenarios",
    )
    parser.add_argument(
        "--only", default="", help="regex over 'strategy scenario' names"
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="RUNS_CSV",
        help="only write the table of these runs files (several runners' "
        "runs of the same commit) into --out",
    )
    parser.add_argument(
        "--lanes",
        type=int,
        default=1,
        help="runs at a time (2: as CI's `pytest -n 2`)",
    )
    args = parser.parse_args(argv)
    if args.lanes < 1 or args.repeats < 1:
        parser.error(
            "--lanes and --repeats must be at least 1. Received: "
            f"--lanes {args.lanes} --repeats {args.repeats}"
        )
    if args.combine:
        return combine(args.combine, os.path.join(REPO, args.out), args.files)
    scenarios = multiprocess_files() if args.files else SCENARIOS
    if args.only:
        scenarios = [
            s
            for s in scenarios
            if re.search(args.only, f"{s.strategy} {s.name}")
        ]
    out = os.path.join(REPO, args.out)
    os.makedirs(out, exist_ok=True)
    stem = "files" if args.files else "scenarios"
    started = datetime.datetime.now().isoformat(timespec="seconds")
    # Interleaved: every scenario once, then every scenario again.
    jobs = [(r, s) for r in range(args.repeats) for s in scenarios]
    rows = []
    lock = threading.Lock()
    csv_path = os.path.join(out, f"{stem}_runs.csv")
    table_path = os.path.join(out, f"{stem}_table.md")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, _COLUMNS)
        writer.writeheader()

        def run(job):
            repeat, s = job
            result = run_once(s.node, s.time_limit)
            row = dict(
                repeat=repeat,
                strategy=s.strategy,
                scenario=s.name,
                outcome=result.outcome,
                seconds=f"{result.seconds:.1f}",
                load=f"{os.getloadavg()[0]:.1f}",
                failed_tests=" ".join(result.failed_tests),
                tail=result.tail,
            )
            if result.output:  # every worker's output, for the diagnosis
                name = re.sub(r"\W+", "_", f"{s.strategy}_{s.name}")
                path = os.path.join(out, "failed", f"{name}_r{repeat}.txt")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as log:
                    log.write(result.output)
            with lock:
                rows.append(row)
                writer.writerow(row)
                f.flush()
                # Kept current, so a run stopped early still has its table.
                write_table(rows, table_path)
                print(
                    f"[{repeat + 1}/{args.repeats}] {s.strategy}: {s.name}:"
                    f" {result.outcome} ({result.seconds:.0f} s, "
                    f"load {row['load']})",
                    flush=True,
                )

        with concurrent.futures.ThreadPoolExecutor(args.lanes) as pool:
            list(pool.map(run, jobs))
    with open(os.path.join(out, f"{stem}_command.txt"), "w") as f:
        f.write(
            f"{started} to "
            f"{datetime.datetime.now().isoformat(timespec='seconds')}\n"
            f"python bench/faults.py {' '.join(argv or sys.argv[1:])}\n"
            f"load average at the end: {os.getloadavg()}\n"
        )
    print(write_table(rows, table_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
