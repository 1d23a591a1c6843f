"""Run-level metrics from the bench workers' JSON results (no TF, no flags).

`summarize` turns the per-task results of one run into the columns of
`runs.csv`: step time, samples/s over the window in which every worker was
timing, bytes per step, final accuracy, time to a target accuracy; for
AD-PSGD with the active/passive split, step time, bytes and exchanges of
the active and the passive workers apart (they are two kinds of step).

Throughput is the sum over workers of the steps each finished inside the
common window (from the last worker's first timed step to the first
worker's last step), divided by its length. A worker's steps finished by a
time inside its run are interpolated between its step end times (a step in
progress at the window's edge counts in part): counting whole steps lost up
to one step per worker, and with `steps_per_execution` k, whose k steps end
together, a whole execution (20 % of 20 steps at k = 4). A run in which
the workers' timed steps do not overlap has no throughput (NaN,
`window_s` <= 0): it is not replaced by anything else.

The parameter-server schemes report from their chief alone, whose timed
window is a fixed amount of work: it ends when the last worker (the
straggler) finishes its last step, while the others have nothing left to
do. With the workers' element logs (`_worker_elements`: the time each
element of a worker's input pipeline was produced, `_elements_per_step` of
them per step; see `stragglers.process_delayed_dataset`), their
throughput is taken per worker instead: over the window from the chief's
timed start to the first worker's last element, each worker's steps
interpolated between its elements' times. The chief's own window stays
beside it as `chief_window_samples_per_s`.
"""

import bisect
import math
import statistics


def step_durations(result):
    """Returns the timed steps' durations (s) of one worker, pauses removed."""
    times = result["step_end_times"]
    warmup = result["warmup_steps"]
    pauses = dict((int(k), v) for k, v in result.get("eval_pauses", []))
    durations = []
    for i in range(warmup, len(times)):
        # A pause taken at the end of step i delays the end of step i + 1.
        durations.append(times[i] - times[i - 1] - pauses.get(i, 0.0))
    return durations


def _steps_done_by(result, t):
    """Timed steps `result`'s worker finished by time `t`, interpolated
    between its step end times (several steps ending at one time, as with
    `steps_per_execution`, end together there)."""
    return _done_by(result["step_end_times"][result["warmup_steps"] - 1 :], t)


def _done_by(times, t):
    """Events (after the first) of the sorted `times` done by time `t`,
    interpolated between them (events at one time end together)."""
    ends, done = [], []
    for count, end in enumerate(times):
        if ends and end == ends[-1]:
            done[-1] = count
        else:
            ends.append(end)
            done.append(count)
    i = bisect.bisect_right(ends, t)
    if i == 0:
        return 0.0
    if i == len(ends):
        return float(done[-1])
    fraction = (t - ends[i - 1]) / (ends[i] - ends[i - 1])
    return done[i - 1] + fraction * (done[i] - done[i - 1])


