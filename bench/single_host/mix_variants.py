"""Candidate implementations of the single-host gossip mix, for benchmarking.

Each variant is a subclass of the package's `SingleHostGossipExtended`
(`tf_decentral/strategies/gossip/single_host.py`) that overrides its
per-dtype-group step `mix_group(dtype, group, row_index)` (`nomix` overrides
`mix`); `make_strategy(topology, devices, update, variant)` builds a
`GossipStrategy` subclass whose `extended` is that subclass. The package
itself is not modified. Variants:

* `package`: the installed `GossipStrategy` with its default mix (since
  session 2 the `xla` variant below, moved into the package).
* `packed`: the installed `GossipStrategy(mix_implementation="packed")`
  (pack per replica, `tf.stack` of the support's buffers, `tf.tensordot`
  with the weight row, split, assign; the package's mix of session 1).
* `nomix`: `mix` does nothing (local SGD without communication). The floor
  a gossip step can reach: step(gossip) - step(nomix) is the in-situ cost of
  mixing.
* `addn`: packed buffers as in `package`, but `tf.add_n` of `w_ij * buf_j`
  instead of `tf.stack` + `tf.tensordot` (no k x P stacked copy, no
  [1, k] x [k, P] MatMul).
* `active`: `addn`, and for a time-varying topology a `tf.switch_case` on
  `t mod period` whose branch mixes only that round's nonzero entries (the
  package mixes every node of the union of all rounds' supports, most with
  weight 0: one-peer exponential on 8 nodes reads 4 buffers per device where
  only 2 have nonzero weight).
* `xla`: no packing at all. Per device, one `jit_compile=True` function takes
  the support replicas' variables and the weight row and returns the mixed
  variables: XLA fuses every per-variable weighted sum into one cluster, so
  it is one op per device (XlaLaunch), reads k x P and writes P elements
  (no concat, stack or split copies). Time-varying topologies select the
  round's nonzero entries with `tf.switch_case` as in `active`.
* `pervar`: per-variable `tf.add_n(w_ij * v_j)` with no packing (the Python
  loop of small ops the issue warns about; for reference only).
"""

import numpy as np
import tensorflow as tf

from tf_decentral.ops import packing
from tf_decentral.strategies import gossip
from tf_decentral.strategies.gossip import single_host

VARIANTS = ("package", "packed", "nomix", "addn", "active", "xla", "pervar")


def _weights(table, t, i, cols, dtype):
    return tf.constant(table[t, i, list(cols)], dtype)


def _nonzero(table, t, i):
    return tuple(int(j) for j in np.flatnonzero(table[t, i]))


def _weighted_sum(weights, tensors):
    """sum_j weights[j] * tensors[j] with scalar weights (Python floats)."""
    terms = [tf.cast(w, t.dtype) * t for w, t in zip(weights, tensors)]
    return terms[0] if len(terms) == 1 else tf.math.add_n(terms)


@tf.function(jit_compile=True, reduce_retracing=False, autograph=False)
def _xla_mix(w, groups):
    """groups[j][v]: variable v of the j-th support replica. One cluster."""
    out = []
    for v in range(len(groups[0])):
        acc = w[0] * groups[0][v]
        for j in range(1, len(groups)):
            acc = acc + w[j] * groups[j][v]
        out.append(acc)
    return out


class _VariantExtended(single_host.SingleHostGossipExtended):
    """`mix` as in the package (`row_index` is None for a static topology);
    a variant overrides `mix_group`."""

    variant = "package"


class NoMixExtended(_VariantExtended):
    variant = "nomix"

    def mix(self, variables, step=0):
        self.hook_counts["mix"] += 1


