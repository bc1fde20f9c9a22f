"""Preemption safety: a run killed mid-training resumes to the same trajectory; SIGTERM checkpoints and stops."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from suite.common import mlperf_log
from tests.conftest import REPO, check_log, run_suite

TINY = ['--workload=resnet', '--scale=tiny', '--seed=11', '--config.max_epochs=2', '--checkpoint_every_steps=8',
        '--keep_checkpoints=10']


def _start(out, data_dir, *extra):
  """stderr goes to a file: absl's INFO lines would fill a pipe nobody reads and stall the run."""
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1', 'JAX_PLATFORMS': 'cpu'}
  log = open(f'{out}.stderr', 'w+', encoding='utf-8')  # pylint: disable=consider-using-with
  proc = subprocess.Popen([sys.executable, '-m', 'suite.main', *TINY, f'--data_dir={data_dir}', f'--output_dir={out}',
                           *extra], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
  proc.stderr_file = log
  return proc


def _stderr(proc):
  proc.stderr_file.seek(0)
  return proc.stderr_file.read()


def _wait_for_checkpoint(out, step, proc, timeout_s=600):
  """A bounded wait with a wide margin (a hang fails, a slow machine does not)."""
  deadline = time.monotonic() + timeout_s
  target = out / 'checkpoints' / str(step) / 'commit_success.txt'
  while not target.exists():
    assert proc.poll() is None, _stderr(proc)[-3000:]
    assert time.monotonic() < deadline, f'no checkpoint {step} after {timeout_s} s'
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
  # The rules' time includes the downtime (the restart's start-up at least); time_to_train_s leaves it out.
  assert resumed['wall_time_to_train_s'] > resumed['time_to_train_s'] + resumed['init_s']
  assert reference['wall_time_to_train_s'] == pytest.approx(reference['time_to_train_s'], abs=2e-3)
  assert resumed['final_metric'] == reference['final_metric']
  assert resumed['train_steps'] == reference['train_steps']
  ref_losses, losses = _losses_by_step(uninterrupted), _losses_by_step(out)
  assert set(ref_losses) <= set(losses)
  for step, loss in ref_losses.items():  # Bit-identical: same state, same batches, same executable.
    assert losses[step] == loss, step
  checker = check_log(str(out / 'result_0.txt'))
  assert 'SUCCESS' in checker.stdout + checker.stderr, checker.stdout + checker.stderr
  keys = [e['key'] for e in mlperf_log.read_events(str(out / 'result_0.txt'), strict=True)]
  assert keys.count('run_start') == 1 and keys.count('resumed') == 1  # Marked as resumed, in one log.


@pytest.mark.slow
def test_sigterm_checkpoints_and_stops_as_preempted(tmp_path, data_dir, uninterrupted):
  out = tmp_path / 'run'
  proc = _start(out, data_dir)
  _wait_for_checkpoint(out, 8, proc)
  proc.send_signal(signal.SIGTERM)
  # The timeout only catches a hang: on 2 loaded cores even a prompt exit can take long. That the run stopped at
  # once is judged in steps, which load cannot move: it checkpointed the step it stopped at, long before its end.
  assert proc.wait(timeout=600) == 1, _stderr(proc)[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['status'] == 'aborted' and summary['reason'] == 'preempted'
  stopped = summary['train_steps']
  assert 8 < stopped < 2 * 32, stopped
  assert (out / 'checkpoints' / str(stopped) / 'commit_success.txt').exists()
  result = run_suite(*TINY, f'--data_dir={data_dir}', f'--output_dir={out}', '--resume')
  assert result.returncode in (0, 1), result.stderr[-3000:]
  resumed = json.loads((out / 'summary.json').read_text())
  assert resumed['resumed_from_step'] == stopped
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
