"""What `tf_decentral.cluster.exposure` reports, and the TensorFlow fact
behind the README's Security section: a server started for `localhost`
listens on every interface."""

import socket
import subprocess

from absl.testing import absltest

from tf_decentral.cluster import exposure
from tf_decentral.testing import cluster as cluster_testing

_SERVE_LOCALHOST = """
import sys
import portpicker
import tensorflow as tf
from tf_decentral.cluster import exposure

port = portpicker.pick_unused_port()
tf.distribute.Server(
    tf.train.ClusterSpec({"worker": [f"localhost:{port}"]}),
    job_name="worker", task_index=0, start=True,
)
print(sorted(exposure.listening_hosts(port)), flush=True)
"""


class ExposureTest(absltest.TestCase):
    def test_a_tf_server_for_localhost_listens_on_every_interface(self):
        # If a TensorFlow upgrade binds the named host only, this fails:
        # then bind it, and correct the README's Security section.
        result = subprocess.run(
            cluster_testing.python_command(_SERVE_LOCALHOST),
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        hosts = eval(result.stdout.strip().splitlines()[-1])  # noqa: S307
        self.assertTrue(set(hosts) & {"[::]", "0.0.0.0"}, hosts)

    def test_listening_hosts_of_a_loopback_socket(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            self.assertEqual(exposure.listening_hosts(port), ["127.0.0.1"])
            self.assertNotIn("0.0.0.0", exposure.listening_hosts(port))

    def test_non_loopback_addresses_leave_out_loopback(self):
        for entry in exposure.non_loopback_addresses():
            self.assertNotIn("(lo)", entry)
            self.assertFalse(entry.startswith("127."))

    def test_warning_names_ports_and_addresses(self):
        message = exposure.exposure_warning(
            [7002, 7001], ["192.0.2.2 (eth0)", "fd00::2 (eth0)"]
        )
        self.assertIn("(ports 7001, 7002)", message)
        self.assertIn("192.0.2.2 (eth0), fd00::2 (eth0)", message)
        self.assertIsNone(exposure.exposure_warning([7001], []))


if __name__ == "__main__":
    absltest.main()
