"""The classic MLPerf SSD (ruleset 1.1.0): SSD300 with a ResNet-34 backbone on COCO 2017.

8,732 default boxes, softmax cross-entropy with 3:1 hard negatives + smooth L1, SGD with momentum, linear warm-up
and steps at epochs 40 and 50, SSD random crop; target 0.23 mAP. `full` scale only.
"""

import jax.numpy as jnp
import ml_collections
import optax

from models import box_ops, ssd300
from suite.workloads.ssd import common


def get_config(scale: str) -> ml_collections.ConfigDict:
  if scale == 'tiny':
    raise ValueError('the tiny scale has no ssd300 variant: use --variant=retinanet')
  if scale != 'full':
    raise ValueError(f'unknown scale {scale!r}')
  c = common.base_config()
  c.dataset = 'coco/2017'
  c.num_classes = 80
  c.image_size = 300
  c.augment = 'ssd_crop'
  c.model = ml_collections.ConfigDict(dict(width=64, dtype='bfloat16'))
  c.matching.update(positive_iou=0.5, negative_iou=0.5, allow_low_quality=True)
  c.loss.update(box_beta=1.0)
  c.box_weights = (10.0, 10.0, 5.0, 5.0)
  c.postprocess.update(score_threshold=0.05, pre_nms_top_k=1000, iou_threshold=0.5, max_detections=200)
  c.global_batch_size = 256
  c.optimizer = ml_collections.ConfigDict(dict(
      name='sgd', learning_rate=2.5e-3 * 256 / 32, warmup_epochs=2.6, warmup_factor=0.0, weight_decay=5e-4,
      momentum=0.9, decay_boundary_epochs=(40.0, 50.0), decay_factor=0.1))
  c.target = 0.23
  c.max_epochs = 60
  c.eval_every_epochs = 5
  return c


class SSD300Workload(common.DetectionWorkload):
  """SSD300 ResNet-34 on COCO 2017 (ruleset 1.1.0). Not an MLPerf Inference model: that one is SSD-ResNet34 at
  1200x1200, so this variant has no LoadGen path."""
  ruleset = '1.1.0'
  variant = 'ssd300'
  dataset_description = 'coco/2017'
  activation = 'softmax'
  closed_free_fields = ('global_batch_size', 'optimizer.learning_rate', 'optimizer.warmup_epochs',
                        'optimizer.decay_boundary_epochs', 'optimizer.momentum', 'optimizer.weight_decay',
                        'model.dtype', 'max_epochs', 'log_every_steps', 'data_threads', 'data_workers',
                        'backbone_checkpoint')
  # The reference (ssd/base_model.py ResNet34) loads all of torchvision's resnet34 and keeps conv1..layer3; it
  # trains every tensor, with ordinary BatchNorm2d (no frozen layers).
  torchvision_backbone = 'resnet34'
  backbone_dropped = ('layer4.', 'fc.')

  @classmethod
  def get_config(cls, scale):
    return get_config(scale)

  def build_model(self):
    # Softmax over classes with background at index 0.
    return ssd300.ssd300_from_config(self.config.model, self.config.num_classes + 1)

  @classmethod
  def is_reference_backbone(cls, config):
    return config.model.width == 64

  def backbone_stage_sizes(self):
    return tuple(ssd300.ResNetBackbone.stage_sizes)

  def build_anchors(self):
    return box_ops.ssd300_default_boxes()

  def per_image_loss(self, anchors_Ax4, logits_AxC, deltas_Ax4, boxes_Mx4, classes_M, box_mask_M):
    return ssd300_loss(anchors_Ax4, self.config, logits_AxC, deltas_Ax4, boxes_Mx4, classes_M, box_mask_M)

  def learning_rate_schedule(self, steps_per_epoch):
    o = self.config.optimizer
    warmup_steps = round(o.warmup_epochs * steps_per_epoch)
    boundaries = {round(e * steps_per_epoch) - warmup_steps: o.decay_factor for e in o.decay_boundary_epochs}
    return common.warmup_then(optax.piecewise_constant_schedule(o.learning_rate, boundaries), o, steps_per_epoch)

  def optimizer(self, schedule):
    o = self.config.optimizer
    if o.name != 'sgd':
      raise ValueError(f"config.optimizer.name must be 'sgd' for SSD300, not {o.name!r}")
    return optax.chain(optax.add_decayed_weights(o.weight_decay), optax.sgd(schedule, momentum=o.momentum))

  def init_log_events(self, params):
    """The closed 1.1.0 rules want a `weights_initialization` event for every tensor of the reference model,
    named as the reference names it."""
    return super().init_log_events(params) + [('weights_initialization', None, {'tensor': name})
                                              for name in reference_tensor_names(params)]

  def hyperparameters(self, steps_per_epoch):
    o = self.config.optimizer
    return {'opt_name': o.name, 'opt_base_learning_rate': o.learning_rate, 'opt_weight_decay': o.weight_decay,
            'opt_learning_rate_warmup_factor': o.warmup_factor, 'model_bn_span': self.global_batch_size,
            'max_samples': 1, 'opt_learning_rate_warmup_steps': round(o.warmup_epochs * steps_per_epoch),
            'opt_learning_rate_decay_boundary_epochs': list(o.decay_boundary_epochs)}


