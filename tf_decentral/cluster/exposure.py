"""Who can reach a TensorFlow server: the facts behind the security warning.

TensorFlow 2.21's gRPC server (`tf.distribute.Server`, and the servers that
`MultiWorkerMirroredStrategy` and friends start) listens on every network
interface of the machine (`[::]:PORT`, or `0.0.0.0:PORT`), whatever host the
cluster names for the task: a task at `localhost:2222` is reachable at
`<any address of this machine>:2222`. Its servers have no authentication, so
anyone who can open a TCP connection to a cluster port can run any
TensorFlow op in the task's process, as its user: read and write files,
overwrite parameters and locks, start more work. TF 2.21 has no option to
bind one address (the listening address is hard-coded in its gRPC server).

What to do: keep cluster ports on a private network or behind a firewall
that admits only the cluster's hosts, or run local clusters in a network
namespace of their own (`python -m tf_decentral.launch --private-network`).

Pure Python (Linux `/proc` and `ioctl`); never imports TensorFlow.
"""

import fcntl
import os
import socket
import struct

_SIOCGIFADDR = 0x8915  # Linux ioctl: the IPv4 address of an interface.
_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp.
_WILDCARDS = {
    "00000000": "0.0.0.0",
    "00000000000000000000000000000000": "[::]",
}


def listening_hosts(port: int, proc_net: str = "/proc/net") -> list[str]:
    """Returns the addresses a local TCP socket listens on at `port`.

    `"[::]"` or `"0.0.0.0"` means every interface. Empty where `/proc/net`
    is missing (not Linux).
    """
    hosts = []
    for name in ("tcp", "tcp6"):
        path = os.path.join(proc_net, name)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            lines = f.read().splitlines()[1:]
        for line in lines:
            fields = line.split()
            host, _, hex_port = fields[1].partition(":")
            if fields[3] == _LISTEN and int(hex_port, 16) == port:
                hosts.append(_WILDCARDS.get(host) or _proc_address(host))
    return hosts


def _proc_address(hex_address: str) -> str:
    """Decodes an address of /proc/net/tcp{,6}: 32-bit words, each in host
    (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(raw) == 4:
        return socket.inet_ntoa(raw)
    return f"[{socket.inet_ntop(socket.AF_INET6, raw)}]"


def non_loopback_addresses(proc_net: str = "/proc/net") -> list[str]:
    """Returns `"address (interface)"` for every address of this machine
    that other machines may reach (not loopback, not IPv6 link-local)."""
    found = []
    for _, name in socket.if_nameindex():
        if name == "lo":
            continue
        address = _ipv4_address(name)
        if address and not address.startswith("127."):
            found.append(f"{address} ({name})")
    path = os.path.join(proc_net, "if_inet6")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                hex_address, _, _, scope, _, name = line.split()
                # Scope 0x00 is global (0x10 host, 0x20 link-local).
                if int(scope, 16) == 0:
                    found.append(f"{_ipv6(hex_address)} ({name})")
    return found


def _ipv4_address(interface: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(
                s.fileno(),
                _SIOCGIFADDR,
                struct.pack("256s", interface.encode()[:15]),
            )
        except OSError:  # no IPv4 address
            return None
    return socket.inet_ntoa(packed[20:24])


def _ipv6(hex_address: str) -> str:
    return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hex_address))


def exposure_warning(ports, addresses=None) -> str | None:
    """Returns the warning to print before serving `ports`, or None.

    Args:
        ports: The cluster's ports on this machine.
        addresses: This machine's reachable addresses; None looks them up
            (`non_loopback_addresses`).
    """
    if addresses is None:
        addresses = non_loopback_addresses()
    if not addresses:
        return None
    ports = sorted(ports)
    port_list = ", ".join(str(p) for p in ports[:8])
    if len(ports) > 8:
        port_list += f" and {len(ports) - 8} more"
    shown = ", ".join(addresses[:4]) + (" ..." if len(addresses) > 4 else "")
    return (
        f"tf_decentral: the cluster's TensorFlow servers (ports "
        f"{port_list}) listen on EVERY network interface of this "
        f"machine, including {shown}, whatever host TF_CONFIG names "
        "(TensorFlow 2.21 cannot bind one address), and they have no "
        "authentication: anyone who can reach these ports can run any "
        "TensorFlow op as this user (read and write files, change the "
        "model). Keep them behind a firewall or on a private network, or "
        "pass --private-network to run the tasks in a network namespace of "
        "their own. See the README's Security section."
    )
