"""Test and example helpers: logical devices for multi-replica runs on a CPU."""

from tf_decentral.testing.devices import logical_cpus

__all__ = ("logical_cpus",)
