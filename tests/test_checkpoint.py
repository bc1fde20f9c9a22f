"""Orbax checkpoints of the sharded train state: exact round trip, and a corrupt one is reported in one line."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from suite.common import sharding
from suite.common.errors import UserError
from suite.training import checkpoint


def _state(mesh):
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('fsdp'))
  return {'w': jax.device_put(np.arange(32, dtype=np.float32).reshape(8, 4), spec),
          'step': jax.device_put(jnp.int32(5), sharding.replicated(mesh))}


def test_round_trip_keeps_values_and_shardings(tmp_path):
  mesh = sharding.make_mesh(mesh='fsdp:8')
  state = _state(mesh)
  mngr = checkpoint.manager(str(tmp_path), asynchronous=False)
  checkpoint.save(mngr, 5, state)
  mngr.wait_until_finished()
  restored = checkpoint.restore(str(tmp_path), checkpoint.abstract_like(state))
  np.testing.assert_array_equal(restored['w'], state['w'])
  assert restored['w'].sharding == state['w'].sharding and int(restored['step']) == 5


def test_missing_and_corrupt_checkpoints_fail_clearly(tmp_path):
  mesh = sharding.make_mesh(mesh='fsdp:8')
  state = _state(mesh)
  with pytest.raises(UserError, match='no checkpoint'):
    checkpoint.restore(str(tmp_path), checkpoint.abstract_like(state))
  mngr = checkpoint.manager(str(tmp_path), asynchronous=False)
  checkpoint.save(mngr, 1, state)
  mngr.wait_until_finished()
  for root, _, files in os.walk(tmp_path / 'checkpoints' / '1'):
    for name in files:
      if name != 'commit_success.txt':
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'garbage')
  with pytest.raises(UserError, match='corrupt'):
    checkpoint.restore(str(tmp_path), checkpoint.abstract_like(state))
