"""PNG plots of a benchmark run directory (`bench/run.py --out=DIR`).

    .venv/bin/python bench/plots.py DIR

Reads `DIR/runs.csv` and `DIR/evals.csv`, writes into DIR:

- `step_time_vs_latency.png`: measured step time (markers) and the cost
  model's prediction (dashed) against one-way latency;
- `step_time_vs_bandwidth.png`: the same against the access links' rate;
- `time_to_accuracy.png`: mean test accuracy of the workers' models against
  training time;
- `straggler_throughput.png`: samples/s without and with a straggler;
- `predicted_vs_measured.png`: every run's predicted against measured step
  time, with the +-30% band.

Needs matplotlib (`pip install matplotlib`, in the `bench` extra).
"""

import collections
import csv
import math
import os
import statistics
import sys

_COLORS = {
    "allreduce": "tab:red",
    "allreduce_stock": "lightcoral",
    "allreduce_loop": "darkred",
    "dpsgd_ring": "tab:blue",
    "dpsgd_exp": "tab:cyan",
    "dpsgd_onepeer": "tab:green",
    "adpsgd": "tab:purple",
    "adpsgd_overlap": "indigo",
    "adpsgd_all": "tab:pink",
    "spsgd": "tab:brown",
    "downpour": "tab:orange",
    "downpour_i8": "gold",
    "downpour_n4": "tab:olive",
    "downpour_adagrad": "saddlebrown",
    "downpour_i8_adagrad": "khaki",
    "softsync_c1": "black",
    "softsync_c2": "dimgray",
    "softsync_c4": "darkgray",
    "softsync_c8": "silver",
    "softsync_c1_lr": "navy",
    "softsync_c8_lr": "teal",
}
"""One colour per scheme of `bench/schemes.py` (a test checks both)."""


