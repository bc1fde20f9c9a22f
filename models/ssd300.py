"""SSD300 with a truncated ResNet-34 in Flax (NHWC): the MLPerf Training `ssd` model of ruleset 1.1.0 (8732 boxes)."""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers
from models.resnet import BasicBlock
from models.retinanet import torch_conv

# The reference's heads: default boxes per location on the 38, 19, 10, 5, 3, 1 maps.
NUM_DEFAULTS = (4, 6, 6, 6, 4, 4)
# (bottleneck, output) channels at width 64 of the five extra blocks (conv7..conv11).
EXTRA_CHANNELS = ((256, 512), (256, 512), (128, 256), (128, 256), (128, 256))


class ResNetBackbone(nn.Module):
  """torchvision-layout ResNet of basic blocks without pooling or classifier; returns the last stage's features.

  The SSD uses ResNet-34's conv1..layer3 (`stage_sizes=(3, 4, 6)`) with layer3's stride set to 1
  (`stage_strides=(1, 2, 1)`), so a 300x300 image gives a 38x38x256 map; `stage_sizes=(3, 4, 6, 3)` with strides
  (1, 2, 2, 2) is the full ResNet-34 trunk (for checking against torchvision).
  """
  stage_sizes: Sequence[int] = (3, 4, 6)
  stage_strides: Sequence[int] = (1, 2, 1)
  width: int = 64
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, images_NHWC: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(torch_conv, use_bias=False, dtype=self.dtype,
                             kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, dtype=self.dtype)
    x = images_NHWC.astype(self.dtype)
    x = nn.relu(norm(name='stem_bn')(conv(self.width, (7, 7), 2, name='stem_conv')(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # torchvision's padding=1.
    for stage, (num_blocks, stage_stride) in enumerate(zip(self.stage_sizes, self.stage_strides)):
      for i in range(num_blocks):
        # The suite's ResNet-34 block; its projection shortcut also fires for layer3's stride-1 channel change,
        # as torchvision's downsample does after the reference's _ModifyBlock.
        x = BasicBlock(self.width * 2**stage, stage_stride if i == 0 else 1, conv, norm)(x)
    return x


class SSD300(nn.Module):
  """SSD300 over NHWC images; returns float32 `(class_logits_BxAxC, box_deltas_BxAx4)` with A = 8732 at 300x300.

  `num_classes` includes the background at index 0 (81 for COCO; softmax cross-entropy with hard negative mining).
  Box order of A: level-major (38x38 map first, 1x1 last), then row, then column, then the default box d in
  [0, NUM_DEFAULTS[level]) at that location; i.e. `offset[level] + (row * W_level + col) * NUM_DEFAULTS[level] + d`,
  with channels `d * num_classes + c` and `d * 4 + k`. This differs from the PyTorch reference, whose
  `view(N, 4, -1)` puts the default box before the row and column within a level (and coordinates before boxes): a
  default-box generator for this model must use the order above.

  `width` scales every channel count (64 = the real model: backbone 256, extra maps 512, 512, 256, 256, 256). The
  extra blocks and heads follow the reference: conv + ReLU without BN, Xavier-uniform weights (zero biases here,
  where torch keeps its default uniform bias init).

  The strides make the same network MLPerf Inference's SSD-ResNet34 at 1200x1200 (mlcommons/inference
  vision/classification_and_detection/python/models/ssd_r34.py at 0cde9777, `strides=[3, 3, 2, 2, 2, 2]`): heads
  of stride 3 (`head_stride`), and the fourth extra block's unpadded 3x3 at stride 2 (`extra_strides`), so the
  six maps are 50, 25, 13, 7, 3, 3 (15,130 boxes). `extra_padded` pads an extra block's 3x3 (a small image needs
  it where the reference's unpadded convs would shrink a map below 1); `stage_sizes` shortens the backbone.
  """
  num_classes: int
  width: int = 64
  dtype: Any = jnp.float32
  stage_sizes: Sequence[int] = (3, 4, 6)
  head_stride: int = 1
  extra_strides: Sequence[int] = (2, 2, 2, 1, 1)
  extra_padded: Sequence[bool] = (True, True, True, False, False)

  @nn.compact
  def __call__(self, images_NHWC: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    scale = self.width / 64
    conv = functools.partial(torch_conv, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform())
    x = ResNetBackbone(stage_sizes=tuple(self.stage_sizes), width=self.width, dtype=self.dtype,
                       name='backbone')(images_NHWC, train)
    feature_maps = [x]
    # (bottleneck channels, output channels) of conv7..conv11; SSD300: 38 -> 19 -> 10 -> 5 (padded stride 2),
    # then 5 -> 3 -> 1 (unpadded 3x3, stride 1).
    for i, ((mid, out), stride, padded) in enumerate(zip(EXTRA_CHANNELS, self.extra_strides, self.extra_padded)):
      x = nn.relu(conv(int(mid * scale), (1, 1), name=f'extra_{i}_reduce')(x))
      if padded:
        x = nn.relu(conv(int(out * scale), (3, 3), stride, name=f'extra_{i}_conv')(x))
      else:
        x = nn.relu(nn.Conv(int(out * scale), (3, 3), stride, padding='VALID', dtype=self.dtype,
                            kernel_init=layers.named(nn.initializers.xavier_uniform(), layers.CONV_KERNEL),
                            name=f'extra_{i}_conv')(x))
      feature_maps.append(x)
    batch = images_NHWC.shape[0]
    logits, deltas = [], []
    for level, (f_NHWC, num_defaults) in enumerate(zip(feature_maps, NUM_DEFAULTS)):
      # Separate heads per level (the maps differ in channels and scale); (B, H, W, D*K) -> (B, H*W*D, K).
      logits.append(conv(num_defaults * self.num_classes, (3, 3), self.head_stride, name=f'class_head_{level}')(f_NHWC)
                    .reshape(batch, -1, self.num_classes))
      deltas.append(conv(num_defaults * 4, (3, 3), self.head_stride, name=f'box_head_{level}')(f_NHWC)
                    .reshape(batch, -1, 4))
    return (jnp.concatenate(logits, axis=1).astype(jnp.float32),
            jnp.concatenate(deltas, axis=1).astype(jnp.float32))


def ssd300_from_config(model_cfg, num_classes: int) -> SSD300:
  """Builds the SSD300 a workload's `config.model` (ml_collections ConfigDict: `width`, `dtype`, and optionally
  `stage_sizes`, `head_stride`, `extra_strides`, `extra_padded`) asks for."""
  optional = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in model_cfg.items()
              if k in ('stage_sizes', 'head_stride', 'extra_strides', 'extra_padded')}
  return SSD300(num_classes=num_classes, width=model_cfg.width, dtype=jnp.dtype(model_cfg.dtype), **optional)


def feature_sizes(image_size: int, head_stride: int = 1, extra_strides: Sequence[int] = (2, 2, 2, 1, 1),
                  extra_padded: Sequence[bool] = (True, True, True, False, False)) -> tuple[int, ...]:
  """The heads' output grid side on each of the six maps for a square image, by torch's conv arithmetic
  (floor((n + 2 * pad - k) / stride) + 1): the backbone's stride 8 (7x7/2 conv, 3x3/2 max-pool, layer2's stride 2),
  the extra blocks, then the heads' 3x3 padded conv. SSD300: 38, 19, 10, 5, 3, 1; SSD-ResNet34 at 1200 with head
  stride 3 and extra strides (2, 2, 2, 2, 1): 50, 25, 13, 7, 3, 3."""
  out = lambda n, k, s, p: (n + 2 * p - k) // s + 1  # noqa: E731
  n = out(out(out(image_size, 7, 2, 3), 3, 2, 1), 3, 2, 1)
  maps = [n]
  for stride, padded in zip(extra_strides, extra_padded):
    n = out(n, 3, stride, 1 if padded else 0)
    maps.append(n)
  return tuple(out(m, 3, head_stride, 1) for m in maps)
