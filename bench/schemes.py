"""The training schemes of the benchmark, as plug-ins of `bench/run.py`.

A `Scheme` says which TF tasks a run starts in which emulated hosts, which
`bench/worker.py` flags they get, which `tf_decentral.cost_model` formula
predicts its step, and which `tf_decentral` export it needs (`requires`):
a scheme whose strategy has not landed is reported as `not_available`
instead of run. Adding a scheme is adding an entry to `SCHEMES`.

Importing this module imports neither TensorFlow nor absl flags.
"""

import dataclasses
import math

from tf_decentral import cost_model


@dataclasses.dataclass(frozen=True)
class Task:
    """One process of a run: its TF job, index and emulated host."""

    job: str
    index: int
    host: int

    @property
    def name(self) -> str:
        return f"{self.job}_{self.index}"


@dataclasses.dataclass(frozen=True)
class Scheme:
    """How to run one training scheme (a plug-in of the runner).

    Attributes:
        name: Name in the CSV and on the command line.
        label: Name in plots.
        strategy: `bench/worker.py --strategy`.
        worker_flags: Extra worker flags.
        cost: `tf_decentral.cost_model` scheme.
        degree: Out-neighbours per step (gossip), for the cost model.
        requires: `tf_decentral` attribute the scheme needs (None: always).
        parameter_servers: Number of ps tasks (0: not a PS scheme). PS
            schemes also start a chief, which drives the workers.
        overlap: The cost model overlaps communication with compute.
        extra_reductions: All-reduces per step besides the gradients'
            (stock MWMS under Keras `fit` reduces the loss and the
            accuracy; AllReduceStrategy keeps them local).
        n_fetch: Downpour: steps between fetches (cost model and flags).
        n_push: Downpour: steps between pushes.
    """

    name: str
    label: str
    strategy: str
    worker_flags: tuple = ()
    cost: str = "allreduce"
    degree: int = 1
    requires: str | None = None
    parameter_servers: int = 0
    overlap: bool = False
    extra_reductions: int = 0
    n_fetch: int = 1
    n_push: int = 1

    def execution_unit(self, steps_per_execution: int, workers: int) -> int:
        """The fewest worker steps that are whole Keras executions of
        `steps_per_execution` (a PS scheme's Keras step is one batch of one
        of `workers` workers): Keras calls back once per execution, so the
        warm-up and the timed steps are rounded up to multiples of it."""
        keras_per_step = workers if self.parameter_servers else 1
        return steps_per_execution // math.gcd(
            steps_per_execution, keras_per_step
        )

    def cost_kwargs(self) -> dict:
        """This scheme's `cost_model.worker_step_times` arguments besides
        the model, the workers, the network and the compute."""
        return dict(
            degree=self.degree,
            num_shards=max(1, self.parameter_servers),
            n_fetch=self.n_fetch,
            n_push=self.n_push,
            extra_reductions=self.extra_reductions,
            overlap=self.overlap,
        )

    @property
    def synchronous(self) -> bool:
        return self.cost in cost_model.SYNCHRONOUS

    def tasks(self, num_workers: int) -> list[Task]:
        """Returns the tasks of a run with `num_workers` training workers.

        Plain schemes: `worker:i` on host `i`. PS schemes: `chief:0` on
        host 0, `worker:i` on host `1 + i`, `ps:k` on host
        `1 + num_workers + k` (every server on its own access link: the
        hot spot the comparison is about).
        """
        if not self.parameter_servers:
            return [Task("worker", i, i) for i in range(num_workers)]
        tasks = [Task("chief", 0, 0)]
        tasks += [Task("worker", i, 1 + i) for i in range(num_workers)]
        tasks += [
            Task("ps", k, 1 + num_workers + k)
            for k in range(self.parameter_servers)
        ]
        return tasks

    def training_task(self, worker: int, num_workers: int) -> Task:
        """Returns the task that computes training worker `worker`'s steps."""
        return self.tasks(num_workers)[
            worker + int(bool(self.parameter_servers))
        ]

    def reporting_tasks(self, num_workers: int) -> list[Task]:
        """Tasks that write a result JSON (the chief for PS schemes)."""
        if self.parameter_servers:
            return [Task("chief", 0, 0)]
        return self.tasks(num_workers)