class AddNExtended(_VariantExtended):
    """Packed buffers, add_n instead of stack + tensordot."""

    variant = "addn"
    active_only = False

    def mix_group(self, dtype, group, row_index):
        period = self.topology.period
        table = self.weights_table
        shapes = [v.shape for v in group]
        buffers = []
        for r, device in enumerate(self.worker_devices):
            with tf.device(device):
                buffers.append(
                    packing.pack([v.values[r].read_value() for v in group])
                )
        for i, device in enumerate(self.worker_devices):
            with tf.device(device):
                if row_index is None:
                    cols = _nonzero(table, 0, i)
                    mixed = _weighted_sum(
                        table[0, i, list(cols)], [buffers[j] for j in cols]
                    )
                elif self.active_only:

                    def branch(t, i=i):
                        cols = _nonzero(table, t, i)
                        return _weighted_sum(
                            table[t, i, list(cols)],
                            [buffers[j] for j in cols],
                        )

                    mixed = tf.switch_case(
                        row_index,
                        [lambda t=t: branch(t) for t in range(period)],
                    )
                else:
                    support = self.support[i]
                    w = tf.gather(
                        tf.constant(table[:, i, list(support)], dtype),
                        row_index,
                    )
                    mixed = tf.math.add_n(
                        [w[k] * buffers[j] for k, j in enumerate(support)]
                    )
                parts = packing.unpack(mixed, shapes)
                for v, part in zip(group, parts):
                    v.values[i].assign(part, read_value=False)


class ActiveExtended(AddNExtended):
    variant = "active"
    active_only = True


class XlaExtended(_VariantExtended):
    """One XLA cluster per device: fused per-variable weighted sums."""

    variant = "xla"

    def mix_group(self, dtype, group, row_index):
        period = self.topology.period
        table = self.weights_table
        reads = self.read_copies(group)
        for i, device in enumerate(self.worker_devices):
            with tf.device(device):
                if row_index is None:
                    cols = _nonzero(table, 0, i)
                    mixed = _xla_mix(
                        _weights(table, 0, i, cols, dtype),
                        [reads[j] for j in cols],
                    )
                else:

                    def branch(t, i=i):
                        cols = _nonzero(table, t, i)
                        return _xla_mix(
                            _weights(table, t, i, cols, dtype),
                            [reads[j] for j in cols],
                        )

                    mixed = tf.switch_case(
                        row_index,
                        [lambda t=t: branch(t) for t in range(period)],
                    )
                for v, value in zip(group, mixed):
                    v.values[i].assign(value, read_value=False)


class PerVarExtended(_VariantExtended):
    """Per-variable weighted sums, no packing (many small ops)."""

    variant = "pervar"

    def mix_group(self, dtype, group, row_index):
        table = self.weights_table
        reads = self.read_copies(group)
        for i, device in enumerate(self.worker_devices):
            with tf.device(device):
                support = self.support[i]
                if row_index is None:
                    w = [float(x) for x in table[0, i, list(support)]]
                else:
                    wt = tf.gather(
                        tf.constant(table[:, i, list(support)], dtype),
                        row_index,
                    )
                    w = [wt[k] for k in range(len(support))]
                for n, v in enumerate(group):
                    value = _weighted_sum(w, [reads[j][n] for j in support])
                    v.values[i].assign(value, read_value=False)


_EXTENDED = {
    "nomix": NoMixExtended,
    "addn": AddNExtended,
    "active": ActiveExtended,
    "xla": XlaExtended,
    "pervar": PerVarExtended,
}


class VariantGossipStrategy(gossip.GossipStrategy):
    """`GossipStrategy` whose `extended.mix` is one of `VARIANTS`."""

    def __init__(self, topology, devices, *, update="dpsgd", variant):
        if variant not in _EXTENDED:
            raise ValueError(
                f"`variant` must be one of {sorted(_EXTENDED)} (use "
                "tfd.GossipStrategy for the package's own mixes). "
                f"Received: variant={variant!r}"
            )
        # Read by GossipStrategy.__init__ to build the extended.
        self._single_host_extended_class = _EXTENDED[variant]
        super().__init__(
            topology, devices, update=update, mix_implementation="packed"
        )


def make_strategy(topology, devices, update="dpsgd", variant="package"):
    if variant == "package":
        return gossip.GossipStrategy(topology, devices, update=update)
    if variant == "packed":
        return gossip.GossipStrategy(
            topology, devices, update=update, mix_implementation="packed"
        )
    return VariantGossipStrategy(
        topology, devices, update=update, variant=variant
    )
