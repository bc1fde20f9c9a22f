"""Bad input ends in one clear line on stderr, exit status 2, and nothing already written is lost."""

import os

import pytest

from tests.conftest import run_suite


def _error_line(result):
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ')
  return last


def test_unknown_workload_lists_the_known_ones():
  line = _error_line(run_suite('--workload=resnot', '--scale=tiny'))
  assert "unknown workload 'resnot'" in line and 'resnet' in line


def test_unknown_config_key_is_named():
  line = _error_line(run_suite('--workload=resnet', '--scale=tiny', '--config.optimizer.learning_rte=0.1'))
  assert "unknown config key 'optimizer.learning_rte'" in line and 'optimizer.learning_rate' in line


def test_config_value_of_the_wrong_type():
  line = _error_line(run_suite('--workload=resnet', '--scale=tiny', '--config.global_batch_size=big'))
  assert 'global_batch_size' in line


def test_unknown_flag():
  line = _error_line(run_suite('--workload=resnet', '--scael=tiny'))
  assert 'scael' in line


def test_missing_dataset_says_how_to_build_it(tmp_path):
  out = tmp_path / 'out'
  line = _error_line(run_suite('--workload=resnet', '--scale=full', f'--data_dir={tmp_path}', f'--output_dir={out}'))
  assert 'imagenet2012' in line and 'tfds build' in line
  assert not out.exists()  # Nothing written for a run that could not start.


def test_unavailable_platform():
  line = _error_line(run_suite('--workload=resnet', '--scale=tiny', '--platform=tpu'))
  assert "platform 'tpu' is not available" in line


def test_finished_run_is_not_overwritten(tmp_path):
  (tmp_path / 'result_0.txt').write_text('earlier run\n')
  line = _error_line(run_suite('--workload=resnet', '--scale=tiny', '--config.dataset=synthetic',
                               f'--output_dir={tmp_path}'))
  assert '--overwrite' in line
  assert (tmp_path / 'result_0.txt').read_text() == 'earlier run\n'
  assert sorted(os.listdir(tmp_path)) == ['result_0.txt']


@pytest.mark.parametrize('args', [['--scale=huge'], ['--division=half']])
def test_bad_enum_flags(args):
  _error_line(run_suite('--workload=resnet', *args))


def test_unknown_variant():
  line = _error_line(run_suite('--workload=resnet', '--variant=ssd300'))
  assert "unknown variant 'ssd300' for workload resnet" in line


@pytest.mark.parametrize('flag,message', [('--mesh=data:3', 'has 3 devices but the job has 1'),
                                          ('--profile_steps=5:2', 'bad --profile_steps=5:2')])
def test_bad_mesh_and_profile_flags(flag, message):
  line = _error_line(run_suite('--workload=resnet', '--scale=tiny', '--config.dataset=synthetic', flag))
  assert message in line


def test_resume_without_a_checkpoint_keeps_the_started_run(tmp_path):
  (tmp_path / 'result_0.txt').write_text('started run\n')
  line = _error_line(run_suite('--workload=resnet', '--scale=tiny', '--config.dataset=synthetic', '--resume',
                               f'--output_dir={tmp_path}'))
  assert 'no readable checkpoint to resume from' in line
  assert (tmp_path / 'result_0.txt').read_text() == 'started run\n'


def test_a_config_the_model_cannot_be_built_from_is_one_line(tmp_path):
  line = _error_line(run_suite('--workload=resnet', '--scale=tiny', '--config.model.depth=7',
                               '--config.model.stage_sizes=()', f'--data_dir={tmp_path}'))
  assert 'model.depth=7' in line
