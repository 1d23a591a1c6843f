"""An emulated cluster: host namespaces around a router namespace.

`Network(num_hosts, Link(rate="100mbit", delay_ms=10))` builds, on one Linux
machine (root needed):

- a router namespace `<name>-sw` and host namespaces `<name>-h0 ...`;
- host `i`: `eth0 = 10.77.<i>.2/24`, default route via `10.77.<i>.1` (the
  router's port `p<i>`, a veth pair created directly inside the two
  namespaces); MTU 9000 by default (fewer packets for the delay daemon);
- bandwidth: a `tbf` qdisc at the link's rate on both ends of every access
  link (host egress = uplink, router port egress = downlink). netem, fq and
  the other qdiscs are not compiled into this kernel; tbf and htb are;
- latency: the router sends every forwarded packet to an NFQUEUE and
  `delayd.py` (stdlib only) holds it for `delay[src] + delay[dst]`, so the
  one-way latency host to host is the sum of both access links' delays
  (10 ms per link = 20 ms host to host, ping RTT 40 ms).

Nothing is configured in the root namespace and no route leads out of the
namespaces, so emulated traffic only flows between the namespaces built
here. Every name starts with `NAME_PREFIX`; `down()` (also called by the
context manager's exit, by SIGTERM/SIGHUP while inside the `with` block, and
at interpreter exit) kills every process left inside those namespaces,
deletes them (their veths, qdiscs and iptables rules go with them) and
removes the CPU cgroups registered with `add_cgroup`. After a crash or
SIGKILL, `python -m bench.netsim down --all` finds what is left by the name
prefix and by the state files in `STATE_DIR`.

Measured on this machine (reference/netsim and `python -m bench.netsim
selftest`): 20 ms host to host gives a ping RTT of 40-41 ms; tbf at
100 Mbit/s gives 94-98 Mbit/s of TCP goodput.

Example:

    with Network(4, Link(rate="100mbit", delay_ms=10)) as net:
        net.run(0, ["ping", "-c", "3", net.address(1)])
        proc = net.popen(1, ["python3", "worker.py"])
"""

import atexit
import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

from . import cgroups

NAME_PREFIX = "tfdn-"
"""Every namespace and cgroup this module creates starts with this."""

STATE_DIR = "/run/tfd-netsim"
"""One JSON file per live network: what `down --all` must remove."""

DEFAULT_SUBNET = "10.77"
_DELAYD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "delayd.py")
_QUEUE_NUM = 0
# tbf drops every packet larger than its burst: keep it far above the MTU.
_TBF_BURST = "256kb"
_TBF_LATENCY = "200ms"
_DAEMON_READY_SECONDS = 10.0
_RATE_UNITS = {
    "bit": 1.0,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "tbit": 1e12,
    "bps": 8.0,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
}


def rate_bits_per_second(rate: str | None) -> float:
    """Returns a tc rate such as `"100mbit"` in bit/s; None is unlimited.

    Example:
        >>> rate_bits_per_second("100mbit")
        100000000.0
        >>> rate_bits_per_second(None)
        inf
    """
    if rate is None:
        return float("inf")
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-z]*)\s*", str(rate).lower())
    if not match or match.group(2) not in _RATE_UNITS:
        raise ValueError(
            "`rate` must be a tc rate such as '100mbit' or '1gbit'. "
            f"Received: rate={rate!r}"
        )
    return float(match.group(1)) * _RATE_UNITS[match.group(2)]


@dataclasses.dataclass(frozen=True)
class Link:
    """One host's access link to the router.

    Attributes:
        rate: tc rate of the link in each direction (`"100mbit"`), or None
            for no shaping (then the veth's own speed, several Gbit/s).
        delay_ms: One-way delay of this access link in ms, at least 0. Host
            to host, a packet pays the delays of both ends' links.
    """

    rate: str | None = None
    delay_ms: float = 0.0

    def __post_init__(self):
        rate_bits_per_second(self.rate)
        if not self.delay_ms >= 0:
            raise ValueError(
                f"`delay_ms` must be >= 0. Received: delay_ms={self.delay_ms!r}"
            )


