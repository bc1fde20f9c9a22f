"""What a JAX user expects to look at: TensorBoard scalars equal to metrics.jsonl, a console free of third-party
INFO chatter, progress bars on a terminal only, and --profile_steps traces annotated per step."""

import glob
import gzip
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from suite.common import registry
from suite.results import runs
from suite.training import metrics_writer, runner
from tests.conftest import REPO


@pytest.fixture
def toy(monkeypatch):
  """The test-only linear workload (tests/toy_workload.py): a real run through the runner in a few seconds."""
  monkeypatch.setitem(registry.WORKLOADS, 'toy', 'tests.toy_workload')
  workload = registry.make_workload('toy', registry.get_config('toy', 'tiny'), 'tiny')
  # An analytic FLOP count and a given peak, so that every logged interval has an MFU (the toy has none).
  monkeypatch.setattr(type(workload), 'model_flops_per_example', lambda self: 3e3)
  return workload


def _metrics(out) -> list[dict]:
  with open(os.path.join(out, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def test_tensorboard_scalars_equal_metrics_jsonl(toy, tmp_path):
  out = str(tmp_path / 'run')
  summary = runner.run(toy, runner.RunOptions(output_dir=out, seed=0, division='open', peak_flops=1e9,
                                              save_final_checkpoint=False))
  scalars = metrics_writer.read_scalars(os.path.join(out, 'tensorboard'))
  records = _metrics(out)
  train = [r for r in records if r['kind'] == 'train']
  evals = [r for r in records if r['kind'] == 'eval']
  assert train and evals
  for name in ('loss', 'learning_rate', 'step_time_s', 'samples_per_s', 'model_flops_utilization'):
    # TensorBoard stores float32: the same numbers, at the same steps.
    assert scalars[f'train/{name}'] == [(r['step'], float(np.float32(r[name]))) for r in train], name
  per_device = 3e3 * 64 / summary['num_devices']  # FLOPs of one step on each device (the batch is split).
  assert all(0 < r['model_flops_utilization'] == pytest.approx(per_device / r['step_time_s'] / 1e9) for r in train)
  assert scalars['eval/top1'] == [(r['step'], float(np.float32(r['top1']))) for r in evals]
  assert scalars['eval/top1'][-1][1] == pytest.approx(summary['final_metric'])


def test_tensorboards_own_reader_reads_the_event_files(tmp_path):
  """The files are TensorBoard's format, not just ours: its own reader (when installed) sees the same scalars."""
  event_accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
  writer = metrics_writer.MetricsWriter(str(tmp_path))
  writer.write({'kind': 'train', 'step': 8, 'loss': 2.5, 'learning_rate': 0.125, 'model_flops_utilization': None})
  writer.write({'kind': 'eval', 'step': 16, 'epoch': 2, 'top1': 0.75})
  writer.close()
  accumulator = event_accumulator.EventAccumulator(str(tmp_path / 'tensorboard'))
  accumulator.Reload()
  assert sorted(accumulator.Tags()['scalars']) == ['eval/epoch', 'eval/top1', 'train/learning_rate', 'train/loss']
  assert [(e.step, e.value) for e in accumulator.Scalars('train/loss')] == [(8, 2.5)]
  assert [(e.step, e.value) for e in accumulator.Scalars('eval/top1')] == [(16, 0.75)]
  assert metrics_writer.read_scalars(str(tmp_path / 'tensorboard'))['eval/top1'] == [(16, 0.75)]


def test_overwrite_starts_the_tensorboard_files_afresh(toy, tmp_path):
  out = str(tmp_path / 'run')
  options = runner.RunOptions(output_dir=out, seed=0, division='open', peak_flops=1e9, save_final_checkpoint=False)
  runner.run(toy, options)
  runner.run(toy, runner.RunOptions(**{**options.__dict__, 'overwrite': True}))
  scalars = metrics_writer.read_scalars(os.path.join(out, 'tensorboard'))
  assert [s for s, _ in scalars['eval/top1']] == [r['step'] for r in _metrics(out) if r['kind'] == 'eval']


def test_a_profiled_run_leaves_a_trace_with_its_steps_annotated(toy, tmp_path):
  out = str(tmp_path / 'run')
  runner.run(toy, runner.RunOptions(output_dir=out, seed=0, division='open', peak_flops=1e9,
                                    save_final_checkpoint=False, profile_steps=(2, 4)))
  traces = glob.glob(os.path.join(out, 'profile', 'plugins', 'profile', '*', '*.trace.json.gz'))
  assert len(traces) == 1 and glob.glob(os.path.join(os.path.dirname(traces[0]), '*.xplane.pb'))
  with gzip.open(traces[0], 'rt', encoding='utf-8') as f:
    events = json.load(f)['traceEvents']
  steps = {int(e['args']['step_num']) for e in events if e.get('name') == 'train' and 'step_num' in e.get('args', {})}
  assert {2, 3, 4} <= steps and min(steps) == 2  # From the first profiled step on, each annotated.


# `python -m suite.main`, with the test-only toy workload registered first.
_RUN_TOY = ("import runpy, sys; from suite.common import registry; registry.WORKLOADS['toy'] = 'tests.toy_workload'; "
            "sys.argv[0] = 'suite.main'; runpy.run_module('suite.main', run_name='__main__', alter_sys=True)")


def _suite_file_names() -> set[str]:
  return {name for package in ('suite', 'models', 'input_pipelines')
          for _, _, files in os.walk(os.path.join(REPO, package)) for name in files if name.endswith('.py')}


def test_the_console_shows_the_suites_lines_and_no_third_party_info(tmp_path):
  out = str(tmp_path / 'run')
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1', 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run([sys.executable, '-c', _RUN_TOY, '--workload=toy', '--scale=tiny', '--platform=cpu',
                           '--seed=0', f'--output_dir={out}', '--peak_flops=1e9'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.listdir(os.path.join(out, 'checkpoints'))  # Orbax did save (and would have said so at INFO).
  info_files = set(re.findall(r'^I\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\]', result.stderr, re.MULTILINE))
  assert info_files and info_files <= _suite_file_names(), info_files
  assert 'orbax' not in result.stderr.lower() and 'CheckpointManager' not in result.stderr
  assert 'eval at epoch 1: top1' in result.stderr  # The suite's own lines stay...
  assert 'resnet (tiny, open): success' in result.stdout  # ...and so does its summary line.
  assert '\r' not in result.stderr  # Not a terminal: no progress bar, plain lines.


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_a_terminal_gets_an_epoch_bar_and_a_log_gets_none(toy, tmp_path, monkeypatch):
  terminal = _Terminal()
  monkeypatch.setattr(sys, 'stderr', terminal)
  runner.run(toy, runner.RunOptions(output_dir=str(tmp_path / 'tty'), seed=0, division='open', peak_flops=1e9,
                                    save_final_checkpoint=False))
  shown = terminal.getvalue()
  assert re.search(r'epoch', shown) and '\r' in shown and '|' in shown, shown[-500:]
  log = io.StringIO()
  monkeypatch.setattr(sys, 'stderr', log)
  runner.run(toy, runner.RunOptions(output_dir=str(tmp_path / 'log'), seed=0, division='open', peak_flops=1e9,
                                    save_final_checkpoint=False))
  assert '\r' not in log.getvalue()


def _fake_execute(workload, scale, spec, num_runs, extra_args, *args, **kwargs):
  del workload, scale, num_runs, extra_args, args, kwargs
  os.makedirs(spec.output_dir, exist_ok=True)
  return {'run': spec.index, 'seed': spec.seed, 'status': 'success', 'time_to_train_s': 10.0 + spec.index,
          'epochs': 3, 'final_metric': 0.95, 'target_metric': 'top1'}


@pytest.mark.parametrize('stream_cls, bar', [(_Terminal, True), (io.StringIO, False)])
def test_a_set_of_runs_shows_a_bar_over_its_runs_on_a_terminal_only(tmp_path, monkeypatch, stream_cls, bar):
  monkeypatch.setattr(runs, 'execute', _fake_execute)
  stream = stream_cls()
  result = runs.run_set('resnet', 'tiny', 3, str(tmp_path / 'set'), base_seed=1, stream=stream)
  assert result['num_runs'] == 3
  shown = stream.getvalue()
  assert ('3/3' in shown and '\r' in shown) == bar, shown
  assert 'run 3/3: success, time to train 12.0 s, top1 0.95' in shown  # The plain line of each run, always.
