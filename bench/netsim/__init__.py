"""Emulated clusters on one Linux machine: namespaces, tbf, an NFQUEUE delay.

`Network` builds N host namespaces around a router namespace with per-host
bandwidth and one-way latency (see `emulator`); `cgroups` caps a process's
CPU for real stragglers. `python -m bench.netsim` is the command line
(`up`, `down`, `exec`, `status`, `selftest`).
"""

from .cgroups import CpuQuota
from .cgroups import detect as detect_cgroups
from .emulator import NAME_PREFIX
from .emulator import STATE_DIR
from .emulator import Link
from .emulator import NetsimError
from .emulator import Network
from .emulator import interface_counters
from .emulator import parse_link_override
from .emulator import rate_bits_per_second
from .emulator import remove
from .emulator import remove_all

__all__ = (
    "NAME_PREFIX",
    "STATE_DIR",
    "CpuQuota",
    "Link",
    "NetsimError",
    "Network",
    "detect_cgroups",
    "interface_counters",
    "parse_link_override",
    "rate_bits_per_second",
    "remove",
    "remove_all",
)
