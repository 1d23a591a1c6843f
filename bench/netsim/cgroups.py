"""CPU-quota cgroups for real (not slept) stragglers; v2 or v1, whichever works.

A process in a cgroup with quota `q` (a fraction of one CPU) gets at most
`q * period` of CPU time per period: CFS bandwidth control. This machine
(checked by `detect()`): the hybrid layout, where `/sys/fs/cgroup/unified`
(cgroup v2) offers only `hugetlb`, so v2's `cpu.max` is unusable and v1's
`/sys/fs/cgroup/cpu/<group>/cpu.cfs_quota_us` is used instead.

`ip netns exec` remounts /sys, so a process inside a namespace cannot see the
cgroup tree: put it in the cgroup from outside (this module writes the pid
from the root mount namespace, or `preexec` moves the child before it
execs `ip netns exec`).
"""

import contextlib
import dataclasses
import os

_V2_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
_V1_CPU_ROOTS = ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct")
_PERIOD_US = 50_000  # a cap's smallest is 1 ms per period: 0.02 CPUs


@dataclasses.dataclass(frozen=True)
class CgroupSupport:
    """Which CPU-quota mechanism works here.

    Attributes:
        version: `"v2"`, `"v1"` or None (no CPU quota available).
        root: Directory under which groups are created.
        detail: What was checked, for reports.
    """

    version: str | None
    root: str | None
    detail: str


def detect() -> CgroupSupport:
    """Returns the usable CPU-quota cgroup mechanism of this machine."""
    notes = []
    for root in _V2_ROOTS:
        controllers = os.path.join(root, "cgroup.controllers")
        if not os.path.exists(controllers):
            continue
        with open(controllers) as f:
            available = f.read().split()
        notes.append(f"cgroup v2 at {root}: controllers={available}")
        if "cpu" in available and os.access(root, os.W_OK):
            with contextlib.suppress(OSError):
                with open(os.path.join(root, "cgroup.subtree_control")) as f:
                    enabled = f.read().split()
                if "cpu" in enabled:
                    return CgroupSupport("v2", root, "; ".join(notes))
                with open(
                    os.path.join(root, "cgroup.subtree_control"), "w"
                ) as f:
                    f.write("+cpu")
                return CgroupSupport("v2", root, "; ".join(notes))
            notes.append(f"cannot enable +cpu in {root}")
    for root in _V1_CPU_ROOTS:
        if os.path.exists(os.path.join(root, "cpu.cfs_quota_us")):
            notes.append(f"cgroup v1 cpu controller at {root}")
            return CgroupSupport("v1", root, "; ".join(notes))
    notes.append("no cgroup v1 cpu controller")
    return CgroupSupport(None, None, "; ".join(notes))


class CpuQuota:
    """A cgroup that caps its processes at `cpus` CPUs (e.g. 0.25).

    Args:
        name: Directory name of the group (start it with the network's name
            so `python -m bench.netsim down --all` finds it).
        cpus: CPU time per wall second, > 0 (1.0 = one full core).
        support: From `detect()` (default: detect now).

    Raises:
        RuntimeError: If no CPU-quota cgroup is available.
    """

    def __init__(self, name: str, cpus: float, support=None):
        support = support or detect()
        if support.version is None:
            raise RuntimeError(
                "No CPU-quota cgroup is available here "
                f"({support.detail}). Use the sleep straggler instead "
                "(--straggler_mode=sleep)."
            )
        if not cpus > 0:
            raise ValueError(f"`cpus` must be > 0. Received: cpus={cpus!r}")
        self.support = support
        self.path = os.path.join(support.root, name)
        os.makedirs(self.path, exist_ok=True)
        if support.version == "v1":
            self._write("cpu.cfs_period_us", str(_PERIOD_US))
        self.set(cpus)

    def set(self, cpus: float):
        """Changes the cap to `cpus` CPUs (at least 1 ms per period), also
        while the group's processes run."""
        if not cpus > 0:
            raise ValueError(f"`cpus` must be > 0. Received: cpus={cpus!r}")
        quota = max(1000, int(cpus * _PERIOD_US))
        if self.support.version == "v2":
            self._write("cpu.max", f"{quota} {_PERIOD_US}")
        else:
            self._write("cpu.cfs_quota_us", str(quota))
        self.cpus = quota / _PERIOD_US

    def _write(self, leaf, value):
        with open(os.path.join(self.path, leaf), "w") as f:
            f.write(value)

    def add(self, pid: int):
        """Moves process `pid` (all its threads) into the group."""
        self._write("cgroup.procs", str(pid))

    def preexec(self):
        """A `Popen(preexec_fn=...)` that moves the child in before exec."""
        path = os.path.join(self.path, "cgroup.procs")

        def move_self():
            with open(path, "w") as f:
                f.write(str(os.getpid()))

        return move_self

    def throttled(self) -> dict[str, int]:
        """Returns the group's `cpu.stat` counters (nr_throttled, ...)."""
        stats = {}
        with contextlib.suppress(OSError):
            with open(os.path.join(self.path, "cpu.stat")) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if value.strip().isdigit():
                        stats[key] = int(value)
        return stats


def stale_cgroups(prefix: str) -> list[str]:
    """Returns cgroup directories whose name starts with `prefix`."""
    found = []
    for root in _V2_ROOTS + _V1_CPU_ROOTS:
        with contextlib.suppress(OSError):
            for entry in os.listdir(root):
                path = os.path.join(root, entry)
                if entry.startswith(prefix) and os.path.isdir(path):
                    found.append(path)
    return found
