"""One command-line convention for every `python -m suite.<command>`: absl flags defined by the commands (never at
import), `--help` on stdout with exit status 0, a bad flag as one `error:` line with exit status 2, `--list`,
`--print_config`, and config files (`--config=path/to/config.py[:ARG]`) with `--config.KEY=VALUE` overrides."""

import json
import subprocess
import sys
import textwrap

import pytest

from suite.common import cli, errors
from tests.conftest import REPO, run_suite


def _error_line(result: subprocess.CompletedProcess) -> str:
  """The run failed as bad input: exit 2, exactly one line on stderr, an `error:` line."""
  assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-2000:]
  return lines[0]


def _printed_config(*args) -> dict:
  result = run_suite(*args, '--print_config', timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout)


def test_every_module_imports_beside_every_other_and_defines_no_flag():
  """Flags are the commands' (`cli()`), so any modules import together in one process, e.g. for tests."""
  code = textwrap.dedent("""
      import importlib, pkgutil
      from absl import flags
      import suite
      for m in pkgutil.walk_packages(suite.__path__, 'suite.'):
        importlib.import_module(m.name)
      print(sorted(m for m in flags.FLAGS.flags_by_module_dict() if 'suite' in m))
      """)
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == '[]'


def test_first_line():
  error = RuntimeError("\n  DEADLINE_EXCEEDED: barrier\nstack trace...")
  assert errors.first_line(error) == 'DEADLINE_EXCEEDED: barrier'
  assert errors.first_line(KeyError()) == 'KeyError'
  assert errors.first_line(ValueError('x' * 500), 200) == 'x' * 200


def test_main_help_lists_shared_and_training_flags():
  result = run_suite('--help', timeout=60)
  assert result.returncode == 0, result.stderr[-2000:]
  for flag in ('--workload', '--scale', '--variant', '--data_dir', '--list', '--print_config', '--seed', '--mesh',
               '--config.KEY=VALUE', '--config: path/to/config.py[:ARG]'):
    assert flag in result.stdout, flag
  assert result.stdout.startswith('Entry point: `python -m suite.main')


@pytest.mark.parametrize('args', [('--bogus',), ('--scale=huge',), ('--config.optimizer.learning_rate', '-1', '-x')])
def test_main_bad_flag_is_one_line(args):
  line = _error_line(run_suite('--workload=resnet', *args, timeout=120))
  assert any(word in line for word in ("'bogus'", 'huge', "'x'")), line


