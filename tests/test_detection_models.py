"""The detection models match their references' sizes (torchvision parameter counts, anchor counts) and really run."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from models.retinanet import ResNeXtBackbone, RetinaNet, retinanet_from_config
from models.ssd300 import ResNetBackbone, ssd300_from_config


def _param_count(module, *input_shape: int) -> int:
  """Parameters only (torchvision counts BN weight and bias, not running stats), from shapes: no real init."""
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(input_shape), train=False))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables['params']))


def _output_shapes(module, *input_shape: int):
  """Output shapes of init's forward pass, traced only (no real compute)."""
  out, _ = jax.eval_shape(lambda: module.init_with_output(jax.random.key(0), jnp.zeros(input_shape), train=False))
  return jax.tree.map(lambda o: o.shape, out, is_leaf=lambda o: hasattr(o, 'shape'))


def test_resnext50_32x4d_backbone_matches_torchvision_parameter_count():
  # torchvision resnext50_32x4d: 25,028,904 parameters, of which the 1000-class fc holds 2048 * 1000 + 1000.
  assert _param_count(ResNeXtBackbone(), 1, 64, 64, 3) == 25_028_904 - (2048 * 1000 + 1000)


def test_resnet34_trunk_matches_torchvision_parameter_count():
  # torchvision resnet34: 21,797,672 parameters, of which the fc holds 512 * 1000 + 1000; the SSD keeps layers 1-3.
  full = ResNetBackbone(stage_sizes=(3, 4, 6, 3), stage_strides=(1, 2, 2, 2))
  assert _param_count(full, 1, 64, 64, 3) == 21_797_672 - (512 * 1000 + 1000)


def test_ssd300_has_8732_boxes_at_300x300():
  model = ssd300_from_config(ml_collections.ConfigDict({'width': 64, 'dtype': 'float32'}), num_classes=81)
  assert _output_shapes(model, 1, 300, 300, 3) == ((1, 8732, 81), (1, 8732, 4))
  # The truncated trunk (layer3 at stride 1) feeds the heads a 38x38x256 map.
  assert _output_shapes(ResNetBackbone(), 1, 300, 300, 3) == (1, 38, 38, 256)


def test_full_retinanet_at_800x800_has_120087_anchors():
  model = RetinaNet(num_classes=264)
  # 9 anchors on P3-P7: 100^2 + 50^2 + 25^2 + 13^2 + 7^2 = 13343 locations.
  assert _output_shapes(model, 1, 800, 800, 3) == ((1, 120087, 264), (1, 120087, 4))


def _tiny_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'stage_sizes': (1, 1, 1), 'width': 16, 'groups': 4, 'width_per_group': 4, 'fpn_channels': 32,
      'head_convs': 1, 'min_level': 3, 'max_level': 5, 'num_anchors': 9, 'dtype': 'float32', 'frozen_bn': False})


def test_tiny_retinanet_trains_forward_with_the_focal_prior():
  model = retinanet_from_config(_tiny_config(), num_classes=5)
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  (logits, deltas), updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  anchors = 9 * (8 * 8 + 4 * 4 + 2 * 2)  # Levels 3-5 at strides 8, 16, 32.
  assert logits.shape == (2, anchors, 5) and deltas.shape == (2, anchors, 4)
  assert logits.dtype == jnp.float32 and deltas.dtype == jnp.float32
  assert np.isfinite(logits).all() and np.isfinite(deltas).all()
  # The N(0, 0.01) weights only jitter the logits around the prior bias.
  probs = jax.nn.sigmoid(logits)
  np.testing.assert_allclose(probs.mean(), 0.01, atol=2e-4)
  np.testing.assert_allclose(probs, 0.01, atol=5e-3)
  # Training mode updated the running statistics.
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'], updates['batch_stats'])
  assert any(jax.tree.leaves(changed))


def test_frozen_bn_keeps_running_statistics():
  config = _tiny_config()
  config.frozen_bn = True
  model = retinanet_from_config(config, num_classes=5)
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  _, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  jax.tree.map(np.testing.assert_array_equal, variables['batch_stats'], updates['batch_stats'])
