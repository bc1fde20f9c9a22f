"""Test set-up: 8 fake CPU devices (before JAX is imported anywhere), and helpers shared by the tests."""

import os
import subprocess
import sys
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One persistent compilation cache for the test session's many short runs: the same steps compile once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'mlperf-suite-test-jax-cache'))

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_suite(*args, devices: int = 1, timeout: int = 900, module: str = 'suite.main') -> subprocess.CompletedProcess:
  """Runs `python -m <module> ARGS` as a user would, on `devices` CPU devices."""
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}', 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)


def check_log(path: str, ruleset: str = '4.0.0') -> subprocess.CompletedProcess:
  """The official MLPerf compliance checker on one result file."""
  return subprocess.run([sys.executable, '-m', 'mlperf_logging.compliance_checker', '--usage', 'training',
                         '--ruleset', ruleset, '--log_output', path + '.cc.log', path],
                        capture_output=True, text=True, check=False)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS data folder shared by the tests (the generated dataset is written once)."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def resnet_tiny_trained(tmp_path_factory, data_dir):
  """One tiny ResNet trained for one epoch (top-1 about 0.5: a non-trivial accuracy for inference to reproduce, at a
  quarter of the cost of training to the target), shared by the inference tests."""
  out = tmp_path_factory.mktemp('resnet-tiny') / 'train'
  result = run_suite('--workload=resnet', '--scale=tiny', '--seed=11', f'--data_dir={data_dir}',
                     f'--output_dir={out}', '--config.max_epochs=1')
  assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: stopped at max_epochs, weights still saved.
  return out
