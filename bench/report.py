"""Goal ratios and cost-model errors of a benchmark run, as Markdown.

    .venv/bin/python bench/report.py bench/results/netsim_n8

Reads `runs.csv` (from `bench/run.py`), writes `runs_model.csv` (every run
with a calibrated prediction added) and `summary.md`, and prints the
summary. Two predictions per run:

- *a priori*: `tf_decentral.cost_model` with `o` = 2 ms and each worker's
  compute `c` measured alone (the `predicted_step_s` of `runs.csv`);
- *calibrated*: the a priori prediction plus, per scheme, a straight line
  in the one-way latency `L`, `a + b L`, fitted by least squares to the
  residuals (measured - a priori) of that scheme's runs in the `latency`
  experiment. `a` is the software cost per step that the alpha-beta terms
  miss (packing, mixing, lock protocols, Keras and gRPC work, waiting for
  CPU on a loaded 2-core machine); `b / 2` counts the extra round trips per
  step the implementation makes beyond the model's. The other experiments
  (bandwidth, straggler, tta) are out of sample; the latency experiment's
  errors are in sample and reported apart.
"""

import collections
import csv
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plots  # noqa: E402  (bench/plots.py: CSV helpers)

_f = plots._float


def _key(r):
    return (r["scheme"], r["workers"], r["hidden"], r["stragglers"])


