"""Tests of bench/readme_table.py: the README's generated benchmark text."""

import csv
import math
import pathlib
import sys

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_REPO / "bench"))

import readme_table  # noqa: E402  (bench/readme_table.py)

_COLUMNS = (
    "run_id", "experiment", "scheme", "label", "workers", "rate", "steps",
    "rate_mbit", "latency_ms", "hidden", "model_bytes", "stragglers",
    "straggler_mode", "repeat", "status", "detail", "step_time_s",
    "step_time_max_worker_s", "samples_per_s", "tx_bytes_per_step",
    "host_tx_bytes_per_step", "compute_s", "compute_max_s",
    "predicted_step_s", "loadavg_mean", "started", "step_time_active_s",
    "step_time_passive_s", "tx_bytes_per_step_active",
    "tx_bytes_per_step_passive", "exchanges_per_active_step",
    "steps_per_execution", "slowest_worker_slowdown", "time_to_target_s",
    "final_accuracy", "averaged_accuracy", "target_accuracy",
    "staleness_mean", "staleness_histogram", "window_min_worker_steps",
    "warmup_steps", "batch_size", "compute_ms", "straggler_compute_slowdown",
    "chief_window_samples_per_s",
)  # fmt: skip


def _run(experiment, scheme, repeat, step, *, latency=20.0, rate="1gbit",
         **extra):  # fmt: skip
    row = dict.fromkeys(_COLUMNS, "")
    row.update(
        run_id=f"{experiment}-{scheme}-{rate}-{latency:g}-r{repeat}",
        experiment=experiment,
        scheme=scheme,
        label=scheme.upper(),
        workers="8",
        rate=rate,
        rate_mbit={"1gbit": "1000", "100mbit": "100", "": "inf"}[rate],
        latency_ms=str(latency),
        hidden="128",
        model_bytes="400000",
        stragglers="none",
        straggler_mode="sleep",
        steps="20",
        repeat=str(repeat),
        status="ok",
        step_time_s=str(step),
        predicted_step_s="0.1",
        compute_s="0.01",
        loadavg_mean="2.0",
        started=str(1.8e9 + repeat),
        steps_per_execution="1",
        warmup_steps="5",
        batch_size="32",
        compute_ms="0",
    )
    row.update({k: str(v) for k, v in extra.items()})
    return row


def _paired_runs(experiment, scheme, rates, **extra):
    """A run without straggler and one with worker 3 at 4x per repeat.

    `rates`: (samples/s without, with) per repeat; each of `extra` is one
    value for both runs, a (without, with) pair, or a list of either per
    repeat."""

    def pick(value, repeat, i):
        if isinstance(value, list):
            value = value[repeat]
        return value[i] if isinstance(value, tuple) else value

    rows = []
    for repeat, pair in enumerate(rates):
        for i, stragglers in enumerate(("none", "3:4")):
            columns = {k: pick(v, repeat, i) for k, v in extra.items()}
            step = columns.pop("step", 0.1)
            run = _run(experiment, scheme, repeat, step, latency=1.0,
                       stragglers=stragglers, samples_per_s=pair[i],
                       **columns)  # fmt: skip
            rows.append(run)
    return rows


def _write(directory, rows, evals=()):
    directory.mkdir(parents=True)
    with open(directory / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, _COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if evals:
        with open(directory / "evals.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ("run_id", "worker", "step",
                                        "accuracy"))  # fmt: skip
            writer.writeheader()
            writer.writerows(evals)


@pytest.fixture
def results(tmp_path):
    # Two repeats whose baselines differ: paired ratios are 0.1 and 0.3
    # (median 0.2); unpaired medians would give 50 / 300 = 0.17.
    latency = [
        _run("latency", "allreduce", 0, 0.4),
        _run("latency", "dpsgd_onepeer", 0, 0.04),
        _run("latency", "adpsgd", 0, 0.2, step_time_active_s=0.15,
             step_time_passive_s=0.25, exchanges_per_active_step=1.0),
        _run("latency", "allreduce", 1, 0.2),
        _run("latency", "dpsgd_onepeer", 1, 0.06),
        _run("latency", "adpsgd", 1, 0.2, step_time_active_s=0.09,
             step_time_passive_s=0.25, exchanges_per_active_step=0.9),
        _run("latency", "allreduce", 0, 0.05, rate="", latency=0.0),
        _run("latency", "dpsgd_onepeer", 0, 0.05, rate="", latency=0.0),
        _run("latency", "dpsgd_onepeer", 1, 0.07, rate="", latency=0.0),
        _run("latency", "downpour", 0, 0.0, status="failed"),
    ]  # fmt: skip
    straggler = [
        _run("straggler", "downpour", r, 0.1, stragglers=s, samples_per_s=v,
             slowest_worker_slowdown=4.0, latency=1.0,
             window_min_worker_steps=6)
        for r, s, v in ((0, "none", 100), (0, "3:4", 85), (1, "none", 100),
                        (1, "3:4", 95))
    ]  # fmt: skip
    _write(tmp_path / "results" / "latency", latency)
    _write(tmp_path / "results" / "straggler", straggler)
    return tmp_path


