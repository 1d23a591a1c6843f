"""Tests of `tf_decentral.ops.packing`."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tf_decentral.ops import packing


class PackTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("several", [(7, 5), (5,), (3, 3, 2, 4), (1,), ()]),
        ("one", [(2, 3)]),
        ("scalar", [()]),
    )
    def test_round_trip(self, shapes):
        rng = np.random.default_rng(0)
        tensors = [
            tf.constant(rng.normal(size=s).astype("float32")) for s in shapes
        ]
        buffer = packing.pack(tensors)
        self.assertEqual(buffer.shape.rank, 1)
        self.assertEqual(buffer.shape[0], sum(int(np.prod(s)) for s in shapes))
        parts = packing.unpack(buffer, [t.shape for t in tensors])
        self.assertLen(parts, len(tensors))
        for got, want in zip(parts, tensors):
            self.assertEqual(got.shape, want.shape)
            self.assertAllEqual(got, want)

    def test_pack_keeps_order_and_dtype(self):
        matrix = tf.constant([[1, 2], [3, 4]], tf.int64)
        buffer = packing.pack([matrix, tf.constant([5], tf.int64)])
        self.assertEqual(buffer.dtype, tf.int64)
        self.assertAllEqual(buffer, [1, 2, 3, 4, 5])

    def test_pack_rejects_empty(self):
        with self.assertRaisesRegex(ValueError, "must not be empty"):
            packing.pack([])

    def test_pack_rejects_mixed_dtypes(self):
        with self.assertRaisesRegex(ValueError, "float32.*int32"):
            packing.pack([tf.constant([1.0]), tf.constant([1])])


class GroupByDtypeTest(tf.test.TestCase):
    def _assert_same(self, got, want):
        self.assertEqual([id(v) for v in got], [id(v) for v in want])

    def test_first_seen_order(self):
        a = tf.Variable([1.0])
        b = tf.Variable([1], dtype=tf.int32)
        c = tf.Variable([2.0])
        d = tf.Variable([1.0], dtype=tf.float16)
        e = tf.Variable([2], dtype=tf.int32)
        groups = packing.group_by_dtype([a, b, c, d, e])
        self.assertIsInstance(groups, dict)
        self.assertEqual(list(groups), [tf.float32, tf.int32, tf.float16])
        self._assert_same(groups[tf.float32], [a, c])
        self._assert_same(groups[tf.int32], [b, e])
        self._assert_same(groups[tf.float16], [d])

    def test_empty(self):
        self.assertEqual(packing.group_by_dtype([]), {})

    def test_rejects_objects_without_dtype(self):
        with self.assertRaisesRegex(TypeError, "dtype.*Received"):
            packing.group_by_dtype([tf.Variable(1.0), 3.0])

    def test_groups_pack(self):
        # Every group is one valid `pack` input.
        variables = [tf.Variable([1.0, 2]), tf.Variable([3]), tf.Variable(4.0)]
        for dtype, group in packing.group_by_dtype(variables).items():
            buffer = packing.pack([v.read_value() for v in group])
            self.assertEqual(buffer.dtype, dtype)


if __name__ == "__main__":
    tf.test.main()
