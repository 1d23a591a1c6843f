"""Whether the servers of a cluster still accept connections.

Used to name the peer a failed collective lost. TensorFlow's error names
the task whose RPC failed, which is not always the one that died: when the
task hosting TF's coordination service (worker 0) exits after its own
error, every other worker's collective is aborted with an error naming
worker 0, even if worker 0 only fell because its neighbour did.

A TCP connect, not a TF RPC. A dead process's port refuses the connection
at once. A stopped (SIGSTOP) or hung server still completes it (the kernel
accepts), where a TF RPC to it would wait for ever. So a probe tells
"gone" from "there, perhaps hung" within its timeout, and never blocks on a
hung peer. It sends no byte: the server sees a connection open and close.
"""

import socket
from collections.abc import Iterable
from concurrent import futures

GONE = "gone"
"""The address refused the connection: nothing listens there."""
LISTENING = "listening"
"""The address accepted the connection (the server may still be hung)."""
UNKNOWN = "unknown"
"""No answer within the timeout, or the host is unreachable."""
DEFAULT_TIMEOUT = 2.0
"""Seconds a probe waits for a connection."""


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def probe(address: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Returns `GONE`, `LISTENING` or `UNKNOWN` for a "host:port" address.

    Args:
        address: A cluster address ("localhost:2222", "[::1]:2222").
        timeout: Seconds to wait for the connection.
    """
    try:
        host, port = _host_port(address)
    except ValueError:
        return UNKNOWN
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return LISTENING
    except ConnectionRefusedError:
        return GONE
    except OSError:  # Timed out, unreachable, unknown host.
        return UNKNOWN


def probe_all(
    addresses: Iterable[str], timeout: float = DEFAULT_TIMEOUT
) -> dict:
    """Probes `addresses` at once; returns address -> `probe`'s answer.

    Takes at most about `timeout` seconds, however many addresses.
    """
    unique = list(dict.fromkeys(addresses))
    if not unique:
        return {}
    with futures.ThreadPoolExecutor(min(32, len(unique))) as pool:
        states = pool.map(lambda address: probe(address, timeout), unique)
        return dict(zip(unique, states))
