"""The resnet closed rules, proven on the official checker's own rule files (the closed run that trains to a log the
checker passes is tests/test_end_to_end.py; no hand-written logs)."""

import math
import os

import numpy as np
import pytest
import yaml
from mlperf_logging.compliance_checker import mlp_compliance

from suite.workloads import resnet

IMAGENET_TRAIN, IMAGENET_EVAL = 1281167, 50000
RULES_DIR = os.path.dirname(mlp_compliance.__file__)


def _full_workload(**optimizer_overrides):
  config = resnet.get_config('full')
  config.optimizer.update(**optimizer_overrides)
  workload = resnet.Workload(config, 'full')
  workload._train_source, workload._eval_source = range(IMAGENET_TRAIN), range(IMAGENET_EVAL)  # Sizes only.
  return workload


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


def _optimizer_rules(opt_name):
  """The checker's per-optimizer resnet rules (training_4.0.0/closed_resnet.yaml enqueues
  training_3.1.0/closed_resnet_<opt_name>.yaml): {key: [CHECK expressions]}."""
  with open(os.path.join(RULES_DIR, 'training_3.1.0', f'closed_resnet_{opt_name}.yaml')) as f:
    rules = yaml.safe_load(f)
  return {r['KEY']['NAME']: [r['KEY']['CHECK']] if isinstance(r['KEY'].get('CHECK', []), str)
          else r['KEY'].get('CHECK', []) for r in rules}


def _violations(hp, rules):
  problems = [f'{key} not logged' for key in rules if key not in hp]
  for key, checks in rules.items():
    for check in checks:
      if key in hp and not eval(check.strip(), {'math': math, 'is_integer': mlp_compliance.is_integer},
                                {'v': {'value': hp[key]}}):
        problems.append(f'{key}={hp[key]} fails {check.strip()}')
  return problems


@pytest.mark.parametrize('optimizer', [dict(name='lars'), dict(name='sgd', weight_decay=1e-4)])
def test_full_config_logs_what_the_optimizer_rules_demand(optimizer):
  """The full config's hyperparameters for each closed optimizer, against the checker's own rule file."""
  workload = _full_workload(**optimizer)
  hp = workload.hyperparameters(IMAGENET_TRAIN / workload.global_batch_size)
  assert _violations(hp, _optimizer_rules(optimizer['name'])) == []


def test_the_rule_file_check_can_fail():
  """3e-4 is not 1e-4 x 2^k: the same check names it."""
  workload = _full_workload(weight_decay=3e-4)
  hp = workload.hyperparameters(IMAGENET_TRAIN / workload.global_batch_size)
  assert _violations(hp, _optimizer_rules('lars')) == [
      "lars_opt_weight_decay=0.0003 fails is_integer(math.log2(v['value'] / 0.0001))"]


@pytest.mark.parametrize('step,expected', [(0, 0.0), (1, 2.0), (5, 10.0), (10, 2.500075), (15, 1e-4), (100, 1e-4)])
def test_lars_schedule_against_hand_computed_values(step, expected):
  # warmup 5 steps 0 -> 10; then 10 -> 1e-4 over 10 steps with power 2: (10 - 1e-4) * (1 - 5/10)^2 + 1e-4.
  schedule = resnet.lars_schedule(10.0, 1e-4, 2.0, warmup_steps=5, decay_steps=10)
  np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)


def test_lars_skips_weight_decay_on_batch_norm_and_bias():
  params = {'conv': {'kernel': np.ones((3, 3, 4, 4), np.float32)}, 'bn': {'scale': np.ones(4, np.float32)}}
  masks = resnet._decays(params)
  assert masks == {'conv': {'kernel': True}, 'bn': {'scale': False}}
