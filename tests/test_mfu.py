"""FLOPs utilisation: the peak table on real device-kind strings, no peak for an unknown accelerator, the CPU's
measured peak shared by its fake devices, and analytic model FLOPs against hand-computed and published counts."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from absl import logging

from models import flops, resnet, retinanet
from suite.common import registry
from suite.training import mfu


@dataclasses.dataclass
class FakeDevice:
  device_kind: str
  platform: str = 'gpu'


# device_kind as JAX reports it -> dense bf16 peak per JAX device (vendor data sheets; TPU v2/v3 devices are cores).
DATASHEET = {
    'TPU v2': 22.5e12, 'TPU v3': 61.5e12, 'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5': 459e12,
    'TPU v5p': 459e12, 'TPU v6 lite': 918e12,
    'NVIDIA H100 80GB HBM3': 989e12, 'NVIDIA H100 PCIe': 756e12, 'NVIDIA H100 NVL': 835e12, 'NVIDIA H200': 989e12,
    'NVIDIA A100-SXM4-80GB': 312e12, 'NVIDIA A100-SXM4-40GB': 312e12, 'NVIDIA A100 80GB PCIe': 312e12,
    'NVIDIA L4': 121e12,
}


@pytest.mark.parametrize('kind', sorted(DATASHEET))
def test_peak_table_per_device_kind(kind):
  platform = 'tpu' if kind.startswith('TPU') else 'gpu'
  assert mfu.peak_flops_per_device(FakeDevice(kind, platform)) == DATASHEET[kind]


@pytest.mark.parametrize('kind', ['NVIDIA L40S', 'NVIDIA L40', 'TPU v4 lite', 'TPU7x', 'NVIDIA A10', 'cpu',
                                  'NVIDIA GeForce RTX 4090'])
def test_kinds_missing_from_the_table_have_no_peak(kind):
  # 'NVIDIA L40S' contains 'L4' and 'TPU v4 lite' contains 'TPU v4': neither may borrow their peak.
  assert mfu.peak_flops_per_device(FakeDevice(kind)) is None


def test_an_unknown_accelerator_gets_no_peak_and_a_warning(monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, 'warning', lambda msg, *args: warnings.append(msg % args))
  measured = []
  peak = mfu.resolve_peak([FakeDevice('NVIDIA L40S')] * 8, measure=lambda: measured.append(1) or 80e9)
  assert peak == mfu.Peak(None, None) and not measured  # Never a measured matmul on an accelerator.
  assert len(warnings) == 1 and "'NVIDIA L40S'" in warnings[0] and '--peak_flops' in warnings[0]
  assert mfu.utilization(1e12, 0.5, peak.flops_per_device) is None


def test_peak_sources():
  gpus = [FakeDevice('NVIDIA H100 PCIe')] * 8
  assert mfu.resolve_peak(gpus) == mfu.Peak(756e12, 'datasheet')  # Per device: never divided by the count.
  assert mfu.resolve_peak(gpus, flag=500e12) == mfu.Peak(500e12, 'flag')
  assert mfu.resolve_peak([FakeDevice('TPU v3', 'tpu')] * 8) == mfu.Peak(61.5e12, 'datasheet')
  # The host's measured peak is shared by its 8 fake CPU devices.
  cpus = [FakeDevice('cpu', 'cpu')] * 8
  assert mfu.resolve_peak(cpus, measure=lambda: 80e9) == mfu.Peak(10e9, 'measured_cpu')
  assert mfu.measure_peak_flops(size=128, repeats=2) > 1e8


def test_utilization_arithmetic():
  # 1e12 FLOPs per step in 0.5 s on a 4e12 FLOP/s device: 2e12 FLOP/s achieved = 0.5 utilisation.
  assert mfu.utilization(1e12, 0.5, 4e12) == 0.5
  assert mfu.utilization(1e12, 0.0, 4e12) is None
  assert mfu.utilization(None, 0.5, 4e12) is None
  # 6e9 training FLOPs per example x 256 examples over 8 devices.
  assert mfu.model_flops_per_step_per_device(6e9, 256, 8) == 6e9 * 32
  assert mfu.model_flops_per_step_per_device(None, 256, 8) is None


class TinyNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3))(x)  # 8x8x3 -> 8x8x4
    x = nn.Conv(8, (3, 3), strides=2, feature_group_count=2)(x)  # -> 4x4x8, 2 input channels per group
    x = nn.relu(x).reshape(x.shape[0], -1)  # 128 features
    return nn.Dense(10)(x)


def test_forward_macs_of_a_tiny_conv_dense_model_by_hand():
  conv1 = 8 * 8 * 4 * (3 * 3 * 3)
  grouped = 4 * 4 * 8 * (3 * 3 * 2)
  dense = 128 * 10
  assert (conv1, grouped, dense) == (6912, 2304, 1280)
  image = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
  assert flops.forward_macs(TinyNet(), image) == conv1 + grouped + dense
  assert flops.forward_macs(TinyNet(), jax.ShapeDtypeStruct((5, 8, 8, 3), jnp.float32)) == 5 * 10496
  assert flops.training_flops_per_example(TinyNet(), image) == 3 * 2 * 10496
  with pytest.raises(ValueError, match='batch of one'):
    flops.training_flops_per_example(TinyNet(), jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32))


def _resnet50_macs_by_hand(size: int = 224, classes: int = 1000) -> int:
  """ResNet-50 v1.5 layer by layer: conv MACs = output H x W x output channels x k x k x input channels."""
  conv = lambda hw, cin, cout, k: hw * hw * cout * k * k * cin  # noqa: E731
  hw = size // 2
  total = conv(hw, 3, 64, 7)  # Stem 7x7/2, then a 3x3/2 max-pool.
  hw, cin = hw // 2, 64
  for stage, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
    for i in range(blocks):
      out_hw = hw // 2 if stage > 0 and i == 0 else hw  # v1.5: the 3x3 carries the stride.
      total += conv(hw, cin, planes, 1) + conv(out_hw, planes, planes, 3) + conv(out_hw, planes, 4 * planes, 1)
      if i == 0:
        total += conv(out_hw, cin, 4 * planes, 1)  # Projection shortcut.
      hw, cin = out_hw, 4 * planes
  return total + cin * classes


def test_resnet50_forward_is_4_09_gmacs():
  by_hand = _resnet50_macs_by_hand()
  # torchvision's ResNet50_Weights table (fvcore's count of conv + linear MACs) gives "GFLOPS 4.09" at 224x224.
  assert by_hand == pytest.approx(4.09e9, rel=0.005)
  model = resnet.ResNet(stage_sizes=resnet.STAGE_SIZES[50], num_classes=1000)
  image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  assert flops.forward_macs(model, image, train=False) == by_hand
  assert flops.training_flops_per_example(model, image, train=False) == 6 * by_hand  # ~24.5 GFLOPs


def test_grouped_convs_resnext50_backbone_is_4_23_gmacs():
  # torchvision's ResNeXt50_32X4D_Weights: "GFLOPS 4.23" (MACs) at 224x224, of which the 2048 -> 1000 classifier
  # (absent from the detection backbone) is 2.048 M.
  backbone = retinanet.ResNeXtBackbone()
  macs = flops.forward_macs(backbone, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32), train=False)
  assert macs + 2048 * 1000 == pytest.approx(4.23e9, rel=0.005)


def test_workload_hook_counts_the_configured_model():
  config = registry.get_config('resnet', 'tiny')
  workload = registry.make_workload('resnet', config, 'tiny')
  # The tiny model: 3x3 stem 3 -> 16 at 32x32, one basic block per stage (16, 32, 64 channels at 32, 16, 8).
  conv = lambda hw, cin, cout, k: hw * hw * cout * k * k * cin  # noqa: E731
  macs = (conv(32, 3, 16, 3) + 2 * conv(32, 16, 16, 3)
          + conv(16, 16, 32, 3) + conv(16, 32, 32, 3) + conv(16, 16, 32, 1)
          + conv(8, 32, 64, 3) + conv(8, 64, 64, 3) + conv(8, 32, 64, 1) + 64 * 10)
  assert workload.model_flops_per_example() == 6 * macs