def _fit_line(points):
    """Least-squares `(a, b)` of y = a + b x; b = 0 for a single x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return my, 0.0
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - b * mx, b


def calibrate(runs):
    """Adds `fit_a_s`, `fit_b_s_per_ms`, `predicted_calibrated_step_s`."""
    residuals = collections.defaultdict(list)
    for r in runs:
        if r["status"] != "ok" or r["experiment"] != "latency":
            continue
        measured, predicted = _f(r["step_time_s"]), _f(r["predicted_step_s"])
        if not (math.isnan(measured) or math.isnan(predicted)):
            residuals[r["scheme"]].append(
                (_f(r["latency_ms"]), measured - predicted)
            )
    fits = {s: _fit_line(points) for s, points in residuals.items()}
    for r in runs:
        r["fit_a_s"] = r["fit_b_s_per_ms"] = ""
        r["predicted_calibrated_step_s"] = ""
        r["in_sample"] = "yes" if r["experiment"] == "latency" else ""
        if r["status"] != "ok" or r["scheme"] not in fits:
            continue
        predicted = _f(r["predicted_step_s"])
        if math.isnan(predicted):
            continue
        a, b = fits[r["scheme"]]
        r["fit_a_s"], r["fit_b_s_per_ms"] = a, b
        r["predicted_calibrated_step_s"] = max(
            1e-4, predicted + a + b * _f(r["latency_ms"])
        )
    return runs


def _ms(seconds):
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.0f}"


def _div(a, b):
    return a / b if b else float("nan")


def step_table(runs, experiment, x_key, x_label, sort_key=None):
    rows = [r for r in runs if r["experiment"] == experiment]
    if not rows:
        return []
    order = {r[x_key]: _f(r[sort_key or x_key]) for r in rows}
    xs = sorted(((v, k) for k, v in order.items()), reverse=bool(sort_key))
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    head = ["scheme"] + [f"{x_label} {x[1]}" for x in xs]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for scheme in schemes:
        cells = [scheme]
        for _, text in xs:
            match = [
                r for r in rows if r["scheme"] == scheme and r[x_key] == text
            ]
            ok = [r for r in match if r["status"] == "ok"]
            if ok:
                r = ok[0]
                cells.append(
                    f"{_ms(_f(r['step_time_s']))} "
                    f"({_ms(_f(r['predicted_step_s']))} / "
                    f"{_ms(_f(r.get('predicted_calibrated_step_s')))})"
                )
            elif match:
                cells.append(match[0]["status"])
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "\nCells: measured ms per step (a priori model / calibrated model)."
    )
    return lines


def goals(runs):
    out = ["## Goals (ratios measured in this run)", ""]
    # 1. Latency-bound; 2. bandwidth-bound: ratios paired by repeat.
    lat = [r for r in runs if r["experiment"] == "latency"]
    if lat:
        top = max(_f(r["latency_ms"]) for r in lat)
        step = {
            s: _by_repeat(runs, "latency", s, latency_ms=top, stragglers="none")
            for s in ("allreduce", "dpsgd_onepeer", "dpsgd_ring")
        }

        def over(scheme, base="allreduce"):
            return _spread(_paired(step[scheme], step[base], _div))

        out += [
            f"- Latency-bound ({top:g} ms one way, 1 Gbit/s; ratios paired "
            f"by repeat): one-peer / AllReduce = {over('dpsgd_onepeer')} "
            f"(goal <= 0.15), ring / AllReduce = {over('dpsgd_ring')} (goal "
            "<= 0.2); "
            + ", ".join(
                f"{s} {_spread(v.values(), 1e3, 0)} ms" for s, v in step.items()
            )
            + ".",
        ]
    bw = [r for r in runs if r["experiment"] == "bandwidth"]
    if bw:
        low = min(_f(r["rate_mbit"]) for r in bw)
        sel = [r for r in bw if _f(r["rate_mbit"]) == low]
        step = {
            s: _by_repeat(
                runs, "bandwidth", s, rate_mbit=low, stragglers="none"
            )
            for s in dict.fromkeys(r["scheme"] for r in sel)
        }
        step = {s: v for s, v in step.items() if v}
        ranking = sorted(
            step, key=lambda s: -statistics.median(step[s].values())
        )
        base = step.get("allreduce", {})
        out += [
            f"- Bandwidth-bound ({low:g} Mbit/s, "
            f"{_f(sel[0]['model_bytes']) / 1e6:.2f} MB model; ratios paired "
            "by repeat): one-peer / AllReduce = "
            f"{_spread(_paired(step.get('dpsgd_onepeer', {}), base, _div))} "
            "(goal <= 0.6); ring / AllReduce = "
            f"{_spread(_paired(step.get('dpsgd_ring', {}), base, _div))} "
            "(ring gossip sends 2 m per worker, ring all-reduce 2 (p-1)/p m "
            "= 1.75 m); slowest first: "
            + ", ".join(
                f"{s} {_spread(step[s].values(), 1e3, 0)} ms" for s in ranking
            )
            + ".",
        ]
    # 3. Straggler: `straggler_goals` (paired by repeat).
    # 4. Time to accuracy, paired by seed (a repeat is a seed).
    tta = [r for r in runs if r["experiment"] == "tta" and r["status"] == "ok"]
    if tta:
        base = _by_repeat(runs, "tta", "allreduce", "time_to_target_s")
        base_acc = _by_repeat(runs, "tta", "allreduce", "final_accuracy")
        parts = []
        for scheme in dict.fromkeys(r["scheme"] for r in tta):
            own = _by_repeat(runs, "tta", scheme, "time_to_target_s")
            acc = _by_repeat(runs, "tta", scheme, "final_accuracy")
            never = sum(math.isnan(v) for v in own.values())
            ratio = _paired(own, base, lambda a, b: a / b)
            points = _paired(acc, base_acc, lambda a, b: a - b)
            parts.append(
                f"{scheme} {_spread(own.values(), 1, 0)} s"
                + (f" ({never} of {len(own)} never)" if never else "")
                + f", x{_spread(ratio)} of AllReduce; final acc "
                f"{_spread(acc.values(), 1, 3)}, "
                f"{_spread(points, 100, 1)} pt"
            )
        out += [
            f"- Time to {_f(tta[0]['target_accuracy']):.0%} test accuracy "
            "(Fashion-MNIST; goal: D-PSGD and AD-PSGD <= 0.5x AllReduce, "
            "final accuracy within 1 point; median [min-max] over seeds, "
            "ratios paired by seed): " + "; ".join(parts) + ".",
        ]
    return out


def model_errors(runs):
    ok = [r for r in runs if r["status"] == "ok"]
    lines = ["## Cost model error (predicted / measured - 1)", ""]
    for name, column, sample in (
        ("a priori, every run", "predicted_step_s", None),
        ("calibrated, out of sample", "predicted_calibrated_step_s", ""),
        ("calibrated, in sample (latency)", "predicted_calibrated_step_s",
         "yes"),
    ):  # fmt: skip
        errors = []
        for r in ok:
            if sample is not None and r.get("in_sample", "") != sample:
                continue
            p, m = _f(r.get(column)), _f(r["step_time_s"])
            if not (math.isnan(p) or math.isnan(m)):
                errors.append((p / m - 1.0, r))
        if not errors:
            continue
        within = sum(abs(e) <= 0.3 for e, _ in errors)
        absolute = sorted(abs(e) for e, _ in errors)
        worst = max(errors, key=lambda x: abs(x[0]))
        lines.append(
            f"- {name}: {within}/{len(errors)} runs within +-30%; median "
            f"|error| {absolute[len(absolute) // 2]:.0%}; worst "
            f"{worst[0]:+.0%} ({worst[1]['run_id']})."
        )
        by_scheme = collections.defaultdict(list)
        for e, r in errors:
            by_scheme[r["scheme"]].append(e)
        lines.append(
            "  - mean error by scheme: "
            + ", ".join(
                f"{s} {sum(v) / len(v):+.0%} (n={len(v)})"
                for s, v in by_scheme.items()
            )
        )
    fits = {}
    for r in ok:
        if r.get("fit_a_s") not in ("", None):
            fits[r["scheme"]] = (_f(r["fit_a_s"]), _f(r["fit_b_s_per_ms"]))
    if fits:
        lines += [
            "",
            "Calibration (residual = a + b L, from the latency sweep; "
            "b / (2 ms) = extra round trips per step):",
            "",
            "| scheme | a (ms) | b (ms per ms of L) | extra round trips |",
            "|---|---|---|---|",
        ]
        for scheme, (a, b) in fits.items():
            lines.append(  # b is in s per ms of L: x 1e3 = ms per ms
                f"| {scheme} | {a * 1e3:.0f} | {b * 1e3:.1f} | "
                f"{b * 1e3 / 2:.1f} |"
            )
    return lines


def bytes_table(runs):
    ok = [
        r
        for r in runs
        if r["status"] == "ok" and r["experiment"] in ("latency", "bandwidth")
    ]
    if not ok:
        return []
    lines = [
        "## Bytes per worker step",
        "",
        "| experiment | network | scheme | model MB | sent per worker "
        "(MB) | busiest host | its MB in+out |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ok:
        sent = _f(r["tx_bytes_per_step"])
        if math.isnan(sent):
            sent = _f(r["host_tx_bytes_per_step"])
        lines.append(
            f"| {r['experiment']} | {r['rate']} {r['latency_ms']} ms | "
            f"{r['scheme']} | {_f(r['model_bytes']) / 1e6:.2f} | "
            f"{sent / 1e6:.2f} | {r['busiest_host']} | "
            f"{_f(r['busiest_host_bytes_per_step']) / 1e6:.2f} |"
        )
    return lines


def _column(r, key):
    """`r[key]`; runs.csv written before the column existed: its default."""
    value = r.get(key)
    if value in (None, "") and key == "steps_per_execution":
        return "1"
    return value if value is not None else ""


def _matches(r, match):
    return all(
        _column(r, k) == v if isinstance(v, str) else _f(_column(r, k)) == v
        for k, v in match.items()
    )


def _by_repeat(runs, experiment, scheme, column="step_time_s", **match):
    """`{repeat: column}` of the runs that completed (Keras'
    `steps_per_execution` 1 unless `match` names it)."""
    match.setdefault("steps_per_execution", 1)
    out = {}
    for r in runs:
        if (
            r["status"] == "ok"
            and r["experiment"] == experiment
            and r["scheme"] == scheme
            and _matches(r, match)
        ):
            repeat = r.get("repeat") or r["run_id"].rsplit("-r", 1)[-1]
            out[int(repeat)] = _f(_column(r, column))
    return out


def _spread(values, scale=1.0, digits=2):
    """`median [min-max]` of `values` (n/a when there are none)."""
    values = sorted(v * scale for v in values if not math.isnan(v))
    if not values:
        return "n/a"
    n = len(values)
    median = statistics.median(values)
    return (
        f"{median:.{digits}f} [{values[0]:.{digits}f}-{values[-1]:.{digits}f}]"
        f" (n={n})"
    )


def fastest(by_repeats):
    """`{repeat: the smallest value}` over several `{repeat: value}`
    (a scheme's step at its best setting, repeat by repeat)."""
    best = {}
    for by_repeat in by_repeats:
        for repeat, value in by_repeat.items():
            best[repeat] = min(value, best.get(repeat, math.inf))
    return best


def _paired(a, b, combine):
    return [combine(a[k], b[k]) for k in sorted(set(a) & set(b))]


def sync_goals(runs):
    """Issue 14's goals from the `sync_latency` / `sync_bandwidth` runs:
    every ratio pairs two schemes of the same repeat (interleaved runs)."""
    lat = [r for r in runs if r["experiment"] == "sync_latency"]
    if not lat:
        return []
    one_way = 0.020

    def at(scheme, latency, experiment="sync_latency", **match):
        return _by_repeat(runs, experiment, scheme, latency_ms=latency, **match)

    ar, stock, loop = (
        at(s, 20.0) for s in ("allreduce", "allreduce_stock", "allreduce_loop")
    )
    onepeer, ring, onepeer0 = (
        at("dpsgd_onepeer", 20.0),
        at("dpsgd_ring", 20.0),
        at("dpsgd_onepeer", 0.0),
    )
    bw = {
        s: _by_repeat(runs, "sync_bandwidth", s)
        for s in ("allreduce", "allreduce_loop", "dpsgd_onepeer")
    }
    ratio = lambda a, b: a / b  # noqa: E731
    rows = [
        ("AllReduceStrategy `fit` / custom loop (1 all-reduce), 20 ms",
         _paired(ar, loop, ratio), "<= 1.1"),
        ("stock MWMS step (3 all-reduces) / custom loop, 20 ms",
         _paired(stock, loop, ratio), "(was 1.8)"),
        ("one-peer D-PSGD: (step - unshaped step) / one-way latency",
         _paired(onepeer, onepeer0, lambda a, b: (a - b) / one_way),
         "<= 1.5"),
        ("one-peer D-PSGD / AllReduceStrategy (1 all-reduce), 20 ms",
         _paired(onepeer, ar, ratio), "<= 0.15"),
        ("one-peer D-PSGD / stock MWMS step (3 all-reduces), 20 ms",
         _paired(onepeer, stock, ratio), ""),
        ("ring D-PSGD / AllReduceStrategy (1 all-reduce), 20 ms",
         _paired(ring, ar, ratio), ""),
        ("one-peer D-PSGD / AllReduceStrategy, 100 Mbit/s, 4 MB",
         _paired(bw["dpsgd_onepeer"], bw["allreduce"], ratio), "<= 0.6"),
        ("AllReduceStrategy `fit` / custom loop, 100 Mbit/s, 4 MB",
         _paired(bw["allreduce"], bw["allreduce_loop"], ratio), ""),
    ]  # fmt: skip
    lines = [
        "## Synchronous baselines (issue 14)",
        "",
        "Ratios pair the runs of one repeat (schemes interleaved); "
        "median [min-max] over repeats. 8 workers.",
        "",
        "| ratio | measured | goal |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {_spread(v)} | {goal} |" for name, v, goal in rows]
    lines += ["", "| scheme | network | step ms |", "|---|---|---|"]
    for experiment, network, latency in (
        ("sync_latency", "unshaped", 0.0),
        ("sync_latency", "1 Gbit/s, 20 ms", 20.0),
        ("sync_bandwidth", "100 Mbit/s, 1 ms, 4 MB", 1.0),
    ):
        schemes = dict.fromkeys(
            r["scheme"] for r in runs if r["experiment"] == experiment
        )
        for scheme in schemes:
            steps = at(scheme, latency, experiment).values()
            lines.append(f"| {scheme} | {network} | {_spread(steps, 1e3, 0)} |")
    return lines


def straggler_goals(runs):
    """Issue 15's straggler goal: the throughput a scheme keeps with a
    straggler, as samples/s with it over samples/s without, per repeat
    (interleaved runs), and the slowdown the straggler achieved."""
    rows = [
        r
        for r in runs
        if r["experiment"] == "straggler"
        and r["status"] == "ok"
        and r["stragglers"] != "none"
    ]
    cells = dict.fromkeys(
        (
            r["scheme"],
            r["stragglers"],
            r["straggler_mode"],
            _column(r, "steps_per_execution"),
        )
        for r in rows
    )
    if not cells:
        return []
    lines = [
        "## Throughput kept with a straggler (issue 15)",
        "",
        "samples/s with the straggler over samples/s without it, runs of "
        "the same repeat paired; median [min-max] over repeats. The "
        "achieved slowdown: PS schemes, each worker's applied steps "
        "(median over the slowest's); others, the straggler's compute "
        "measured alone over the median worker's.",
        "",
        "| scheme | straggler | mode | steps/execution | kept | "
        "achieved slowdown |",
        "|---|---|---|---|---|---|",
    ]
    for scheme, strag, mode, spe in cells:
        match = dict(straggler_mode=mode, steps_per_execution=spe)
        slow = _by_repeat(
            runs, "straggler", scheme, "samples_per_s", stragglers=strag,
            **match,
        )  # fmt: skip
        base = _by_repeat(
            runs, "straggler", scheme, "samples_per_s", stragglers="none",
            **match,
        )  # fmt: skip
        kept = _paired(slow, base, lambda a, b: a / b)
        achieved = [
            _f(r["slowest_worker_slowdown"])
            if _column(r, "slowest_worker_slowdown")
            else _f(r["compute_max_s"]) / _f(r["compute_s"])
            for r in rows
            if (r["scheme"], r["stragglers"], r["straggler_mode"])
            == (scheme, strag, mode)
            and _column(r, "steps_per_execution") == spe
        ]
        lines.append(
            f"| {scheme} | {strag} | {mode} | {spe} | "
            f"{_spread(kept, 100, 1)} % | {_spread(achieved)} |"
        )
    return lines


def ps_latency_goals(runs):
    """Issue 15's step-time goal at 20 ms: each PS scheme's step over
    AllReduceStrategy's, at the same `steps_per_execution` and against the
    fastest AllReduceStrategy of the repeat (its best available)."""
    lat = [
        r
        for r in runs
        if r["experiment"] in ("sync_latency", "latency")
        and _f(r["latency_ms"]) == 20.0
        and r["status"] == "ok"
    ]
    spes = sorted({int(_column(r, "steps_per_execution")) for r in lat})
    ps = dict.fromkeys(r["scheme"] for r in lat if r["scheme"] != "allreduce")
    ps = [s for s in ps if s.startswith("downpour") or s == "spsgd"]
    if not ps or not any(r["scheme"] == "allreduce" for r in lat):
        return []
    experiment = lat[0]["experiment"]

    def steps(scheme, spe):
        return _by_repeat(
            runs, experiment, scheme, latency_ms=20.0, steps_per_execution=spe
        )

    allreduce = {spe: steps("allreduce", spe) for spe in spes}
    best = fastest(allreduce.values())
    ratio = lambda a, b: a / b  # noqa: E731
    lines = [
        "## PS schemes vs AllReduceStrategy at 20 ms (issue 15)",
        "",
        "Step time (a Downpour step: one batch from every worker) over "
        "AllReduceStrategy's, runs of the same repeat paired; median "
        "[min-max] over repeats. 'best' is the faster AllReduceStrategy "
        "of the repeat over the steps_per_execution values run.",
        "",
        "| scheme | steps/execution | step ms | / AllReduce, same "
        "steps/execution | / best AllReduce |",
        "|---|---|---|---|---|",
    ]
    for scheme in ["allreduce", *ps]:
        for spe in spes:
            own = steps(scheme, spe)
            if not own:
                continue
            lines.append(
                f"| {scheme} | {spe} | {_spread(own.values(), 1e3, 0)} | "
                f"{_spread(_paired(own, allreduce[spe], ratio))} | "
                f"{_spread(_paired(own, best, ratio))} |"
            )
    return lines


def summary(out_dir):
    runs = calibrate(plots.read_runs(out_dir))
    if runs:
        with open(
            os.path.join(out_dir, "runs_model.csv"), "w", newline=""
        ) as f:
            writer = csv.DictWriter(f, list(runs[0]))
            writer.writeheader()
            writer.writerows(runs)
    lines = [f"# Summary of {os.path.basename(os.path.abspath(out_dir))}", ""]
    lines += goals(runs) + [""]
    lines += sync_goals(runs) + [""]
    lines += straggler_goals(runs) + [""]
    lines += ps_latency_goals(runs) + [""]
    lines += ["## Step time vs latency (8 workers)", ""]
    lines += step_table(runs, "latency", "latency_ms", "ms") + [""]
    lines += ["## Step time vs bandwidth", ""]
    lines += step_table(runs, "bandwidth", "rate", "", "rate_mbit") + [""]
    lines += model_errors(runs) + [""]
    lines += bytes_table(runs) + [""]
    failed = [r for r in runs if r["status"] not in ("ok",)]
    if failed:
        lines += ["## Runs that did not complete", ""]
        lines += [
            f"- {r['run_id']}: {r['status']}: {r['detail'][:200]}"
            for r in failed
        ]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} RESULTS_DIR")
    print(summary(sys.argv[1]))
