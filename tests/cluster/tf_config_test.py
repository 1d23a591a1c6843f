"""Tests of `TF_CONFIG` parsing: `parse_tf_config`, `from_env`, the config."""

import dataclasses
import json
import os
import re
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized

from tf_decentral import cluster

_WORKERS = {"worker": ["localhost:2000", "localhost:2001"]}
_FULL = {
    "chief": ["h0:2222"],
    "worker": ["h1:2222", "h2:2222"],
    "ps": ["h3:2222", "h4:2222"],
}


def _tf_config(cluster_spec=None, task_type="worker", index=0, **extra):
    config = {
        "cluster": _WORKERS if cluster_spec is None else cluster_spec,
        "task": {"type": task_type, "index": index},
    }
    config.update(extra)
    return json.dumps(config)


class ParseTest(parameterized.TestCase):
    def test_parses_workers(self):
        config = cluster.parse_tf_config(_tf_config(index=1))
        self.assertEqual(
            config.cluster,
            {"worker": ("localhost:2000", "localhost:2001")},
        )
        self.assertEqual(config.task_type, "worker")
        self.assertEqual(config.task_id, 1)
        self.assertEqual(config.task_name, "worker:1")
        self.assertEqual(config.address, "localhost:2001")
        self.assertEqual(config.num_workers, 2)
        self.assertEqual(config.num_ps, 0)
        self.assertFalse(config.has_chief)
        self.assertFalse(config.is_chief)
        self.assertEqual(config.worker_index, 1)
        self.assertIsNone(config.rpc_layer)

    @parameterized.named_parameters(
        # (name, task_type, index, is_chief, worker_index, address)
        ("chief", "chief", 0, True, 0, "h0:2222"),
        ("worker_0", "worker", 0, False, 1, "h1:2222"),
        ("worker_1", "worker", 1, False, 2, "h2:2222"),
        ("ps_1", "ps", 1, False, None, "h4:2222"),
    )
    def test_roles_with_a_chief(
        self, task_type, index, is_chief, worker_index, address
    ):
        config = cluster.parse_tf_config(_tf_config(_FULL, task_type, index))
        self.assertEqual(config.is_chief, is_chief)
        self.assertEqual(config.address, address)
        self.assertTrue(config.has_chief)
        self.assertEqual(config.num_workers, 2)
        self.assertEqual(config.num_ps, 2)
        if worker_index is None:
            with self.assertRaisesRegex(
                ValueError,
                re.escape(
                    "`worker_index` is defined only for chief and worker "
                    "tasks. Received: task_type='ps'"
                ),
            ):
                _ = config.worker_index
        else:
            self.assertEqual(config.worker_index, worker_index)

    def test_worker_0_is_chief_without_a_chief(self):
        config = cluster.parse_tf_config(_tf_config(index=0))
        self.assertTrue(config.is_chief)
        self.assertEqual(config.worker_index, 0)

    def test_evaluator_may_be_outside_the_cluster(self):
        # TensorFlow's convention: the evaluator is not part of the cluster.
        config = cluster.parse_tf_config(_tf_config(_FULL, "evaluator", 0))
        self.assertIsNone(config.address)
        self.assertFalse(config.is_chief)
        with self.assertRaisesRegex(ValueError, "task_type='evaluator'"):
            _ = config.worker_index
        with self.assertRaisesRegex(ValueError, re.escape("must be in [0, 1)")):
            cluster.parse_tf_config(_tf_config(_FULL, "evaluator", 1))

    def test_chief_only_cluster(self):
        config = cluster.parse_tf_config(
            _tf_config({"chief": ["h:1"]}, "chief", 0)
        )
        self.assertEqual(config.num_workers, 0)
        self.assertTrue(config.is_chief)

    def test_json_round_trip(self):
        text = _tf_config(_FULL, "worker", 1, rpc_layer="grpc")
        config = cluster.parse_tf_config(text)
        self.assertEqual(config.rpc_layer, "grpc")
        self.assertEqual(json.loads(config.to_json()), json.loads(text))
        self.assertEqual(cluster.parse_tf_config(config.to_json()), config)

    def test_ignores_other_keys(self):
        config = cluster.parse_tf_config(_tf_config(environment="cloud"))
        self.assertNotIn("environment", config.to_json())

    def test_accepts_bytes_and_ipv6(self):
        spec = {"worker": ["[::1]:2000", "[::1]:2001"]}
        config = cluster.parse_tf_config(_tf_config(spec, index=1).encode())
        self.assertEqual(config.address, "[::1]:2001")

    def test_cluster_spec_dict_is_a_copy(self):
        config = cluster.parse_tf_config(_tf_config(_FULL))
        spec = config.to_cluster_spec_dict()
        self.assertEqual(spec, _FULL)
        spec["worker"].append("h9:1")
        self.assertEqual(config.num_workers, 2)

    def test_config_is_frozen_hashable_and_validated(self):
        addresses = ["a:1", "b:1"]
        config = cluster.ClusterConfig({"worker": addresses}, "worker", 1)
        addresses.append("c:1")
        self.assertEqual(config.cluster, {"worker": ("a:1", "b:1")})
        with self.assertRaises(dataclasses.FrozenInstanceError):
            config.task_id = 0
        self.assertEqual(
            hash(config),
            hash(
                cluster.ClusterConfig({"worker": ("a:1", "b:1")}, "worker", 1)
            ),
        )
        with self.assertRaisesRegex(ValueError, "Received: task_id=2"):
            cluster.ClusterConfig({"worker": ["a:1"]}, "worker", 2)


