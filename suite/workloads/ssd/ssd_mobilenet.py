"""SSD-MobileNet-v1 (300x300, COCO): the MLPerf Inference `ssd-mobilenet` model, as an `ssd` variant.

The reference is ssd_mobilenet_v1_coco_2018_01_28 of the TF Object Detection API as mlcommons/inference
vision/classification_and_detection serves it (README: FP32 mAP 0.23 on COCO resized to 300x300; the submission
checker's target 22 * 0.99). Its model: models/ssd_mobilenet.py; its anchors: the TF SSD anchor generator (1,917
at 300x300); its boxes: the Faster R-CNN box coder with scales 10, 10, 5, 5; its scores: a sigmoid of 91 columns,
background at column 0 and COCO category ids 1..90 (with their gaps) the others; its inputs: (pixel - 127.5) /
127.5. The `full` training recipe is the TF config's (ssd_mobilenet_v1_coco.config): batch 24, RMSProp (lr 0.004,
decay 0.9, momentum 0.9, epsilon 1.0), L2 4e-5 on the conv weights, SSD random crop and flip, weighted sigmoid
class loss with 3:1 hard negatives and smooth L1 on the boxes, 200k steps. MLPerf measures given weights, so
the weights to serve are the reference's, converted by `reference_weights` (BUILD.md). `tiny` is a narrow model on
the generated shapes. Not an MLPerf Training benchmark: runs are open.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from models import box_ops, mobilenet, ssd_mobilenet
from suite.common.errors import UserError
from suite.workloads.ssd import common

# The 80 COCO category ids, in the order of the coco/2017 TFDS labels (sorted ids): the reference model's class
# columns (column = category id; 12, 26, 29, 30, 45, 66, 68, 69, 71 and 83 are unused).
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
COCO_COLUMNS = 91


def get_config(scale: str) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.dataset = 'coco/2017'
  c.num_classes = 80
  c.image_size = 300
  c.augment = 'ssd_crop'
  c.model = ml_collections.ConfigDict(dict(width_multiplier=1.0, dtype='float32', bn_momentum=mobilenet.BN_MOMENTUM))
  # True: the class columns are COCO category ids (91 with the background), as the reference's; False: one column
  # a label after the background (num_classes + 1).
  c.coco_category_columns = True
  # ssd_mobilenet_v1_coco.config: argmax matcher at 0.5 / 0.5 with every box's best anchor forced to match.
  c.matching.update(positive_iou=0.5, negative_iou=0.5, allow_low_quality=True)
  c.loss.update(box_beta=1.0, negatives_ratio=3)
  c.box_weights = (10.0, 10.0, 5.0, 5.0)
  # The TF graph's batch_non_max_suppression: score threshold 1e-8, IoU 0.6, at most 100 detections; the top-1000
  # candidates over all classes stand in for its 100 a class (static shapes).
  c.postprocess.update(score_threshold=1e-8, pre_nms_top_k=1000, iou_threshold=0.6, max_detections=100)
  c.global_batch_size = 24
  c.optimizer = ml_collections.ConfigDict(dict(name='rmsprop', learning_rate=0.004, decay=0.9, momentum=0.9,
                                               epsilon=1.0, weight_decay=4e-5, warmup_epochs=0.0))
  c.target = 0.22
  c.max_epochs = 41  # 200,000 steps of 24 images over 117,266 train images.
  c.eval_every_epochs = 5

  if scale == 'tiny':
    c.dataset = 'generated'
    c.num_classes = 4
    c.image_size = 128  # Maps 8, 4, 2, 1, 1, 1 (330 anchors); at 64 or 96 the coarse grids barely localise.
    c.max_boxes = 8
    c.augment = 'flip'
    c.data_threads = 4
    c.generated = ml_collections.ConfigDict(dict(num_train=1024, num_eval=128, image_size=64))
    # A batch-norm momentum of 0.9 lets the moving statistics follow a few hundred steps (slim's 0.9997 would not).
    c.model.update(width_multiplier=0.25, bn_momentum=0.9)
    c.coco_category_columns = False
    c.postprocess.update(score_threshold=0.05, pre_nms_top_k=200, max_detections=20)
    c.global_batch_size = 32
    c.optimizer = ml_collections.ConfigDict(dict(name='adam', learning_rate=3e-3, weight_decay=0.0,
                                                 warmup_epochs=0.5))
    c.target = 0.1  # About 0.1 mAP after 6 epochs (0.097 measured), still rising.
    c.max_epochs = 12
    c.eval_every_epochs = 1
    c.log_every_steps = 8
  elif scale != 'full':
    raise ValueError(f'unknown scale {scale!r}')
  return c


class SSDMobileNetWorkload(common.DetectionWorkload):
  """SSD-MobileNet-v1 on COCO 2017 (MLPerf Inference ssd-mobilenet)."""
  ruleset = '1.1.0'  # The checker has no rules for this model: runs are open (has_closed_rules).
  has_closed_rules = False
  variant = 'ssd_mobilenet'
  dataset_description = 'coco/2017'
  activation = 'sigmoid_background'
  torchvision_backbone = 'mobilenet_v1'  # No torchvision checkpoint: the reference's own weights load whole.
  loadgen_model = 'ssd-mobilenet'
  # mlcommons/inference tools/submission/submission-checker.py at 0a4a8c0f, MODEL_CONFIG accuracy-target:
  # "ssd-small": ("mAP", 22 * 0.99) (ssd-mobilenet maps to ssd-small), the FP32 reference 0.22 mAP at 99%.
  inference_reference_accuracy = 0.22
  inference_closed_fraction = 0.99

  @classmethod
  def get_config(cls, scale):
    return get_config(scale)

  @property
  def num_columns(self) -> int:
    return COCO_COLUMNS if self.config.coco_category_columns else self.config.num_classes + 1

  def label_columns(self) -> np.ndarray:
    """int32[num_classes]: the class column of each dataset label."""
    if self.config.coco_category_columns:
      if self.config.num_classes != len(COCO_CATEGORY_IDS):
        raise UserError(f'--config.num_classes={self.config.num_classes}: COCO category columns need the 80 COCO '
                        'labels (or --config.coco_category_columns=False)')
      return np.array(COCO_CATEGORY_IDS, np.int32)
    return np.arange(1, self.config.num_classes + 1, dtype=np.int32)

  def column_labels(self, columns):
    table = np.full(self.num_columns, -1, np.int32)  # Unused category ids: no dataset label, never scored.
    table[self.label_columns()] = np.arange(self.config.num_classes)
    return jnp.asarray(table)[columns]

  def build_model(self):
    return ssd_mobilenet.ssd_mobilenet_from_config(self.config.model, self.num_columns)

  def build_anchors(self):
    return box_ops.tf_ssd_anchors(ssd_mobilenet.feature_sizes(self.config.image_size))

  def normalize(self, images_BxHxWx3):
    """The reference's inputs: (pixel - 127.5) / 127.5, in [-1, 1]."""
    if jnp.issubdtype(images_BxHxWx3.dtype, jnp.floating):
      return images_BxHxWx3
    return (images_BxHxWx3.astype(jnp.float32) - 127.5) / 127.5

  @classmethod
  def is_reference_backbone(cls, config):
    return False  # No torchvision ImageNet backbone to start from: the closed guard does not apply.

  def backbone_stage_sizes(self):
    return ()

  def per_image_loss(self, anchors_Ax4, logits_AxC, deltas_Ax4, boxes_Mx4, classes_M, box_mask_M):
    columns_M = jnp.asarray(self.label_columns())[classes_M]
    return sigmoid_ssd_loss(anchors_Ax4, self.config, logits_AxC, deltas_Ax4, boxes_Mx4, columns_M, box_mask_M)

  def learning_rate_schedule(self, steps_per_epoch):
    o = self.config.optimizer
    constant = optax.constant_schedule(o.learning_rate)
    if not o.warmup_epochs:
      return constant
    # A linear ramp from 0 over the warm-up (tiny's Adam), then constant.
    return common.warmup_then(constant, ml_collections.ConfigDict({**o.to_dict(), 'warmup_factor': 0.0}),
                              steps_per_epoch)

  def optimizer(self, schedule):
    o = self.config.optimizer
    if o.name == 'rmsprop':
      # TF's RMSPropOptimizer: mean square starts at 1, epsilon inside the square root, momentum on the update.
      tx = optax.rmsprop(schedule, decay=o.decay, eps=o.epsilon, initial_scale=1.0, eps_in_sqrt=True,
                         momentum=o.momentum)
    elif o.name == 'adam':
      tx = optax.adam(schedule)
    else:
      raise ValueError(f"config.optimizer.name must be 'rmsprop' or 'adam' for SSD-MobileNet, not {o.name!r}")
    if o.weight_decay:  # slim's l2_regularizer on the conv weights (not biases or batch norm).
      kernels = lambda params: traverse_util.path_aware_map(lambda path, _: path[-1] == 'kernel', params)  # noqa: E731
      tx = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=kernels), tx)
    return tx

  def hyperparameters(self, steps_per_epoch):
    o = self.config.optimizer
    return {'opt_name': o.name, 'opt_base_learning_rate': o.learning_rate, 'opt_weight_decay': o.weight_decay}

  # --- the reference's weights ---
  def reference_weights(self, arrays):
    return mobilenet_reference_weights(self, arrays)


