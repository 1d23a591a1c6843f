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

Usage:
    python bench/faults.py --repeats 10 --out bench/results/faults
    python bench/faults.py --repeats 20 --files   # every *_multiprocess_test
                                                  # file, as the failure rate
"""

import argparse
import csv
import dataclasses
import datetime
import os
import re
import subprocess
import sys
import time

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
        f"{_AR}::test_dead_worker_gives_an_error_that_names_it",
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

# Words of an assertion about data, in a failed run's output.
_DATA_WORDS = re.compile(
    r"push|pushes|conserv|sum of|epochs_run|start_weights|weights|lost",
    re.IGNORECASE,
)


def run_once(node: str, time_limit: float) -> tuple[str, float, str]:
    """Runs one pytest node; returns (outcome, seconds, output tail)."""
    start = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", node]
    try:
        done = subprocess.run(
            command,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=time_limit,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace")[-3000:]
        subprocess.run(["pkill", "-9", "-f", node], check=False)
        return "hung", time.monotonic() - start, out
    seconds = time.monotonic() - start
    out = done.stdout + done.stderr
    if done.returncode == 0 and " passed" in done.stdout:
        return "behaved", seconds, ""
    if "no tests ran" in done.stdout or done.returncode == 5:
        return "not collected", seconds, out[-3000:]
    failure = out[out.find("FAILURES") :] if "FAILURES" in out else out
    errors = "\n".join(
        line for line in failure.splitlines() if line.startswith("E ")
    )
    if _DATA_WORDS.search(errors):
        return "lost data", seconds, out[-3000:]
    return "failed", seconds, out[-3000:]


def multiprocess_files() -> list[Scenario]:
    """Every multi-process test file, as one scenario each."""
    found = []
    for root, _, files in os.walk(os.path.join(REPO, "tests")):
        for name in sorted(files):
            if name.endswith("_multiprocess_test.py"):
                path = os.path.relpath(os.path.join(root, name), REPO)
                found.append(Scenario(name, "file", path, 1800.0))
    return found


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
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="bench/results/faults")
    parser.add_argument(
        "--files",
        action="store_true",
        help="run every *_multiprocess_test.py file instead of the scenarios",
    )
    parser.add_argument(
        "--only", default="", help="regex over 'strategy scenario' names"
    )
    args = parser.parse_args(argv)
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
    rows = []
    csv_path = os.path.join(out, f"{stem}_runs.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(
            f,
            ["repeat", "strategy", "scenario", "outcome", "seconds", "tail"],
        )
        writer.writeheader()
        for repeat in range(args.repeats):
            for s in scenarios:
                outcome, seconds, tail = run_once(s.node, s.time_limit)
                row = dict(
                    repeat=repeat,
                    strategy=s.strategy,
                    scenario=s.name,
                    outcome=outcome,
                    seconds=f"{seconds:.1f}",
                    tail=tail,
                )
                rows.append(row)
                writer.writerow(row)
                f.flush()
                print(
                    f"[{repeat + 1}/{args.repeats}] {s.strategy}: {s.name}: "
                    f"{outcome} ({seconds:.0f} s)",
                    flush=True,
                )
    with open(os.path.join(out, f"{stem}_command.txt"), "w") as f:
        f.write(
            f"{datetime.datetime.now().isoformat(timespec='seconds')}\n"
            f"python bench/faults.py {' '.join(argv or sys.argv[1:])}\n"
            f"load average at the end: {os.getloadavg()}\n"
        )
    print(write_table(rows, os.path.join(out, f"{stem}_table.md")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
