"""Step time of GossipStrategy against MirroredStrategy on logical CPUs.

For each replica count (each in its own subprocess: logical CPUs must be
configured before TensorFlow initializes, and two MirroredStrategy instances
with different device counts in one process clash on collective group keys)
and each model, measures the steady-state ms/step of `model.fit` on synthetic
data for every strategy, with the same model, global batch and optimizer (SGD
with momentum), `steps_per_execution=1`. After a warm-up `model.fit` epoch
(whose last steps, timed by a callback, are reported as a cross-check), the
train function `fit` calls once per step is timed on a persistent iterator in
blocks of `--steps` steps; strategies are interleaved and the whole set is
repeated `--rounds` times (order rotated each round). The report gives the
median over rounds of each block's median step time, and the median of the
per-round ratios to MirroredStrategy.

A second part (its own subprocess per replica count) times the mixing
alone: `strategy.extended.mix(variables)` in a `tf.function` in cross-replica
context, against the batched all-reduce that Keras issues under
MirroredStrategy (`ReplicaContext.all_reduce(SUM, grads)`) on tensors of the
same shapes, and a breakdown of the package's `mix` into its stages
(read+pack, +stack, +tensordot, +split+assign).

Strategy specs: `mirrored`, or `TOPOLOGY[:UPDATE][+VARIANT]`, e.g. `ring`,
`ring:atc`, `one_peer_exponential+xla`, where VARIANT is one of
`mix_variants.VARIANTS` (a local subclass overriding `mix`; `package` is the
installed `tfd.GossipStrategy`).

Usage:
    python bench/single_host/step_time.py --replicas 4 8 \
        --models mlp cnn mlp_large

Writes `step_time.{csv,md,json}`, `step_time_rounds.csv` and `mix_cost.csv`
to `--out`. See README.md.
"""

import argparse
import csv
import datetime
import gc
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

