"""Every run records what produced it (provenance.json beside summary.json), and a submission package takes its
software versions from the runs' records, not from the machine that packages them."""

import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import types

import jax
import pytest

from suite.common import outputs, provenance, registry
from suite.results import package as package_lib
from suite.training import runner
from tests.conftest import REPO, run_suite
from tests.test_score import write_closed_set


def _git(*args, cwd=REPO) -> str:
  return subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def _head() -> str | None:
  """The commit of the checkout the tests run from; None in a source tree that is not one (e.g. an sdist)."""
  try:
    return _git('rev-parse', 'HEAD') if os.path.samefile(_git('rev-parse', '--show-toplevel'), REPO) else None
  except (OSError, subprocess.CalledProcessError):
    return None


needs_checkout = pytest.mark.skipif(_head() is None, reason='the tests do not run from a git checkout')


def test_versions_are_the_installed_ones():
  info = provenance.gather()
  assert info['software']['jax'] == jax.__version__ == importlib.metadata.version('jax')
  for name in ('jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'mlperf-logging', 'numpy'):
    assert info['software'][name] == importlib.metadata.version(name), name
  assert info['software']['python'] == platform.python_version()
  assert info['host'] == socket.gethostname()
  devices = jax.devices()
  assert info['devices'] == {**info['devices'], 'device_kind': devices[0].device_kind, 'device_count': len(devices),
                             'local_device_count': jax.local_device_count(), 'process_count': 1}
  if devices[0].platform == 'cpu':
    assert info['topology']['device_coords'] is None and provenance.peak_memory() is None


def test_accelerator_runtime_lists_only_the_runtimes(monkeypatch):
  def dist(name, version):
    return types.SimpleNamespace(metadata={'Name': name}, version=version)
  installed = [dist('numpy', '2.0'), dist('jax_cuda12_plugin', '0.7.1'), dist('jax-cuda12-pjrt', '0.7.1'),
               dist('libtpu', '0.0.21'), dist('jax-rocm7-plugin', '0.7.1'), dist('jax', '0.7.1')]
  monkeypatch.setattr(importlib.metadata, 'distributions', lambda: installed)
  assert provenance.accelerator_runtime() == {'jax-cuda12-pjrt': '0.7.1', 'jax-cuda12-plugin': '0.7.1',
                                              'jax-rocm7-plugin': '0.7.1', 'libtpu': '0.0.21'}
  monkeypatch.setattr(importlib.metadata, 'distributions', lambda: installed[:1])
  assert provenance.accelerator_runtime() is None


def test_flags_are_the_environments(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_dump_to=/tmp/dump --xla_force_host_platform_device_count=8')
  monkeypatch.setenv('LIBTPU_INIT_ARGS', '--xla_tpu_enable_latency_hiding_scheduler=true')
  assert provenance.gather()['environment'] == {
      'XLA_FLAGS': '--xla_dump_to=/tmp/dump --xla_force_host_platform_device_count=8',
      'LIBTPU_INIT_ARGS': '--xla_tpu_enable_latency_hiding_scheduler=true'}
  monkeypatch.delenv('LIBTPU_INIT_ARGS')
  assert provenance.gather()['environment']['LIBTPU_INIT_ARGS'] is None


@needs_checkout
def test_git_commit_is_the_checkouts_head():
  before = _head()
  assert provenance.gather()['source']['git_commit'] in (before, _head())  # A commit may land in between.


@needs_checkout
def test_dirty_flag_follows_the_tree(tmp_path, monkeypatch):
  clone = tmp_path / 'clone'
  _git('clone', '-q', REPO, str(clone))
  suite_dir = str(clone / 'suite')
  clean = provenance.source(suite_dir)
  assert clean['git_commit'] == _git('rev-parse', 'HEAD', cwd=clone) and clean['git_dirty'] is False
  (clone / 'notes.txt').write_text('untracked\n')
  untracked = provenance.source(suite_dir)
  assert untracked['git_dirty'] is True and untracked['git_dirty_paths'] == ['notes.txt']
  os.remove(clone / 'notes.txt')
  with open(clone / 'suite' / '__init__.py', 'a', encoding='utf-8') as f:
    f.write('# changed\n')
  assert provenance.source(suite_dir)['git_dirty_paths'] == ['suite/__init__.py']
  # Not a checkout (an installed copy), or no git: unknown, and no error.
  shutil.copytree(clone / 'suite', tmp_path / 'installed' / 'suite')
  assert provenance.source(str(tmp_path / 'installed' / 'suite'))['git_commit'] is None
  monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
  assert provenance.source(suite_dir) == {'git_commit': None, 'git_dirty': None, 'git_dirty_paths': None,
                                          'path': suite_dir}


def test_a_resumed_segment_keeps_the_earlier_record(tmp_path):
  path = str(tmp_path / outputs.PROVENANCE)
  provenance.record_start(path, {'software': {'jax': '0.1'}, 'peak_memory': None})
  provenance.record_start(path, {'software': {'jax': '0.2'}, 'peak_memory': None})
  provenance.record_start(path, {'software': {'jax': '0.3'}, 'peak_memory': None})
  info = provenance.read(path)
  assert info['software']['jax'] == '0.3'
  assert [s['software']['jax'] for s in info['earlier_segments']] == ['0.1', '0.2']
  outputs.prepare_output_dir(str(tmp_path), overwrite=True)  # A replaced run's record goes with it.
  assert not os.path.exists(path)


@pytest.fixture
def toy(monkeypatch):
  monkeypatch.setitem(registry.WORKLOADS, 'toy', 'tests.toy_workload')
  return registry.make_workload('toy', registry.get_config('toy', 'tiny'), 'tiny')


def test_a_training_run_leaves_its_provenance(toy, tmp_path, monkeypatch):
  # CPU has no memory stats: a backend's figure stands in, to show the finish path records it.
  peak = {'per_device': {'0': {'peak_bytes_in_use': 12345, 'bytes_limit': 99999}}, 'max_peak_bytes_in_use': 12345}
  monkeypatch.setattr(provenance, 'peak_memory', lambda devices=None: peak)
  out = tmp_path / 'run'
  head = _head()
  toy.open_data(None)
  summary = runner.run(toy, runner.RunOptions(output_dir=str(out), seed=0, division='open',
                                              save_final_checkpoint=False))
  info = json.loads((out / outputs.PROVENANCE).read_text())
  assert info['software']['jax'] == jax.__version__
  assert info['source']['git_commit'] in (head, _head())
  assert info['environment']['XLA_FLAGS'] == os.environ['XLA_FLAGS']
  assert info['devices']['device_count'] == summary['num_devices'] == len(jax.devices())
  assert info['topology']['mesh'] == summary['mesh']
  assert info['host'] == socket.gethostname()
  assert info['peak_memory'] == peak


@pytest.fixture(scope='module')
def closed_set(tmp_path_factory):
  out = tmp_path_factory.mktemp('prov') / 'set'
  write_closed_set(out, [(25.0, 0.7601, 44), (30.0, 0.7602, 44), (27.5, 0.7610, 40), (22.0, 0.7605, 44),
                         (26.5, 0.7595, 44)])
  return out


def _with_provenance(closed_set, dest, jax_versions: dict[int, str]):
  """A copy of the set whose run_<k> trained with jax `jax_versions[k]` (no provenance.json where absent)."""
  shutil.copytree(closed_set, dest)
  recorded = provenance.gather()
  for k, version in jax_versions.items():
    info = {**recorded, 'software': {**recorded['software'], 'jax': version, 'jaxlib': version, 'flax': '0.0.9'},
            'accelerator_runtime': {'jax-cuda12-plugin': version}}
    with open(dest / f'run_{k}' / outputs.PROVENANCE, 'w', encoding='utf-8') as f:
      json.dump(info, f)
  return dest


def _system(out):
  return json.loads((out / 'jaxsuite' / 'systems' / 'cpu_host.json').read_text())


def test_package_takes_the_versions_the_runs_recorded(closed_set, tmp_path, capsys):
  runs = _with_provenance(closed_set, tmp_path / 'set', {k: '0.0.7' for k in range(5)})
  package_lib.build(str(runs), 'jaxsuite', 'cpu_host', str(tmp_path / 'pkg'))
  desc = _system(tmp_path / 'pkg')
  assert desc['framework'].startswith('JAX 0.0.7 (jaxlib 0.0.7, ') and jax.__version__ not in desc['framework']
  assert 'flax 0.0.9' in desc['other_software_stack'] and 'jax-cuda12-plugin 0.0.7' in desc['other_software_stack']
  assert 'warning' not in capsys.readouterr().err


def test_package_of_runs_without_provenance_warns_and_uses_this_machine(closed_set, tmp_path, capsys):
  runs = _with_provenance(closed_set, tmp_path / 'set', {0: '0.0.7', 2: '0.0.7'})
  package_lib.build(str(runs), 'jaxsuite', 'cpu_host', str(tmp_path / 'pkg'))
  assert _system(tmp_path / 'pkg')['framework'].startswith('JAX 0.0.7 ')  # From the runs that recorded it.
  warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith('warning:')]
  assert len(warnings) == 1 and 'run_1, run_3, run_4' in warnings[0] and 'provenance.json' in warnings[0]

  package_lib.build(str(closed_set), 'jaxsuite', 'cpu_host', str(tmp_path / 'pkg2'))  # None recorded.
  assert _system(tmp_path / 'pkg2')['framework'].startswith(f'JAX {jax.__version__} ')
  warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith('warning:')]
  assert len(warnings) == 1 and 'run_0, run_1, run_2, run_3, run_4' in warnings[0] and 'this machine' in warnings[0]


def test_package_refuses_runs_of_different_versions(closed_set, tmp_path):
  runs = _with_provenance(closed_set, tmp_path / 'set', {0: '0.0.7', 1: '0.0.7', 2: '0.0.8', 3: '0.0.7', 4: '0.0.7'})
  result = run_suite(f'--runs_dir={runs}', '--org=jaxsuite', '--system=cpu_host', f'--out={tmp_path / "pkg"}',
                     '--no_check', module='suite.package')
  assert result.returncode == 2, result.stdout + result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:'), result.stderr
  assert 'jax 0.0.7 (run_0, run_1, run_3, run_4) vs 0.0.8 (run_2)' in lines[0], lines[0]
  assert not (tmp_path / 'pkg' / 'jaxsuite').exists()  # Refused before anything was written.
