"""The ssd (RetinaNet) closed rules, proven on a real run: its own log through the official checker."""

import json

import pytest

from suite.common import mlperf_log
from suite.workloads import ssd
from tests.conftest import check_log, run_suite


@pytest.mark.slow
def test_tiny_closed_retinanet_trains_to_a_log_the_official_checker_passes(tmp_path, data_dir):
  """A closed tiny RetinaNet (the closed optimizer: Adam, no weight decay) trains to its own target (0.5 mAP on the
  generated shapes); its result_0.txt passes the 4.1.0 closed ssd rules, eval_accuracy >= 0.340 included."""
  assert ssd.RetinaNetWorkload.ruleset == '4.1.0'
  out = tmp_path / 'run'
  result = run_suite('--workload=ssd', '--scale=tiny', '--division=closed', '--seed=1', f'--data_dir={data_dir}',
                     f'--output_dir={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['division'] == 'closed' and summary['status'] == 'success', summary
  assert summary['final_metric'] >= summary['target'] and summary['compiles_after_run_start'] == 0
  events = mlperf_log.read_events(str(out / 'result_0.txt'), strict=True)
  by_key = {e['key']: e['value'] for e in events}
  assert by_key['submission_division'] == 'closed' and by_key['submission_benchmark'] == 'ssd'
  assert by_key['opt_name'] == 'adam' and by_key['opt_weight_decay'] == 0.0
  assert max(e['value'] for e in events if e['key'] == 'eval_accuracy') >= 0.340
  checker = check_log(str(out / 'result_0.txt'), ssd.RetinaNetWorkload.ruleset)
  assert checker.returncode == 0 and 'SUCCESS' in checker.stdout + checker.stderr, checker.stdout + checker.stderr
