"""A Downpour strategy's validated arguments and what follows from them.

`RunConfig` is pure arithmetic (closure length, push-id spacing, the ps's
ring of recent push ids); the chief's driver (`driver.py`) and the public
strategy (`strategy.py`) read it.
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A Downpour strategy's validated arguments, and what follows from them.

    Attributes:
        n_fetch, n_push, protocol, softsync_n, staleness_lr,
        warm_start_steps, options: The strategy's arguments.
        num_workers: The number of worker tasks.
    """

    n_fetch: int
    n_push: int
    protocol: str
    softsync_n: int | None
    staleness_lr: bool
    warm_start_steps: int
    options: object
    num_workers: int

    @property
    def steps_per_closure(self) -> int:
        """Steps of one closure: `lcm(n_fetch, n_push)` (see
        `closure_steps` for a model compiled with `steps_per_execution`)."""
        return math.lcm(self.n_fetch, self.n_push)

    def closure_steps(self, steps_per_execution: int = 1) -> int:
        """Steps of one closure of a model compiled with
        `steps_per_execution`: the smallest multiple of `lcm(n_fetch,
        n_push)` that is at least `steps_per_execution`, so that one
        dispatch to a worker serves that many steps, as TensorFlow's
        `ParameterServerStrategy` does. `"sync"` keeps `lcm(n_fetch,
        n_push)`: every round needs one push of every worker before any
        worker fetches again."""
        lcm = self.steps_per_closure
        if self.protocol == "sync":
            return lcm
        return lcm * -(-int(steps_per_execution) // lcm)

    def pushes_per_closure(self, steps_per_execution: int = 1) -> int:
        """Pushes of the longest closure (the spacing of push ids)."""
        return self.closure_steps(steps_per_execution) // self.n_push

    def ring_size_for(self, steps_per_execution: int = 1) -> int:
        """Recent push ids the ps remembers: more than can be in flight."""
        pushes = self.pushes_per_closure(steps_per_execution)
        return max(
            64, 4 * pushes * (self.max_inflight + self.num_workers + 1)
        )

    @property
    def max_inflight(self) -> int:
        """Closures scheduled but not finished before the chief waits."""
        return self.options.max_inflight_per_worker * self.num_workers

    @property
    def max_pushes(self) -> int:
        """`pushes_per_closure()` without `steps_per_execution`."""
        return self.pushes_per_closure()

    @property
    def required_pushes(self) -> int:
        """Pushes the ps averages per update."""
        return {
            "async": 1,
            "softsync": self.softsync_n,
            "sync": self.num_workers,
        }[self.protocol]

    @property
    def ring_size(self) -> int:
        """`ring_size_for()` without `steps_per_execution`."""
        return self.ring_size_for()