def _line(text, start, section=""):
    """The first line starting with `start` after the line starting with
    `section`."""
    lines = text.splitlines()
    after = next(i for i, line in enumerate(lines) if line.startswith(section))
    return next(line for line in lines[after:] if line.startswith(start))


def test_ratios_pair_the_runs_of_one_repeat(results):
    text = readme_table.generate("results", root=str(results))
    row = _line(text, "| DPSGD_ONEPEER (`dpsgd_onepeer`) |")
    assert "| 0.20 [0.10-0.30] (n=2) |" in row
    assert "50 [40-60] (n=2)" in row  # the step itself, ms
    goal = _line(text, "| one-peer D-PSGD / AllReduceStrategy, 1 Gbit/s, 20")
    assert goal.endswith("| <= 0.15 | 0.20 [0.10-0.30] (n=2) | missed |")


def test_ad_psgd_active_and_passive_workers_get_a_row_each(results):
    text = readme_table.generate("results", root=str(results))
    active = _line(text, "| ADPSGD (`adpsgd`), active workers |")
    passive = _line(text, "| ADPSGD (`adpsgd`), passive workers |")
    assert "120 [90-150] (n=2)" in active
    assert "250 [250-250] (n=2)" in passive
    # Against one-peer D-PSGD, repeat by repeat: 0.15 / 0.04, 0.09 / 0.06.
    goal = _line(text, "| AD-PSGD active step / one-peer D-PSGD, 1 Gbit/s")
    assert "2.62 [1.50-3.75] (n=2) | missed" in goal
    exchanges = _line(text, "| AD-PSGD exchanges per active step")
    assert "0.95 [0.90-1.00] (n=2) | met" in exchanges


def test_missing_cells_say_na_and_failed_runs_are_left_out(results):
    text = readme_table.generate("results", root=str(results))
    row = _line(text, "| ADPSGD (`adpsgd`), active workers |")
    assert row.split(" | ")[1] == "n/a"  # no unshaped AD-PSGD run
    goal = _line(text, "| Downpour async / AllReduceStrategy")
    assert goal.endswith("| n/a | not measured |")
    assert "52 runs" not in text and "(10 runs, 9 completed" not in text
    assert "(commit not recorded; 14 runs, 13 completed;" in text


def test_straggler_kept_throughput_and_its_achieved_slowdown(results):
    text = readme_table.generate("results", root=str(results))
    row = _line(text, "| DOWNPOUR (`downpour`) | worker 3, 4x (sleep) | 20 |")
    assert "| 90.0 [85.0-95.0] (n=2) % | 4.00 [4.00-4.00] (n=2) |" in row
    assert "| applied steps | 6 [6-6] (n=2) |" in row
    # Without its workers' element logs, an asynchronous PS scheme's
    # window is the chief's fixed work, said to be a lower bound.
    assert row.endswith(
        "| the chief's fixed work, to the straggler's last closure: a lower "
        "bound |"
    )
    goal = _line(text, "| `downpour` keeps its throughput")
    assert goal.endswith("| >= 80% | 90.0 [85.0-95.0] (n=2) % | met |")
    assert "(sleep, 20 steps; issue 15)" in goal


def test_software_term_is_measured_on_the_unshaped_network(results):
    terms = readme_table.software_terms(readme_table.load(results / "results"))
    # Measured minus predicted (0.1 s) on the unshaped runs, median.
    assert terms["dpsgd_onepeer"] == pytest.approx(-0.04)
    assert terms["allreduce"] == pytest.approx(-0.05)
    errors = readme_table.model_errors(readme_table.load(results / "results"))
    shaped = {(r["scheme"], r["repeat"]): e for r, *e in errors}
    assert ("allreduce", "0") in shaped  # the unshaped runs are not scored
    a_priori, with_term, counted = shaped[("dpsgd_onepeer", "0")]
    assert a_priori == pytest.approx(0.1 / 0.04 - 1)
    assert with_term == pytest.approx(0.06 / 0.04 - 1)
    assert counted == with_term  # no round trips measured, none to count


