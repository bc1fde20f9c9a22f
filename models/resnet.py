"""ResNet v1.5 in Flax (NHWC): ResNet-50 for the MLPerf benchmark and small variants for tiny runs."""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from models import layers


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (strided, the "v1.5" change) -> 1x1, with a projection shortcut when the shape changes."""
  filters: int
  strides: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
    # Zero-init of the last BN scale makes each block start as the identity (Goyal et al.), as MLPerf references do.
    y = self.norm(scale_init=nn.initializers.zeros)(self.conv(self.filters * 4, (1, 1))(y))
    if residual.shape != y.shape:
      residual = self.norm()(self.conv(self.filters * 4, (1, 1), self.strides, name='proj_conv')(residual))
    return nn.relu(residual + y)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (ResNet-18/34 style), for the small variants."""
  filters: int
  strides: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
    y = self.norm(scale_init=nn.initializers.zeros)(self.conv(self.filters, (3, 3))(y))
    if residual.shape != y.shape:
      residual = self.norm()(self.conv(self.filters, (1, 1), self.strides, name='proj_conv')(residual))
    return nn.relu(residual + y)


BLOCKS = {'bottleneck': BottleneckBlock, 'basic': BasicBlock}


class ResNet(nn.Module):
  """ResNet over NHWC images; returns float32 logits.

  `dtype` is the compute dtype (bfloat16 on TPU/GPU); parameters and batch-norm statistics stay float32.
  `small_stem` swaps the 7x7/2 conv + max-pool for one 3x3/1 conv, for 32x32 inputs.
  """
  stage_sizes: Sequence[int]
  num_classes: int
  block: str = 'bottleneck'
  width: int = 64
  small_stem: bool = False
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, images_NHWC, train: bool):
    if not self.stage_sizes or min(self.stage_sizes) < 1:
      raise ValueError(f'stage_sizes={tuple(self.stage_sizes)}: need at least one stage, each of at least one block')
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, padding='SAME',
                             kernel_init=layers.named(nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
                                                         layers.CONV_KERNEL))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, dtype=self.dtype)
    x = images_NHWC.astype(self.dtype)
    if self.small_stem:
      x = nn.relu(norm(name='stem_bn')(conv(self.width, (3, 3), name='stem_conv')(x)))
    else:
      x = nn.relu(norm(name='stem_bn')(conv(self.width, (7, 7), (2, 2), name='stem_conv')(x)))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    block = BLOCKS[self.block]
    for stage, num_blocks in enumerate(self.stage_sizes):
      for i in range(num_blocks):
        strides = 2 if stage > 0 and i == 0 else 1
        x = block(self.width * 2**stage, strides, conv, norm)(x)
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      kernel_init=layers.named(nn.initializers.normal(0.01), layers.CLASSIFIER_KERNEL),
                      name='head')(x)
    return logits.astype(jnp.float32)


STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def resnet_from_config(model_cfg, num_classes: int) -> ResNet:
  """Builds the ResNet a workload config asks for: `stage_sizes=()` means the standard stages of `depth` (ResNet-50:
  (3, 4, 6, 3)); explicit `stage_sizes` (small variants) set the blocks per stage, each at least one. `depth` also
  picks the block: bottleneck from 50 up, basic below."""
  stage_sizes = tuple(model_cfg.stage_sizes)
  if not stage_sizes:
    if model_cfg.depth not in STAGE_SIZES:
      raise ValueError(f'model.depth={model_cfg.depth} has no standard stages (known: {sorted(STAGE_SIZES)}); '
                       'set model.stage_sizes')
    stage_sizes = STAGE_SIZES[model_cfg.depth]
  if min(stage_sizes) < 1:
    raise ValueError(f'model.stage_sizes={stage_sizes}: every stage needs at least one block')
  block = 'bottleneck' if model_cfg.depth >= 50 else 'basic'
  return ResNet(stage_sizes=stage_sizes, num_classes=num_classes, block=block, width=model_cfg.width,
                small_stem=model_cfg.small_stem, dtype=jnp.dtype(model_cfg.dtype))