def parse_link_override(text: str) -> tuple[int, Link]:
    """Parses `"3:rate=10mbit,delay_ms=40"` into `(3, Link(...))`.

    Missing fields are None / 0 here; `Network` fills them from the default
    link (see `Network.link`).

    Example:
        >>> parse_link_override("3:rate=10mbit,delay_ms=40")
        (3, Link(rate='10mbit', delay_ms=40.0))
    """
    index, _, fields = text.partition(":")
    if not index.strip().isdigit() or not fields:
        raise ValueError(
            "A host override must look like 'INDEX:rate=10mbit,delay_ms=40'."
            f" Received: {text!r}"
        )
    values = {}
    for field in fields.split(","):
        key, _, value = field.partition("=")
        key = key.strip()
        if key == "rate":
            values["rate"] = None if value in ("", "none") else value.strip()
        elif key in ("delay_ms", "delay"):
            values["delay_ms"] = float(value)
        else:
            raise ValueError(
                "A host override's fields must be rate= or delay_ms=. "
                f"Received: {field!r} in {text!r}"
            )
    return int(index), _PartialLink(**values)


@dataclasses.dataclass(frozen=True)
class _PartialLink(Link):
    """A `Link` whose unset fields fall back to the network's default."""

    rate: str | None = "<default>"
    delay_ms: float = -1.0

    def __post_init__(self):
        if self.rate != "<default>":
            rate_bits_per_second(self.rate)

    def __repr__(self):
        return repr(self.complete(Link()))

    def complete(self, default: Link) -> Link:
        return Link(
            rate=default.rate if self.rate == "<default>" else self.rate,
            delay_ms=default.delay_ms if self.delay_ms < 0 else self.delay_ms,
        )


class NetsimError(RuntimeError):
    """A command that builds or inspects the emulated network failed."""


def _run(argv, *, check=True, timeout=30.0):
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise NetsimError(
            f"`{' '.join(argv)}` failed with exit code {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return result


def require_root_tools(need_iptables: bool = True):
    """Raises `NetsimError` unless root with `ip`, `tc` (and iptables)."""
    if os.geteuid() != 0:
        raise NetsimError(
            "The network emulation needs root (network namespaces, tc, "
            "iptables). Run it as root, e.g. `sudo .venv/bin/python ...`."
        )
    tools = ["ip", "tc"] + (["iptables"] if need_iptables else [])
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise NetsimError(
            f"Missing tools: {', '.join(missing)}. Install them with "
            "`apt-get install -y iproute2 iptables` (and iperf3 "
            "iputils-ping for `selftest`)."
        )


def list_namespaces() -> list[str]:
    """Returns every network namespace name on the machine."""
    result = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line]


def namespace_pids(netns: str) -> list[int]:
    """Returns the pids of the processes living in namespace `netns`."""
    result = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


