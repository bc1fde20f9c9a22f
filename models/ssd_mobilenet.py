"""SSD-MobileNet-v1 in Flax (NHWC): the MLPerf Inference `ssd-mobilenet` model (ssd_mobilenet_v1_coco_2018_01_28
of the TF Object Detection API, 300x300, 1,917 anchors).

Figures from the reference's PyTorch port of that model (mlcommons/inference
vision/classification_and_detection/python/models/ssd_mobilenet_v1.py and anchor_generator.py at 0cde9777) and
the TF Object Detection API config it ports (ssd_mobilenet_v1_coco.config): MobileNet-v1 features at blocks 11
(stride 16) and 13 (stride 32), then four extra blocks (1x1 conv to d/2, 3x3 stride-2 'SAME' conv to d, for d =
512, 256, 256, 128, each conv followed by batch norm and ReLU6, channels max(int(d * width), 16)); on each of the
six maps a 1x1 box conv (4 values an anchor) and a 1x1 class conv (`num_classes` columns an anchor, the background
at column 0), with biases and no activation; 3 anchors a location on the first map, 6 on the others. The frozen
TF graph the reference ships has every batch norm but the depthwise ones folded into conv weights and biases; a
folded bias loads here as the batch norm's bias with scale 1, mean 0 and variance 1 - epsilon.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers
from models.mobilenet import BN_MOMENTUM, ConvBN, MobileNetV1Backbone

# (output channels at width 1.0) of the extra blocks after Conv2d_13_pointwise, TF names Conv2d_2 .. Conv2d_5
# (ssd_mobilenet_v1_feature_extractor's feature_map_layout: layer_depth -1, -1, 512, 256, 256, 128).
EXTRA_DEPTHS = (512, 256, 256, 128)
EXTRA_MIN_DEPTH = 16  # The SSD feature extractor's min_depth.
# Anchors a location on each of the six maps: the TF anchor generator's reduce_boxes_in_lowest_layer gives 3 on the
# first map, and the 5 aspect ratios plus the interpolated-scale square give 6 elsewhere.
NUM_ANCHORS = (3, 6, 6, 6, 6, 6)
HEAD_INIT_STDDEV = 0.03  # ssd_mobilenet_v1_coco.config: truncated_normal_initializer stddev 0.03.


def extra_depth(channels: int, width_multiplier: float) -> int:
  return max(int(channels * width_multiplier), EXTRA_MIN_DEPTH)


def feature_sizes(image_size: int, num_maps: int = 6) -> tuple[int, ...]:
  """Grid side of each of the six maps for a square image: every stride-2 'SAME' conv takes ceil(n / 2); the
  first map is at stride 16 (four halvings), the second at 32, then one halving an extra block (300: 19, 10, 5, 3,
  2, 1)."""
  n = image_size
  for _ in range(4):
    n = math.ceil(n / 2)
  sizes = [n]
  for _ in range(num_maps - 1):
    n = math.ceil(n / 2)
    sizes.append(n)
  return tuple(sizes)


class SSDMobileNet(nn.Module):
  """SSD-MobileNet-v1 over NHWC images; returns float32 `(class_logits_BxAxC, box_deltas_BxAx4)`.

  `num_classes` counts the columns, the background (column 0) included: 91 for the reference (COCO category ids
  1..90 with their gaps). A is ordered map-major, then row, column, anchor slot (the order the TF anchor generator
  tiles its anchors in, and the order of the 1x1 heads' NHWC outputs); channels are `slot * num_classes + c` and
  `slot * 4 + k`, k in (ty, tx, th, tw).
  """
  num_classes: int
  width_multiplier: float = 1.0
  dtype: Any = jnp.float32
  bn_momentum: float = BN_MOMENTUM

  @nn.compact
  def __call__(self, images_NHWC: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    a = self.width_multiplier
    feature_maps = list(MobileNetV1Backbone(a, self.dtype, self.bn_momentum, name='MobilenetV1')(images_NHWC, train))
    x = feature_maps[-1]
    conv_bn = functools.partial(ConvBN, dtype=self.dtype, bn_momentum=self.bn_momentum)
    for i, d in enumerate(EXTRA_DEPTHS, start=2):
      x = conv_bn(extra_depth(d // 2, a), (1, 1), name=f'extra_{i}_1x1')(x, train)
      x = conv_bn(extra_depth(d, a), (3, 3), 2, name=f'extra_{i}_3x3_s2')(x, train)
      feature_maps.append(x)
    head = lambda features, name: nn.Conv(  # noqa: E731
        features, (1, 1), dtype=self.dtype, name=name,
        kernel_init=layers.named(nn.initializers.truncated_normal(HEAD_INIT_STDDEV), layers.CONV_KERNEL))
    batch = images_NHWC.shape[0]
    logits, deltas = [], []
    for level, (f_NHWC, num_anchors) in enumerate(zip(feature_maps, NUM_ANCHORS)):
      logits.append(head(num_anchors * self.num_classes, f'class_head_{level}')(f_NHWC)
                    .reshape(batch, -1, self.num_classes))
      deltas.append(head(num_anchors * 4, f'box_head_{level}')(f_NHWC).reshape(batch, -1, 4))
    return (jnp.concatenate(logits, axis=1).astype(jnp.float32),
            jnp.concatenate(deltas, axis=1).astype(jnp.float32))


def ssd_mobilenet_from_config(model_cfg, num_classes: int) -> SSDMobileNet:
  """The SSD-MobileNet a workload's `config.model` (`width_multiplier`, `dtype`, `bn_momentum`) asks for."""
  return SSDMobileNet(num_classes=num_classes, width_multiplier=model_cfg.width_multiplier,
                      dtype=jnp.dtype(model_cfg.dtype), bn_momentum=model_cfg.bn_momentum)