SCHEMES = {
    s.name: s
    for s in (
        Scheme(
            "allreduce",
            "AllReduce-SGD (ring)",
            "allreduce",
        ),
        Scheme(
            "allreduce_stock",
            "AllReduce, stock MWMS step (3 all-reduces)",
            "allreduce",
            ("--allreduce_step=stock_fit",),
            extra_reductions=2,
        ),
        Scheme(
            "allreduce_loop",
            "AllReduce, custom loop (1 all-reduce)",
            "allreduce",
            ("--allreduce_step=custom_loop",),
        ),
        Scheme(
            "dpsgd_ring",
            "D-PSGD ring",
            "gossip",
            ("--topology=ring",),
            cost="gossip",
            degree=2,
            overlap=True,
        ),
        Scheme(
            "dpsgd_exp",
            "D-PSGD exponential",
            "gossip",
            ("--topology=exponential",),
            cost="gossip",
            degree=3,
            overlap=True,
        ),
        Scheme(
            "dpsgd_onepeer",
            "D-PSGD one-peer exp.",
            "gossip",
            ("--topology=one_peer_exponential",),
            cost="one_peer",
            degree=1,
            overlap=True,
        ),
        Scheme(
            "adpsgd",
            "AD-PSGD ring",
            "async_gossip",
            ("--topology=ring",),
            cost="ad_psgd",
            requires="AsyncGossipStrategy",
        ),
        Scheme(
            "adpsgd_overlap",
            "AD-PSGD ring, exchange overlapping compute",
            "async_gossip",
            ("--topology=ring", "--overlap"),
            cost="ad_psgd",
            requires="AsyncGossipStrategy",
            overlap=True,
        ),
        Scheme(
            "adpsgd_all",
            "AD-PSGD ring, all active",
            "async_gossip",
            ("--topology=ring", "--active_passive=false"),
            cost="ad_psgd",
            requires="AsyncGossipStrategy",
        ),
        Scheme(
            "spsgd",
            "S-PSGD (1 PS)",
            "downpour",
            ("--ps_protocol=sync",),
            cost="ps_sync",
            requires="DownpourParameterServerStrategy",
            parameter_servers=1,
        ),
        Scheme(
            "downpour",
            "A-PSGD / Downpour (1 PS)",
            "downpour",
            ("--ps_protocol=async",),
            cost="downpour",
            requires="DownpourParameterServerStrategy",
            parameter_servers=1,
        ),
        Scheme(
            "downpour_i8",
            "Downpour, 8 closures in flight per worker (1 PS)",
            "downpour",
            ("--ps_protocol=async", "--max_inflight_per_worker=8"),
            cost="downpour",
            requires="DownpourParameterServerStrategy",
            parameter_servers=1,
        ),
        Scheme(
            "downpour_n4",
            "Downpour, fetch/push every 4 steps (1 PS)",
            "downpour",
            ("--ps_protocol=async", "--n_fetch=4", "--n_push=4"),
            cost="downpour",
            requires="DownpourParameterServerStrategy",
            parameter_servers=1,
            n_fetch=4,
            n_push=4,
        ),
        # Dean et al. 2012: Downpour with Adagrad applied on the ps, and
        # both optimizers with more closures (staleness) in flight.
        Scheme(
            "downpour_adagrad",
            "Downpour, Adagrad (1 PS)",
            "downpour",
            ("--ps_protocol=async", "--optimizer=adagrad"),
            cost="downpour",
            requires="DownpourParameterServerStrategy",
            parameter_servers=1,
        ),
        Scheme(
            "downpour_i8_adagrad",
            "Downpour, Adagrad, 8 closures in flight per worker (1 PS)",
            "downpour",
            (
                "--ps_protocol=async",
                "--max_inflight_per_worker=8",
                "--optimizer=adagrad",
            ),
            cost="downpour",
            requires="DownpourParameterServerStrategy",
            parameter_servers=1,
        ),  # fmt: skip
        # Rudra (Gupta et al. 2016) with lambda = 8 learners: the ps
        # averages c pushes per update (`softsync_n`), Rudra's n-softsync
        # for n = lambda / c; with and without the learning rate divided
        # by staleness.
        *(
            Scheme(
                f"softsync_c{c}{'_lr' if lr else ''}",
                f"softsync, {c} push{'es' if c > 1 else ''} per update (1 "
                f"PS){', lr / staleness' if lr else ''}",
                "downpour",
                ("--ps_protocol=softsync", f"--softsync_n={c}")
                + (("--staleness_lr",) if lr else ()),
                cost="downpour",
                requires="DownpourParameterServerStrategy",
                parameter_servers=1,
            )
            for c, lr in (
                (1, False),
                (2, False),
                (4, False),
                (8, False),
                (1, True),
                (8, True),
            )
        ),  # fmt: skip
    )
}

ALL_SCHEMES = tuple(SCHEMES)