def sigmoid_ssd_loss(anchors_Ax4, config, logits_AxC, deltas_Ax4, boxes_Mx4, columns_M, box_mask_M):
  """The TF SSD loss of one image (ssd_mobilenet_v1_coco.config): a sigmoid cross-entropy summed over every column
  (the background column is the target of unmatched anchors), on the positives and the hardest negatives (3 a
  positive, by their class loss), plus smooth L1 on the positives' box codes; both divided by the number of
  positives (normalize_loss_by_num_matches)."""
  m, loss_config = config.matching, config.loss
  matched_A = box_ops.match_anchors(anchors_Ax4, boxes_Mx4, box_mask_M, positive_iou=m.positive_iou,
                                    negative_iou=m.negative_iou, allow_low_quality=m.allow_low_quality)
  positive_A = matched_A >= 0
  gt_index_A = jnp.maximum(matched_A, 0)
  targets_AxC = jax.nn.one_hot(jnp.where(positive_A, columns_M[gt_index_A], 0), logits_AxC.shape[-1])
  bce_A = jnp.sum(jax.nn.softplus(logits_AxC) - logits_AxC * targets_AxC, axis=-1)
  num_positive = jnp.sum(positive_A)
  negative_A = matched_A == box_ops.BACKGROUND
  rank_A = jnp.argsort(jnp.argsort(-jnp.where(negative_A, bce_A, -jnp.inf)))
  hard_negative_A = negative_A & (rank_A < loss_config.negatives_ratio * num_positive)
  cls_loss = jnp.sum(bce_A * (positive_A | hard_negative_A))
  target_deltas_Ax4 = box_ops.encode_boxes(boxes_Mx4[gt_index_A], anchors_Ax4, tuple(config.box_weights))
  box_loss = jnp.sum(box_ops.smooth_l1(deltas_Ax4 - target_deltas_Ax4, loss_config.box_beta) * positive_A[:, None])
  normaliser = jnp.maximum(num_positive, 1)
  return cls_loss / normaliser, box_loss / normaliser