def reference_tensor_names(params) -> list[str]:
  """Our SSD300 parameters under the MLPerf reference's tensor names (ruleset 1.1.0), one name per tensor: the
  ResNet-34 stages (a block's projection conv follows its two body convs), the extra blocks and the per-level
  predictors (the reference's one predictor conv per level is our class head + box head)."""
  backbone = params['backbone']
  names = ['ssd0_resnetmlperf0_conv0_weight', 'ssd0_resnetmlperf0_batchnorm0_gamma',
           'ssd0_resnetmlperf0_batchnorm0_beta']
  block_names = sorted((k for k in backbone if k.startswith('BasicBlock_')), key=lambda k: int(k.split('_')[1]))
  stage_of = {}
  block = 0
  for stage, size in enumerate(ssd300.ResNetBackbone.stage_sizes, start=1):
    for _ in range(size):
      stage_of[block_names[block]] = stage
      block += 1
  counters = {}
  for name in block_names:
    stage = stage_of[name]
    convs = ['Conv_0', 'Conv_1'] + (['proj_conv'] if 'proj_conv' in backbone[name] else [])
    for _ in convs:
      i = counters.get(stage, 0)
      counters[stage] = i + 1
      prefix = f'ssd0_resnetmlperf0_stage{stage}'
      names += [f'{prefix}_conv{i}_weight', f'{prefix}_batchnorm{i}_gamma', f'{prefix}_batchnorm{i}_beta']
  extras = sorted({k.split('_')[1] for k in params if k.startswith('extra_')}, key=int)
  for i in extras:
    names += [f'ssd0_expand_trans_conv{i}_weight', f'ssd0_expand_trans_conv{i}_bias',
              f'ssd0_expand_conv{i}_weight', f'ssd0_expand_conv{i}_bias']
  levels = sorted({k.rsplit('_', 1)[1] for k in params if k.startswith('class_head_')}, key=int)
  for i in levels:
    names += [f'ssd0_convpredictor{i}_conv0_weight', f'ssd0_convpredictor{i}_conv0_bias']
  return names


def ssd300_loss(anchors_Ax4, config, logits_AxC1, deltas_Ax4, boxes_Mx4, classes_M, box_mask_M):
  """MLPerf SSD loss for one image: softmax cross-entropy with 3:1 hard-negative mining plus smooth L1 over
  positives, divided by the number of positives."""
  m, loss_config = config.matching, config.loss
  matched_A = box_ops.match_anchors(anchors_Ax4, boxes_Mx4, box_mask_M, positive_iou=m.positive_iou,
                                    negative_iou=m.negative_iou, allow_low_quality=m.allow_low_quality)
  positive_A = matched_A >= 0
  gt_index_A = jnp.maximum(matched_A, 0)
  labels_A = jnp.where(positive_A, classes_M[gt_index_A] + 1, 0)
  ce_A = optax.softmax_cross_entropy_with_integer_labels(logits_AxC1, labels_A)
  num_positive = jnp.sum(positive_A)
  # Hard negatives: the negatives with the largest loss, `negatives_ratio` times as many as the positives.
  negative_ce_A = jnp.where(positive_A, -jnp.inf, ce_A)
  rank_A = jnp.argsort(jnp.argsort(-negative_ce_A))
  hard_negative_A = rank_A < loss_config.negatives_ratio * num_positive
  cls_loss = jnp.sum(ce_A * (positive_A | hard_negative_A))
  target_deltas_Ax4 = box_ops.encode_boxes(boxes_Mx4[gt_index_A], anchors_Ax4, tuple(config.box_weights))
  box_loss = jnp.sum(box_ops.smooth_l1(deltas_Ax4 - target_deltas_Ax4, loss_config.box_beta) * positive_A[:, None])
  normaliser = jnp.maximum(num_positive, 1)
  return cls_loss / normaliser, box_loss / normaliser
