"""Holds forwarded packets for a fixed one-way delay (NFQUEUE, stdlib only).

netem is not compiled into this machine's kernel, so latency comes from
userspace: the router namespace sends every forwarded packet to an NFQUEUE
(`iptables -A FORWARD -j NFQUEUE --queue-num Q --queue-bypass`), and this
daemon, running in that namespace, holds each packet for
`delay[src] + delay[dst]` and then issues the ACCEPT verdict. `src` and `dst`
are host indices read from the third octet of the IPv4 addresses
(`10.77.<i>.2` is host `i`); packets of other addresses pass undelayed.
Packets of one flow keep their order (equal delays, FIFO on ties).

It talks to nfnetlink_queue over a raw `AF_NETLINK` socket, so it needs no C
library (PyPI's NetfilterQueue needs gcc and libnetfilter-queue-dev) and runs
under any Python 3. It copies only the 20-byte IP header of each packet.

Usage (inside the router namespace, as root):

    python3 delayd.py --queue 0 --prefix 10.77 DELAY_MS_HOST0 DELAY_MS_HOST1 ...

SIGTERM or SIGINT releases every held packet and exits. The daemon prints
`ready` on stdout once bound, so a parent can wait for it.
"""

import argparse
import heapq
import itertools
import os
import select
import signal
import socket
import struct
import sys
import time

_NETLINK_NETFILTER = 12
_SOL_NETLINK = 270
_NETLINK_NO_ENOBUFS = 5
_SO_RCVBUFFORCE = 33
_NFNL_SUBSYS_QUEUE = 3
_NFQNL_MSG_PACKET = 0
_NFQNL_MSG_VERDICT = 1
_NFQNL_MSG_CONFIG = 2
_NLM_F_REQUEST = 1
_NLM_F_ACK = 4
_NLMSG_ERROR = 2
_NFQA_CFG_CMD = 1
_NFQA_CFG_PARAMS = 2
_NFQA_CFG_QUEUE_MAXLEN = 3
_NFQA_CFG_MASK = 4
_NFQA_CFG_FLAGS = 5
_NFQNL_CFG_CMD_BIND = 1
_NFQNL_COPY_PACKET = 2
_NFQA_CFG_F_GSO = 4
_NFQA_PACKET_HDR = 1
_NFQA_VERDICT_HDR = 2
_NFQA_PAYLOAD = 10
_NF_ACCEPT = 1
_QUEUE_MAXLEN = 100_000
_IP_HEADER_BYTES = 20


def _attr(kind, payload):
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def packet_delay(header, delays, prefix):
    """Returns `delays[src] + delays[dst]` for an IPv4 header (seconds).

    `src` and `dst` are the third octets of addresses starting with the two
    bytes `prefix`; other addresses, and hosts beyond `delays`, add 0.
    """
    if len(header) < _IP_HEADER_BYTES:
        return 0.0
    total = 0.0
    for start in (12, 16):  # source, destination address
        address = header[start : start + 4]
        if address[:2] == prefix and address[2] < len(delays):
            total += delays[address[2]]
    return total