class Network:
    """N emulated hosts around a router; see the module docstring.

    Args:
        num_hosts: Number of host namespaces, in `[1, 250]`.
        link: Every host's access link unless overridden.
        overrides: `{host index: Link}` for slow or far hosts (a
            `_PartialLink` from `parse_link_override` keeps the default's
            unset fields).
        mtu: MTU of every veth (9000 cuts the delay daemon's work).
        name: Name of this network, the prefix of its namespaces; must
            start with `NAME_PREFIX`. Default: `NAME_PREFIX` + 6 random hex
            digits.
        subnet: First two octets of the hosts' addresses.
        python: Interpreter that runs the delay daemon (stdlib only).
    """

    def __init__(
        self,
        num_hosts: int,
        link: Link = Link(),
        overrides: dict[int, Link] | None = None,
        *,
        mtu: int = 9000,
        name: str | None = None,
        subnet: str = DEFAULT_SUBNET,
        python: str = sys.executable,
    ):
        if not 1 <= num_hosts <= 250:
            raise ValueError(
                "`num_hosts` must be in [1, 250]. "
                f"Received: num_hosts={num_hosts!r}"
            )
        overrides = dict(overrides or {})
        bad = [i for i in overrides if not 0 <= i < num_hosts]
        if bad:
            raise ValueError(
                f"Override host indices must be in [0, {num_hosts}). "
                f"Received: {bad}"
            )
        name = name or NAME_PREFIX + secrets.token_hex(3)
        if not name.startswith(NAME_PREFIX) or not re.fullmatch(
            r"[a-z0-9-]+", name
        ):
            raise ValueError(
                f"`name` must start with {NAME_PREFIX!r} and use only "
                f"a-z, 0-9 and '-'. Received: name={name!r}"
            )
        self.num_hosts = num_hosts
        self.default_link = link
        self.links = []
        for i in range(num_hosts):
            own = overrides.get(i, link)
            if isinstance(own, _PartialLink):
                own = own.complete(link)
            self.links.append(own)
        self.mtu = mtu
        self.name = name
        self.subnet = subnet
        self.python = python
        self.router = f"{name}-sw"
        self.daemon = None
        self.cgroups = []
        self._is_up = False
        self._previous_handlers = {}

    # Names and addresses --------------------------------------------------

    def netns(self, host: int) -> str:
        """Returns the namespace name of host `host`."""
        return f"{self.name}-h{host}"

    def address(self, host: int) -> str:
        """Returns host `host`'s IPv4 address."""
        return f"{self.subnet}.{host}.2"

    def link(self, host: int) -> Link:
        """Returns host `host`'s access link."""
        return self.links[host]

    def one_way_ms(self, a: int, b: int) -> float:
        """Returns the emulated one-way latency from host a to host b."""
        return self.links[a].delay_ms + self.links[b].delay_ms

    @property
    def namespaces(self) -> list[str]:
        return [self.router] + [self.netns(i) for i in range(self.num_hosts)]

    @property
    def delayed(self) -> bool:
        return any(link.delay_ms > 0 for link in self.links)

    # Set-up and tear-down -------------------------------------------------

    def up(self):
        """Builds the network; on any failure removes what it built."""
        if self._is_up:
            return self
        require_root_tools(need_iptables=self.delayed)
        clash = set(self.namespaces) & set(list_namespaces())
        if clash:
            raise NetsimError(
                f"Namespaces {sorted(clash)} exist already. Remove them "
                "with `python -m bench.netsim down --all` (or pick another "
                "name)."
            )
        self._is_up = True
        self._write_state()
        atexit.register(self.down)
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self):
        sw = self.router
        _run(["ip", "netns", "add", sw])
        _run(["ip", "-n", sw, "link", "set", "lo", "up"])
        self.sysctl(None, "net.ipv4.ip_forward", "1")
        for i, link in enumerate(self.links):
            ns = self.netns(i)
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(
                ["ip", "link", "add", f"p{i}", "netns", sw, "type", "veth"]
                + ["peer", "name", "eth0", "netns", ns]
            )
            _run(["ip", "-n", sw, "link", "set", f"p{i}", "mtu", str(self.mtu)])
            _run(["ip", "-n", ns, "link", "set", "eth0", "mtu", str(self.mtu)])
            _run(
                ["ip", "-n", sw, "addr", "add", f"{self.subnet}.{i}.1/24"]
                + ["dev", f"p{i}"]
            )
            _run(
                ["ip", "-n", ns, "addr", "add", f"{self.address(i)}/24"]
                + ["dev", "eth0"]
            )
            _run(["ip", "-n", sw, "link", "set", f"p{i}", "up"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _run(
                ["ip", "-n", ns, "route", "add", "default", "via"]
                + [f"{self.subnet}.{i}.1"]
            )
            if link.rate is not None:
                for where, dev in ((ns, "eth0"), (sw, f"p{i}")):
                    _run(
                        ["ip", "netns", "exec", where, "tc", "qdisc", "add"]
                        + ["dev", dev, "root", "tbf", "rate", link.rate]
                        + ["burst", _TBF_BURST, "latency", _TBF_LATENCY]
                    )
        if self.delayed:
            self._start_daemon()

    def _start_daemon(self):
        # No --queue-bypass: if the daemon dies, traffic stops (a loud
        # failure) instead of silently losing its latency.
        _run(
            ["ip", "netns", "exec", self.router, "iptables", "-A", "FORWARD"]
            + ["-j", "NFQUEUE", "--queue-num", str(_QUEUE_NUM)]
        )
        log = open(self.state_path(".delayd.log"), "w")
        argv = [
            "ip", "netns", "exec", self.router, self.python, _DELAYD,
            "--queue", str(_QUEUE_NUM), "--prefix", self.subnet,
        ] + [f"{link.delay_ms:g}" for link in self.links]  # fmt: skip
        self.daemon = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
        log.close()
        self._write_state()
        deadline = time.monotonic() + _DAEMON_READY_SECONDS
        line = ""
        while time.monotonic() < deadline:
            line = self.daemon.stdout.readline()
            if line.strip() == "ready" or self.daemon.poll() is not None:
                break
        if line.strip() != "ready":
            with open(self.state_path(".delayd.log")) as f:
                detail = f.read().strip()
            raise NetsimError(f"The delay daemon did not start: {detail}")

    def daemon_alive(self) -> bool:
        """True if no daemon is needed or it is still running."""
        return self.daemon is None or self.daemon.poll() is None

    def down(self):
        """Kills processes in our namespaces, deletes them and our cgroups.

        Idempotent; never raises for things already gone.
        """
        if not self._is_up:
            return
        remove(self.name, cgroup_paths=self.cgroups)
        if self.daemon is not None:
            with contextlib.suppress(Exception):
                self.daemon.wait(timeout=5)
            if self.daemon.stdout:
                self.daemon.stdout.close()
        self.daemon = None
        self._is_up = False
        with contextlib.suppress(Exception):
            atexit.unregister(self.down)

    def detach(self):
        """Leaves the network up after this process exits (CLI `up`)."""
        with contextlib.suppress(Exception):
            atexit.unregister(self.down)
        self._is_up = False

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous_handlers[signum] = signal.signal(
                    signum, _raise_system_exit
                )
        try:
            return self.up()
        except BaseException:
            self._restore_handlers()
            raise

    def __exit__(self, *exc_info):
        try:
            self.down()
        finally:
            self._restore_handlers()
        return False

    def _restore_handlers(self):
        for signum, handler in self._previous_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, handler)
        self._previous_handlers.clear()

    # State ----------------------------------------------------------------

    def state_path(self, suffix=".json"):
        os.makedirs(STATE_DIR, exist_ok=True)
        return os.path.join(STATE_DIR, self.name + suffix)

    def _write_state(self):
        state = {
            "name": self.name,
            "namespaces": self.namespaces,
            "daemon_pid": self.daemon.pid if self.daemon else None,
            "cgroups": list(self.cgroups),
            "hosts": [
                {
                    "netns": self.netns(i),
                    "address": self.address(i),
                    **dataclasses.asdict(link),
                }
                for i, link in enumerate(self.links)
            ],
            "mtu": self.mtu,
            "created": time.time(),
        }
        with open(self.state_path(), "w") as f:
            json.dump(state, f, indent=1)

    def add_cgroup(self, path: str):
        """Registers a cgroup directory for removal by `down()`."""
        self.cgroups.append(path)
        if self._is_up:
            self._write_state()

    # Running things inside ------------------------------------------------

    def command(self, host: int, argv) -> list[str]:
        """Returns `argv` wrapped to run inside host `host`'s namespace."""
        return ["ip", "netns", "exec", self.netns(host), *argv]

    def popen(self, host: int, argv, **kwargs) -> subprocess.Popen:
        """Starts `argv` inside host `host` (its own session by default)."""
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(self.command(host, argv), **kwargs)

    def run(self, host: int, argv, *, check=True, timeout=60.0):
        """Runs `argv` inside host `host`; returns the CompletedProcess."""
        return _run(self.command(host, argv), check=check, timeout=timeout)

    def sysctl(self, host: int | None, key: str, value: str):
        """Sets a per-namespace sysctl in host `host` (None: the router)."""
        ns = self.router if host is None else self.netns(host)
        _run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"])

    def counters(self, host: int) -> dict[str, int]:
        """Returns host `host`'s eth0 byte and packet counters."""
        return interface_counters(self.netns(host), "eth0")

    def port_counters(self) -> dict[int, dict[str, int]]:
        """Returns every host's byte counters, read at the router at once.

        `tx_bytes` is what host `i` sent (its router port received it).
        One `ip` call for all hosts, cheap enough to sample during a run.
        """
        result = _run(["ip", "-n", self.router, "-s", "-j", "link", "show"])
        counters = {}
        for entry in json.loads(result.stdout):
            name = entry.get("ifname", "")
            if name.startswith("p") and name[1:].isdigit():
                stats = entry["stats64"]
                counters[int(name[1:])] = {
                    "tx_bytes": stats["rx"]["bytes"],
                    "rx_bytes": stats["tx"]["bytes"],
                }
        return counters

    def processes(self) -> list[int]:
        """Returns the pids living in any of this network's namespaces."""
        return [p for ns in self.namespaces for p in namespace_pids(ns)]

    # Checks ---------------------------------------------------------------

    def ping(self, a: int, b: int, count: int = 5) -> float:
        """Returns the mean ping RTT in ms from host a to host b."""
        result = self.run(
            a,
            ["ping", "-q", "-c", str(count), "-i", "0.2", self.address(b)],
            timeout=30 + count,
        )
        match = re.search(r"= [0-9.]+/([0-9.]+)/", result.stdout)
        if not match:
            raise NetsimError(f"Unexpected ping output: {result.stdout}")
        return float(match.group(1))

    def iperf(self, a: int, b: int, seconds: float = 3.0) -> float:
        """Returns TCP goodput in Mbit/s from host a to host b (iperf3)."""
        if shutil.which("iperf3") is None:
            raise NetsimError("iperf3 is missing: apt-get install -y iperf3")
        server = self.popen(
            b,
            ["iperf3", "-s", "-1", "-B", self.address(b)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            result = None
            for _ in range(20):  # until the server listens
                time.sleep(0.2)
                result = self.run(
                    a,
                    ["iperf3", "-J", "-c", self.address(b), "-t"]
                    + [f"{seconds:g}"],
                    check=False,
                    timeout=seconds + 30,
                )
                if result.returncode == 0:
                    break
            if result is None or result.returncode != 0:
                raise NetsimError(f"iperf3 failed: {result and result.stdout}")
            data = json.loads(result.stdout)
            return data["end"]["sum_received"]["bits_per_second"] / 1e6
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def interface_counters(netns: str, dev: str) -> dict[str, int]:
    """Returns `{tx_bytes, rx_bytes, tx_packets, rx_packets}` of a device."""
    result = _run(["ip", "-n", netns, "-s", "-j", "link", "show", "dev", dev])
    stats = json.loads(result.stdout)[0]["stats64"]
    return {
        "tx_bytes": stats["tx"]["bytes"],
        "rx_bytes": stats["rx"]["bytes"],
        "tx_packets": stats["tx"]["packets"],
        "rx_packets": stats["rx"]["packets"],
    }


def _raise_system_exit(signum, frame):
    del frame
    raise SystemExit(128 + signum)


def _kill(pids):
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def remove_cgroup(path: str):
    """Kills the processes of a cgroup we made, then removes it."""
    if not os.path.isdir(path):
        return
    for _ in range(50):
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            pids = []
        _kill(pids)
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(0.1)


def remove(name: str, cgroup_paths=()) -> list[str]:
    """Removes network `name`: its processes, namespaces, cgroups, state.

    Returns the namespaces it deleted.
    """
    state_file = os.path.join(STATE_DIR, name + ".json")
    state = {}
    with contextlib.suppress(OSError, ValueError):
        with open(state_file) as f:
            state = json.load(f)
    namespaces = [ns for ns in list_namespaces() if ns.startswith(name + "-")]
    # Every process inside our namespaces is ours (workers, the daemon,
    # iperf3): kill them first, or `ip netns del` leaves the namespace alive.
    for _ in range(3):
        pids = [p for ns in namespaces for p in namespace_pids(ns)]
        if not pids:
            break
        _kill(pids)
        time.sleep(0.2)
    deleted = []
    for ns in namespaces:
        if _run(["ip", "netns", "del", ns], check=False).returncode == 0:
            deleted.append(ns)
    for path in list(cgroup_paths) + list(state.get("cgroups", [])):
        remove_cgroup(path)
    for suffix in (".json", ".delayd.log"):
        with contextlib.suppress(OSError):
            os.remove(os.path.join(STATE_DIR, name + suffix))
    return deleted


def remove_all() -> list[str]:
    """Removes every network of ours (by name prefix and state files)."""
    names = set()
    for ns in list_namespaces():
        if ns.startswith(NAME_PREFIX):
            names.add(ns.rsplit("-", 1)[0])
    with contextlib.suppress(OSError):
        for entry in os.listdir(STATE_DIR):
            if entry.startswith(NAME_PREFIX) and entry.endswith(".json"):
                names.add(entry[: -len(".json")])
    deleted = []
    for name in sorted(names):
        deleted += remove(name)
    for path in cgroups.stale_cgroups(NAME_PREFIX):
        remove_cgroup(path)
    return deleted
