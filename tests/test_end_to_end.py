"""The tiny ResNet trained to its target through `python -m suite.main`, judged by the official checker."""

import json
import os

import pytest

from suite.common import mlperf_log
from tests.conftest import check_log, run_suite

SUMMARY_FIELDS = {'workload', 'scale', 'division', 'status', 'target_metric', 'target', 'final_metric',
                  'time_to_train_s', 'init_s', 'compile_s', 'train_steps', 'train_samples', 'samples_per_s',
                  'step_time_s', 'xla_flops_utilization', 'model_flops_utilization', 'peak_flops_source'}


def _mllog(path):
  return mlperf_log.read_events(path, strict=True)  # Strict: only whole MLLOG lines in the result file.


@pytest.mark.slow
def test_tiny_resnet_reaches_target_with_a_compliant_closed_log(tmp_path, data_dir):
  """A real closed run (tiny scale, the closed LARS optimizer): its own result_0.txt passes the 4.0.0 closed
  rules, including their eval_accuracy >= 0.759, which only training can reach."""
  out = tmp_path / 'run'
  result = run_suite('--workload=resnet', '--scale=tiny', '--division=closed', '--seed=7', f'--data_dir={data_dir}',
                     f'--output_dir={out}', '--profile_steps=3:5')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert SUMMARY_FIELDS <= set(summary)
  assert summary['status'] == 'success'
  assert summary['final_metric'] >= summary['target'] == 0.9
  assert summary['compiles_after_run_start'] == 0  # No compile inside the timed region.
  # FLOPs utilisation over the host's measured peak (one CPU device); the model count is the workload's hook.
  assert summary['peak_flops_source'] == 'measured_cpu'
  assert 0 < summary['xla_flops_utilization'] < 1 and 0 < summary['model_flops_utilization'] < 1
  assert summary['model_flops_per_step_per_device'] == 6 * 12_501_632 * 128  # 12.5 M MACs: tests/test_mfu.py
  assert summary['train_samples'] == summary['train_steps'] * 128

  checker = check_log(str(out / 'result_0.txt'), '4.0.0')
  assert checker.returncode == 0 and 'SUCCESS' in checker.stdout + checker.stderr, checker.stdout + checker.stderr

  events = _mllog(out / 'result_0.txt')
  keys = [e['key'] for e in events]
  for key in ('seed', 'global_batch_size', 'gradient_accumulation_steps', 'train_samples', 'eval_samples',
              'opt_name', 'lars_opt_base_learning_rate'):
    assert keys.count(key) == 1, key
  assert keys.index('init_stop') < keys.index('run_start') < keys.index('block_start')
  by_key = {e['key']: e for e in events}
  assert by_key['seed']['value'] == 7
  assert by_key['submission_division']['value'] == 'closed' and by_key['opt_name']['value'] == 'lars'
  assert max(e['value'] for e in events if e['key'] == 'eval_accuracy') >= 0.759
  assert by_key['run_stop']['metadata']['status'] == 'success'
  run_s = (by_key['run_stop']['time_ms'] - by_key['run_start']['time_ms']) / 1e3
  # summary.json and the log tell the same time: both come from the same clock readings, so only the log's
  # rounding to whole milliseconds separates them, however loaded the machine.
  assert abs(run_s - summary['time_to_train_s']) <= 0.001 + 1e-9

  metrics = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
  evals = [m for m in metrics if m['kind'] == 'eval']
  assert evals and evals[-1]['top1'] == summary['final_metric']
  assert any(m['kind'] == 'train' for m in metrics)
  assert 'success' in result.stdout and str(out) in result.stdout  # The human line.
  traces = [f for _, _, files in os.walk(out / 'profile') for f in files if f.endswith('.xplane.pb')]
  assert traces  # --profile_steps wrote a jax.profiler trace.
  goodput = summary['goodput']
  assert 0 < goodput['goodput'] < 1 and goodput['eval_s'] == summary['eval_s']


@pytest.mark.slow
def test_diverging_run_is_aborted_with_the_reason(tmp_path, data_dir):
  out = tmp_path / 'run'
  result = run_suite('--workload=resnet', '--scale=tiny', '--seed=1', f'--data_dir={data_dir}',
                     f'--output_dir={out}', '--config.optimizer.name=sgd', '--config.optimizer.learning_rate=1e12',
                     '--config.optimizer.warmup_epochs=0')
  assert result.returncode == 1, result.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['status'] == 'aborted'
  assert 'divergence' in summary['reason']
  run_stop = next(e for e in _mllog(out / 'result_0.txt') if e['key'] == 'run_stop')
  assert run_stop['metadata']['status'] == 'aborted' and 'divergence' in run_stop['metadata']['reason']
  assert os.path.exists(out / 'metrics.jsonl')