def test_list_prints_workloads_variants_scales_rulesets_and_datasets():
  result = run_suite('--list', timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = {tuple(line.split()[:2]): line.split() for line in result.stdout.splitlines()[1:] if line.strip()}
  resnet = rows[('resnet', 'resnet50')]
  assert resnet[3:6] == ['full,tiny', 'resnet', '4.0.0'] and 'full:imagenet2012' in resnet
  retinanet = rows[('ssd', 'retinanet')]
  assert retinanet[3:6] == ['full,tiny', 'ssd', '4.1.0'] and 'full:mlperf_openimages' in retinanet
  ssd300 = rows[('ssd', 'ssd300')]
  assert ssd300[2:5] == ['full', 'ssd', '1.1.0'] and 'full:coco/2017' in ssd300  # No tiny scale.


def test_print_config_is_the_resolved_config():
  printed = _printed_config('--workload=resnet', '--scale=tiny', '--config.optimizer.learning_rate=2.5',
                            '--data_dir=/nonexistent', '--platform=tpu')  # Neither data nor a device is touched.
  assert (printed['workload'], printed['variant'], printed['scale'], printed['division']) == (
      'resnet', 'resnet50', 'tiny', 'open')
  assert printed['config']['optimizer']['learning_rate'] == 2.5
  assert printed['config']['model']['depth'] == 18 and printed['config']['dataset'] == 'generated'


def test_config_file_with_an_override_matches_the_registry_config():
  from_file = _printed_config('--config=suite/configs/resnet.py:tiny', '--config.optimizer.learning_rate=2.5')
  from_flags = _printed_config('--workload=resnet', '--scale=tiny', '--config.optimizer.learning_rate=2.5')
  assert from_file == from_flags
  assert 'workload' not in from_file['config'] and 'scale' not in from_file['config']


def test_closed_division_guards_config_files_and_their_overrides(tmp_path):
  line = _error_line(run_suite('--config=suite/configs/resnet.py:full', '--config.model.depth=101', '--print_config',
                               timeout=120))
  assert '--division=closed' in line and 'model.depth' in line
  deeper = tmp_path / 'deeper.py'
  deeper.write_text(textwrap.dedent("""
      from suite.common import registry
      def get_config():
        config = registry.get_config('resnet', 'full')
        with config.unlocked():
          config.workload, config.scale = 'resnet', 'full'
        config.model.depth = 101
        return config
      """))
  line = _error_line(run_suite(f'--config={deeper}', '--print_config', timeout=120))
  assert '--division=closed' in line and 'model.depth' in line
  printed = _printed_config(f'--config={deeper}', '--division=open')
  assert (printed['scale'], printed['division'], printed['config']['model']['depth']) == ('full', 'open', 101)


def test_config_file_mistakes_are_one_line(tmp_path):
  line = _error_line(run_suite('--config=suite/configs/resnet.py:tiny', '--workload=ssd', timeout=120))
  assert '--workload=ssd disagrees' in line
  line = _error_line(run_suite('--config=configs/no_such.py', timeout=120))
  assert 'no file configs/no_such.py' in line
  line = _error_line(run_suite('--config=suite/configs/resnet.py:tiny', '--config.scale=full', timeout=120))
  assert 'the config file sets its scale' in line
  partial = tmp_path / 'partial.py'
  partial.write_text('import ml_collections\n\ndef get_config():\n'
                     "  return ml_collections.ConfigDict(dict(workload='resnet', scale='tiny', max_epochs=3))\n")
  line = _error_line(run_suite(f'--config={partial}', timeout=120))
  assert 'lacks' in line and 'optimizer.learning_rate' in line


COMMANDS = {  # command: (a flag its --help shows, a bad command line, a word of its error)
    'suite.runs': ('--num_runs', ['--output_dir=/tmp/never', '--num_runs=x'], 'num_runs'),
    'suite.sweep': ('--sweep', ['--output_dir=/tmp/never'], '--sweep'),
    'suite.report': ('--out', ['--bogus', 'DIR'], 'bogus'),
    'suite.package': ('--runs_dir', ['--org=o'], '--runs_dir'),
    'suite.infer': ('--scenario', ['--bogus'], 'bogus'),
    'suite.audit': ('--test', ['--test=TEST09'], 'TEST09'),
    'suite.bench': ('--steps', ['overhead', '--steps=many'], 'steps'),
    'suite.convert_weights': ('--weights', ['--bogus'], 'bogus'),
}


@pytest.mark.parametrize('command', sorted(COMMANDS))
def test_each_command_helps_and_refuses_a_bad_flag_in_one_line(command):
  shown, bad, word = COMMANDS[command]
  result = run_suite('--help', module=command, timeout=120)
  assert result.returncode == 0 and shown in result.stdout, (result.returncode, result.stderr[-2000:])
  assert f'python -m {command}' in result.stdout  # The command's own doc, not the thin entry's one line.
  assert word in _error_line(run_suite(*bad, module=command, timeout=120))


def test_runs_passes_unknown_flags_to_every_run():
  from suite.results import runs  # pylint: disable=import-outside-toplevel
  args, extra = runs.parse_args(['--workload=ssd', '--config.max_epochs', '1', '--division=open', '--output_dir=o',
                                 '--', '--data_dir=/d', '--num_runs=9'])
  assert (args.workload, args.num_runs, args.output_dir) == ('ssd', None, 'o')
  assert extra == ['--config.max_epochs', '1', '--division=open', '--data_dir=/d', '--num_runs=9']
  with pytest.raises(SystemExit) as exit_info:
    runs.parse_args(['--output_dir=o', '--num_runs=0'])
  assert exit_info.value.code == 2


def test_runs_and_sweeps_take_workload_and_scale_from_a_passed_config_file():
  from suite.results import runs, sweep  # pylint: disable=import-outside-toplevel
  passed = ['--config=suite/configs/resnet.py:tiny', '--config.max_epochs=2']
  args, extra = runs.parse_args(['--output_dir=o', '--', *passed])
  assert (args.workload, args.scale) == ('resnet', 'tiny')
  assert extra == passed
  args, _ = runs.parse_args(['--output_dir=o', '--scale=full', '--config=suite/configs/resnet.py:tiny'])
  assert args.scale == 'full'  # Given explicitly: suite.main refuses the disagreement in one line.
  args, _ = sweep.parse_args(['--output_dir=o', '--sweep=config.max_epochs=1,2', '--config', 'suite/configs/resnet.py'])
  assert (args.workload, args.scale) == ('resnet', 'tiny')


def test_library_modules_run_as_their_commands():
  """`python -m suite.results.runs` is `python -m suite.runs` (tests and older notes use both forms)."""
  result = run_suite('--output_dir=/tmp/never', '--num_runs=x', module='suite.runs', timeout=60)
  assert 'num_runs' in _error_line(result)


def test_flag_value_reads_passed_through_flags_as_absl_would():
  args = ['--variant=ssd300', '--data_dir', '/d', '-seed=3', '--variant', 'retinanet', '--config.x=1']
  assert cli.flag_value(args, 'variant') == 'retinanet'  # The last one wins.
  assert cli.flag_value(args, 'data_dir') == '/d' and cli.flag_value(args, 'seed') == '3'
  assert cli.flag_value(args, 'config') is None and cli.flag_value(args, 'platform') is None
