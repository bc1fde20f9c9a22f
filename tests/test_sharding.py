"""Data parallelism is exact: 8 CPU devices follow the 1-device loss trajectory for the same global batch."""

import itertools

import jax
import numpy as np
import pytest

from suite.common import sharding
from suite.common.mlperf_log import MLPerfLog
from suite.training.clock import Clock
from suite.training.runner import evaluate
from suite.training.steps import compile_steps
from suite.workloads import resnet

NUM_STEPS = 6
# Float32 sums reduced in a different order across devices; observed differences are ~1e-6 relative.
LOSS_RTOL = 1e-4


def _trajectory(workload, devices, host_batches):
  mesh = sharding.make_mesh(devices)
  schedule = workload.learning_rate_schedule(workload.num_train_examples / workload.global_batch_size)
  compiled = compile_steps(workload, mesh, workload.optimizer(schedule), schedule,
                           Clock(MLPerfLog(None, enabled=False)).now)
  state = compiled.init(jax.random.PRNGKey(0))
  losses = []
  for batch in host_batches:
    state, metrics = compiled.train(state, sharding.to_global(batch, compiled.train_batch_sharding))
    losses.append(float(metrics['loss']))
  return losses, evaluate(workload, compiled, state)


@pytest.fixture(scope='module')
def tiny_workload(data_dir):
  workload = resnet.Workload(resnet.get_config('tiny'), 'tiny')
  workload.open_data(data_dir)
  return workload


def test_eight_devices_match_one_device(tiny_workload):
  assert len(jax.devices()) == 8
  host_batches = list(itertools.islice(tiny_workload.train_batches(seed=3, process_index=0, process_count=1),
                                       NUM_STEPS))
  losses_1, top1_1 = _trajectory(tiny_workload, jax.devices()[:1], host_batches)
  losses_8, top1_8 = _trajectory(tiny_workload, jax.devices(), host_batches)
  assert losses_1[0] > losses_1[-1]  # It trains, so matching trajectories mean something.
  np.testing.assert_allclose(losses_8, losses_1, rtol=LOSS_RTOL)
  assert top1_8 == top1_1  # Eval counts are integers: identical, not close.


def test_batch_is_split_over_all_devices(tiny_workload):
  mesh = sharding.make_mesh()
  batch = next(tiny_workload.train_batches(seed=0, process_index=0, process_count=1))
  global_batch = sharding.to_global(batch, sharding.batch_sharding(mesh))
  shard_rows = {s.data.shape[0] for s in global_batch['image'].addressable_shards}
  assert shard_rows == {tiny_workload.global_batch_size // 8}
  np.testing.assert_array_equal(np.asarray(global_batch['label']), batch['label'])


def test_prefetch_reraises_producer_errors():
  def broken():
    yield {'x': np.zeros((8,), np.float32)}
    raise ValueError('corrupt record 7')
  mesh = sharding.make_mesh()
  batches = sharding.prefetch_to_devices(broken(), sharding.batch_sharding(mesh))
  next(batches)
  with pytest.raises(ValueError, match='corrupt record 7'):
    next(batches)
