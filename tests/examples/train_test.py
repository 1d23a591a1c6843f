"""End-to-end smoke tests of examples/train.py (mock data, a few steps)."""

import json
import os
import subprocess
import sys

import pytest
from absl import app
from absl import flags
from absl.testing import flagsaver

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
sys.path.insert(0, EXAMPLES)
import train  # noqa: E402

SMOKE = [
    "--synthetic_data",
    "--epochs=1",
    "--steps_per_epoch=3",
    "--batch_size=8",
    "--verbose=0",
    "--consensus_every=1",
]


def _run_main(argv, capsys):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train.py", *argv])
    try:
        assert train.main(["train.py"]) == 0
    finally:
        flags.FLAGS.unparse_flags()
    out = capsys.readouterr().out
    return [line for line in out.splitlines() if line.startswith("RESULT ")]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--strategy=gossip", "--topology=ring"], "gossip(ring, dpsgd)"),
        (
            [
                "--strategy=gossip",
                "--topology=one_peer_exponential",
                "--update=atc",
                "--model=cnn",
                "--optimizer=adam",
            ],
            "gossip(one_peer_exponential, atc)",
        ),
        (["--strategy=mirrored", "--model=resnet20"], "MirroredStrategy"),
        (["--strategy=allreduce"], "AllReduceStrategy"),
    ],
)
def test_every_strategy_on_one_host(argv, expected, capsys, tmp_path):
    with flagsaver.flagsaver():
        lines = _run_main([*SMOKE, *argv, f"--model_dir={tmp_path}"], capsys)
    assert len(lines) == 1 and expected in lines[0], lines
    assert "test accuracy" in lines[0]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results[0]["accuracy"] >= 0.0
    strategy = argv[0].split("=")[1]
    assert (tmp_path / strategy / "model.keras").exists()
    if strategy == "gossip":
        assert "consensus distance" in lines[0]


@pytest.mark.timeout(300)
def test_compare_allreduce_prints_both(capsys):
    with flagsaver.flagsaver():
        lines = _run_main([*SMOKE, "--compare_allreduce"], capsys)
    assert "gossip(ring, dpsgd)" in lines[0]
    assert "all-reduce(MirroredStrategy)" in lines[0]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "strategy", ["gossip", "async_gossip", "allreduce", "downpour"]
)
def test_through_the_launcher(strategy, tmp_path):
    env = dict(
        os.environ, TF_NUM_INTEROP_THREADS="2", TF_NUM_INTRAOP_THREADS="1"
    )
    tasks = ["--workers", "2"]
    extra = ["--collective_timeout=60"]
    trainers = ("worker:0", "worker:1")
    if strategy == "downpour":
        tasks += ["--ps", "1", "--chief"]
        extra = ["--optimizer=adagrad", "--learning_rate=0.05"]
        trainers = ("chief:0",)
    command = [
        sys.executable,
        "-m",
        "tf_decentral.launch",
        *tasks,
        "--",
        sys.executable,
        os.path.join(EXAMPLES, "train.py"),
        f"--strategy={strategy}",
        *SMOKE,
        *extra,
        f"--model_dir={tmp_path}",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for task in trainers:
        lines = [
            line
            for line in done.stdout.splitlines()
            if line.startswith(f"[{task}] RESULT ")
        ]
        assert len(lines) == 1, done.stdout[-3000:]
        if strategy == "downpour":
            assert "downpour(async" in lines[0] and "pushes" in lines[0]
        else:
            assert f"on {task} of 2 workers" in lines[0]
        if strategy == "async_gossip":
            # Each worker trained its own model; the active one exchanged
            # with the passive one, or (3 steps only: the passive one often
            # finishes before the active one's first exchange) found its
            # fit over and went on alone.
            assert "async_gossip(ring)" in lines[0], lines[0]
            assert "consensus distance" in lines[0]
            if task == "worker:0":  # a ring of 2: 0 active, 1 passive
                started = lines[0].split(" exchanges started")[0]
                assert (
                    int(started.split()[-1]) >= 1
                    or "found a peer's fit over" in lines[0]
                ), lines[0]
            else:
                assert "passive (averaged" in lines[0], lines[0]
    assert (tmp_path / strategy / "model.keras").exists()
    if strategy == "downpour":
        for task in ("worker:0", "worker:1", "ps:0"):
            assert f"[{task}] {task} serving for the chief" in done.stdout


def _tf_config(num_workers, num_ps=0):
    cluster = {"worker": [f"localhost:{2000 + i}" for i in range(num_workers)]}
    if num_ps:
        cluster["ps"] = [f"localhost:{3000 + i}" for i in range(num_ps)]
    return json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": 0}}
    )


@pytest.mark.parametrize(
    "argv, tf_config, message",
    [
        (["--strategy=gossip", "--num_replicas=1"], None, "at least 2"),
        (["--strategy=mirrored"], _tf_config(2), "--strategy=allreduce"),
        (["--compare_allreduce"], _tf_config(2), "one host"),
        (["--strategy=gossip"], _tf_config(2, num_ps=1), "Launch without --ps"),
        (["--strategy=downpour"], None, "needs a cluster with ps tasks"),
        (["--strategy=async_gossip"], None, "at least 2 workers"),
        (
            ["--strategy=async_gossip"],
            _tf_config(2, num_ps=1),
            "Launch without --ps",
        ),
        (["--strategy=downpour"], _tf_config(2), "no ps tasks"),
        (
            ["--strategy=downpour", "--protocol=softsync"],
            _tf_config(2, num_ps=1),
            "needs --softsync_n",
        ),
    ],
)
def test_flag_errors_are_clear(argv, tf_config, message, monkeypatch):
    if tf_config:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    else:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train.py", *argv])
        try:
            with pytest.raises(app.UsageError, match=message):
                train.main(["train.py"])
        finally:
            flags.FLAGS.unparse_flags()


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--collective_timeout=0", "0 would wait forever"),
        ("--collective_timeout=-5", "collective_timeout"),
        ("--collective_timeout=1e308", "collective_timeout"),
        ("--learning_rate=0", "0 would not train"),
        ("--learning_rate=-0.1", "learning_rate"),
        ("--learning_rate=1e9", "learning_rate"),
    ],
)
def test_out_of_range_numbers_are_rejected_by_the_flag(flag, message):
    try:
        with pytest.raises(flags.IllegalFlagValueError, match=message):
            flags.FLAGS(["train.py", flag])
    finally:
        flags.FLAGS.unparse_flags()


def test_unknown_strategy_is_rejected_by_the_flag():
    with pytest.raises(flags.IllegalFlagValueError, match="gosip"):
        flags.FLAGS(["train.py", "--strategy=gosip"])
    flags.FLAGS.unparse_flags()


def test_helpfull_documents_every_flag():
    done = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "train.py"), "--helpfull"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 1)  # absl exits 1 after printing help
    for name in (
        "strategy",
        "topology",
        "update",
        "num_replicas",
        "dataset",
        "data_dir",
        "model",
        "optimizer",
        "learning_rate",
        "batch_size",
        "epochs",
        "steps_per_epoch",
        "model_dir",
        "seed",
    ):
        assert f"--{name}" in done.stdout, name
    assert "PER REPLICA" in done.stdout
