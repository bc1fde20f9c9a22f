"""Preemption safety: a run killed mid-training resumes to the same trajectory; SIGTERM checkpoints and stops."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, check_log, run_suite

TINY = ['--workload=resnet', '--scale=tiny', '--seed=11', '--config.max_epochs=2', '--checkpoint_every_steps=8',
        '--keep_checkpoints=10']


def _start(out, data_dir, *extra):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1', 'JAX_PLATFORMS': 'cpu'}
  return subprocess.Popen([sys.executable, '-m', 'suite.main', *TINY, f'--data_dir={data_dir}', f'--output_dir={out}',
                           *extra], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(out, step, proc, timeout_s=600):
  deadline = time.monotonic() + timeout_s
  target = out / 'checkpoints' / str(step) / 'commit_success.txt'
  while not target.exists():
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.2)


def _losses_by_step(out):
  records = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines() if line.strip()]
  return {r['step']: r['loss'] for r in records if r['kind'] == 'train'}


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, data_dir):
  out = tmp_path_factory.mktemp('uninterrupted') / 'run'
  result = run_suite(*TINY, f'--data_dir={data_dir}', f'--output_dir={out}')
  assert result.returncode in (0, 1), result.stderr[-3000:]
  return out


@pytest.mark.slow
def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path, data_dir, uninterrupted):
  out = tmp_path / 'run'
  proc = _start(out, data_dir)
  _wait_for_checkpoint(out, 24, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (out / 'summary.json').exists()
  result = run_suite(*TINY, f'--data_dir={data_dir}', f'--output_dir={out}', '--resume')
  assert result.returncode in (0, 1), result.stderr[-3000:]
  resumed = json.loads((out / 'summary.json').read_text())
  reference = json.loads((uninterrupted / 'summary.json').read_text())
  assert resumed['resumed_from_step'] >= 24
  assert resumed['final_metric'] == reference['final_metric']
  assert resumed['train_steps'] == reference['train_steps']
  ref_losses, losses = _losses_by_step(uninterrupted), _losses_by_step(out)
  assert set(ref_losses) <= set(losses)
  for step, loss in ref_losses.items():  # Bit-identical: same state, same batches, same executable.
    assert losses[step] == loss, step
  checker = check_log(str(out / 'result_0.txt'))
  assert 'SUCCESS' in checker.stdout + checker.stderr, checker.stdout + checker.stderr
  keys = [json.loads(line.split(':::MLLOG ', 1)[1])['key'] for line in (out / 'result_0.txt').open()]
  assert keys.count('run_start') == 1 and keys.count('resumed') == 1  # Marked as resumed, in one log.


@pytest.mark.slow
def test_sigterm_checkpoints_and_stops_as_preempted(tmp_path, data_dir, uninterrupted):
  out = tmp_path / 'run'
  proc = _start(out, data_dir)
  _wait_for_checkpoint(out, 8, proc)
  sent = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 1
  assert time.monotonic() - sent < 60
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['status'] == 'aborted' and summary['reason'] == 'preempted'
  result = run_suite(*TINY, f'--data_dir={data_dir}', f'--output_dir={out}', '--resume')
  assert result.returncode in (0, 1), result.stderr[-3000:]
  resumed = json.loads((out / 'summary.json').read_text())
  assert resumed['final_metric'] == json.loads((uninterrupted / 'summary.json').read_text())['final_metric']


@pytest.mark.slow
def test_resume_at_a_block_boundary_runs_the_missed_eval(tmp_path, data_dir, uninterrupted):
  """A checkpoint taken at the last step of an epoch precedes that epoch's eval: resuming from it evaluates first."""
  out = tmp_path / 'run'
  shutil.copytree(uninterrupted, out)
  os.remove(out / 'summary.json')
  for step_dir in (out / 'checkpoints').iterdir():
    if step_dir.name.isdigit() and int(step_dir.name) > 32:  # Died right after the step-32 checkpoint.
      shutil.rmtree(step_dir)
  result = run_suite(*TINY, f'--data_dir={data_dir}', f'--output_dir={out}', '--resume')
  assert result.returncode in (0, 1), result.stderr[-3000:]
  resumed = json.loads((out / 'summary.json').read_text())
  assert resumed['resumed_from_step'] == 32
  assert resumed['final_metric'] == json.loads((uninterrupted / 'summary.json').read_text())['final_metric']
  records = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines() if line.strip()]
  assert [r['epoch'] for r in records if r['kind'] == 'eval'] == [1, 2, 1, 2]  # Original run, then the resumed one.
