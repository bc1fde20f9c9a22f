"""Logical axis names that models give their parameters; suite/sharding.py maps them onto mesh axes."""

import flax.linen as nn

CONV_KERNEL = ('conv_h', 'conv_w', 'conv_in', 'conv_out')
DENSE_KERNEL = ('embed', 'mlp')
CLASSIFIER_KERNEL = ('embed', 'vocab')


def named(init, axes: tuple[str, ...]):
  """An initializer whose parameter carries logical axis names (read by nn.get_partition_spec)."""
  return nn.with_logical_partitioning(init, axes)
