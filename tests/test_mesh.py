"""The named mesh: flag parsing, FSDP memory savings, and the same training on every valid mesh."""

import itertools

import jax
import numpy as np
import pytest

from suite.common import registry, sharding
from suite.common.errors import UserError
from suite.common.mlperf_log import MLPerfLog
from suite.training.clock import Clock
from suite.training.steps import compile_steps
from suite.workloads import resnet, ssd

NUM_STEPS = 4


def test_mesh_spec_parsing_and_inference():
  assert sharding.parse_mesh_spec('data:-1,fsdp:2') == {'data': -1, 'fsdp': 2, 'tensor': 1}
  assert dict(sharding.make_mesh(mesh='data:-1,fsdp:2,tensor:2').shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  assert dict(sharding.make_mesh(mesh='fsdp:8').shape) == {'data': 1, 'fsdp': 8, 'tensor': 1}


@pytest.mark.parametrize('spec,message', [('data:3', 'has 3 devices but the job has 8'),
                                          ('data:-1,fsdp:-1', 'at most one axis'),
                                          ('pipeline:2', "bad --mesh part 'pipeline:2'"),
                                          ('data:-1,fsdp:3', 'do not divide the 8 devices'),
                                          ('data:two', "bad --mesh part 'data:two'")])
def test_bad_mesh_specs_fail_clearly(spec, message):
  with pytest.raises(UserError, match=message):
    sharding.make_mesh(mesh=spec)


def test_dcn_mesh_multiplies_slices():
  with pytest.raises(UserError, match='--dcn_mesh'):
    sharding.make_mesh(mesh='data:-1', dcn_mesh='data:3')


def test_logical_names_map_to_dividing_mesh_axes():
  mesh = sharding.make_mesh(mesh='data:2,fsdp:2,tensor:2')
  conv = jax.sharding.PartitionSpec('conv_h', 'conv_w', 'conv_in', 'conv_out')
  assert sharding.mesh_spec_for(conv, (3, 3, 16, 64), mesh) == jax.sharding.PartitionSpec(
      None, None, None, ('tensor', 'fsdp'))
  # 5 classes: not divisible by the tensor axis (2), so the vocab dimension stays whole.
  head = jax.sharding.PartitionSpec('embed', 'vocab')
  assert sharding.mesh_spec_for(head, (64, 5), mesh) == jax.sharding.PartitionSpec('fsdp', None)


def _train(workload, mesh_spec, host_batches):
  mesh = sharding.make_mesh(mesh=mesh_spec)
  schedule = workload.learning_rate_schedule(workload.num_train_examples / workload.global_batch_size)
  compiled = compile_steps(workload, mesh, workload.optimizer(schedule), schedule,
                           Clock(MLPerfLog(None, enabled=False)).now)
  state = compiled.init(jax.random.PRNGKey(0))
  device0 = jax.devices()[0]
  state_bytes = sum(shard.data.nbytes for leaf in jax.tree.leaves((state.params, state.opt_state))
                    for shard in leaf.addressable_shards if shard.device == device0)
  losses = []
  for batch in host_batches:
    state, metrics = compiled.train(state, sharding.to_global(batch, compiled.train_batch_sharding))
    losses.append(float(metrics['loss']))
  return losses, state_bytes


@pytest.fixture(scope='module')
def tiny_resnet(data_dir):
  workload = resnet.Workload(resnet.get_config('tiny'), 'tiny')
  workload.open_data(data_dir)
  return workload, list(itertools.islice(workload.train_batches(1, 0, 1), NUM_STEPS))


def test_fsdp_cuts_state_bytes_per_device_by_about_8x_with_the_same_losses(tiny_resnet):
  workload, batches = tiny_resnet
  data_losses, data_bytes = _train(workload, 'data:8', batches)
  fsdp_losses, fsdp_bytes = _train(workload, 'fsdp:8', batches)
  ratio = data_bytes / fsdp_bytes
  assert 7.0 < ratio <= 8.0, ratio  # Batch-norm scales and biases stay whole; every kernel is split 8 ways.
  np.testing.assert_allclose(fsdp_losses, data_losses, rtol=1e-4)


@pytest.mark.parametrize('mesh_spec', ['data:2,fsdp:2,tensor:2', 'tensor:8'])
def test_resnet_trains_identically_on_other_meshes(tiny_resnet, mesh_spec):
  workload, batches = tiny_resnet
  reference, _ = _train(workload, 'data:8', batches)
  losses, _ = _train(workload, mesh_spec, batches)
  np.testing.assert_allclose(losses, reference, rtol=1e-4)


def test_ssd_trains_identically_on_a_3d_mesh(data_dir):
  workload = registry.make_workload('ssd', ssd.get_config('tiny'), 'tiny')
  workload.open_data(data_dir)
  batches = list(itertools.islice(workload.train_batches(1, 0, 1), 2))
  reference, _ = _train(workload, 'data:8', batches)
  losses, _ = _train(workload, 'data:2,fsdp:2,tensor:2', batches)
  np.testing.assert_allclose(losses, reference, rtol=1e-4)
