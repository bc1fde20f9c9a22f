"""The rate a real system needs (published MLPerf Training results) and the pipeline benchmark's use of it."""

import pytest

from suite.common.errors import UserError
from suite.tools import bench, needed_rates
from tests.conftest import run_suite


def test_resnet_on_8xh100_is_the_published_eos_result_as_samples_per_second():
  """NVIDIA's v4.0 single-node Eos ResNet-50: 13.270 minutes, 35 epochs of 1,281,167 images, 8 GPUs, 112 cores:
  44,840,845 / 796.2 s = 56,318.6 images/s, 7,039.8 a GPU, 502.8 a host core (the issue's ~60,000 and ~530)."""
  rate = needed_rates.needed('resnet', '8xH100')
  assert rate['samples_per_run'] == 44840845
  assert rate['samples_per_s'] == pytest.approx(56318.6, abs=0.1)
  assert rate['samples_per_s_per_accelerator'] == pytest.approx(7039.8, abs=0.1)
  assert rate['samples_per_s_per_host_core'] == pytest.approx(502.8, abs=0.1)
  assert rate['host_cores_per_accelerator'] == 14


def test_retinanet_dlrm_and_llama_rates_and_missing_entries():
  # Dell's v5.1 8 x B200: RetinaNet 5 epochs of 1,170,301 images in 21.988 min; 64 host cores.
  ssd = needed_rates.needed('ssd', '8xB200')
  assert ssd['samples_per_s'] == pytest.approx(5 * 1170301 / (21.988 * 60))
  assert ssd['samples_per_s_per_host_core'] == pytest.approx(69.3, abs=0.1)
  # NVIDIA's v4.0 Eos DLRM-DCNv2: 0.75 of an epoch of 4,195,197,692 samples in 3.844 min.
  assert needed_rates.needed('dlrm_dcnv2', '8xH100')['samples_per_s'] == pytest.approx(13.642e6, rel=1e-4)
  assert needed_rates.needed('llama31_8b', '8xGB200')['samples_per_s'] == pytest.approx(184320 / (79.325 * 60))
  assert needed_rates.needed('llama31_8b', '8xH100') is None  # No 8-GPU H100 result in the rounds read.
  assert needed_rates.needed('gnmt', '8xH100') is None
  with pytest.raises(UserError, match='8xH100'):
    needed_rates.needed('resnet', 'tpu-v9')


def test_real_run_share_is_the_summary_data_wait_over_its_training_time(monkeypatch):
  summary = {'status': 'success', 'train_steps': 96, 'samples_per_s': 140.0,
             'goodput': {'train_s': 78.0, 'data_wait_s': 1.5, 'checkpoint_s': 0.5, 'eval_s': 2.0}}
  commands = []
  monkeypatch.setattr(bench, '_summary_of', lambda cmd, env, out: commands.append(cmd) or summary)
  result = bench.real_run_wait('resnet', 'tiny', '/data', ('data_workers=2',))
  assert result['data_wait_share'] == pytest.approx(1.5 / 80.0)
  assert result['train_s'] == pytest.approx(80.0)
  assert '--config.data_workers=2' in commands[0] and '--data_dir=/data' in commands[0]


def test_unknown_system_is_one_error_line():
  result = run_suite('pipeline', '--workload=resnet', '--system=tpu-v9', module='suite.bench', timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: unknown system 'tpu-v9': choose one of 8xH100")
