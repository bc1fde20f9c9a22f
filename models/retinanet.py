"""RetinaNet (ResNeXt50-32x4d + FPN, P3-P7) in Flax (NHWC) for the MLPerf Training `ssd` benchmark (ruleset 4.1.0)."""

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers


def torch_conv(features: int, kernel_size: Sequence[int], strides: int | Sequence[int] = 1, **kwargs) -> nn.Conv:
  """nn.Conv with PyTorch's symmetric `k // 2` padding instead of 'SAME'.

  'SAME' pads a strided conv asymmetrically (e.g. (2, 3) for 7x7/2 on even inputs) while torchvision pads (3, 3); the
  MLPerf references start from torchvision ImageNet weights, and symmetric padding keeps those weights' spatial
  alignment (and the reference's output sizes for odd inputs).
  """
  kernel_size = tuple(kernel_size)
  kernel_init = layers.named(kwargs.pop('kernel_init', nn.initializers.lecun_normal()), layers.CONV_KERNEL)
  return nn.Conv(features, kernel_size, strides, padding=[(k // 2, k // 2) for k in kernel_size],
                 kernel_init=kernel_init, **kwargs)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """torchvision's stem pool: 3x3, stride 2, padding 1 (padded with -inf)."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ResNeXtBlock(nn.Module):
  """Bottleneck 1x1 -> grouped 3x3 (strided) -> 1x1 of torchvision's ResNeXt, projection shortcut on a shape change."""
  inner_features: int
  out_features: int
  strides: int
  groups: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(self.conv(self.inner_features, (1, 1))(x)))
    y = nn.relu(self.norm()(self.conv(self.inner_features, (3, 3), self.strides, feature_group_count=self.groups)(y)))
    # BN scale starts at 1 (torchvision's zero_init_residual=False): with frozen BN and an optimizer that masks the BN
    # parameters, a zero scale would switch the residual branch off for good.
    y = self.norm()(self.conv(self.out_features, (1, 1))(y))
    residual = x
    if self.strides != 1 or x.shape[-1] != self.out_features:
      residual = self.norm()(self.conv(self.out_features, (1, 1), self.strides, name='proj_conv')(x))
    return nn.relu(residual + y)


class ResNeXtBackbone(nn.Module):
  """ResNeXt (torchvision layout, no classifier) returning (C3, C4, C5), the last three stages, at strides 8, 16, 32.

  Stage `s` has `width * 2**s` "planes", a grouped 3x3 of `int(planes * width_per_group / 64) * groups` channels and
  `4 * planes` output channels (torchvision's formula). The stem (7x7/2 conv + 3x3/2 max-pool) has stride 4, and the
  first block of stage `s` has stride 2 exactly when `s >= len(stage_sizes) - 3`; so with 4 stages (the real model)
  stage 0 is C2 at stride 4 and stages 1-3 are C3-C5, and with 3 stages (tiny variants) the stages are C3, C4, C5
  directly, still at strides 8, 16, 32.

  `frozen_bn=True` mimics the reference's FrozenBatchNorm2d: normalisation always uses the running statistics (which
  are then never updated), in training too. The BN scale and bias stay in `params` so an ImageNet checkpoint maps onto
  them one to one; keeping them fixed, like the reference's frozen conv1/layer1, is the optimizer's job (a mask).
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  groups: int = 32
  width_per_group: int = 4
  dtype: Any = jnp.float32
  frozen_bn: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, images_NHWC: jax.Array, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    if len(self.stage_sizes) < 3:
      raise ValueError(f'need at least 3 stages for C3-C5, got stage_sizes={self.stage_sizes}')
    conv = functools.partial(torch_conv, use_bias=False, dtype=self.dtype,
                             kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'))
    norm = functools.partial(nn.BatchNorm, use_running_average=self.frozen_bn or not train,
                             momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype)
    x = images_NHWC.astype(self.dtype)
    x = nn.relu(norm(name='stem_bn')(conv(self.width, (7, 7), 2, name='stem_conv')(x)))
    x = _max_pool_3x3_s2(x)
    first_pyramid_stage = len(self.stage_sizes) - 3
    outputs = []
    for stage, num_blocks in enumerate(self.stage_sizes):
      planes = self.width * 2**stage
      inner = int(planes * self.width_per_group / 64) * self.groups
      for i in range(num_blocks):
        strides = 2 if i == 0 and stage >= first_pyramid_stage else 1
        x = ResNeXtBlock(inner, 4 * planes, strides, self.groups, conv, norm)(x)
      if stage >= first_pyramid_stage:
        outputs.append(x)
    return tuple(outputs)


def _upsample_nearest_to(x_NHWC: jax.Array, height: int, width: int) -> jax.Array:
  """torch's F.interpolate(size=..., mode='nearest'): source index floor(i * in / out), exact for non-2x ratios too."""
  rows = (jnp.arange(height) * x_NHWC.shape[1]) // height
  cols = (jnp.arange(width) * x_NHWC.shape[2]) // width
  return x_NHWC[:, rows][:, :, cols]


class FPN(nn.Module):
  """torchvision's FeaturePyramidNetwork over C_min..C5 plus LastLevelP6P7 on P5: returns [P_min, ..., P_max].

  Levels above 5 come from stride-2 3x3 convs: P6 = conv(P5), P7 = conv(relu(P6)) (and so on for higher levels).
  """
  features: int = 256
  min_level: int = 3
  max_level: int = 7
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, backbone_features: Sequence[jax.Array]) -> list[jax.Array]:
    # kaiming_uniform_(a=1) with zero bias, torchvision's FPN init.
    conv = functools.partial(torch_conv, dtype=self.dtype,
                             kernel_init=nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform'))
    levels = range(self.min_level, 6)
    feats = dict(zip(levels, backbone_features[len(backbone_features) - len(levels):]))
    inner = conv(self.features, (1, 1), name='lateral_5')(feats[5])
    outputs = {5: conv(self.features, (3, 3), name='output_5')(inner)}
    for level in reversed(levels[:-1]):
      lateral = conv(self.features, (1, 1), name=f'lateral_{level}')(feats[level])
      inner = lateral + _upsample_nearest_to(inner, lateral.shape[1], lateral.shape[2])
      outputs[level] = conv(self.features, (3, 3), name=f'output_{level}')(inner)
    x = outputs[5]
    for level in range(6, self.max_level + 1):
      x = conv(self.features, (3, 3), 2, name=f'extra_{level}')(x if level == 6 else nn.relu(x))
      outputs[level] = x
    return [outputs[level] for level in range(self.min_level, self.max_level + 1)]


class HeadTower(nn.Module):
  """`num_convs` x (3x3 conv + ReLU) then a 3x3 conv to `out_features` (torchvision v1 heads: no norm, N(0, 0.01))."""
  out_features: int
  features: int = 256
  num_convs: int = 4
  bias_init: Any = nn.initializers.zeros
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(torch_conv, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01))
    for _ in range(self.num_convs):
      x = nn.relu(conv(self.features, (3, 3))(x))
    return conv(self.out_features, (3, 3), bias_init=self.bias_init, name='output')(x)