class ParseErrorTest(parameterized.TestCase):
    @parameterized.named_parameters(
        (
            "bad_json",
            '{"cluster": {"worker": ["a:1"]}, "task": {',
            [
                "`TF_CONFIG` must be valid JSON",
                "line 1, column 43 (char 42)",
                'Received: TF_CONFIG=\'{"cluster"',
                "Expected something like:",
            ],
        ),
        (
            "single_quotes",
            "{'cluster': {}}",
            ["Expecting property name", "JSON needs double quotes"],
        ),
        (
            "not_an_object",
            "[1, 2]",
            [
                "must be a JSON object",
                "Received: a JSON list: [1, 2]",
            ],
        ),
        (
            "missing_cluster",
            '{"task": {"type": "worker", "index": 0}}',
            ['must have a "cluster" key', "Received: keys ['task']"],
        ),
        (
            "missing_task",
            '{"cluster": {"worker": ["a:1"]}}',
            ['must have a "task" key', "Received: keys ['cluster']"],
        ),
        (
            "task_not_an_object",
            '{"cluster": {"worker": ["a:1"]}, "task": "worker:0"}',
            ["must be an object", "Received: task='worker:0'"],
        ),
        (
            "task_missing_type",
            '{"cluster": {"worker": ["a:1"]}, "task": {"index": 0}}',
            ['must have a "type"', "Received: task={'index': 0}"],
        ),
        (
            "task_missing_index",
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker"}}',
            ['must have a "index"', "Received: task={'type': 'worker'}"],
        ),
        (
            "type_not_in_cluster",
            _tf_config(task_type="ps"),
            [
                "must be one of the cluster's jobs ['worker']",
                "Received: task_type='ps'",
                'add a "ps" job',
            ],
        ),
        (
            "empty_type",
            _tf_config(task_type=""),
            ["must be a non-empty string", "Received: task_type=''"],
        ),
        (
            "index_out_of_range",
            _tf_config(index=2),
            [
                'must be in [0, 2) because job "worker" has 2 task(s)',
                "Received: task_id=2",
            ],
        ),
        (
            "negative_index",
            _tf_config(index=-1),
            ["must be in [0, 2)", "Received: task_id=-1"],
        ),
        (
            "string_index",
            _tf_config(index="1"),
            ["must be an integer", "Received: task_id='1'"],
        ),
        (
            "bool_index",
            _tf_config(index=True),
            ["must be an integer", "Received: task_id=True"],
        ),
        (
            "no_worker",
            _tf_config({"ps": ["a:1"]}, task_type="ps"),
            [
                'at least one "worker" or "chief" task',
                "Received: cluster={'ps': ('a:1',)}",
            ],
        ),
        (
            "empty_cluster",
            _tf_config({}),
            ['at least one "worker" or "chief"', "Received: cluster={}"],
        ),
        (
            "empty_worker_job",
            _tf_config({"worker": []}),
            ['at least one "worker" or "chief"'],
        ),
        (
            "cluster_not_an_object",
            '{"cluster": ["a:1"], "task": {"type": "worker", "index": 0}}',
            ["`cluster` must map job names", "Received: cluster=['a:1']"],
        ),
        (
            "job_not_a_list",
            _tf_config({"worker": "a:1"}),
            [
                'Job "worker" must be a list of "host:port" strings',
                "Received: worker='a:1'",
            ],
        ),
        (
            "job_is_a_dict",
            _tf_config({"worker": {"0": "a:1"}}),
            ["must be a list", "Received: worker={'0': 'a:1'}"],
        ),
        (
            "address_without_port",
            _tf_config({"worker": ["a:1", "localhost"]}),
            ['"host:port" string', "Received: worker[1]='localhost'"],
        ),
        (
            "address_not_a_string",
            _tf_config({"worker": [2222]}),
            ["Received: worker[0]=2222"],
        ),
        (
            "port_out_of_range",
            _tf_config({"worker": ["a:70000"]}),
            ["port in [1, 65535]", "Received: worker[0]='a:70000'"],
        ),
        (
            "empty_host",
            _tf_config({"worker": [":2222"]}),
            ["Received: worker[0]=':2222'"],
        ),
        (
            "duplicate_addresses",
            _tf_config({"worker": ["a:1", "a:1"]}),
            [
                "Every task must have its own address",
                'worker:0 at "a:1" and worker:1 at "a:1", the same server',
            ],
        ),
        (
            "duplicate_across_jobs",
            _tf_config({"chief": ["a:1"], "worker": ["b:1", "a:1"]}),
            ['chief:0 at "a:1" and worker:1 at "a:1"'],
        ),
        (
            "two_chiefs",
            _tf_config({"chief": ["a:1", "b:1"]}, "chief", 0),
            ['at most one "chief"', "Received: chief=['a:1', 'b:1']"],
        ),
        (
            "bad_rpc_layer",
            _tf_config(rpc_layer=1),
            ["`rpc_layer` must be one of ['grpc']", "Received: rpc_layer=1"],
        ),
        (
            "unknown_rpc_layer",
            _tf_config(rpc_layer="grpc+verbs"),
            ["gRPC only", "Received: rpc_layer='grpc+verbs'"],
        ),
        (
            "loopback_aliases_are_one_server",
            _tf_config({"worker": ["localhost:2222", "127.0.0.1:2222"]}),
            [
                'worker:0 at "localhost:2222" and worker:1 at '
                '"127.0.0.1:2222", the same server'
            ],
        ),
        (
            "ipv6_loopback_alias",
            _tf_config({"worker": ["[::1]:7", "LOCALHOST:7"]}),
            ["the same server"],
        ),
        (
            "scheme",
            _tf_config({"worker": ["grpc://h:2222"]}),
            ["has a scheme", "Received: worker[0]='grpc://h:2222'"],
        ),
        (
            "leading_space",
            _tf_config({"worker": [" h:2222"]}),
            ["white space", "Received: worker[0]=' h:2222'"],
        ),
        (
            "unbracketed_ipv6",
            _tf_config({"worker": ["fe80::1:2222"]}),
            ["without brackets", '"[::1]:2222"'],
        ),
        (
            "non_ascii_digits_in_port",
            _tf_config({"worker": ["h:２２２２"]}),
            ["ASCII digits"],
        ),
        (
            "misspelt_job",
            _tf_config({"worker": ["a:1"], "wrker": ["b:1"]}),
            ["must be one of ['chief', 'worker', 'ps', 'evaluator']",
             "Received: job name 'wrker'", 'Did you mean "worker"?'],
        ),
        (
            "deeply_nested",
            '{"cluster": ' + "[" * 100_000 + "]" * 100_000 + "}",
            ["not nested this deeply"],
        ),
        (
            "not_utf8",
            b'{"cluster": {"worker": ["h\xff:1"]}}',
            ["must be UTF-8", "at byte 26"],
        ),
    )
    def test_error_message(self, text, fragments):
        with self.assertRaises(ValueError) as caught:
            cluster.parse_tf_config(text)
        message = str(caught.exception)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_long_bad_json_is_truncated(self):
        text = '{"cluster": {"worker": [' + '"a:1", ' * 500 + "]}}"
        with self.assertRaises(ValueError) as caught:
            cluster.parse_tf_config(text)
        message = str(caught.exception)
        self.assertIn("Expecting value", message)
        self.assertIn(f"({len(repr(text))} characters in all)", message)
        # The excerpt marks the error position, far past the quoted prefix.
        self.assertIn('"a:1", >>>]}}', message)
        self.assertLess(len(message), 800)

    def test_non_string_is_a_type_error(self):
        with self.assertRaisesRegex(
            TypeError, "`text` must be a JSON string. Received: text of type"
        ):
            cluster.parse_tf_config({"cluster": {}})


class FromEnvTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("unset", {}),
        ("empty", {"TF_CONFIG": ""}),
        ("blank", {"TF_CONFIG": "  \n"}),
        ("empty_object", {"TF_CONFIG": "{}"}),
        ("empty_object_with_spaces", {"TF_CONFIG": "{ }"}),
        ("empty_object_on_lines", {"TF_CONFIG": "{\n}"}),
    )
    def test_no_cluster(self, environ):
        self.assertIsNone(cluster.from_env(environ))

    def test_reads_tf_config(self):
        config = cluster.from_env({"TF_CONFIG": _tf_config(index=1)})
        self.assertEqual(config.task_name, "worker:1")

    def test_defaults_to_os_environ(self):
        with mock.patch.dict(os.environ, {"TF_CONFIG": _tf_config()}):
            self.assertEqual(cluster.from_env().task_name, "worker:0")
        with mock.patch.dict(os.environ, clear=True):
            self.assertIsNone(cluster.from_env())

    def test_invalid_tf_config_raises(self):
        with self.assertRaisesRegex(ValueError, "must be valid JSON"):
            cluster.from_env({"TF_CONFIG": "worker:0"})


if __name__ == "__main__":
    absltest.main()


class LargeClusterTest(absltest.TestCase):
    def test_configs_of_a_large_cluster_validate_the_cluster_once(self):
        with mock.patch.object(
            cluster.tf_config,
            "_check_address",
            wraps=cluster.tf_config._check_address,
        ) as check:
            configs = cluster.local_cluster_configs(
                2000, ports=range(10_000, 12_000)
            )
        self.assertLen(configs, 2000)
        self.assertEqual(check.call_count, 2000)
