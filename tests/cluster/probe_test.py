"""`tf_decentral.cluster.probe` on real sockets."""

import socket

import portpicker
from absl.testing import absltest

from tf_decentral.cluster import probe


def _listening_socket(test):
    """A socket that listens but never accepts (as a SIGSTOPped server:
    the kernel completes connections for it)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    test.addCleanup(server.close)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return f"localhost:{server.getsockname()[1]}"


class ProbeTest(absltest.TestCase):
    def test_a_listening_port_even_one_that_never_accepts(self):
        self.assertEqual(probe.probe(_listening_socket(self)), probe.LISTENING)

    def test_a_port_nobody_listens_on_is_gone(self):
        port = portpicker.pick_unused_port()
        self.assertEqual(probe.probe(f"localhost:{port}"), probe.GONE)
        self.assertEqual(probe.probe(f"127.0.0.1:{port}"), probe.GONE)

    def test_unparsable_or_unresolvable_addresses_are_unknown(self):
        self.assertEqual(probe.probe("no-port"), probe.UNKNOWN)
        self.assertEqual(
            probe.probe("no-such-host.invalid:2222", timeout=1), probe.UNKNOWN
        )

    def test_bracketed_ipv6(self):
        if not socket.has_ipv6:
            self.skipTest("no IPv6 here")
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.addCleanup(server.close)
        try:
            server.bind(("::1", 0))
        except OSError as e:
            self.skipTest(f"no IPv6 loopback here: {e}")
        server.listen(1)
        port = server.getsockname()[1]
        self.assertEqual(probe.probe(f"[::1]:{port}"), probe.LISTENING)

    def test_probe_all_answers_per_address_once(self):
        live = _listening_socket(self)
        dead = f"localhost:{portpicker.pick_unused_port()}"
        self.assertEqual(
            probe.probe_all([live, dead, live]),
            {live: probe.LISTENING, dead: probe.GONE},
        )
        self.assertEqual(probe.probe_all([]), {})


if __name__ == "__main__":
    absltest.main()