class RetinaNet(nn.Module):
  """RetinaNet over NHWC images; returns float32 `(class_logits_BxAxC, box_deltas_BxAx4)`.

  Anchor order of A (the same order as the anchor generator in `models/box_ops.py`): level-major (min_level first),
  then row, then column, then the anchor index a in [0, num_anchors) at that location; i.e. the flat index is
  `offset[level] + (row * W_level + col) * num_anchors + a`. Within a location the head's channels are anchor-major
  (`a * num_classes + c`, `a * 4 + k`), as in torchvision's view(N, A, K, H, W), so the slot `a` means whatever
  (scale, ratio) the anchor generator puts in that slot. Box deltas are in the generator's coder order (torchvision:
  dx, dy, dw, dh). Classes have no background slot (sigmoid focal loss).

  `dtype` is the compute dtype; parameters and BN statistics stay float32. `frozen_bn` freezes the backbone's BN only
  (see ResNeXtBackbone); the FPN and heads have no normalisation.
  """
  num_classes: int
  num_anchors: int = 9
  backbone_stage_sizes: Sequence[int] = (3, 4, 6, 3)
  backbone_width: int = 64
  groups: int = 32
  width_per_group: int = 4
  fpn_channels: int = 256
  head_convs: int = 4
  min_level: int = 3
  max_level: int = 7
  dtype: Any = jnp.float32
  frozen_bn: bool = False
  prior_probability: float = 0.01

  @nn.compact
  def __call__(self, images_NHWC: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    if not 3 <= self.min_level <= 5 <= self.max_level:
      raise ValueError(f'need 3 <= min_level <= 5 <= max_level, got {self.min_level}..{self.max_level}')
    c3_c5 = ResNeXtBackbone(self.backbone_stage_sizes, self.backbone_width, self.groups, self.width_per_group,
                            self.dtype, self.frozen_bn, name='backbone')(images_NHWC, train)
    pyramid = FPN(self.fpn_channels, self.min_level, self.max_level, self.dtype, name='fpn')(c3_c5)
    # Focal-loss prior: every anchor starts at foreground probability `prior_probability`, so the loss from the
    # ~100k background anchors does not swamp the first steps.
    prior_bias = -math.log((1 - self.prior_probability) / self.prior_probability)
    # One instance each, called on every level: the heads' weights are shared across levels.
    class_head = HeadTower(self.num_anchors * self.num_classes, self.fpn_channels, self.head_convs,
                           nn.initializers.constant(prior_bias), self.dtype, name='class_head')
    box_head = HeadTower(self.num_anchors * 4, self.fpn_channels, self.head_convs, dtype=self.dtype, name='box_head')
    batch = images_NHWC.shape[0]
    logits, deltas = [], []
    for p_NHWC in pyramid:
      # (B, H, W, A*K) -> (B, H*W*A, K): row, column, anchor order.
      logits.append(class_head(p_NHWC).reshape(batch, -1, self.num_classes))
      deltas.append(box_head(p_NHWC).reshape(batch, -1, 4))
    return (jnp.concatenate(logits, axis=1).astype(jnp.float32),
            jnp.concatenate(deltas, axis=1).astype(jnp.float32))


def retinanet_from_config(model_cfg, num_classes: int) -> RetinaNet:
  """Builds the RetinaNet a workload's `config.model` (an ml_collections ConfigDict) asks for."""
  return RetinaNet(num_classes=num_classes, num_anchors=model_cfg.num_anchors,
                   backbone_stage_sizes=tuple(model_cfg.stage_sizes), backbone_width=model_cfg.width,
                   groups=model_cfg.groups, width_per_group=model_cfg.width_per_group,
                   fpn_channels=model_cfg.fpn_channels, head_convs=model_cfg.head_convs,
                   min_level=model_cfg.min_level, max_level=model_cfg.max_level, dtype=jnp.dtype(model_cfg.dtype),
                   frozen_bn=model_cfg.frozen_bn)