class DelayQueue:
    """An NFQUEUE consumer that accepts each packet after its delay."""

    def __init__(self, queue_num, delays_s, prefix):
        self.queue_num = queue_num
        self.delays = list(delays_s)
        self.prefix = bytes(prefix)
        self.held = []  # heap of (release time, arrival order, packet id)
        self._order = itertools.count()
        self._seq = itertools.count(1)
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER
        )
        self.sock.bind((0, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
        self.sock.setsockopt(_SOL_NETLINK, _NETLINK_NO_ENOBUFS, 1)
        self._config(
            _attr(_NFQA_CFG_CMD, struct.pack("!BxH", _NFQNL_CFG_CMD_BIND, 0))
        )
        self._config(
            _attr(
                _NFQA_CFG_PARAMS,
                struct.pack("!IB", _IP_HEADER_BYTES, _NFQNL_COPY_PACKET),
            )
            + _attr(_NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", _QUEUE_MAXLEN))
            + _attr(_NFQA_CFG_MASK, struct.pack("!I", _NFQA_CFG_F_GSO))
            + _attr(_NFQA_CFG_FLAGS, struct.pack("!I", _NFQA_CFG_F_GSO))
        )

    def _send(self, msg_type, attrs, flags=_NLM_F_REQUEST):
        body = (
            struct.pack(
                "=BBH", socket.AF_UNSPEC, 0, socket.htons(self.queue_num)
            )
            + attrs
        )
        header = struct.pack(
            "=IHHII",
            16 + len(body),
            (_NFNL_SUBSYS_QUEUE << 8) | msg_type,
            flags,
            next(self._seq),
            0,
        )
        self.sock.send(header + body)

    def _config(self, attrs):
        self._send(_NFQNL_MSG_CONFIG, attrs, _NLM_F_REQUEST | _NLM_F_ACK)
        data = self.sock.recv(65536)
        _, kind = struct.unpack_from("=IH", data)
        if kind == _NLMSG_ERROR:
            errno = -struct.unpack_from("=i", data, 16)[0]
            if errno:
                raise OSError(errno, "nfnetlink_queue configuration failed")

    def _verdict(self, packet_id):
        self._send(
            _NFQNL_MSG_VERDICT,
            _attr(_NFQA_VERDICT_HDR, struct.pack("!II", _NF_ACCEPT, packet_id)),
        )

    def delay_of(self, header):
        """Returns the delay in seconds of a packet with this IPv4 header."""
        return packet_delay(header, self.delays, self.prefix)

    def _handle(self, data):
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            if kind == (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_PACKET:
                packet_id, header = None, b""
                a = offset + 20  # nlmsghdr (16) + nfgenmsg (4)
                while a + 4 <= offset + length:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    atype &= 0x7FFF
                    if atype == _NFQA_PACKET_HDR:
                        packet_id = struct.unpack_from("!I", data, a + 4)[0]
                    elif atype == _NFQA_PAYLOAD:
                        header = data[a + 4 : a + alen]
                    a += (alen + 3) & ~3
                if packet_id is not None:
                    delay = self.delay_of(header)
                    if delay <= 0:
                        self._verdict(packet_id)
                    else:
                        heapq.heappush(
                            self.held,
                            (
                                time.monotonic() + delay,
                                next(self._order),
                                packet_id,
                            ),
                        )
            offset += (length + 3) & ~3

    def run(self):
        """Serves until KeyboardInterrupt; then releases every held packet."""
        try:
            while True:
                timeout = None
                if self.held:
                    timeout = max(0.0, self.held[0][0] - time.monotonic())
                if select.select([self.sock], [], [], timeout)[0]:
                    self._handle(self.sock.recv(1 << 20))
                now = time.monotonic()
                while self.held and self.held[0][0] <= now:
                    self._verdict(heapq.heappop(self.held)[2])
        except KeyboardInterrupt:
            pass
        finally:
            for _, _, packet_id in self.held:
                try:
                    self._verdict(packet_id)
                except OSError:
                    break


def _raise_priority(policy):
    """Wakes the daemon on time even on a loaded machine; returns what held.

    On a busy 2-core machine a normal-priority daemon released packets
    2-5 ms late (ping RTT 14.6 ms for 10 ms emulated, load 13). `"fifo"`:
    SCHED_FIFO priority 10 (the kernel's RT throttling still leaves others
    5% of every second; the daemon needs < 10% of a core at 100 Mbit/s);
    `"nice"`: nice -10; falls back silently to what is allowed.
    """
    if policy == "fifo":
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            return "SCHED_FIFO 10"
        except (AttributeError, OSError):
            policy = "nice"
    if policy == "nice":
        try:
            os.nice(-10)
            return "nice -10"
        except OSError:
            pass
    return "normal"


def _interrupt(signum, frame):
    del signum, frame
    raise KeyboardInterrupt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, default=0, help="NFQUEUE number")
    parser.add_argument(
        "--prefix",
        default="10.77",
        help="first two octets of the hosts' addresses",
    )
    parser.add_argument(
        "--priority",
        choices=("fifo", "nice", "normal"),
        default="fifo",
        help="scheduling of the daemon (fifo: real-time, on time under load)",
    )
    parser.add_argument(
        "delays_ms",
        type=float,
        nargs="+",
        help="one-way delay of host i's access link, in ms",
    )
    args = parser.parse_args(argv)
    prefix = [int(x) for x in args.prefix.split(".")]
    if len(prefix) != 2 or not all(0 <= x < 256 for x in prefix):
        parser.error(f"--prefix must be two octets. Received: {args.prefix}")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    print(f"scheduling: {_raise_priority(args.priority)}", file=sys.stderr)
    queue = DelayQueue(args.queue, [d / 1000.0 for d in args.delays_ms], prefix)
    print("ready", flush=True)
    queue.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