def test_write_then_check_and_a_hand_edit_fails_the_check(
    results, capsys, monkeypatch
):
    readme = results / "README.md"
    readme.write_text(
        "intro\n"
        + readme_table.BEGIN.format("results")
        + "\nold text\n"
        + readme_table.END
        + "\nafter\n"
    )
    args = ["--readme", str(readme)]
    # Results directories are relative to the repository root.
    monkeypatch.setattr(readme_table, "_REPO_ROOT", str(results))
    assert readme_table.main([*args, "--check"]) == 1
    assert readme_table.main(["results", *args, "--write"]) == 0
    assert readme_table.main([*args, "--check"]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\nafter\n")
    readme.write_text(text.replace("0.20 [0.10-0.30]", "0.10 [0.10-0.30]"))
    assert readme_table.main([*args, "--check"]) == 1
    assert "bench/readme_table.py results --write" in capsys.readouterr().err


def test_readme_without_markers_is_an_error():
    with pytest.raises(ValueError, match="no generated benchmark text"):
        readme_table.find_block("# A README\n")


def test_projection_is_the_cost_model_with_the_measured_software_term(
    results,
):
    text = readme_table.generate("results", root=str(results))
    # 20 ms: AllReduce c + 2 (p - 1) (L + o) = 10 ms + 2 (p - 1) x 22 ms,
    # plus its software term (-50 ms); one-peer max(c, 2 (L + o) + m beta)
    # = 47.2 ms, plus its term (-40 ms).
    allreduce = _line(text, "| `allreduce` |").split(" | ")
    onepeer = _line(text, "| `dpsgd_onepeer` |").split(" | ")
    assert allreduce[1:4] == [
        "268 ms (1.00x)", "2732 ms (1.00x)", "11180 ms (1.00x)",
    ]  # fmt: skip
    assert onepeer[2] == "7 ms (0.00x)"
    assert "not a measurement" in text


def test_time_to_accuracy_pairs_seeds_and_counts_runs_that_never_reach(
    tmp_path,
):
    rows = []
    for seed, (base, adpsgd) in enumerate(((100, 30), (50, "nan"))):
        rows += [
            _run("tta", "allreduce", seed, 0.4, time_to_target_s=base,
                 final_accuracy=0.85, target_accuracy=0.8),
            _run("tta", "adpsgd", seed, 0.2, time_to_target_s=adpsgd,
                 final_accuracy=0.80, averaged_accuracy=0.846,
                 target_accuracy=0.8),
        ]  # fmt: skip
    _write(tmp_path / "results" / "tta", rows)
    text = readme_table.generate("results", root=str(tmp_path))
    row = _line(text, "| ADPSGD (`adpsgd`) |")
    assert "| 30 [30-30] (n=1), 1 of 2 never | 0.30 [0.30-0.30] (n=1) |" in row
    assert row.endswith("| -0.4 [-0.4--0.4] (n=2) |")
    goal = _line(text, "| `adpsgd` time to the target accuracy")
    # The median of 0.30 and never (inf) is inf: missed.
    assert goal.endswith("| <= 0.5 | inf [0.30-inf] (n=2) | missed |")
    goal = _line(text, "| `adpsgd` averaged model's final accuracy")
    assert goal.endswith("| >= -1 | -0.40 [-0.40--0.40] (n=2) | met |")


def test_tta_overlap_rows_pair_with_their_own_allreduce(tmp_path):
    rows = [
        _run("tta", "allreduce", 0, 0.4, time_to_target_s=100,
             final_accuracy=0.85, target_accuracy=0.8),
        _run("tta", "adpsgd", 0, 0.2, time_to_target_s=60,
             final_accuracy=0.84, target_accuracy=0.8),
    ]  # fmt: skip
    overlap = [
        _run("tta_overlap", scheme, 0, 0.2, time_to_target_s=t,
             final_accuracy=0.84, target_accuracy=0.8)
        for scheme, t in (("allreduce", 80), ("adpsgd", 40),
                          ("adpsgd_overlap", 20))
    ]  # fmt: skip
    _write(tmp_path / "results" / "tta", rows)
    _write(tmp_path / "results" / "tta_overlap", overlap)
    text = readme_table.generate("results", root=str(tmp_path))
    row = _line(text, "| ADPSGD_OVERLAP (`adpsgd_overlap`, `tta_overlap`) |")
    assert "| 20 [20-20] (n=1) | 0.25 [0.25-0.25] (n=1) |" in row
    row = _line(text, "| ADPSGD (`adpsgd`, `tta_overlap`) |")
    assert "| 40 [40-40] (n=1) | 0.50 [0.50-0.50] (n=1) |" in row
    # The goal stays on `tta`'s runs: 60 / 100.
    goal = _line(text, "| `adpsgd` time to the target accuracy")
    assert goal.endswith("| <= 0.5 | 0.60 [0.60-0.60] (n=1) | missed |")


def test_rudra_staleness_against_lambda_over_c(tmp_path):
    rows = [
        _run("rudra", scheme, seed, 0.1, rate="1gbit", latency=1.0,
             staleness_mean=mean, staleness_histogram=hist,
             final_accuracy=acc, target_accuracy=0.8)
        for scheme, seed, mean, hist, acc in (
            ("softsync_c2", 0, 3.5, "2:5 4:5", 0.80),
            ("softsync_c2", 1, 4.5, "4:5 5:5", 0.82),
            ("spsgd", 0, 0.0, "0:10", 0.84),
        )
    ]  # fmt: skip
    _write(tmp_path / "results" / "rudra", rows)
    text = readme_table.generate("results", root=str(tmp_path))
    row = _line(text, "| SOFTSYNC_C2 (`softsync_c2`) |")
    assert row == (
        "| SOFTSYNC_C2 (`softsync_c2`) | 1 Gbit/s, 1 ms, 0.40 MB | 4.00 "
        "[3.50-4.50] (n=2) | about 4 (n = lambda / c = 8/2) | 2:5 4:5 | "
        "0.810 [0.800-0.820] (n=2) | n/a, 2 of 2 never |"
    )
    assert _line(text, "| SPSGD (`spsgd`) |").split(" | ")[3].startswith(
        "0 (here 1: this count includes the push's own update)"
    )


def test_downpour_goal_against_the_best_steps_per_execution(tmp_path):
    # Repeat 0: AllReduce 400 (k=1) / 300 (k=4), Downpour 180 / 200:
    # 180 / 300 = 0.6 (not 180 / 400 = 0.45).
    rows = [
        _run("spe", scheme, repeat, step, steps_per_execution=k)
        for scheme, repeat, k, step in (
            ("allreduce", 0, 1, 0.4), ("allreduce", 0, 4, 0.3),
            ("downpour_n4", 0, 1, 0.18), ("downpour_n4", 0, 4, 0.2),
            ("allreduce", 1, 1, 0.4), ("allreduce", 1, 4, 0.5),
            ("downpour_n4", 1, 1, 0.16), ("downpour_n4", 1, 4, 0.3),
        )
    ]  # fmt: skip
    _write(tmp_path / "results" / "spe", rows)
    text = readme_table.generate("results", root=str(tmp_path))
    goal = _line(
        text, "| Downpour, n_fetch = n_push = 4 / AllReduceStrategy, e"
    )
    assert "steps_per_execution of 1, 4 in the repeat, 1 Gbit/s, 20 ms" in goal
    assert goal.endswith("| <= 0.5 | 0.50 [0.40-0.60] (n=2) | met |")


def test_the_committed_readme_is_what_the_committed_results_generate():
    text = (_REPO / "README.md").read_text()
    start, end, results_dir = readme_table.find_block(text)
    assert text[start:end] == readme_table.generate(results_dir), (
        "README.md's benchmark text is stale: run .venv/bin/python "
        f"bench/readme_table.py {results_dir} --write"
    )


def test_accuracy_per_epoch_interpolates_the_workers_mean(tmp_path):
    # 8 workers x 32 examples: a step is 256 / 60000 epoch; with 5 warm-up
    # steps, timed step 229.375 is epoch 1 and timed step 53.59375 is
    # epoch 0.25. Worker 1 of the gossip run evaluates lower by 0.1.
    runs = [
        _run("tta", "allreduce", seed, 0.4, final_accuracy=0.85)
        for seed in (0, 1)
    ] + [_run("tta", "dpsgd_ring", 0, 0.1, final_accuracy=0.84)]
    evals = []
    for seed, slope in ((0, 0.002), (1, 0.003)):
        evals += [
            {"run_id": runs[seed]["run_id"], "worker": 0, "step": step,
             "accuracy": 0.1 + slope * step}
            for step in (0, 100, 200, 300)
        ]  # fmt: skip
    evals += [
        {"run_id": runs[2]["run_id"], "worker": w, "step": step,
         "accuracy": 0.2 + 0.002 * step - 0.1 * w}
        for w in (0, 1) for step in (0, 100, 200, 300)
    ]  # fmt: skip
    # A step only worker 0 reached is left out of the mean.
    evals.append(
        {"run_id": runs[2]["run_id"], "worker": 0, "step": 400, "accuracy": 1}
    )
    _write(tmp_path / "results" / "tta", runs, evals)
    # 16 workers: a step is 512 / 60000 epoch, epoch 1 at timed step
    # 112.1875: 0.1 + 0.004 * 112.1875 = 0.54875.
    wide = _run("tta16", "allreduce", 0, 0.1, workers=16, rate="",
                latency=0.0)  # fmt: skip
    _write(
        tmp_path / "results" / "tta16",
        [wide],
        [{"run_id": wide["run_id"], "worker": w, "step": step,
          "accuracy": 0.1 + 0.004 * step}
         for w in range(16) for step in (0, 100, 150)],
    )  # fmt: skip
    text = readme_table.generate("results", root=str(tmp_path))
    epochs = "**Accuracy per epoch**"
    row16 = _line(text, "| ALLREDUCE (`allreduce`) | 16,", epochs)
    assert row16.split(" | ")[1:5] == [
        "16, unshaped, 0.40 MB, 0.2",  # (5 + 20) x 512 / 60000 epochs run
        "0.197 [0.197-0.197] (n=1)",  # epoch 0.25: timed step 24.296875
        "0.314 [0.314-0.314] (n=1)",
        "0.549 [0.549-0.549] (n=1)",
    ]
    base = _line(text, "| ALLREDUCE (`allreduce`) |", epochs).split(" | ")
    # Seed 0 at epoch 1: 0.1 + 0.002 * 229.375 = 0.55875; seed 1: 0.788125.
    assert base[1] == "8, 1 Gbit/s, 20 ms, 0.40 MB, 0.1"
    assert base[4] == "0.673 [0.559-0.788] (n=2)"
    row = _line(text, "| DPSGD_RING (`dpsgd_ring`) |", epochs).split(" | ")
    # Mean of workers 0 and 1: 0.15 + 0.002 * step, at epoch 0.25 (timed
    # step 53.59375): 0.2571875; paired with seed 0 only at epoch 1: 0.15
    # + 0.45875 - 0.55875 = +0.05, 5 points.
    assert row[2] == "0.257 [0.257-0.257] (n=1)"
    assert row[7] == "5.0 [5.0-5.0] (n=1)"
    # Beyond 1 epoch: no evaluation there, no gap at the last epoch.
    assert row[5:7] == ["n/a", "n/a"]
    assert row[8] == "n/a |"
    # Outside the evaluations every worker reached: nan (300 warm-up steps
    # put epoch 1 before the first one; a 40-example split after the last).
    early = dict(runs[2], warmup_steps="300")
    assert math.isnan(readme_table.epoch_accuracy(early, evals)[1.0])
    assert math.isnan(readme_table.epoch_accuracy(early, evals)[0.25])
    late = dict(runs[2], batch_size="1")
    assert math.isnan(readme_table.epoch_accuracy(late, evals)[1.0])


def test_three_epochs_give_the_gap_at_the_last_epoch_every_run_reached(
    tmp_path,
):
    # tta_long: 705 steps of 8 x 32 examples = 3.008 epochs; epoch 2 at
    # timed step 463.75, epoch 3 at 698.125. Ring D-PSGD evaluates 1 point
    # (seed 0) and 2 points (seed 1) below AllReduce; its second seed's
    # last evaluation is at step 600 (2.58 epochs), so the last epoch
    # every run reached is 2.
    runs, evals = [], []
    for seed, gap, last in ((0, 0.01, 700), (1, 0.02, 600)):
        schemes = (("allreduce", 0.0, 700), ("dpsgd_ring", gap, last))
        for scheme, minus, top in schemes:
            run = _run(
                "tta_long",
                scheme,
                seed,
                0.1,
                steps=700,
                rate="100mbit",
                time_to_target_s=10 * (1 + seed),
                final_accuracy=0.8,
                target_accuracy=0.8,
            )
            runs.append(run)
            evals += [
                {"run_id": run["run_id"], "worker": 0, "step": step,
                 "accuracy": 0.5 + 0.0002 * step - minus}
                for step in (0, 350, top)
            ]  # fmt: skip
    _write(tmp_path / "results" / "tta_long", runs, evals)
    text = readme_table.generate("results", root=str(tmp_path))
    epochs = "**Accuracy per epoch**"
    row = _line(text, "| DPSGD_RING (`dpsgd_ring`) |", epochs).split(" | ")
    assert row[1] == "8, 100 Mbit/s, 20 ms, 0.40 MB, 3.0"
    # At epoch 2: 0.5 + 0.0002 * 463.75 - 0.01 / 0.02 = 0.58275 / 0.57275;
    # at epoch 3, seed 0 only: 0.5 + 0.0002 * 698.125 - 0.01 = 0.629625.
    assert row[5] == "0.578 [0.573-0.583] (n=2)"
    assert row[6] == "0.630 [0.630-0.630] (n=1)"
    assert row[7] == "-1.5 [-2.0--1.0] (n=2)"
    assert row[8] == "-1.5 [-2.0--1.0] (n=2) at 2 |"
    tta = _line(text, "| DPSGD_RING (`dpsgd_ring`) |", "**Time to accuracy**")
    assert tta.startswith("| DPSGD_RING (`dpsgd_ring`) | 3.0 | 15 [10-20]")


def test_time_to_accuracy_with_a_straggler_against_one_peer(tmp_path):
    rows = []
    for seed, (onepeer, adpsgd) in enumerate(((100, 40), (80, "nan"))):
        for scheme, slow in (("dpsgd_onepeer", onepeer), ("adpsgd", adpsgd)):
            rows += [
                _run("tta_straggler", scheme, seed, 0.1, stragglers=s,
                     time_to_target_s=t, target_accuracy=0.8,
                     final_accuracy=0.83, compute_ms=50,
                     slowest_worker_slowdown=4.1 if s != "none" else "")
                for s, t in (("none", 30), ("3:4", slow))
            ]  # fmt: skip
    _write(tmp_path / "results" / "tta_straggler", rows)
    text = readme_table.generate("results", root=str(tmp_path))
    header = "| worker 3 4x slower (50 ms of slept compute per step, its 200 "
    assert header in text
    straggler = "**Time to accuracy with a straggler**"
    row = _line(text, "| ADPSGD (`adpsgd`) |", straggler).split(" | ")
    assert row[2] == "40 [40-40] (n=1), 1 of 2 never"
    # with / without: 40 / 30 and never (inf); / one-peer: 0.4 and inf.
    assert row[3] == "inf [1.33-inf] (n=2)"
    assert row[4] == "inf [0.40-inf] (n=2)"
    assert row[5] == "n/a"  # no AllReduce run
    assert row[6] == "4.10 [4.10-4.10] (n=2)"
    goal = _line(text, "| `adpsgd` time to the target accuracy / one-peer")
    assert goal.endswith("| <= 0.5 | inf [0.40-inf] (n=2) | missed |")


def test_round_trips_per_step_from_the_latency_sweep(results):
    text = readme_table.generate("results", root=str(results))
    section = "**Round trips per step**"
    assert "(step at 20 ms - step unshaped) / 40 ms |" in text
    # Repeat 0 only has both networks: (0.4 - 0.05) / 0.04 = 8.75.
    row = _line(text, "| ALLREDUCE (`allreduce`) |", section)
    assert row.endswith("| 8.8 [8.8-8.8] (n=1) |")
    # Both repeats: (0.04 - 0.05) / 0.04 and (0.06 - 0.07) / 0.04, both
    # -0.25 (up to round-off, which decides the rounding).
    row = _line(text, "| DPSGD_ONEPEER (`dpsgd_onepeer`) |", section)
    assert row.split(" | ")[1][:2] == "-0" and row.endswith("(n=2) |")


def test_software_term_comes_from_the_latency_experiment_only(results):
    before = readme_table.software_terms(
        readme_table.load(results / "results")
    )
    # An unshaped run of another experiment (16 workers) changes nothing.
    _write(
        results / "results" / "tta16",
        [_run("tta16", "allreduce", 0, 0.9, rate="", latency=0.0,
              workers=16)],
    )  # fmt: skip
    after = readme_table.software_terms(readme_table.load(results / "results"))
    assert after == before


def test_round_trips_measured_once_replace_the_protocols_in_the_model(
    tmp_path,
):
    # The calibration: Downpour's step grows by 0.26 s from unshaped to
    # 10 ms one way: 0.26 / 0.02 = 13 round trips per step.
    calibration = [
        _run("round_trips", "downpour", 0, 0.05, rate="", latency=0.0),
        _run("round_trips", "downpour", 0, 0.31, latency=10.0),
    ]
    # With 13 round trips, o = 2 ms, c = 0.01 s and 0.4 MB at 1 Gbit/s
    # (m beta = 3.2 ms, a fetch and a push): unshaped 0.01 + 13 x 2 x
    # 0.002 = 0.062 s, measured 0.082 (software term 0.02); at 20 ms
    # 0.01 + 13 x 2 x 0.022 + 2 x 0.0032 = 0.5884 s, measured 0.6084.
    latency = [
        _run("latency", "downpour", 0, 0.082, rate="", latency=0.0),
        _run("latency", "downpour", 0, 0.6084),
        # No count of its own, and not a fetch and a push every step:
        # the protocol's count stays.
        _run("latency", "downpour_n4", 0, 0.3),
    ]
    _write(tmp_path / "results" / "round_trips", calibration)
    _write(tmp_path / "results" / "latency", latency)
    runs = readme_table.load(tmp_path / "results")
    assert readme_table.measured_round_trips(runs) == {
        ("downpour", 1): pytest.approx(13.0)
    }
    errors = {r["run_id"]: e for r, *e in readme_table.model_errors(runs)}
    # The calibration's own runs are not predicted.
    assert set(errors) == {latency[1]["run_id"], latency[2]["run_id"]}
    a_priori, _, counted = errors[latency[1]["run_id"]]
    assert a_priori == pytest.approx(0.1 / 0.6084 - 1)  # predicted_step_s
    assert counted == pytest.approx(0.0)
    n4 = errors[latency[2]["run_id"]]
    assert math.isnan(n4[2])  # no unshaped downpour_n4 run: no term
    text = readme_table.generate("results", root=str(tmp_path))
    assert (
        "- the PS schemes' round trips measured once (`round_trips/`: "
        "`downpour` 13.0 per step) in place of the protocol's, plus the "
        "software term: 1 of 1 runs within +-30 % (100.0 %)." in text
    )
    goal = _line(text, "| cost model with the PS schemes' round trips")
    assert goal.endswith("| >= 80 % of runs | 1 of 1 (100.0%) | met |")


def test_compute_bound_ad_psgd_against_one_peer(tmp_path):
    rows = []
    for seed, (active, onepeer) in enumerate(((0.33, 0.30), (0.45, 0.30))):
        rows += [
            _run("compute_latency", "dpsgd_onepeer", seed, onepeer,
                 compute_ms=300),
            _run("compute_latency", "adpsgd", seed, 0.32, compute_ms=300,
                 step_time_active_s=active, step_time_passive_s=0.31,
                 exchanges_per_active_step=0.97),
        ]  # fmt: skip
    _write(tmp_path / "results" / "compute_latency", rows)
    text = readme_table.generate("results", root=str(tmp_path))
    section = "**AD-PSGD with compute-bound steps**"
    head = _line(text, "| scheme |", section)
    assert "1 Gbit/s, 20 ms, 0.40 MB, 300 ms slept compute: ms" in head
    active = _line(text, "| ADPSGD (`adpsgd`), active workers |", section)
    # Paired: 0.33 / 0.30 = 1.1 and 0.45 / 0.30 = 1.5.
    assert active.endswith("| 390 [330-450] (n=2) | 1.30 [1.10-1.50] (n=2) |")
    goal = _line(text, "| AD-PSGD active step / one-peer D-PSGD, 1 Gbit/s")
    assert "300 ms slept compute (issue 15) | <= 1.2 |" in goal
    assert goal.endswith("| missed |")
    goal = _line(text, "| AD-PSGD exchanges per active step, 1 Gbit/s")
    assert goal.endswith("| >= 0.95 | 0.97 [0.97-0.97] (n=2) | met |")


def _written_line(root, rows, start):
    """The generated line starting with `start` once `rows` (one
    experiment) are the only results below `root`."""
    _write(root / "results" / rows[0]["experiment"], rows)
    return _line(readme_table.generate("results", root=str(root)), start)


def test_cpu_quota_straggler_reports_its_burned_compute_slowdown(tmp_path):
    rows = _paired_runs(
        "straggler_quota", "allreduce", ((100, 35), (100, 30)), step=0.5,
        straggler_mode="cpu_quota", window_min_worker_steps=9,
        straggler_compute_slowdown=[("", 3.88), ("", 4.1)],
    )  # fmt: skip
    row = _written_line(
        tmp_path, rows, "| ALLREDUCE (`allreduce`) | worker 3, 4x (cpu_quota)"
    )
    assert "| 32.5 [30.0-35.0] (n=2) % | 3.99 [3.88-4.10] (n=2) |" in row
    assert "| its burned compute in the window, cap steered |" in row


def test_two_experiments_of_one_straggler_cell_are_named(results):
    # A later experiment with the same scheme, straggler and steps (as
    # straggler_ps re-ran Downpour) is a row of its own, named; the
    # earlier one too.
    rows = _paired_runs(
        "straggler_ps", "downpour", ((100, 70), (100, 80)),
        slowest_worker_slowdown=3.5, window_min_worker_steps=6,
    )  # fmt: skip
    _write(results / "results" / "straggler_ps", rows)
    text = readme_table.generate("results", root=str(results))
    old = _line(text, "| DOWNPOUR (`downpour`) | worker 3, 4x (`straggler`, ")
    assert "| 90.0 [85.0-95.0] (n=2) % |" in old
    new = _line(text, "| DOWNPOUR (`downpour`) | worker 3, 4x (`straggler_ps`")
    assert "| 75.0 [70.0-80.0] (n=2) % |" in new
    goal = _line(text, "| `downpour` keeps its throughput, worker 3 4x slower "
                 "(`straggler_ps`, sleep, 20 steps")  # fmt: skip
    assert goal.endswith("| >= 80% | 75.0 [70.0-80.0] (n=2) % | missed |")


def test_header_counts_repeats_per_cell(results, tmp_path):
    # The fixture's unshaped AllReduce and failed Downpour ran once, the
    # other cells twice: a range, not the number of distinct seeds.
    text = readme_table.generate("results", root=str(results))
    assert "8 workers, 1-2 repeats per cell, interleaved" in text
    rows = [_run("latency", "allreduce", r, 0.2) for r in (0, 1, 2)]
    _write(tmp_path / "alone" / "latency", rows)
    text = readme_table.generate("alone", root=str(tmp_path))
    assert "8 workers, 3 repeats, interleaved" in text


def test_straggler_rows_name_the_window_of_their_throughput(tmp_path):
    # A PS run with its workers' element logs was counted per worker (the
    # chief's window beside it); the other schemes from step end times.
    rows = _paired_runs(
        "straggler_ps", "downpour_n4", ((100, 90), (100, 88)),
        chief_window_samples_per_s=(98, 66), window_min_worker_steps=5,
    )  # fmt: skip
    rows += _paired_runs("straggler_ps", "adpsgd", ((100, 92), (100, 94)))
    _write(tmp_path / "results" / "straggler_ps", rows)
    text = readme_table.generate("results", root=str(tmp_path))
    row = _line(text, "| DOWNPOUR_N4 (`downpour_n4`) | worker 3, 4x")
    assert "| 89.0 [88.0-90.0] (n=2) % |" in row
    assert row.endswith(
        "| every worker's steps, from its pipeline's element times |"
    )
    row = _line(text, "| ADPSGD (`adpsgd`) | worker 3, 4x")
    assert row.endswith("| every worker's steps, from its step end times |")


def test_a_ps_straggler_is_predicted_with_its_factor_of_the_compute():
    # A PS scheme's workers take the chief's measured compute (its twin),
    # but the straggler's pipeline sleeps its factor times that: S-PSGD's
    # step waits for it, so the prediction grows by 3 x 0.3 s.
    from tf_decentral import cost_model

    rows = _paired_runs(
        "straggler_ps", "spsgd", ((340, 150),), compute_s=0.3,
        predicted_step_s=0.38, step=(0.44, 1.31), run_id=("plain", "slow"),
    )  # fmt: skip
    predictions = readme_table._predictions(rows)
    plain, slow = (predictions[r["run_id"]][0] for r in rows)
    assert plain == pytest.approx(0.38)  # as recorded: no straggler
    expected = cost_model.worker_step_times(
        "ps_sync",
        model_bytes=400000,
        num_workers=8,
        network=cost_model.Network.from_netsim(1000, 1.0),
        compute=[0.3, 0.3, 0.3, 1.2, 0.3, 0.3, 0.3, 0.3],
        **readme_table.schemes_lib.SCHEMES["spsgd"].cost_kwargs(),
    )
    assert slow == pytest.approx(float(sorted(expected)[4]), rel=1e-6)
    assert slow > 1.2
    # Asynchronous Downpour: the median worker is not the straggler.
    rows = _paired_runs(
        "straggler_ps", "downpour", ((700, 650),), compute_s=0.3,
        predicted_step_s=0.33, run_id=("plain", "slow"),
    )  # fmt: skip
    _, slow = (readme_table._predictions(rows)[r["run_id"]][0] for r in rows)
    assert slow < 0.6


def test_synchronous_ps_straggler_slowdown_is_its_step_growth(tmp_path):
    # S-PSGD's workers push once per update each, so their applied steps
    # are equal (slowdown 1 by construction): the straggler's slowdown is
    # its step's growth over the run without it, in compute per step.
    rows = _paired_runs(
        "straggler", "spsgd", ((340, 155), (336, 157)), compute_s=0.3,
        slowest_worker_slowdown=1.0, step=[(0.75, 1.65), (0.76, 1.63)],
    )  # fmt: skip
    row = _written_line(
        tmp_path, rows, "| SPSGD (`spsgd`) | worker 3, 4x (sleep)"
    )
    # 1 + (1.65 - 0.75) / 0.3 = 4.0; 1 + (1.63 - 0.76) / 0.3 = 3.9.
    assert "| 3.95 [3.90-4.00] (n=2) |" in row
    assert "| its step's growth over the compute (synchronous) |" in row
    assert row.endswith(
        "| the chief's steps (synchronous: every worker in each) |"
    )


def test_the_downpour_docstring_quotes_the_committed_round_trips():
    # Issue 15: the round trips per step stated per protocol in the module
    # docstring are the ones the committed latency sweep gives (the
    # README's "Round trips per step").
    from tf_decentral.strategies.downpour import strategy

    doc = " ".join(strategy.__doc__.split())
    readme = (_REPO / "README.md").read_text()
    _, _, results_dir = readme_table.find_block(readme)
    runs = readme_table.load(str(_REPO / results_dir))
    top = max(
        float(r["latency_ms"])
        for r in runs
        if r["experiment"] == "latency" and r["status"] == "ok"
    )
    for scheme, phrase in (
        ("downpour", "{} for A-PSGD"),
        ("spsgd", "{} for S-PSGD"),
        ("downpour_n4", "{} with n_fetch = n_push = 4"),
    ):
        counts = readme_table._round_trips(
            runs, "latency", scheme, top, stragglers="none"
        )
        median = sorted(counts)[len(counts) // 2]
        assert phrase.format(f"{median:.1f}") in doc, (scheme, counts)