def summarize(results, batch_size, target):
    """Returns run-level metrics from the workers' result dicts."""
    per_worker = []
    for r in results:
        durations = step_durations(r)
        # Downpour's chief times Keras steps (one batch of some worker):
        # a worker's step is `keras_steps_per_step` of them.
        k = r.get("keras_steps_per_step", 1)
        if k > 1:
            durations = [
                sum(durations[i : i + k]) for i in range(0, len(durations), k)
            ]
        per_worker.append(durations)
    means = sorted(sum(d) / len(d) for d in per_worker if d)
    pooled = sorted(x for d in per_worker for x in d)
    out = {}
    if not means:
        return out
    out["step_time_s"] = statistics.median(means)
    out["step_time_min_worker_s"] = means[0]
    out["step_time_max_worker_s"] = means[-1]
    out["step_p10_s"] = pooled[int(0.1 * (len(pooled) - 1))]
    out["step_p90_s"] = pooled[int(0.9 * (len(pooled) - 1))]
    # Throughput over the window where every worker was in its timed steps.
    t0 = max(r["timed_start"] for r in results)
    t1 = min(r["step_end_times"][-1] for r in results)
    in_window = [
        sum(1 for t in r["step_end_times"][r["warmup_steps"] :] if t0 < t <= t1)
        for r in results
    ]
    pauses = sum(r.get("eval_seconds", 0.0) for r in results) / len(results)
    out["window_s"] = t1 - t0
    # The fewest steps any worker (a straggler, say) took in the window.
    out["window_min_worker_steps"] = min(in_window)
    if t1 > t0 and sum(in_window):
        steps = sum(
            _steps_done_by(r, t1) - _steps_done_by(r, t0) for r in results
        )
        out["samples_per_s"] = steps * batch_size / max(1e-9, t1 - t0 - pauses)
    else:
        out["samples_per_s"] = math.nan  # no window in which all trained
    if results[0].get("_worker_elements"):
        out["chief_window_samples_per_s"] = out["samples_per_s"]
        out.update(_per_worker_window(results[0], batch_size, pauses))
    out.update(_by_role(results, per_worker))
    rates = results[0].get("_host_rates") or {}
    tasks = results[0].get("_tasks") or []
    if rates and tasks:
        step = out["step_time_s"]
        train_hosts = [t.host for t in tasks if t.job == "worker"]
        per_host = {h: (tx * step, rx * step) for h, (tx, rx) in rates.items()}
        values = [per_host[h][0] for h in train_hosts if h in per_host]
        if values:
            out["host_tx_bytes_per_step"] = sum(values) / len(values)
        busiest = max(per_host, key=lambda h: sum(per_host[h]))
        out["busiest_host"] = next(
            (t.name for t in tasks if t.host == busiest), str(busiest)
        )
        out["busiest_host_bytes_per_step"] = sum(per_host[busiest])
    tx = [r["tx_bytes"] / len(d) for r, d in zip(results, per_worker)
          if r.get("tx_bytes") is not None and d]  # fmt: skip
    rx = [r["rx_bytes"] / len(d) for r, d in zip(results, per_worker)
          if r.get("rx_bytes") is not None and d]  # fmt: skip
    if tx and results[0].get("keras_steps_per_step", 1) == 1:
        out["tx_bytes_per_step"] = sum(tx) / len(tx)
        out["rx_bytes_per_step"] = sum(rx) / len(rx)
    pushes = results[0].get("pushes_by_worker")
    if pushes and len(pushes) > 1:
        # PS schemes: applied steps per worker; the slowest's slowdown.
        counts = sorted(pushes.values())
        out["slowest_worker_slowdown"] = statistics.median(counts) / max(
            1, counts[0]
        )
    histogram = results[0].get("staleness_histogram")
    if histogram:
        # PS schemes: pushes by staleness (updates applied between a push's
        # fetch and its apply); Rudra's n-softsync expects a mean about n.
        counts = {int(k): int(v) for k, v in histogram.items()}
        total = sum(counts.values())
        out["staleness_mean"] = sum(k * v for k, v in counts.items()) / max(
            1, total
        )
        out["staleness_histogram"] = " ".join(
            f"{k}:{v}" for k, v in sorted(counts.items())
        )
    accs = [r["final_accuracy"] for r in results if "final_accuracy" in r]
    if accs:
        out["final_accuracy"] = sum(accs) / len(accs)
    averaged = [r["averaged_accuracy"] for r in results
                if "averaged_accuracy" in r]  # fmt: skip
    if averaged:
        out["averaged_accuracy"] = averaged[0]
    calib = [r["calibration"]["median_s"] for r in results
             if r.get("calibration")]  # fmt: skip
    if calib:
        out["compute_s"] = statistics.median(calib)
        out["compute_max_s"] = max(calib)
    curve = accuracy_curve(results)
    if curve:
        out["time_to_target_s"] = next(
            (t for t, a in curve if a >= target), float("nan")
        )
        out["best_mean_accuracy"] = max(a for _, a in curve)
    loads = [r["loadavg_end"][0] for r in results if r.get("loadavg_end")]
    if loads:
        out["loadavg_end"] = sum(loads) / len(loads)
    out["params"] = results[0].get("params")
    out["model_bytes"] = results[0].get("model_bytes")
    return out


def _per_worker_window(chief, batch_size, pauses):
    """A PS scheme's throughput from its workers' element logs: the window
    from the chief's timed start to the first worker's last element, each
    worker's steps in it interpolated between its elements' times."""
    elements = chief["_worker_elements"].values()
    per_step = chief["_elements_per_step"]
    if not all(elements):  # a worker that never read: no common window
        return {"samples_per_s": math.nan, "window_min_worker_steps": 0}
    t0 = chief["timed_start"]
    t1 = min(times[-1] for times in elements)
    steps = [(_done_by(e, t1) - _done_by(e, t0)) / per_step for e in elements]
    out = {"window_s": t1 - t0, "window_min_worker_steps": min(steps)}
    if t1 > t0 and sum(steps):
        out["samples_per_s"] = sum(steps) * batch_size / (t1 - t0 - pauses)
    else:
        out["samples_per_s"] = math.nan
    return out


def _by_role(results, per_worker):
    """AD-PSGD's active and passive workers apart (empty without roles)."""
    out = {}
    for role in ("active", "passive"):
        chosen = [
            (r, d)
            for r, d in zip(results, per_worker)
            if r.get("role") == role and d
        ]
        if not chosen:
            continue
        means = [sum(d) / len(d) for _, d in chosen]
        out[f"step_time_{role}_s"] = statistics.median(means)
        tx = [r["tx_bytes"] / len(d) for r, d in chosen
              if r.get("tx_bytes") is not None]  # fmt: skip
        if tx:
            out[f"tx_bytes_per_step_{role}"] = sum(tx) / len(tx)
        if role == "active":
            counts = [r.get("exchange_counts") or {} for r, _ in chosen]
            started = sum(
                v for c in counts for k, v in c.items()
                if k not in ("busy", "skipped", "idle", "served", "solo")
            )  # fmt: skip
            steps = sum(len(r["step_end_times"]) for r, _ in chosen)
            out["exchanges_per_active_step"] = started / max(1, steps)
    return out


def accuracy_curve(results):
    """Returns [(train time, mean accuracy over workers)] from the evals.

    A worker's accuracy at time t is its latest evaluation at or before t;
    the curve starts once every worker has one.
    """
    series = [r.get("evals") or [] for r in results]
    if not all(series):
        return []
    times = sorted({e["train_clock"] for s in series for e in s})
    curve = []
    for t in times:
        values = []
        for s in series:
            seen = [e["accuracy"] for e in s if e["train_clock"] <= t]
            if not seen:
                break
            values.append(seen[-1])
        if len(values) == len(series):
            curve.append((t, sum(values) / len(values)))
    return curve
