"""Command line of the network emulation (run as root).

    python -m bench.netsim up 4 --rate 100mbit --latency_ms 20 \\
        --host 3:rate=10mbit,delay_ms=40       # stays up; prints its name
    python -m bench.netsim exec tfdn-1a2b3c 0 -- ping -c 3 10.77.1.2
    python -m bench.netsim status
    python -m bench.netsim down tfdn-1a2b3c    # or: down --all
    python -m bench.netsim selftest 4 --rate 100mbit --latency_ms 20

`--latency_ms` is the one-way latency host to host; each access link gets
half of it (`--delay_ms` sets the per-link delay directly).
"""

import argparse
import json
import os
import sys
import time

from . import cgroups
from .emulator import NAME_PREFIX
from .emulator import STATE_DIR
from .emulator import Link
from .emulator import NetsimError
from .emulator import Network
from .emulator import list_namespaces
from .emulator import namespace_pids
from .emulator import parse_link_override
from .emulator import rate_bits_per_second
from .emulator import remove
from .emulator import remove_all


def _network_args(parser):
    parser.add_argument("num_hosts", type=int)
    parser.add_argument("--rate", default=None, help="e.g. 100mbit (none)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--latency_ms",
        type=float,
        default=None,
        help="one-way latency host to host (half per access link)",
    )
    group.add_argument(
        "--delay_ms", type=float, default=None, help="delay per access link"
    )
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="I:rate=R,delay_ms=D",
        help="override host I's access link (repeatable)",
    )
    parser.add_argument("--mtu", type=int, default=9000)
    parser.add_argument("--name", default=None)


def _build(args) -> Network:
    delay = args.delay_ms
    if delay is None:
        delay = (args.latency_ms or 0.0) / 2.0
    rate = None if args.rate in (None, "none") else args.rate
    overrides = dict(parse_link_override(text) for text in args.host)
    return Network(
        args.num_hosts,
        Link(rate=rate, delay_ms=delay),
        overrides,
        mtu=args.mtu,
        name=args.name,
    )


def _describe(net: Network) -> str:
    lines = [f"network {net.name}: router {net.router}"]
    for i in range(net.num_hosts):
        link = net.link(i)
        lines.append(
            f"  host {i}: netns {net.netns(i)} address {net.address(i)} "
            f"rate {link.rate or 'unshaped'} delay {link.delay_ms:g} ms"
        )
    return "\n".join(lines)


def cmd_up(args):
    net = _build(args)
    net.up()
    net.detach()
    print(_describe(net))
    print(f"take it down with: python -m bench.netsim down {net.name}")
    return 0


def cmd_down(args):
    if args.all:
        deleted = remove_all()
    elif args.name:
        deleted = remove(args.name)
    else:
        print("down: give a NAME or --all", file=sys.stderr)
        return 2
    print(f"removed {len(deleted)} namespaces: {' '.join(deleted)}")
    prefix = NAME_PREFIX if args.all else args.name + "-"
    left = [ns for ns in list_namespaces() if ns.startswith(prefix)]
    if left:
        print(f"still present: {left}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args):
    del args
    ours = [ns for ns in list_namespaces() if ns.startswith(NAME_PREFIX)]
    states = []
    if os.path.isdir(STATE_DIR):
        states = sorted(f for f in os.listdir(STATE_DIR) if f.endswith(".json"))
    print(f"namespaces ({len(ours)}): {' '.join(ours) or '-'}")
    for ns in ours:
        pids = namespace_pids(ns)
        if pids:
            print(f"  {ns}: pids {pids}")
    print(f"state files: {' '.join(states) or '-'}")
    stale = cgroups.stale_cgroups(NAME_PREFIX)
    print(f"cgroups: {' '.join(stale) or '-'}")
    print(f"cpu quota support: {cgroups.detect()}")
    return 0


def cmd_exec(args):
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        print("exec: give a command after --", file=sys.stderr)
        return 2
    ns = f"{args.name}-h{args.host}"
    os.execvp("ip", ["ip", "netns", "exec", ns, *argv])
    return 127


def selftest(net: Network, seconds: float = 3.0) -> tuple[list[dict], bool]:
    """Measures RTT and TCP goodput between hosts; returns rows and verdict.

    Checks host 0 -> 1 and host 0 -> every overridden host: ping RTT within
    max(3 ms, 15%) of `2 * one_way` (plus ~0.1 ms of veth), iperf3 goodput
    in [80%, 103%] of the slower end's rate.
    """
    targets = [1] + [
        i for i in range(2, net.num_hosts) if net.link(i) != net.default_link
    ]
    rows, ok = [], True
    for b in targets:
        expected_rtt = 2 * net.one_way_ms(0, b)
        rtt = net.ping(0, b, count=5)
        rate = min(
            rate_bits_per_second(net.link(0).rate),
            rate_bits_per_second(net.link(b).rate),
        )
        before = net.counters(0)["tx_bytes"]
        goodput = net.iperf(0, b, seconds=seconds)
        sent = net.counters(0)["tx_bytes"] - before
        rtt_ok = abs(rtt - expected_rtt) <= max(3.0, 0.15 * expected_rtt)
        rate_ok = rate == float("inf") or 0.8 <= goodput * 1e6 / rate <= 1.03
        ok = ok and rtt_ok and rate_ok
        rows.append(
            {
                "path": f"h0->h{b}",
                "expected_rtt_ms": expected_rtt,
                "ping_rtt_ms": round(rtt, 2),
                "rate_mbit": None if rate == float("inf") else rate / 1e6,
                "iperf_mbit": round(goodput, 1),
                "h0_eth0_tx_bytes": sent,
                "ok": rtt_ok and rate_ok,
            }
        )
    return rows, ok


def cmd_selftest(args):
    net = _build(args)
    start = time.monotonic()
    with net:
        up_seconds = time.monotonic() - start
        print(_describe(net))
        rows, ok = selftest(net, seconds=args.seconds)
        alive = net.daemon_alive()
        name = net.name
    left = [ns for ns in list_namespaces() if ns.startswith(name)]
    for row in rows:
        print(json.dumps(row))
    print(
        f"up {up_seconds:.2f} s; delay daemon alive: {alive}; namespaces "
        f"left after down: {left or 'none'}"
    )
    ok = ok and alive and not left
    print("SELFTEST " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bench.netsim",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build a network and leave it up")
    _network_args(up)
    up.set_defaults(fn=cmd_up)
    down = sub.add_parser("down", help="remove a network (or --all)")
    down.add_argument("name", nargs="?")
    down.add_argument("--all", action="store_true")
    down.set_defaults(fn=cmd_down)
    status = sub.add_parser("status", help="what of ours exists")
    status.set_defaults(fn=cmd_status)
    run = sub.add_parser("exec", help="run a command inside host I")
    run.add_argument("name")
    run.add_argument("host", type=int)
    run.add_argument("argv", nargs=argparse.REMAINDER)
    run.set_defaults(fn=cmd_exec)
    test = sub.add_parser("selftest", help="up, ping + iperf3, down")
    _network_args(test)
    test.add_argument("--seconds", type=float, default=3.0)
    test.set_defaults(fn=cmd_selftest)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except NetsimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