def _float(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return float("nan")
    return value


def read_runs(out_dir, calibrated=False):
    """Returns runs.csv's rows (runs_model.csv's if `calibrated` and there)."""
    path = os.path.join(out_dir, "runs.csv")
    model = os.path.join(out_dir, "runs_model.csv")
    if calibrated and os.path.exists(model):
        path = model
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_evals(out_dir):
    path = os.path.join(out_dir, "evals.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _ok(rows):
    return [r for r in rows if r["status"] == "ok"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by_scheme(rows):
    groups = collections.OrderedDict()
    for r in rows:
        groups.setdefault(r["scheme"], []).append(r)
    return groups


def _spread_by(rows, key, value):
    """Returns sorted [(key, median, min, max)] of `value` over repeats."""
    acc = collections.defaultdict(list)
    for r in rows:
        v = _float(r.get(value))
        if not math.isnan(v):
            acc[_float(r[key])].append(v)
    return sorted(
        (k, statistics.median(v), min(v), max(v)) for k, v in acc.items()
    )


def _errorbar(ax, spread, scale, **kwargs):
    """Plots medians with min-max error bars (the repeats' spread)."""
    x = [p[0] for p in spread]
    y = [p[1] * scale for p in spread]
    below = [(p[1] - p[2]) * scale for p in spread]
    above = [(p[3] - p[1]) * scale for p in spread]
    ax.errorbar(x, y, yerr=[below, above], capsize=3, **kwargs)


def _sweep_plot(rows, x_key, x_label, title, path, log_x=False):
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for scheme, group in _by_scheme(rows).items():
        color = _COLORS.get(scheme)
        label = group[0]["label"]
        measured = _spread_by(group, x_key, "step_time_s")
        predicted = _spread_by(group, x_key, "predicted_step_s")
        calibrated = _spread_by(group, x_key, "predicted_calibrated_step_s")
        if measured:
            _errorbar(ax, measured, 1e3, fmt="o-", color=color, label=label)
        if predicted:
            ax.plot(
                [p[0] for p in predicted],
                [p[1] * 1e3 for p in predicted],
                ":",
                color=color,
                alpha=0.6,
            )
        if calibrated:
            ax.plot(
                [p[0] for p in calibrated],
                [p[1] * 1e3 for p in calibrated],
                "--",
                color=color,
                alpha=0.8,
            )
    ax.set_xlabel(x_label)
    ax.set_ylabel("time per step (ms, log scale)")
    ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    ax.set_title(
        title + "\nsolid: measured (median; bars: min-max of the repeats)"
        "\ndotted: cost model a priori; dashed: calibrated on the latency "
        "sweep (report.py)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _describe(rows):
    r = rows[0]
    model = f"{_float(r['model_bytes']) / 1e6:.2f} MB model"
    return f"{r['workers']} workers, {model}"


def plot_latency(runs, out_dir):
    rows = [r for r in _ok(runs) if r["experiment"] == "latency"]
    if not rows:
        return None
    return _sweep_plot(
        rows,
        "latency_ms",
        "one-way latency host to host (ms); rate "
        + ", ".join(sorted({r["rate"] for r in rows})),
        f"Step time vs latency ({_describe(rows)})",
        os.path.join(out_dir, "step_time_vs_latency.png"),
    )


def plot_bandwidth(runs, out_dir):
    rows = [r for r in _ok(runs) if r["experiment"] == "bandwidth"]
    if not rows:
        return None
    return _sweep_plot(
        rows,
        "rate_mbit",
        "access link rate (Mbit/s); latency "
        + ", ".join(sorted({r["latency_ms"] + " ms" for r in rows})),
        f"Step time vs bandwidth ({_describe(rows)})",
        os.path.join(out_dir, "step_time_vs_bandwidth.png"),
        log_x=True,
    )


def mean_curve(evals):
    """Returns [(t, mean accuracy)] from one run's eval rows (all workers)."""
    per_worker = collections.defaultdict(list)
    for e in evals:
        per_worker[e["worker"]].append(
            (_float(e["train_clock_s"]), _float(e["accuracy"]))
        )
    for series in per_worker.values():
        series.sort()
    times = sorted({t for s in per_worker.values() for t, _ in s})
    curve = []
    for t in times:
        values = []
        for s in per_worker.values():
            seen = [a for tt, a in s if tt <= t]
            if seen:
                values.append(seen[-1])
        if len(values) == len(per_worker):
            curve.append((t, sum(values) / len(values)))
    return curve


_TTA_EXPERIMENTS = (
    "tta",
    "tta_long",
    "tta_overlap",
    "tta_straggler",
    "tta16",
)


def plot_time_to_accuracy(runs, evals, out_dir):
    """The local models' mean accuracy over training time, one curve per
    run (repeats in the same colour, a slowed worker dashed); an x marks
    the averaged model's final accuracy where the scheme has one."""
    rows = [r for r in _ok(runs) if r["experiment"] in _TTA_EXPERIMENTS]
    if not rows:
        return None
    by_run = collections.defaultdict(list)
    for e in evals:
        by_run[e["run_id"]].append(e)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    target = _float(rows[0]["target_accuracy"])
    labelled = set()
    for r in rows:
        curve = mean_curve(by_run.get(r["run_id"], []))
        if not curve:
            continue
        slowed = r.get("stragglers", "none") not in ("", "none")
        key = (r["scheme"], slowed)
        label = None
        if key not in labelled:
            labelled.add(key)
            label = r["label"] + (f", straggler {r['stragglers']}" * slowed)
        color = _COLORS.get(r["scheme"])
        ax.plot(
            [c[0] for c in curve],
            [c[1] for c in curve],
            "--" if slowed else "-",
            color=color,
            label=label,
            linewidth=1,
        )
        averaged = _float(r.get("averaged_accuracy"))
        if not math.isnan(averaged):
            ax.plot([curve[-1][0]], [averaged], "x", color=color)
    if not math.isnan(target):
        ax.axhline(target, color="gray", ls=":", label=f"target {target:g}")
    ax.set_xlabel("training time (s, evaluation pauses excluded)")
    ax.set_ylabel("test accuracy (mean of the workers' models)")
    r = rows[0]
    repeats = len({x.get("repeat") for x in rows})
    ax.set_title(
        f"Fashion-MNIST, {_describe(rows)}, {r['rate']} + "
        f"{r['latency_ms']} ms one way; {repeats} seed(s) per scheme\n"
        "x: the averaged model at the end",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, "time_to_accuracy.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_straggler(runs, out_dir):
    rows = [r for r in _ok(runs) if r["experiment"] == "straggler"]
    if not rows:
        return None
    plt = _pyplot()
    schemes = list(_by_scheme(rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.38
    for i, scheme in enumerate(schemes):
        group = [r for r in rows if r["scheme"] == scheme]
        spreads = []
        for offset, slowed in ((-width / 2, False), (width / 2, True)):
            values = [
                v
                for r in group
                if (r["stragglers"] != "none") == slowed
                for v in [_float(r["samples_per_s"])]
                if not math.isnan(v)
            ]
            spreads.append(values)
            if not values:  # not run, or no window in which all trained
                ax.text(i + offset, 0, "n/a", ha="center", va="bottom")
                continue
            median = statistics.median(values)
            ax.bar(
                i + offset,
                median,
                width,
                yerr=[[median - min(values)], [max(values) - median]],
                capsize=3,
                color=_COLORS.get(scheme),
                alpha=0.8 if slowed else 0.4,
            )
        base, slow = spreads
        if base and slow:
            kept = statistics.median(slow) / statistics.median(base)
            ax.text(
                i + width / 2, max(slow), f"{kept:.0%}", ha="center",
                va="bottom",
            )  # fmt: skip
    ax.set_xticks(range(len(schemes)))
    ax.set_xticklabels(
        [_by_scheme(rows)[s][0]["label"] for s in schemes],
        rotation=20,
        fontsize=8,
    )
    ax.set_ylabel("samples/s (all workers)")
    strag = next((r for r in rows if r["stragglers"] != "none"), rows[0])
    ax.set_title(
        f"Throughput: no straggler (light) vs straggler {strag['stragglers']}"
        f" ({strag['straggler_mode']}, {strag['compute_ms']} ms compute)\n"
        "median of the repeats, bars: min-max; n/a: not run or no window "
        "in which every worker trained",
        fontsize=9,
    )
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = os.path.join(out_dir, "straggler_throughput.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_predicted(runs, out_dir):
    rows = [
        r
        for r in _ok(runs)
        if not math.isnan(_float(r.get("predicted_step_s")))
        and not math.isnan(_float(r.get("step_time_s")))
    ]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    for scheme, group in _by_scheme(rows).items():
        ax.scatter(
            [_float(r["step_time_s"]) * 1e3 for r in group],
            [_float(r["predicted_step_s"]) * 1e3 for r in group],
            facecolors="none",
            edgecolors=_COLORS.get(scheme),
            s=25,
        )
        cal = [
            r
            for r in group
            if not math.isnan(_float(r.get("predicted_calibrated_step_s")))
            and r.get("in_sample") != "yes"
        ]
        ax.scatter(
            [_float(r["step_time_s"]) * 1e3 for r in cal],
            [_float(r["predicted_calibrated_step_s"]) * 1e3 for r in cal],
            color=_COLORS.get(scheme),
            label=group[0]["label"],
            s=25,
        )
    values = [_float(r["step_time_s"]) * 1e3 for r in rows] + [
        _float(r["predicted_step_s"]) * 1e3 for r in rows
    ]
    lo, hi = min(values) * 0.7, max(values) * 1.4
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.fill_between(
        [lo, hi], [lo * 0.7, hi * 0.7], [lo * 1.3, hi * 1.3], color="gray",
        alpha=0.15, label="+-30%",
    )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured time per step (ms)")
    ax.set_ylabel("predicted (ms)")
    within = sum(
        abs(_float(r["predicted_step_s"]) / _float(r["step_time_s"]) - 1) <= 0.3
        for r in rows
    )
    cal = [
        _float(r.get("predicted_calibrated_step_s")) / _float(r["step_time_s"])
        for r in rows
        if r.get("in_sample") != "yes"
    ]
    cal = [c for c in cal if not math.isnan(c)]
    cal_within = sum(abs(c - 1) <= 0.3 for c in cal)
    ax.set_title(
        f"Within +-30%: a priori (hollow) {within}/{len(rows)}, "
        f"calibrated out of sample (filled) {cal_within}/{len(cal)}",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "predicted_vs_measured.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_all(out_dir):
    """Writes every plot the data allows; returns the paths written."""
    runs = read_runs(out_dir, calibrated=True)
    evals = read_evals(out_dir)
    paths = [
        plot_latency(runs, out_dir),
        plot_bandwidth(runs, out_dir),
        plot_time_to_accuracy(runs, evals, out_dir),
        plot_straggler(runs, out_dir),
        plot_predicted(runs, out_dir),
    ]
    return [p for p in paths if p]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} RESULTS_DIR")
    for written in make_all(sys.argv[1]):
        print(f"wrote {written}")