MODELS = ("mlp", "cnn", "mlp_large")
DEFAULT_STRATEGIES = (
    "mirrored",
    "ring",
    "one_peer_exponential",
    "exponential",
    "ring:atc",
    "ring+nomix",
    "ring+packed",
    "one_peer_exponential+packed",
)
DEFAULT_MIX_SPECS = (
    "ring+package",
    "ring+packed",
    "ring+addn",
    "ring+pervar",
    "one_peer_exponential+package",
    "one_peer_exponential+packed",
    "one_peer_exponential+active",
    "exponential+package",
    "exponential+packed",
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--replicas", type=int, nargs="+", default=[4, 8])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES))
    p.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="repetitions of the interleaved set",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=8,
        help="timed steps per (round, model, strategy) block",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=3,
        help="untimed model.fit steps (tracing) before timing",
    )
    p.add_argument(
        "--fit-check-steps",
        type=int,
        default=10,
        help="timed model.fit steps after the warm-up steps, "
        "reported as a non-interleaved cross-check",
    )
    p.add_argument("--global-batch", type=int, default=128)
    p.add_argument(
        "--mix-bench",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time mix() and all-reduce alone",
    )
    p.add_argument(
        "--mix-specs",
        nargs="+",
        default=list(DEFAULT_MIX_SPECS),
        help="TOPOLOGY+VARIANT whose mix() to time alone",
    )
    p.add_argument(
        "--mix-calls",
        type=int,
        default=5,
        help="calls per round of each mix-alone timing",
    )
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--tag", default="", help="suffix for the output file names")
    p.add_argument("--worker", choices=("step", "mix"), help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    p.add_argument(
        "--worker-timeout",
        type=float,
        default=1800,
        help="seconds before a replica count's subprocess is "
        "killed (its partial results are kept)",
    )
    return p.parse_args(argv)


# ---------------------------------------------------------------------------
# Worker: one replica count, one process.
# ---------------------------------------------------------------------------


def build_model(name, keras):
    layers = keras.layers
    if name == "mlp":  # 101,770 parameters
        inputs = keras.Input((784,))
        x = layers.Dense(128, activation="relu")(inputs)
    elif name == "mlp_large":  # 1,068,810 parameters (4.3 MB)
        inputs = keras.Input((784,))
        x = layers.Dense(1024, activation="relu")(inputs)
        x = layers.Dense(256, activation="relu")(x)
    elif name == "cnn":  # 225,034 parameters
        inputs = keras.Input((28, 28, 1))
        x = layers.Conv2D(32, 3, activation="relu")(inputs)
        x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(64, 3, activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Flatten()(x)
        x = layers.Dense(128, activation="relu")(x)
    else:
        raise ValueError(name)
    outputs = layers.Dense(10)(x)
    return keras.Model(inputs, outputs, name=name)


def make_dataset(name, global_batch, tf):
    shape = (28, 28, 1) if name == "cnn" else (784,)
    n = global_batch * 4
    rng = tf.random.Generator.from_seed(0)
    x = rng.normal((n, *shape))
    y = rng.uniform((n,), 0, 10, dtype=tf.int32)
    # No cache()/prefetch(): with them, creating and deleting the
    # multi-device iterator that every fit() call builds takes seconds.
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    options = tf.data.Options()
    # A precaution: no autotuning thread per iterator (destroying an
    # iterator waits for its threads; see the os._exit in run_worker).
    options.autotune.enabled = False
    return ds.batch(global_batch, drop_remainder=True).with_options(options)


def parse_spec(spec):
    if spec == "mirrored":
        return None
    variant = "package"
    if "+" in spec:
        spec, variant = spec.split("+", 1)
    update = "dpsgd"
    if ":" in spec:
        spec, update = spec.split(":", 1)
    return spec, update, variant


def make_strategy(spec, devices, tf):
    parsed = parse_spec(spec)
    if parsed is None:
        return tf.distribute.MirroredStrategy(devices)
    import mix_variants

    topology, update, variant = parsed
    return mix_variants.make_strategy(topology, devices, update, variant)


def run_worker(args):
    n = args.replicas[0]
    # No cyclic garbage collection: destroying a model.fit iterator has
    # blocked forever in tf.data's thread pool destructor (TF 2.21, 8
    # logical CPUs, heavily loaded machine); the process is short-lived.
    gc.disable()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, HERE)
    import tensorflow as tf

    from tf_decentral import testing

    tf.get_logger().setLevel("ERROR")

    devices = testing.logical_cpus(n)
    import keras

    keras.utils.set_random_seed(0)

    class StepTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.begins = []

        def on_train_batch_begin(self, batch, logs=None):
            self.begins.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            self.begins.append(time.perf_counter())

        def intervals_ms(self):
            b = self.begins
            return [1e3 * (b[k + 1] - b[k]) for k in range(len(b) - 1)]

    t0 = time.perf_counter()
    if args.worker == "mix":
        # Its own process, with no tf.data iterator at all (see gc above).
        info = {"replicas": n, "devices": devices, "part": "mix"}
        strategies = {}
        if "mirrored" in args.strategies:
            strategies["mirrored"] = make_strategy("mirrored", devices, tf)
        mix_rows = mix_bench(args, n, devices, strategies, tf, keras)
        info["worker_s"] = round(time.perf_counter() - t0, 1)
        with open(args.result_file, "w") as f:
            json.dump({"info": info, "rows": [], "mix_rows": mix_rows}, f)
        sys.stderr.flush()
        os._exit(0)

    strategies = {s: make_strategy(s, devices, tf) for s in args.strategies}
    mirrored = strategies.get("mirrored")
    info = {
        "replicas": n,
        "devices": devices,
        "mirrored_cross_device_ops": (
            type(mirrored.extended._cross_device_ops).__name__
            if mirrored is not None
            else None
        ),
    }

    datasets = {m: make_dataset(m, args.global_batch, tf) for m in args.models}
    models = {}
    iterators = {}
    params = {}
    setup = {}
    fit_check = {}
    for m in args.models:
        reference = build_model(m, keras)
        params[m] = int(reference.count_params())
        weights = reference.get_weights()
        for s, strategy in strategies.items():
            ts = time.perf_counter()
            with strategy.scope():
                model = build_model(m, keras)
                model.set_weights(weights)
                model.compile(
                    optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                    loss=keras.losses.SparseCategoricalCrossentropy(
                        from_logits=True
                    ),
                    steps_per_execution=1,
                )
            # Warm-up epoch: traces the train function. Its last
            # --fit-check-steps steps are a (non-interleaved) model.fit
            # cross-check of the interleaved numbers below.
            timer = StepTimer()
            model.fit(
                datasets[m],
                epochs=1,
                steps_per_epoch=args.warmup_steps + args.fit_check_steps,
                callbacks=[timer],
                shuffle=False,
                verbose=0,
            )
            tail = timer.intervals_ms()[args.warmup_steps :]
            fit_check[m, s] = statistics.median(tail) if tail else None
            models[m, s] = model
            # The iterator fit() builds for each epoch, built once here.
            iterators[m, s] = iter(
                strategy.experimental_distribute_dataset(datasets[m])
            )
            setup[f"{m}/{s}"] = round(time.perf_counter() - ts, 2)
            print(
                f"[{n}] setup {m} {s}: {setup[f'{m}/{s}']} s, fit check "
                f"{fit_check[m, s]:.2f} ms/step",
                file=sys.stderr,
                flush=True,
            )
    info["setup_s"] = setup
    info["params"] = params

    # Steady state: call the train function model.fit calls once per step
    # (`logs = self.train_function(iterator)`, steps_per_execution=1) on a
    # persistent iterator, in blocks of --steps steps, interleaving
    # strategies (order rotated every round) so that load from other
    # processes hits every strategy alike. One untimed step per block.
    rows = []
    names = list(strategies)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for m in args.models:
            for s in order:
                train_function = models[m, s].train_function
                it = iterators[m, s]
                train_function(it)
                ms = []
                for _ in range(args.steps):
                    t = time.perf_counter()
                    train_function(it)
                    ms.append(1e3 * (time.perf_counter() - t))
                rows.append(
                    {
                        "replicas": n,
                        "model": m,
                        "params": params[m],
                        "strategy": s,
                        "round": r,
                        "median_ms": statistics.median(ms),
                        "mean_ms": statistics.fmean(ms),
                        "min_ms": min(ms),
                        "steps": len(ms),
                        "fit_check_ms": fit_check[m, s],
                        "load1": os.getloadavg()[0],
                    }
                )
        print(
            f"[{n}] round {r}: "
            + ", ".join(
                f"{row['model']}/{row['strategy']} {row['median_ms']:.1f}"
                for row in rows
                if row["round"] == r
            ),
            file=sys.stderr,
            flush=True,
        )

    info["worker_s"] = round(time.perf_counter() - t0, 1)
    with open(args.result_file, "w") as f:
        json.dump({"info": info, "rows": rows, "mix_rows": []}, f)
    sys.stderr.flush()
    # Skip interpreter teardown, which destroys the iterators (see gc above).
    os._exit(0)


def _time_calls(fn, calls, *fn_args):
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        fn(*fn_args)
        ts.append(1e3 * (time.perf_counter() - t))
    return ts


def mix_bench(args, n, devices, strategies, tf, keras):
    """Times mix() alone, Mirrored's gradient all-reduce, and the stages.

    Every timed function is built and warmed up first; then `--rounds`
    rounds each time every function for `--mix-calls` calls, in an order
    rotated per round. Reported: median over rounds of the per-round
    median, and the minimum over all calls (least disturbed by other load).
    """
    import mix_variants

    from tf_decentral.ops import packing

    def _probe(x):
        # One element of `x`: forces computing `x` without returning (and
        # keeping alive) the whole tensor.
        return tf.reshape(x, [-1])[:1]

    # t=1: for time-varying graphs a round whose active peers differ from
    # t=0's.
    step = tf.constant(1, tf.int64)
    benches = []  # (model, label, fn, fn_args, extra)

    for m in args.models:
        if "mirrored" in strategies:
            mirrored = strategies["mirrored"]
            with mirrored.scope():
                mmodel = build_model(m, keras)
            mvars = [v.value for v in mmodel.trainable_weights]

            @tf.function
            def allreduce(mvars=mvars, mirrored=mirrored):
                def replica_fn():
                    ctx = tf.distribute.get_replica_context()
                    return ctx.all_reduce(
                        tf.distribute.ReduceOp.SUM,
                        [tf.identity(v) for v in mvars],
                    )

                return mirrored.run(replica_fn)

            benches.append((m, "mirrored all_reduce(SUM)", allreduce, (), {}))

        # mix() of each variant on fresh models (mix only reads and assigns
        # the copies, so no fit is needed).
        for spec in args.mix_specs:
            topo, variant = (
                spec.split("+") if "+" in spec else (spec, "package")
            )
            strategy = mix_variants.make_strategy(
                topo, devices, "dpsgd", variant
            )
            with strategy.scope():
                model = build_model(m, keras)
            gvars = [v.value for v in model.trainable_weights]

            @tf.function
            def mix(step, ext=strategy.extended, gvars=gvars):
                ext.mix(gvars, step=step)

            benches.append(
                (
                    m,
                    f"mix {topo}+{variant}",
                    mix,
                    (step,),
                    {"topology": topo, "variant": variant},
                )
            )

        # The package's mix (ring) cut after each stage, cumulatively.
        strategy = mix_variants.make_strategy("ring", devices)
        with strategy.scope():
            model = build_model(m, keras)
        gvars = [v.value for v in model.trainable_weights]

        def stages(upto, ext=strategy.extended, gvars=gvars):
            dtype = gvars[0].dtype
            shapes = [v.shape for v in gvars]
            buffers = []
            for r, device in enumerate(ext.worker_devices):
                with tf.device(device):
                    buffers.append(
                        packing.pack([v.values[r].read_value() for v in gvars])
                    )
            if upto == "1 read+pack":
                return [_probe(b) for b in buffers]
            out = []
            for i, device in enumerate(ext.worker_devices):
                support = ext.support[i]
                with tf.device(device):
                    stacked = tf.stack([buffers[j] for j in support])
                    if upto == "2 +stack":
                        out.append(_probe(stacked))
                        continue
                    w = tf.constant(ext.weights_table[0, i, support], dtype)
                    mixed = tf.tensordot(w, stacked, axes=1)
                    if upto == "3 +tensordot":
                        out.append(_probe(mixed))
                        continue
                    for v, part in zip(gvars, packing.unpack(mixed, shapes)):
                        v.values[i].assign(part, read_value=False)
            return out

        for upto in (
            "1 read+pack",
            "2 +stack",
            "3 +tensordot",
            "4 +split+assign",
        ):
            fn = tf.function(lambda upto=upto, stages=stages: stages(upto))
            benches.append(
                (m, f"ring packed stages {upto}", fn, (), {"stage": upto})
            )

    for _, _, fn, fn_args, _ in benches:  # trace, compile, warm up
        _time_calls(fn, 3, *fn_args)
    per_round = {k: [] for k in range(len(benches))}
    all_calls = {k: [] for k in range(len(benches))}
    for r in range(max(1, args.rounds)):
        order = list(range(len(benches)))
        order = order[r % len(order) :] + order[: r % len(order)]
        for k in order:
            _, _, fn, fn_args, _ = benches[k]
            ts = _time_calls(fn, args.mix_calls, *fn_args)
            per_round[k].append(statistics.median(ts))
            all_calls[k] += ts
    rows = []
    for k, (m, label, _, _, extra) in enumerate(benches):
        rows.append(
            {
                "replicas": n,
                "model": m,
                "what": label,
                "median_ms": statistics.median(per_round[k]),
                "min_ms": min(all_calls[k]),
                "round_medians_ms": " ".join(f"{x:.3f}" for x in per_round[k]),
                **extra,
            }
        )
        print(
            f"[{n}] mix {m:9s} {label:40s} "
            f"median {rows[-1]['median_ms']:8.3f} ms  "
            f"min {rows[-1]['min_ms']:8.3f} ms",
            file=sys.stderr,
            flush=True,
        )
    return rows


# ---------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------


def machine_info():
    import importlib.metadata as md

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    def git(*cmd):
        try:
            return subprocess.run(
                ["git", *cmd],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    # The mix that is measured lives in the gossip package's single_host.py.
    gossip_py = os.path.join(
        REPO, "tf_decentral", "strategies", "gossip", "single_host.py"
    )
    try:
        with open(gossip_py, "rb") as f:
            gossip_sha = hashlib.sha1(f.read()).hexdigest()[:12]
    except OSError:
        gossip_sha = None
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": version("tensorflow") or version("tensorflow-cpu"),
        "keras": version("keras"),
        "numpy": version("numpy"),
        "git_head": git("rev-parse", "--short", "HEAD"),
        "gossip_py_sha1": gossip_sha,
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
    }


def _quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def summarize(rows):
    """Median over rounds per (replicas, model, strategy), and ratios.

    `ratio_vs_mirrored` is the ratio of the medians; `paired_ratio_*` are the
    median and quartiles of the per-round ratios (each round's block against
    the same round's MirroredStrategy block, so slow drifts of the machine's
    load cancel).
    """
    groups = {}
    for r in rows:
        groups.setdefault((r["replicas"], r["model"], r["strategy"]), {})[
            r["round"]
        ] = r
    out = []
    for (n, m, s), by_round in groups.items():
        mir = groups.get((n, m, "mirrored"))
        vals = [r["median_ms"] for r in by_round.values()]
        q1, q3 = _quartiles(vals)
        first = next(iter(by_round.values()))
        row = {
            "replicas": n,
            "model": m,
            "params": first["params"],
            "strategy": s,
            "rounds": len(vals),
            "steps_per_round": first["steps"],
            "median_ms": statistics.median(vals),
            "q1_round_ms": q1,
            "q3_round_ms": q3,
            "min_step_ms": min(r["min_ms"] for r in by_round.values()),
            "fit_check_ms": first["fit_check_ms"],
        }
        if mir:
            mir_vals = [r["median_ms"] for r in mir.values()]
            row["ratio_vs_mirrored"] = row["median_ms"] / statistics.median(
                mir_vals
            )
            paired = [
                by_round[k]["median_ms"] / mir[k]["median_ms"]
                for k in by_round
                if k in mir
            ]
            row["paired_ratio_median"] = statistics.median(paired)
            row["paired_ratio_q1"], row["paired_ratio_q3"] = _quartiles(paired)
        out.append(row)
    return out


def write_outputs(args, info, rows, mix_rows, workers, command):
    os.makedirs(args.out, exist_ok=True)
    tag = f"_{args.tag}" if args.tag else ""
    summary = summarize(rows)
    paths = {}
    paths["raw"] = os.path.join(args.out, f"step_time{tag}_rounds.csv")
    with open(paths["raw"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    paths["csv"] = os.path.join(args.out, f"step_time{tag}.csv")
    fields = list(summary[0])
    for r in summary:
        fields += [k for k in r if k not in fields]
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in summary:
            w.writerow(
                {
                    k: (round(v, 4) if isinstance(v, float) else v)
                    for k, v in r.items()
                }
            )
    if mix_rows:
        paths["mix"] = os.path.join(args.out, f"mix_cost{tag}.csv")
        keys = []
        for r in mix_rows:
            keys += [k for k in r if k not in keys]
        with open(paths["mix"], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(mix_rows)
    paths["json"] = os.path.join(args.out, f"step_time{tag}.json")
    with open(paths["json"], "w") as f:
        json.dump(
            {
                "command": command,
                "machine": info,
                "workers": workers,
                "summary": summary,
                "rows": rows,
                "mix_rows": mix_rows,
            },
            f,
            indent=1,
        )
    paths["md"] = os.path.join(args.out, f"step_time{tag}.md")
    with open(paths["md"], "w") as f:
        f.write(markdown(args, info, summary, mix_rows, workers, command))
    return paths


def markdown(args, info, summary, mix_rows, workers, command):
    lines = ["# GossipStrategy vs MirroredStrategy step time", ""]
    lines += ["```", command, "```", ""]
    lines.append(
        f"- {info['date']}; nproc={info['nproc']}; CPU: {info['cpu_model']}; "
        f"Python {info['python']}; TF {info['tensorflow']}; "
        f"Keras {info['keras']}; NumPy {info['numpy']}; "
        f"git {info['git_head']} (gossip/single_host.py sha1 "
        f"{info['gossip_py_sha1']})"
    )
    lines.append(
        f"- load average at start {info['load_avg_start']}, at end "
        f"{info.get('load_avg_end')}; total {info.get('total_s')} s"
    )
    lines.append(
        f"- global batch {args.global_batch} (same for every replica count), "
        "SGD(0.01, momentum=0.9), sparse categorical cross-entropy, no "
        f"metrics, steps_per_execution=1; {args.warmup_steps} warm-up "
        "model.fit steps; then the train function model.fit calls per step "
        "is called on a persistent iterator in blocks of "
        f"{args.steps} timed steps (plus 1 untimed), strategies interleaved, "
        f"{args.rounds} rounds with rotated order"
    )
    lines.append(
        "- cell: median over rounds of each block's median ms/step; "
        "(x): median over rounds of the per-round ratio to mirrored; "
        "`fit` columns: ms/step of the last "
        f"{args.fit_check_steps} steps of the warm-up model.fit epoch "
        "(timed between on_train_batch_begin calls, not interleaved), a "
        "cross-check"
    )
    for wk in workers:
        lines.append(
            f"- {wk['replicas']} replicas: Mirrored cross-device ops "
            f"{wk['mirrored_cross_device_ops']}, params {wk['params']}, "
            f"worker {wk['worker_s']} s"
        )
    lines.append("")
    strategies = list(dict.fromkeys(r["strategy"] for r in summary))
    by = {(r["replicas"], r["model"], r["strategy"]): r for r in summary}
    for n in args.replicas:
        lines += [f"## {n} replicas (ms/step)", ""]
        lines.append(
            "| strategy | "
            + " | ".join(args.models)
            + " | "
            + " | ".join(f"fit {m}" for m in args.models)
            + " |"
        )
        lines.append("|---" * (2 * len(args.models) + 1) + "|")
        for s in strategies:
            cells, checks = [], []
            for m in args.models:
                r = by.get((n, m, s))
                if r is None:
                    cells.append("")
                    checks.append("")
                    continue
                cell = f"{r['median_ms']:.1f}"
                if "paired_ratio_median" in r and s != "mirrored":
                    cell += f" ({r['paired_ratio_median']:.2f})"
                cells.append(cell)
                fc = r.get("fit_check_ms")
                checks.append("" if fc is None else f"{fc:.1f}")
            lines.append(f"| {s} | " + " | ".join(cells + checks) + " |")
        lines.append("")
    if mix_rows:
        lines += [
            "## Mixing alone (ms per call: median over rounds of the "
            "per-round median, and in parentheses the minimum over all "
            "calls)",
            "",
            "`mix T+V`: `strategy.extended.mix(trainable variables, step=1)` "
            "in a `tf.function`, topology T, variant V "
            "(`mix_variants.py`); `mirrored all_reduce(SUM)`: the batched "
            "all-reduce Keras issues under MirroredStrategy, on tensors of "
            "the same shapes; `ring packed stages`: the packed mix cut "
            "after each stage (cumulative).",
            "",
        ]
        whats = list(dict.fromkeys(r["what"] for r in mix_rows))
        cols = [(n, m) for n in args.replicas for m in args.models]
        lines.append(
            "| op | " + " | ".join(f"{m} n={n}" for n, m in cols) + " |"
        )
        lines.append("|---" * (len(cols) + 1) + "|")
        mb = {(r["replicas"], r["model"], r["what"]): r for r in mix_rows}
        for wh in whats:
            cells = [
                f"{mb[n, m, wh]['median_ms']:.2f} "
                f"({mb[n, m, wh]['min_ms']:.2f})"
                if (n, m, wh) in mb
                else ""
                for n, m in cols
            ]
            lines.append(f"| {wh} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    command = "python " + " ".join(
        shlex.quote(a)
        for a in [os.path.relpath(__file__, REPO)]
        + (sys.argv[1:] if argv is None else list(argv))
    )
    info = machine_info()
    t0 = time.perf_counter()
    rows, mix_rows, workers = [], [], []
    passthrough = [a for a in (sys.argv[1:] if argv is None else argv)]
    # Drop --replicas ... from the pass-through arguments.
    cleaned, skip = [], False
    for a in passthrough:
        if a == "--replicas":
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        cleaned.append(a)
    parts = ["step", "mix"] if args.mix_bench else ["step"]
    for n, part in [(n, part) for n in args.replicas for part in parts]:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            part,
            "--replicas",
            str(n),
            *cleaned,
        ]
        print(
            f"== {n} replicas, {part}: {' '.join(cmd)}",
            file=sys.stderr,
            flush=True,
        )
        with tempfile.TemporaryDirectory() as tmp:
            result_file = os.path.join(tmp, "result.json")
            try:
                subprocess.run(
                    [*cmd, "--result-file", result_file],
                    cwd=REPO,
                    timeout=args.worker_timeout,
                )
            except subprocess.TimeoutExpired:
                print(
                    f"== {n} replicas: worker killed after "
                    f"{args.worker_timeout} s",
                    file=sys.stderr,
                )
            if not os.path.exists(result_file):
                print(
                    f"== {n} replicas: worker failed, no result",
                    file=sys.stderr,
                )
                continue
            with open(result_file) as f:
                result = json.load(f)
        rows += result["rows"]
        mix_rows += result["mix_rows"]
        if part == "step":
            workers.append(result["info"])
        # Rewrite the outputs after every worker, so that partial results
        # survive a later failure.
        info["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        info["total_s"] = round(time.perf_counter() - t0, 1)
        if rows:
            paths = write_outputs(args, info, rows, mix_rows, workers, command)
    if not rows:
        sys.exit("no results")
    print(markdown(args, info, summarize(rows), mix_rows, workers, command))
    for k, p in paths.items():
        print(f"wrote {k}: {os.path.relpath(p, REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