# --- the reference's weights (ssd_mobilenet_v1_coco_2018_01_28.onnx) ---


def _to_hwio(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """A conv kernel in ONNX's OIHW (or TF's HWIO; TF's depthwise [H, W, C, 1]) as Flax's HWIO ([H, W, 1, C] for a
  depthwise conv)."""
  if value.shape == shape:
    return value
  if value.ndim == 4 and value.transpose(2, 3, 1, 0).shape == shape:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 4 and value.transpose(0, 1, 3, 2).shape == shape:  # TF depthwise [H, W, C, 1].
    return value.transpose(0, 1, 3, 2)
  raise UserError(f"reference weight '{name}' has shape {value.shape}, the model needs {shape} (HWIO) or its OIHW")


def _find(arrays: dict[str, np.ndarray], what: str, part: str, kind: str) -> tuple[str, np.ndarray]:
  """The one array whose name contains `part` and is a kernel ('weights'), a folded batch-norm scale ('mul') or a
  bias (neither), as the reference's converter tells them apart (convert_tf_weights.py)."""
  hits = []
  for name, value in arrays.items():
    if part not in name:
      continue
    is_kernel = 'weights' in name
    is_scale = not is_kernel and re.search(r'/mul(_\d+)?(:\d+)?$', name) is not None
    if kind == ('kernel' if is_kernel else 'scale' if is_scale else 'bias'):
      hits.append((name, value))
  if len(hits) != 1:
    found = ', '.join(name for name, _ in hits) or 'none'
    raise UserError(f"reference weights: need one {kind} of {what} (a name with '{part}'), found {found}")
  name, value = hits[0]
  return name, np.asarray(value, np.float32)


def mobilenet_reference_weights(workload, arrays: dict[str, np.ndarray]):
  """(params, model_state) of SSD-MobileNet-v1 from the reference's weight arrays, named as the TF frozen graph's
  constants (which tf2onnx keeps as the ONNX initializer names, a ':0' suffix allowed): the backbone's
  `FeatureExtractor/MobilenetV1/Conv2d_<i>_{depthwise,pointwise}/...weights`, the folded batch norms'
  `.../MobilenetV1/MobilenetV1/Conv2d_<i>_.../BatchNorm/batchnorm/{mul,sub}` (a depthwise conv keeps a scale and a
  bias, the others a bias), the extra blocks' `Conv2d_13_pointwise_{1,2}_Conv2d_<i>_...` and the heads'
  `BoxPredictor_<l>/{BoxEncodingPredictor,ClassPredictor}/{weights,biases}` (the reference's own converter,
  mlcommons/inference vision/classification_and_detection/python/models/convert_tf_weights.py at 0cde9777, reads
  them so). Kernels may be OIHW (ONNX) or HWIO (TF). Folded batch norms load as scale (1 unless given), bias,
  mean 0, variance 1 - epsilon."""
  arrays = {re.sub(r':\d+$', '', k): v for k, v in arrays.items()}
  params, model_state = nn.unbox(workload.init_variables(jax.random.PRNGKey(0)))
  params = jax.tree.map(np.asarray, params)
  stats = jax.tree.map(np.asarray, model_state['batch_stats'])

  def conv_bn(p, s, what, part, depthwise=False):
    _, kernel = _find(arrays, what, part, 'kernel')
    p['conv']['kernel'] = _to_hwio(part, kernel, p['conv']['kernel'].shape)
    channels = p['BatchNorm']['bias'].shape
    scale = _find(arrays, what, part, 'scale')[1] if depthwise else np.ones(channels, np.float32)
    _, bias = _find(arrays, what, part, 'bias')
    for value, name in ((scale, 'scale'), (bias, 'bias')):
      if value.shape != channels:
        raise UserError(f"reference weights: the {name} of {what} has shape {value.shape}, the model needs {channels}")
    p['BatchNorm'].update(scale=scale, bias=bias)
    s['BatchNorm'].update(mean=np.zeros(channels, np.float32),
                          var=np.full(channels, 1.0 - mobilenet.BN_EPSILON, np.float32))

  body, body_stats = params['MobilenetV1'], stats['MobilenetV1']
  # A layer's kernel is FeatureExtractor/MobilenetV1/<layer>/...weights, its folded batch norm's constants are
  # under .../MobilenetV1/MobilenetV1/<layer>/: '/<layer>/' finds both (the slashes keep Conv2d_1 from matching
  # Conv2d_11 and Conv2d_13_pointwise from matching the extra blocks).
  conv_bn(body['Conv2d_0'], body_stats['Conv2d_0'], 'Conv2d_0', '/Conv2d_0/')
  for i in range(1, len(mobilenet.SEPARABLE_BLOCKS) + 1):
    for kind in ('depthwise', 'pointwise'):
      layer = f'Conv2d_{i}_{kind}'
      conv_bn(body[layer], body_stats[layer], layer, f'/{layer}/', kind == 'depthwise')
  for i in range(2, 2 + len(ssd_mobilenet.EXTRA_DEPTHS)):
    for layer, tf_layer in ((f'extra_{i}_1x1', f'/Conv2d_13_pointwise_1_Conv2d_{i}_1x1_'),
                            (f'extra_{i}_3x3_s2', f'/Conv2d_13_pointwise_2_Conv2d_{i}_3x3_s2_')):
      conv_bn(params[layer], stats[layer], tf_layer, tf_layer)
  for level in range(len(ssd_mobilenet.NUM_ANCHORS)):
    for head, tf_head in ((f'box_head_{level}', 'BoxEncodingPredictor'), (f'class_head_{level}', 'ClassPredictor')):
      part = f'BoxPredictor_{level}/{tf_head}/'
      _, kernel = _find(arrays, part, part, 'kernel')
      params[head]['kernel'] = _to_hwio(part, kernel, params[head]['kernel'].shape)
      _, bias = _find(arrays, part, part, 'bias')
      if bias.shape != params[head]['bias'].shape:
        raise UserError(f"reference weights: {part} bias has shape {bias.shape}, the model needs "
                        f"{params[head]['bias'].shape} (is --config.coco_category_columns right for these weights?)")
      params[head]['bias'] = bias
  return params, {**model_state, 'batch_stats': stats}
