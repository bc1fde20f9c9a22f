"""The input rate a real system needs: published MLPerf Training results per accelerator system, as samples/s.

Each entry is one closed-division result: the official time to train (the olympic mean of the submitted runs'
run_start..run_stop: the fastest and slowest dropped) and the samples a run processed (epochs x the training set).
samples/s = samples / time is a floor on the rate the pipeline must sustain: the time includes the evaluations,
so the training steps themselves run somewhat faster. Per accelerator and per host core divide it by the system's
accelerators and by its host cores (from the submission's system description).

Sources: github.com/mlcommons/training_results_v4.0 (commit 62f111b7690f163b269f32e4f93dcaaa13717c9c) and
github.com/mlcommons/training_results_v5.1 (commit 4da2d1cd71eb30c855dad12712480ae5ac90dd89),
<submitter>/results/<system>/<benchmark>/result_*.txt and <submitter>/systems/<system>.json. Samples per run:
- resnet: the last eval's epoch_num (1-based in NVIDIA's logs: 35) x ImageNet's 1,281,167 training images;
- ssd (RetinaNet, MLPerf's `ssd` benchmark): (the last eval's epoch_num + 1: 0-based, 4 -> 5 epochs) x the
  1,170,301 images of MLPerf's OpenImages subset (mlcommons/training single_stage_detector/README.md);
- dlrm_dcnv2: the last eval's epoch_num (a fraction of an epoch, 0.75 in the median run) x Criteo 1TB's
  4,195,197,692 training samples (the logs' train_samples);
- llama31_8b: the last eval's samples_count, sequences of 8,192 tokens.
No TPU result exists for these four benchmarks in the two rounds read (Google's v4.0 submissions are gpt3 only,
v5.1 has none), and no 8-GPU B200 ResNet-50 result (ResNet-50 left the benchmark before B200 systems entered).
"""

import dataclasses

from suite.common.errors import UserError


@dataclasses.dataclass(frozen=True)
class Published:
  """One published result and what its system has."""
  round: str
  submitter: str
  system: str  # As the submission names it (its systems/<name>.json).
  accelerators: int
  host_cores: int  # Physical cores of all the system's host CPUs.
  minutes: float  # The official result: olympic mean time to train.
  samples: float  # Samples one run processed (the median run).
  unit: str

  @property
  def samples_per_s(self) -> float:
    return self.samples / (self.minutes * 60)

  def as_dict(self) -> dict:
    return {'round': self.round, 'submitter': self.submitter, 'system': self.system,
            'accelerators': self.accelerators, 'host_cores': self.host_cores, 'result_minutes': self.minutes,
            'samples_per_run': self.samples, 'unit': self.unit, 'samples_per_s': self.samples_per_s,
            'samples_per_s_per_accelerator': self.samples_per_s / self.accelerators,
            'samples_per_s_per_host_core': self.samples_per_s / self.host_cores,
            'host_cores_per_accelerator': self.host_cores / self.accelerators}


IMAGENET_TRAIN = 1281167
OPENIMAGES_MLPERF_TRAIN = 1170301
CRITEO_1TB_TRAIN = 4195197692

# NVIDIA's single-node Eos (a DGX H100): 8 x H100-SXM5-80GB, 2 x 56-core Xeon Platinum 8480C (systems/
# eos_ngc24.04_*.json). v4.0 results, NVIDIA/results/eos_ngc24.04_{mxnet/resnet, pytorch/ssd,
# merlin_hugectr/dlrm_dcnv2}:
#   resnet 13.270 min, 35 epochs: 44,840,845 / 796.2 s = 56,319 images/s (7,040 a GPU, 503 a host core);
#   ssd 35.476 min, 5 epochs: 5,851,505 / 2,128.6 s = 2,749 images/s;
#   dlrm_dcnv2 3.844 min, 0.75 epoch: 3,146,398,269 / 230.6 s = 13.64 M samples/s.
_H100 = dict(round='v4.0', submitter='NVIDIA', system='Eos (1 node, DGX H100)', accelerators=8, host_cores=112)
# NVIDIA H200 (8x H200-SXM-141GB), 2 x 56-core Xeon Platinum 8480C (systems/h200_ngc24.04_*.json), v4.0:
#   resnet 12.027 min: 44,840,845 / 721.6 s = 62,139 images/s; ssd 34.259 min: 2,847 images/s;
#   dlrm_dcnv2 3.469 min, 0.75 epoch: 15.12 M samples/s.
_H200 = dict(round='v4.0', submitter='NVIDIA', system='NVIDIA H200 (8x H200-SXM-141GB)', accelerators=8,
             host_cores=112)
