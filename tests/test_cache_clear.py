"""`cache_clear` tells the truth: the page cache is cleared before each run, and the log says True only if it was."""

import json
import os

import pytest

from suite.common import mlperf_log, outputs
from suite.results import runs
from suite.training import cache_clear
from tests.conftest import check_log, run_suite

# A one-epoch tiny ResNet on a small generated dataset (8 steps, one eval batch): only the start of a run matters.
SHORT = ['--workload=resnet', '--scale=tiny', '--seed=5', '--config.max_epochs=1', '--config.generated.num_train=1024',
         '--config.generated.num_eval=128', '--peak_flops=1e12']


def _mllog(path):
  return mlperf_log.read_events(path)


def _cache_clear_values(out):
  return [e['value'] for e in _mllog(os.path.join(out, outputs.RESULT_LOG)) if e['key'] == 'cache_clear']


@pytest.fixture(scope='module')
def small_data_dir(tmp_path_factory):
  """Its own folder: the shared one must keep a single generated dataset (test_faults copies its only train file)."""
  return str(tmp_path_factory.mktemp('tfds-small'))


# --- The clearing itself (no root needed: the drop_caches path is an argument) ---


def test_drop_caches_writes_3_to_the_kernel_file(tmp_path):
  fake = tmp_path / 'drop_caches'
  fake.write_text('')
  result = cache_clear.drop_page_cache(str(fake))
  assert result.cleared and result.how == 'drop_caches' and result.error is None
  assert fake.read_text() == '3'


def test_drop_caches_that_cannot_be_written_is_reported_not_created(tmp_path):
  missing = tmp_path / 'no' / 'drop_caches'
  result = cache_clear.drop_page_cache(str(missing))
  assert not result.cleared and result.how == 'drop_caches'
  assert str(missing) in result.error and 'No such file' in result.error and '--cache_clear_cmd' in result.error
  a_dir = tmp_path  # EISDIR stands for the EACCES/EROFS of a container's read-only /proc/sys (root passes EACCES).
  result = cache_clear.drop_page_cache(str(a_dir))
  assert not result.cleared and 'Is a directory' in result.error
  assert not missing.parent.exists()


def test_a_command_clears_or_says_why_not(tmp_path):
  marker = tmp_path / 'cleared'
  result = cache_clear.clear(f'touch {marker}')
  assert result.cleared and result.how == 'command' and marker.exists()
  result = cache_clear.clear('echo permission denied >&2; exit 3')
  assert not result.cleared and result.how == 'command'
  assert 'exited with status 3: permission denied' in result.error
  result = cache_clear.run_command('sleep 5', timeout_s=0.2)
  assert not result.cleared and 'did not finish within' in result.error


def test_runs_passes_the_command_to_every_run():
  args, extra = runs.parse_args(['--output_dir=set', '--num_runs=2', '--cache_clear_cmd=sudo /sbin/drop-caches'])
  spec = runs.plan(args.output_dir, args.num_runs, 0)[1]
  assert runs.main_command('resnet', 'tiny', spec, extra)[-1] == '--cache_clear_cmd=sudo /sbin/drop-caches'


# --- End to end: the log and summary.json say what happened ---


@pytest.mark.slow
def test_a_run_logs_true_only_when_its_command_cleared_the_cache(tmp_path, small_data_dir):
  marker = tmp_path / 'MARKER'
  out = str(tmp_path / 'run')
  result = run_suite(*SHORT, f'--data_dir={small_data_dir}', f'--output_dir={out}', f'--cache_clear_cmd=touch {marker}')
  assert result.returncode in (0, 1), result.stderr[-3000:]
  assert marker.exists()
  assert _cache_clear_values(out) == [True]
  summary = json.loads(open(os.path.join(out, outputs.SUMMARY), encoding='utf-8').read())
  assert summary['cache_clear']['cleared'] is True and summary['cache_clear']['how'] == 'command'
  assert summary['cache_clear']['error'] is None


@pytest.mark.slow
def test_a_run_whose_cache_could_not_be_cleared_logs_false_and_says_why(tmp_path, small_data_dir):
  out = str(tmp_path / 'run')
  result = run_suite(*SHORT, f'--data_dir={small_data_dir}', f'--output_dir={out}',
                     '--cache_clear_cmd=echo need root >&2; exit 1')
  assert result.returncode in (0, 1), result.stderr[-3000:]
  assert _cache_clear_values(out) == [False]
  summary = json.loads(open(os.path.join(out, outputs.SUMMARY), encoding='utf-8').read())
  assert summary['cache_clear'] == {'cleared': False, 'how': 'command', 'seconds': summary['cache_clear']['seconds'],
                                    'error': "--cache_clear_cmd 'echo need root >&2; exit 1' exited with status 1: "
                                             'need root'}
  assert 'page cache NOT cleared' in result.stderr
  # The checker asks only that a cache_clear record with a value exists: a truthful False still passes.
  checker = check_log(os.path.join(out, outputs.RESULT_LOG))
  assert 'SUCCESS' in checker.stdout + checker.stderr, checker.stdout + checker.stderr
