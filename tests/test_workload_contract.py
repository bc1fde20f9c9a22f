"""The workload contract is enough: a workload defined only in a test module, registered with one line, trains to
its target under the clock, is guarded in the closed division, scores, and is served through LoadGen."""

import json
import os

import pytest

from suite.common import config as config_lib
from suite.common import registry
from suite.common.errors import UserError
from suite.inference import run as infer
from suite.training import runner


@pytest.fixture
def toy(monkeypatch):
  monkeypatch.setitem(registry.WORKLOADS, 'toy', 'tests.toy_workload')
  return registry.make_workload('toy', registry.get_config('toy', 'tiny'), 'tiny')


def test_a_workload_from_one_module_and_one_registry_line_trains_and_serves(toy, tmp_path):
  train_dir = str(tmp_path / 'train')
  toy.open_data(None)
  summary = runner.run(toy, runner.RunOptions(output_dir=train_dir, seed=0, division='open'))
  assert summary['status'] == 'success' and summary['final_metric'] >= 0.9
  assert summary['compiles_after_run_start'] == 0
  with open(os.path.join(train_dir, 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['variant'] == 'toy'

  options = infer.InferOptions(workload='toy', scenario='Offline', mode='accuracy', scale='tiny',
                               checkpoint=train_dir, output_dir=str(tmp_path / 'infer'))
  served = infer.run(toy, options)
  # LoadGen's accuracy log, decoded and scored by the workload's own hooks, equals the training eval.
  assert served['accuracy']['accuracy'] == pytest.approx(summary['final_metric'])
  assert served['accuracy']['closed_bound'] == pytest.approx(0.99 * 0.5)
  assert served['errors'] == 0


def test_the_facts_come_from_the_class(toy):
  cls = type(toy)
  assert registry.workload_class('toy') is cls and registry.workload_class('toy', 'toy') is cls
  assert cls.num_runs() == 5  # mlperf_logging.benchmark_meta's count for the benchmark it logs.
  reference = registry.get_config('toy', 'tiny')
  changed = registry.get_config('toy', 'tiny')
  changed.learning_rate = 0.1
  with pytest.raises(UserError, match='fix learning_rate; a closed run may change only global_batch_size'):
    config_lib.check_closed(cls, reference, changed, 'toy')
  with pytest.raises(UserError, match="unknown variant 'big' for workload toy: known variants are toy"):
    registry.workload_class('toy', 'big')
