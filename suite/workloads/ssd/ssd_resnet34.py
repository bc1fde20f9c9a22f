"""SSD-ResNet34 (1200x1200, COCO): the MLPerf Inference `ssd-resnet34` model, as an `ssd` variant.

The reference is mlcommons/inference vision/classification_and_detection/python/models/ssd_r34.py (at 0cde9777):
the SSD300 network of MLPerf Training (models/ssd300.py, ResNet-34 conv1..layer3 with layer3 at stride 1, five
extra blocks, a 3x3 class and box conv a map) at 1200x1200 with its `strides=[3, 3, 2, 2, 2, 2]`: heads of stride
3 and a stride-2 fourth extra block, so maps of 50, 25, 13, 7, 3, 3 and 15,130 default boxes (`dboxes_R34_coco`);
81 softmax classes (background 0, then the 80 COCO labels), box coder scales 10, 10, 5, 5, ImageNet mean and std
inputs, and the reference's post-processing (score > 0.05, NMS at IoU 0.5, 200 detections). README: FP32 mAP 0.20.
MLPerf measures given weights: `reference_weights` converts the reference's (BUILD.md). The `full` training recipe
is SSD300's (MLPerf Training 1.1.0) at this size; `tiny` is a narrow, shallow model of the same shape on the
generated shapes. Not an MLPerf Training benchmark: runs are open.
"""

import re

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from models import box_ops, ssd300, torchvision_weights
from suite.common.errors import UserError
from suite.workloads.ssd import ssd300 as ssd300_workload

# The reference's SSD_R34(strides=[3, 3, 2, 2, 2, 2]): loc and conf convs at stride 3, extra blocks at 2, 2, 2, 2
# and 1 (its last block's 3x3 has no stride argument); the last two extra 3x3 convs are unpadded.
HEAD_STRIDE = 3
EXTRA_STRIDES = (2, 2, 2, 2, 1)
EXTRA_PADDED = (True, True, True, False, False)


def get_config(scale: str) -> ml_collections.ConfigDict:
  c = ssd300_workload.get_config('full')
  c.image_size = 1200
  c.model = ml_collections.ConfigDict(dict(width=64, dtype='float32', stage_sizes=(3, 4, 6), head_stride=HEAD_STRIDE,
                                           extra_strides=EXTRA_STRIDES, extra_padded=EXTRA_PADDED))
  # ssd_r34.py: decode_batch(locs, confs, 0.50, 200) keeps scores > 0.05 (200 a class) and 200 in all.
  c.postprocess.update(score_threshold=0.05, pre_nms_top_k=1000, iou_threshold=0.5, max_detections=200)
  c.target = 0.20
  if scale == 'tiny':
    c.dataset = 'generated'
    c.num_classes = 4
    c.image_size = 128
    c.max_boxes = 8
    c.augment = 'flip'
    c.data_threads = 4
    c.generated = ml_collections.ConfigDict(dict(num_train=1024, num_eval=128, image_size=64))
    # All extra 3x3s padded: the reference's unpadded ones would shrink a 128-pixel image's maps below 1.
    c.model.update(width=8, stage_sizes=(1, 1, 1), extra_padded=(True,) * 5)
    c.postprocess.update(pre_nms_top_k=200, max_detections=20)
    c.global_batch_size = 32
    c.optimizer.update(learning_rate=0.05, warmup_epochs=0.5, decay_boundary_epochs=(100.0,))
    c.target = 0.2  # Reached in 4-5 epochs (0.26 mAP after 5).
    c.max_epochs = 8
    c.eval_every_epochs = 1
    c.log_every_steps = 8
  elif scale != 'full':
    raise ValueError(f'unknown scale {scale!r}')
  return c


class SSDResNet34Workload(ssd300_workload.SSD300Workload):
  """SSD-ResNet34 at 1200x1200 on COCO 2017 (MLPerf Inference ssd-resnet34)."""
  has_closed_rules = False  # The checker's 1.1.0 rules are SSD300's: runs of this model are open.
  variant = 'ssd_resnet34'
  loadgen_model = 'ssd-resnet34'
  # mlcommons/inference tools/submission/submission-checker.py at 0a4a8c0f, MODEL_CONFIG accuracy-target:
  # "ssd-large": ("mAP", 20 * 0.99) (ssd-resnet34 maps to ssd-large), the FP32 reference 0.20 mAP at 99%.
  inference_reference_accuracy = 0.20
  inference_closed_fraction = 0.99

  @classmethod
  def get_config(cls, scale):
    return get_config(scale)

  @classmethod
  def closed_violations(cls, config):
    return []

  def build_anchors(self):
    m = self.config.model
    sizes = ssd300.feature_sizes(self.config.image_size, m.head_stride, tuple(m.extra_strides), tuple(m.extra_padded))
    return box_ops.ssd_r34_default_boxes(self.config.image_size, sizes)

  @classmethod
  def is_reference_backbone(cls, config):
    return config.model.width == 64 and tuple(config.model.stage_sizes) == (3, 4, 6)

  def backbone_stage_sizes(self):
    return tuple(self.config.model.stage_sizes)

  def init_log_events(self, params):
    return super(ssd300_workload.SSD300Workload, self).init_log_events(params)

  def reference_weights(self, arrays):
    return resnet34_reference_weights(self, arrays)


