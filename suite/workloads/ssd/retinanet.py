"""RetinaNet, the MLPerf Training 4.1.0 `ssd` benchmark (and MLPerf Inference `retinanet`).

ResNeXt50-32x4d FPN (P3-P7, 9 anchors per location), sigmoid focal loss + L1 box loss, Adam (LR 1e-4, no weight
decay, linear warm-up from factor 1e-3 over 1 epoch), 800x800 inputs, batch 256, on the MLPerf OpenImages subset;
eval every epoch, target 0.340 mAP. `tiny` is a small RetinaNet on generated shapes in the coco/2017 layout.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from models import box_ops, retinanet
from suite.workloads.ssd import common


def get_config(scale: str) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.model = ml_collections.ConfigDict(dict(
      stage_sizes=(3, 4, 6, 3), width=64, groups=32, width_per_group=4, fpn_channels=256, head_convs=4,
      min_level=3, max_level=7, num_anchors=9, dtype='bfloat16', frozen_bn=True, trainable_backbone_layers=3))
  # torchvision's RetinaNet anchors: one size per level 3-7, 3 scales x 3 aspect ratios per location.
  c.anchors = ml_collections.ConfigDict(dict(sizes=(32.0, 64.0, 128.0, 256.0, 512.0),
                                             scales=(1.0, 2**(1 / 3), 2**(2 / 3)), aspect_ratios=(0.5, 1.0, 2.0)))
  # The RCP for batch 256 (mlperf_logging rcp_checker training_4.1.0/rcps_ssd.json).
  c.global_batch_size = 256
  c.optimizer = ml_collections.ConfigDict(dict(name='adam', learning_rate=1e-4, warmup_epochs=1.0,
                                               warmup_factor=1e-3, weight_decay=0.0))
  c.target = 0.340
  c.max_epochs = 8

  if scale == 'tiny':
    c.dataset = 'generated'
    c.num_classes = 4
    c.image_size = 64
    c.max_boxes = 8
    c.data_threads = 4
    c.generated = ml_collections.ConfigDict(dict(num_train=1024, num_eval=128, image_size=64, source_size=0,
                                                 encoding='png'))
    c.model = ml_collections.ConfigDict(dict(
        stage_sizes=(1, 1, 1), width=16, groups=4, width_per_group=4, fpn_channels=32, head_convs=1,
        min_level=3, max_level=5, num_anchors=9, dtype='float32', frozen_bn=False, trainable_backbone_layers=3))
    c.anchors.sizes = (8.0, 16.0, 32.0)
    c.postprocess.update(pre_nms_top_k=200, max_detections=20)
    c.global_batch_size = 32
    c.optimizer.update(learning_rate=3e-3, warmup_epochs=0.5)
    c.target = 0.5
    c.max_epochs = 30
    c.log_every_steps = 8
  elif scale != 'full':
    raise ValueError(f'unknown scale {scale!r}')
  return c


class RetinaNetWorkload(common.DetectionWorkload):
  """RetinaNet ResNeXt50-32x4d FPN on the MLPerf OpenImages subset (ruleset 4.1.0)."""
  ruleset = '4.1.0'
  variant = 'retinanet'
  dataset_description = 'mlperf_openimages'
  # The 4.1.0 closed rules fix Adam with no weight decay; the batch size, base learning rate and warm-up are the
  # submitter's (the RCP table gives the reference values per batch size).
  closed_free_fields = ('global_batch_size', 'optimizer.learning_rate', 'optimizer.warmup_epochs',
                        'optimizer.warmup_factor', 'model.dtype', 'max_epochs', 'log_every_steps', 'data_threads',
                        'data_workers', 'backbone_checkpoint')
  torchvision_backbone = 'resnext50_32x4d'
  loadgen_model = 'retinanet'
  # mlcommons/inference vision/classification_and_detection/README.md: retinanet 800x800 FP32 0.3755 mAP.
  inference_reference_accuracy = 0.3755

  @classmethod
  def get_config(cls, scale):
    return get_config(scale)

  def build_model(self):
    return retinanet.retinanet_from_config(self.config.model, self.config.num_classes)

  @classmethod
  def is_reference_backbone(cls, config):
    m = config.model
    return (tuple(m.stage_sizes), m.width, m.groups, m.width_per_group) == ((3, 4, 6, 3), 64, 32, 4)

  def backbone_stage_sizes(self):
    return tuple(self.config.model.stage_sizes)

  def trainable_backbone_layers(self):
    # The reference (train.py --trainable-backbone-layers=3) freezes conv1 and layer1 of a pretrained backbone and
    # trains every layer of a random one (torchvision's _validate_trainable_layers).
    return self.config.model.trainable_backbone_layers if self.config.backbone_checkpoint else 5

  def frozen_bn(self):
    return self.config.model.frozen_bn

  def build_anchors(self):
    c = self.config
    strides = [2**level for level in range(c.model.min_level, c.model.max_level + 1)]
    return box_ops.generate_anchors(c.image_size, strides, c.anchors.sizes, c.anchors.aspect_ratios, c.anchors.scales)

  def per_image_loss(self, anchors_Ax4, logits_AxC, deltas_Ax4, boxes_Mx4, classes_M, box_mask_M):
    return retinanet_loss(anchors_Ax4, self.config, logits_AxC, deltas_Ax4, boxes_Mx4, classes_M, box_mask_M)

  def learning_rate_schedule(self, steps_per_epoch):
    o = self.config.optimizer
    return common.warmup_then(optax.constant_schedule(o.learning_rate), o, steps_per_epoch)

  def optimizer(self, schedule):
    o = self.config.optimizer
    if o.name != 'adam':
      raise ValueError(f"config.optimizer.name must be 'adam' for RetinaNet, not {o.name!r}")
    tx = optax.adamw(schedule, weight_decay=o.weight_decay) if o.weight_decay else optax.adam(schedule)
    return self.without_frozen(tx)

  def hyperparameters(self, steps_per_epoch):
    o = self.config.optimizer
    return {'opt_name': o.name, 'opt_base_learning_rate': o.learning_rate, 'opt_weight_decay': o.weight_decay,
            'opt_learning_rate_warmup_factor': o.warmup_factor, 'opt_learning_rate_warmup_epochs': o.warmup_epochs}


def retinanet_loss(anchors_Ax4, config, logits_AxC, deltas_Ax4, boxes_Mx4, classes_M, box_mask_M):
  """torchvision RetinaNet loss for one image: sigmoid focal loss over all non-ignored anchors plus an L1 (or
  smooth L1) box loss over the positives, each divided by max(1, number of positive anchors)."""
  m, loss_config = config.matching, config.loss
  matched_A = box_ops.match_anchors(anchors_Ax4, boxes_Mx4, box_mask_M, positive_iou=m.positive_iou,
                                    negative_iou=m.negative_iou, allow_low_quality=m.allow_low_quality)
  positive_A = matched_A >= 0
  counted_A = matched_A != -2  # Anchors between the IoU thresholds count in neither loss.
  gt_index_A = jnp.maximum(matched_A, 0)
  targets_AxC = jax.nn.one_hot(classes_M[gt_index_A], config.num_classes) * positive_A[:, None]
  focal_AxC = box_ops.sigmoid_focal_loss(logits_AxC, targets_AxC, loss_config.focal_alpha, loss_config.focal_gamma)
  num_positive = jnp.maximum(jnp.sum(positive_A), 1)
  cls_loss = jnp.sum(focal_AxC * counted_A[:, None]) / num_positive
  target_deltas_Ax4 = box_ops.encode_boxes(boxes_Mx4[gt_index_A], anchors_Ax4, tuple(config.box_weights))
  box_Ax4 = box_ops.smooth_l1(deltas_Ax4 - target_deltas_Ax4, loss_config.box_beta)
  box_loss = jnp.sum(box_Ax4 * positive_A[:, None]) / num_positive
  return cls_loss, box_loss