# Dell 1xXE9680Lx8B200-SXM-180GB: 8 x B200, 2 x 32-core Xeon Platinum 8562Y+ (Dell/systems/...json), v5.1:
#   retinanet 21.988 min, 5 epochs: 4,435 images/s; dlrm_dcnv2 2.5225 min, 0.75 epoch: 20.79 M samples/s;
#   llama31_8b 85.027 min, 172,032 sequences: 33.7 sequences/s.
_B200 = dict(round='v5.1', submitter='Dell', system='1xXE9680Lx8B200-SXM-180GB', accelerators=8, host_cores=64)
# NVIDIA Tyche, 2 GB200 trays (tyche_ngpu8_*): 8 x GB200, each tray 4 GPUs and 2 x 72-core Grace (Neoverse-V2),
# v5.1: retinanet 22.334 min: 4,367 images/s; dlrm_dcnv2 2.189 min, 0.75 epoch: 23.96 M samples/s;
#   llama31_8b 79.325 min, 184,320 sequences: 38.7 sequences/s.
_GB200 = dict(round='v5.1', submitter='NVIDIA', system='Tyche (2 x GB200 NVL72 trays)', accelerators=8,
              host_cores=288)

RESULTS: dict[str, dict[str, Published]] = {
    '8xH100': {
        'resnet': Published(**_H100, minutes=13.270, samples=35 * IMAGENET_TRAIN, unit='images'),
        'ssd': Published(**_H100, minutes=35.476, samples=5 * OPENIMAGES_MLPERF_TRAIN, unit='images'),
        'dlrm_dcnv2': Published(**_H100, minutes=3.844, samples=0.75 * CRITEO_1TB_TRAIN, unit='samples'),
    },
    '8xH200': {
        'resnet': Published(**_H200, minutes=12.027, samples=35 * IMAGENET_TRAIN, unit='images'),
        'ssd': Published(**_H200, minutes=34.259, samples=5 * OPENIMAGES_MLPERF_TRAIN, unit='images'),
        'dlrm_dcnv2': Published(**_H200, minutes=3.469, samples=0.75 * CRITEO_1TB_TRAIN, unit='samples'),
    },
    '8xB200': {
        'ssd': Published(**_B200, minutes=21.988, samples=5 * OPENIMAGES_MLPERF_TRAIN, unit='images'),
        'dlrm_dcnv2': Published(**_B200, minutes=2.5225, samples=0.75 * CRITEO_1TB_TRAIN, unit='samples'),
        'llama31_8b': Published(**_B200, minutes=85.027, samples=172032, unit='8,192-token sequences'),
    },
    '8xGB200': {
        'ssd': Published(**_GB200, minutes=22.334, samples=5 * OPENIMAGES_MLPERF_TRAIN, unit='images'),
        'dlrm_dcnv2': Published(**_GB200, minutes=2.189, samples=0.75 * CRITEO_1TB_TRAIN, unit='samples'),
        'llama31_8b': Published(**_GB200, minutes=79.325, samples=184320, unit='8,192-token sequences'),
    },
}
DEFAULT_SYSTEM = '8xH100'


def needed(workload: str, system: str = DEFAULT_SYSTEM) -> dict | None:
  """The published rate for a workload on a system (Published.as_dict), None when the table has no such result;
  UserError for a system not in the table."""
  if system not in RESULTS:
    raise UserError(f"unknown system '{system}': choose one of {', '.join(RESULTS)} (--system=NAME)")
  result = RESULTS[system].get(workload)
  return result.as_dict() if result else None