# The reference's backbone modules (base_model_r34.py ResNet34): `model.layer1` is torchvision resnet34's conv1, bn1,
# relu, maxpool, layer1, layer2 in a Sequential; `model.layer2` holds its layer3.
_BACKBONE_PREFIXES = (('model.layer1.0.', 'conv1.'), ('model.layer1.1.', 'bn1.'), ('model.layer1.4.', 'layer1.'),
                      ('model.layer1.5.', 'layer2.'), ('model.layer2.0.', 'layer3.'))


def _oihw_to_hwio(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if value.ndim != 4 or value.transpose(2, 3, 1, 0).shape != shape:
    want = tuple(shape[i] for i in (3, 2, 0, 1)) if len(shape) == 4 else shape
    raise UserError(f"reference weight '{name}' has shape {value.shape}, the model needs {want} (OIHW)")
  return value.transpose(2, 3, 1, 0)


def _head_permutation(num_defaults: int, values: int, coordinates: bool) -> np.ndarray:
  """Our head channel `d * values + k` <- the reference's channel `k * num_defaults + d` (its `view(N, values, -1)`
  puts the value before the default box); box values also reorder from its (x, y, w, h) to our (y, x, h, w)."""
  ours = np.arange(num_defaults * values)
  d, k = ours // values, ours % values
  if coordinates:
    k = np.array([1, 0, 3, 2])[k]
  return k * num_defaults + d


def resnet34_reference_weights(workload, arrays: dict[str, np.ndarray]):
  """(params, model_state) of SSD-ResNet34 from the reference's weights, named as the PyTorch SSD_R34's state dict
  (resnet34-ssd1200.onnx was exported from it with its parameters, which keep those names as initializer names):
  the backbone `model.layer1.{0,1,4,5}.*` and `model.layer2.0.*` (torchvision's conv1, bn1, layer1, layer2 and
  layer3), `additional_blocks.<i>.{0,2}.{weight,bias}`, `loc.<l>.*` and `conf.<l>.*`; OIHW kernels."""
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  params, model_state = nn.unbox(workload.init_variables(jax.random.PRNGKey(0)))
  params = jax.tree.map(np.asarray, params)
  model_state = jax.tree.map(np.asarray, model_state)
  used = set()

  def take(name):
    if name not in arrays:
      raise UserError(f"reference weights: missing '{name}'")
    used.add(name)
    return np.asarray(arrays[name], np.float32)

  backbone = {}
  for name in arrays:
    for prefix, torchvision in _BACKBONE_PREFIXES:
      if name.startswith(prefix):
        backbone[torchvision + name[len(prefix):]] = arrays[name]
        used.add(name)
  params, model_state = torchvision_weights.place_backbone(backbone, 'reference weights', params, model_state,
                                                           workload.backbone_stage_sizes(), dropped=())
  params = dict(params)
  for i in range(len(ssd300.EXTRA_CHANNELS)):
    for layer, index in ((f'extra_{i}_reduce', 0), (f'extra_{i}_conv', 2)):
      p = dict(params[layer])
      p['kernel'] = _oihw_to_hwio(f'additional_blocks.{i}.{index}.weight',
                                  take(f'additional_blocks.{i}.{index}.weight'), p['kernel'].shape)
      p['bias'] = take(f'additional_blocks.{i}.{index}.bias')
      params[layer] = p
  num_classes = workload.config.num_classes + 1
  for level, num_defaults in enumerate(ssd300.NUM_DEFAULTS):
    for layer, source, values in ((f'box_head_{level}', 'loc', 4), (f'class_head_{level}', 'conf', num_classes)):
      order = _head_permutation(num_defaults, values, coordinates=source == 'loc')
      p = dict(params[layer])
      weight, bias = take(f'{source}.{level}.weight'), take(f'{source}.{level}.bias')
      if weight.shape[0] != len(order) or bias.shape != (len(order),):
        raise UserError(f"reference weights: '{source}.{level}' has {weight.shape[0]} output channels, the model "
                        f'needs {len(order)} ({num_defaults} boxes x {values}; --config.num_classes is '
                        f'{workload.config.num_classes})')
      p['kernel'] = _oihw_to_hwio(f'{source}.{level}.weight', weight[order], p['kernel'].shape)
      p['bias'] = bias[order]
      params[layer] = p
  unknown = sorted(k for k in arrays if k not in used and not re.search(r'num_batches_tracked$', k))
  if unknown:
    raise UserError(f"reference weights: unknown tensor '{unknown[0]}' (and {len(unknown) - 1} more): is this "
                    'resnet34-ssd1200 (PyTorch SSD_R34 names)?')
  return params, model_state
