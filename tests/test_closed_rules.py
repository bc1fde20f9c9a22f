"""The closed division is guarded: a field the rules fix cannot be overridden, free fields keep within the rules'
constraints, synthetic data never reports success, and every run records its whole resolved config."""

import json
import os

import pytest

from suite.common import registry
from tests.conftest import run_suite
from tests.test_bad_input import _error_line


@pytest.mark.parametrize('override, field', [
    ('--config.label_smoothing=0.2', 'label_smoothing'),
    ('--config.image_size=128', 'image_size'),
    ('--config.eval_every_epochs=8', 'eval_every_epochs'),
    ('--config.dataset=synthetic', 'dataset'),
    ('--config.target=0.5', 'target'),
    ('--config.model.depth=18', 'model.depth'),
])
def test_closed_run_refuses_a_field_the_rules_fix(tmp_path, override, field):
  out = tmp_path / 'out'
  line = _error_line(run_suite('--workload=resnet', '--scale=full', override, f'--data_dir={tmp_path}',
                               f'--output_dir={out}'))
  assert '--division=closed' in line and field in line, line
  assert 'global_batch_size' in line and 'optimizer.learning_rate' in line  # What a closed run may change.
  assert not out.exists()  # Refused before anything is written or opened.


def test_closed_run_checks_the_constraints_of_a_free_field(tmp_path):
  line = _error_line(run_suite('--workload=resnet', '--scale=full', '--config.optimizer.weight_decay=3e-4',
                               f'--data_dir={tmp_path}'))
  assert 'weight_decay=0.0003 is not 0.0001 x 2^k' in line, line


def test_closed_run_may_change_free_fields_and_open_runs_anything(tmp_path):
  # Both pass the guard and stop at the next check: the missing dataset.
  for args in (['--config.global_batch_size=2048', '--config.optimizer.learning_rate=8.5',
                '--config.optimizer.weight_decay=1e-4'],
               ['--division=open', '--config.label_smoothing=0.0']):
    line = _error_line(run_suite('--workload=resnet', '--scale=full', *args, f'--data_dir={tmp_path}'))
    assert "dataset 'imagenet2012'" in line and 'not found' in line, line


def test_closed_detection_guard_is_per_variant(tmp_path):
  # RetinaNet's rules fix Adam without weight decay; SSD300's allow its SGD weight decay to be tuned.
  line = _error_line(run_suite('--workload=ssd', '--scale=full', '--config.optimizer.weight_decay=1e-4',
                               f'--data_dir={tmp_path}'))
  assert 'optimizer.weight_decay' in line and 'ssd 4.1.0' in line, line
  line = _error_line(run_suite('--workload=ssd', '--variant=ssd300', '--scale=full', '--config.max_boxes=50',
                               f'--data_dir={tmp_path}'))
  assert 'max_boxes' in line and 'ssd 1.1.0' in line, line
  line = _error_line(run_suite('--workload=ssd', '--scale=full', '--config.variant=ssd300', f'--data_dir={tmp_path}'))
  assert '--variant=NAME' in line, line


def test_every_variant_declares_free_fields_that_exist():
  for name in registry.WORKLOADS:
    for variant, cls in registry.variants(name).items():
      config = registry.get_config(name, 'full', variant)
      fixed = cls.closed_fixed_fields(config)
      assert 'target' in fixed and 'dataset' in fixed and 'eval_every_epochs' in fixed, (name, variant)
      leaves = set(fixed) | set(_leaf_keys(config))
      for free in cls.closed_free_fields:
        assert any(k == free or k.startswith(free + '.') for k in leaves), (name, variant, free)


def _leaf_keys(config):
  from suite.common.config import leaf_keys  # pylint: disable=import-outside-toplevel
  return leaf_keys(config)


def test_synthetic_data_never_reports_success_and_the_config_is_recorded(tmp_path, data_dir):
  out = tmp_path / 'synthetic'
  result = run_suite('--workload=resnet', '--scale=tiny', '--config.dataset=synthetic', '--config.max_epochs=1',
                     '--config.global_batch_size=8', '--config.log_every_steps=64', '--seed=3',
                     f'--data_dir={data_dir}', f'--output_dir={out}')
  assert result.returncode == 1, result.stderr[-3000:]
  with open(out / 'summary.json', encoding='utf-8') as f:
    summary = json.load(f)
  # It trains on one fixed batch and evaluates on that batch: the metric is real but measures nothing.
  assert summary['status'] == 'aborted' and summary['reason'] == 'synthetic_data'
  with open(out / 'config.json', encoding='utf-8') as f:
    recorded = json.load(f)
  assert recorded['config']['dataset'] == 'synthetic' and recorded['config']['global_batch_size'] == 8
  assert recorded['seed'] == 3 and recorded['variant'] == 'resnet50' and recorded['division'] == 'open'
  with open(out / 'result_0.txt', encoding='utf-8') as f:
    assert '"status": "aborted"' in f.read()
  assert os.path.exists(out / 'metrics.jsonl')
