"""MobileNet-v1 in Flax (NHWC), as TF slim's mobilenet_v1 builds it: the MLPerf Inference `mobilenet` classifier and
the backbone of SSD-MobileNet-v1.

Figures from tensorflow/models research/slim/nets/mobilenet_v1.py (the model MLPerf Inference's
mobilenet_v1_1.0_224 was trained and frozen from): a 3x3/2 conv of 32 channels, then 13 depthwise-separable
blocks (3x3 depthwise conv, 1x1 pointwise conv), every conv followed by batch norm (center and scale, decay 0.9997,
epsilon 0.001) and ReLU6, 'SAME' padding, no conv biases; channels `max(int(d * depth_multiplier), 8)`; weights
from a truncated normal of stddev 0.09 (mobilenet_v1_arg_scope). The classifier head: average pool over the
final 7x7 map, dropout (keep_prob 0.999), a 1x1 conv with bias and no activation, squeezed to [B, classes].
Parameter names follow the slim scopes (Conv2d_0, Conv2d_<i>_depthwise, Conv2d_<i>_pointwise, Logits), so the
reference-weights converter maps them one to one.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from models import layers

# (stride, channels at width 1.0) of the 13 depthwise-separable blocks (slim's _CONV_DEFS after Conv2d_0).
SEPARABLE_BLOCKS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512), (1, 512), (1, 512),
                    (1, 512), (1, 512), (2, 1024), (1, 1024))
STEM_CHANNELS = 32
MIN_DEPTH = 8  # slim's min_depth: no layer narrower than 8 channels at small multipliers.
BN_MOMENTUM = 0.9997  # slim batch_norm decay in mobilenet_v1_arg_scope.
BN_EPSILON = 1e-3
INIT_STDDEV = 0.09  # slim's truncated-normal weights initializer.
# The SSD feature maps (TF Object Detection API ssd_mobilenet_v1_feature_extractor): the outputs of blocks 11
# (stride 16) and 13 (stride 32).
FEATURE_BLOCKS = (11, 13)


def depth(channels: int, width_multiplier: float) -> int:
  """Channels of a layer at a width multiplier, as slim's `depth` lambda."""
  return max(int(channels * width_multiplier), MIN_DEPTH)


def _kernel_init():
  return layers.named(nn.initializers.truncated_normal(INIT_STDDEV), layers.CONV_KERNEL)


class ConvBN(nn.Module):
  """conv (no bias) -> batch norm -> ReLU6; `depthwise` makes it a per-channel 3x3 conv (feature groups = channels)."""
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  depthwise: bool = False
  dtype: Any = jnp.float32
  bn_momentum: float = BN_MOMENTUM

  @nn.compact
  def __call__(self, x, train: bool):
    groups = x.shape[-1] if self.depthwise else 1
    x = nn.Conv(self.features, self.kernel_size, (self.strides, self.strides), padding='SAME', use_bias=False,
                feature_group_count=groups, dtype=self.dtype, kernel_init=_kernel_init(), name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=BN_EPSILON, dtype=self.dtype,
                     name='BatchNorm')(x)
    return nn.relu6(x)


class MobileNetV1Backbone(nn.Module):
  """The conv body (slim's mobilenet_v1_base up to Conv2d_13_pointwise) over NHWC images.

  Returns the outputs of blocks 11 (512*a channels, stride 16) and 13 (1024*a channels, stride 32), a = the width
  multiplier: the two maps SSD-MobileNet-v1 predicts from (and the second feeds the classifier). `dtype` is the
  compute dtype; parameters and batch-norm statistics stay float32. `bn_momentum` is slim's 0.9997 unless a short
  (tiny) run needs its moving statistics to follow within a few hundred steps.
  """
  width_multiplier: float = 1.0
  dtype: Any = jnp.float32
  bn_momentum: float = BN_MOMENTUM

  @nn.compact
  def __call__(self, x, train: bool):
    if self.width_multiplier <= 0:
      raise ValueError(f'width_multiplier={self.width_multiplier} must be greater than zero')
    a = self.width_multiplier
    conv_bn = functools.partial(ConvBN, dtype=self.dtype, bn_momentum=self.bn_momentum)
    x = x.astype(self.dtype)
    x = conv_bn(depth(STEM_CHANNELS, a), (3, 3), 2, name='Conv2d_0')(x, train)
    features = []
    for i, (stride, channels) in enumerate(SEPARABLE_BLOCKS, start=1):
      x = conv_bn(x.shape[-1], (3, 3), stride, depthwise=True, name=f'Conv2d_{i}_depthwise')(x, train)
      x = conv_bn(depth(channels, a), (1, 1), name=f'Conv2d_{i}_pointwise')(x, train)
      if i in FEATURE_BLOCKS:
        features.append(x)
    return features


class MobileNetV1(nn.Module):
  """MobileNet-v1 classifier: backbone, global average pool, dropout (keep 0.999), 1x1 conv logits (float32).

  slim pools with a fixed 7x7 VALID window, which at the 224x224 input is the global mean; a global mean keeps
  smaller (tiny) inputs at one output position too.
  """
  num_classes: int
  width_multiplier: float = 1.0
  dtype: Any = jnp.float32
  dropout_rate: float = 0.001  # slim dropout_keep_prob=0.999.
  bn_momentum: float = BN_MOMENTUM

  @nn.compact
  def __call__(self, images_NHWC, train: bool):
    backbone = MobileNetV1Backbone(self.width_multiplier, self.dtype, self.bn_momentum, name='MobilenetV1')
    x = backbone(images_NHWC, train)[-1]
    x = jnp.mean(x, axis=(1, 2), keepdims=True)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, kernel_init=_kernel_init(),
                     name='Logits')(x)
    return logits[:, 0, 0, :].astype(jnp.float32)
