"""The full ResNet config logs what the closed 4.0.0 rules demand, proven with the official checker's rules."""

import numpy as np
import pytest

from suite import runner
from suite.clock import Clock
from suite.mlperf_log import KEYS, MLPerfLog
from suite.workloads import resnet
from tests.conftest import check_log

IMAGENET_TRAIN, IMAGENET_EVAL = 1281167, 50000


def _full_workload(**optimizer_overrides):
  config = resnet.get_config('full')
  config.optimizer.update(**optimizer_overrides)
  workload = resnet.Workload(config, 'full')
  workload._train_source, workload._eval_source = range(IMAGENET_TRAIN), range(IMAGENET_EVAL)  # Sizes only.
  return workload


def _write_closed_log(path, workload):
  """The runner's own logging calls, with the clock's events around them, for a run that reaches 0.76."""
  log = MLPerfLog(path)
  clock = Clock(log)
  runner.log_submission(log, workload, runner.RunOptions(output_dir='', division='closed'), 'test-platform')
  clock.init_start()
  runner.log_hyperparameters(log, workload, seed=1234)
  clock.init_stop()
  clock.run_start()
  for first_epoch in (1, 5):
    clock.block_start(first_epoch, 4)
    clock.block_stop(first_epoch)
    clock.eval_start(first_epoch + 3)
    clock.eval_stop(first_epoch + 3)
    log.event(KEYS.EVAL_ACCURACY, 0.70 if first_epoch == 1 else 0.7601, metadata={'epoch_num': first_epoch + 3})
  clock.run_stop('success')
  log.close()


def test_full_config_matches_the_rcp_for_batch_4096():
  workload = _full_workload()
  hp = workload.hyperparameters(IMAGENET_TRAIN / workload.global_batch_size)
  # mlperf_logging/rcp_checker/training_4.0.0/rcps_resnet.json, entry resnet_ref_4096.
  assert workload.global_batch_size == 4096
  assert hp['lars_opt_base_learning_rate'] == 10
  assert hp['lars_opt_learning_rate_warmup_epochs'] == 5
  assert hp['lars_opt_momentum'] == 0.9
  assert hp['lars_opt_weight_decay'] == 0.0002
  assert hp['lars_opt_learning_rate_decay_steps'] == 13137


def test_full_closed_log_passes_the_official_checker(tmp_path):
  path = str(tmp_path / 'result_0.txt')
  _write_closed_log(path, _full_workload())
  result = check_log(path)
  assert 'SUCCESS' in result.stdout + result.stderr, result.stdout + result.stderr


def test_checker_rejects_a_weight_decay_the_rules_forbid(tmp_path):
  """Proves the previous test can fail: 3e-4 is not 1e-4 * 2^k."""
  path = str(tmp_path / 'result_0.txt')
  _write_closed_log(path, _full_workload(weight_decay=3e-4))
  result = check_log(path)
  assert 'FAILED' in result.stdout + result.stderr


def test_sgd_variant_also_passes_closed_rules(tmp_path):
  path = str(tmp_path / 'result_0.txt')
  _write_closed_log(path, _full_workload(name='sgd', weight_decay=1e-4))
  result = check_log(path)
  assert 'SUCCESS' in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize('step,expected', [(0, 0.0), (1, 2.0), (5, 10.0), (10, 2.500075), (15, 1e-4), (100, 1e-4)])
def test_lars_schedule_against_hand_computed_values(step, expected):
  # warmup 5 steps 0 -> 10; then 10 -> 1e-4 over 10 steps with power 2: (10 - 1e-4) * (1 - 5/10)^2 + 1e-4.
  schedule = resnet.lars_schedule(10.0, 1e-4, 2.0, warmup_steps=5, decay_steps=10)
  np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)


def test_lars_skips_weight_decay_on_batch_norm_and_bias():
  params = {'conv': {'kernel': np.ones((3, 3, 4, 4), np.float32)}, 'bn': {'scale': np.ones(4, np.float32)}}
  masks = resnet._decays(params)
  assert masks == {'conv': {'kernel': True}, 'bn': {'scale': False}}
