"""MLPerf object detection (`ssd`): RetinaNet on the OpenImages subset (ruleset 4.1.0), or the classic SSD300.

Variants: `retinanet` (default; ResNeXt50-32x4d FPN, focal + L1 box loss, Adam, 800x800, target 0.340 mAP) and
`ssd300` (ResNet-34, 300x300, softmax + hard negatives + smooth L1, SGD, COCO 2017, target 0.23 mAP, ruleset
1.1.0). `tiny` trains a small RetinaNet on a generated detection dataset in the coco/2017 layout. mAP is
pycocotools' COCOeval (IoU 0.50:0.95) over the whole eval split.
"""

import contextlib
import io

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from input_pipelines import detection as pipeline
from input_pipelines import generated_detection
from input_pipelines import image_classification
from models import box_ops, retinanet, ssd300
from suite import workload as workload_lib

VARIANTS = ('retinanet', 'ssd300')


def get_config(scale: str, variant: str = '') -> ml_collections.ConfigDict:
  variant = variant or 'retinanet'
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}')
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.dataset = 'mlperf_openimages'
  c.train_split = 'train'
  c.eval_split = 'validation'
  c.num_classes = 264  # Object classes, background excluded.
  c.image_size = 800
  c.max_boxes = 100
  c.augment = 'flip'
  c.data_threads = 16
  c.skip_bad_records = False  # True: replace an undecodable record by the next good one, and count it.
  c.generated = ml_collections.ConfigDict(dict(num_train=0, num_eval=0, image_size=0))
  c.model = ml_collections.ConfigDict(dict(
      stage_sizes=(3, 4, 6, 3), width=64, groups=32, width_per_group=4, fpn_channels=256, head_convs=4,
      min_level=3, max_level=7, num_anchors=9, dtype='bfloat16', frozen_bn=True))
  # torchvision's RetinaNet anchors: one size per level 3-7, 3 scales x 3 aspect ratios per location.
  c.anchors = ml_collections.ConfigDict(dict(sizes=(32.0, 64.0, 128.0, 256.0, 512.0),
                                             scales=(1.0, 2**(1 / 3), 2**(2 / 3)), aspect_ratios=(0.5, 1.0, 2.0)))
  c.matching = ml_collections.ConfigDict(dict(positive_iou=0.5, negative_iou=0.4, allow_low_quality=True))
  c.loss = ml_collections.ConfigDict(dict(focal_alpha=0.25, focal_gamma=2.0, box_beta=0.0, negatives_ratio=3))
  c.box_weights = (1.0, 1.0, 1.0, 1.0)
  c.postprocess = ml_collections.ConfigDict(dict(score_threshold=0.05, pre_nms_top_k=1000, iou_threshold=0.5,
                                                 max_detections=300))
  # The RCP for batch 256 (mlperf_logging rcp_checker training_4.1.0/rcps_ssd.json).
  c.global_batch_size = 256
  c.optimizer = ml_collections.ConfigDict(dict(name='adam', learning_rate=1e-4, warmup_epochs=1.0,
                                               warmup_factor=1e-3, weight_decay=0.0, momentum=0.9,
                                               decay_boundary_epochs=(0.0,), decay_factor=0.1))
  c.target = 0.340
  c.eval_every_epochs = 1
  c.max_epochs = 8
  c.log_every_steps = 100

  if variant == 'ssd300':
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
    c.optimizer.update(name='sgd', learning_rate=2.5e-3 * 256 / 32, warmup_epochs=2.6, warmup_factor=0.0,
                       weight_decay=5e-4, momentum=0.9, decay_boundary_epochs=(40.0, 50.0))
    c.target = 0.23
    c.max_epochs = 60
    c.eval_every_epochs = 5

  if scale == 'tiny':
    c.dataset = 'generated'
    c.num_classes = 4
    c.image_size = 64
    c.max_boxes = 8
    c.data_threads = 4
    c.generated = ml_collections.ConfigDict(dict(num_train=1024, num_eval=128, image_size=64))
    c.model = ml_collections.ConfigDict(dict(
        stage_sizes=(1, 1, 1), width=16, groups=4, width_per_group=4, fpn_channels=32, head_convs=1,
        min_level=3, max_level=5, num_anchors=9, dtype='float32', frozen_bn=False))
    c.anchors.sizes = (8.0, 16.0, 32.0)
    c.postprocess.update(pre_nms_top_k=200, max_detections=20)
    c.global_batch_size = 32
    c.optimizer.update(learning_rate=3e-3, warmup_epochs=0.5)
    c.target = 0.5
    c.max_epochs = 30
    c.log_every_steps = 8
    if variant == 'ssd300':
      raise ValueError('the tiny scale has no ssd300 variant: use --variant=retinanet')
  elif scale != 'full':
    raise ValueError(f'unknown scale {scale!r}')
  return c


class Workload(workload_lib.Workload):
  benchmark = 'ssd'
  metric_name = 'mAP'

  def __init__(self, config, scale):
    super().__init__(config, scale)
    self.ruleset = '1.1.0' if config.variant == 'ssd300' else '4.1.0'
    self.is_ssd300 = config.variant == 'ssd300'
    if self.is_ssd300:
      # Softmax over classes with background at index 0.
      self.model = ssd300.ssd300_from_config(config.model, config.num_classes + 1)
      self.anchors = box_ops.ssd300_default_boxes()
    else:
      self.model = retinanet.retinanet_from_config(config.model, config.num_classes)
      strides = [2**level for level in range(config.model.min_level, config.model.max_level + 1)]
      self.anchors = box_ops.generate_anchors(config.image_size, strides, config.anchors.sizes,
                                              config.anchors.aspect_ratios, config.anchors.scales)
    self._train_source = self._eval_source = None
    self._ground_truth = None

  # --- data ---
  def open_data(self, data_dir):
    c = self.config
    data_dir = image_classification.resolve_data_dir(data_dir)
    name = c.dataset
    if name == 'generated':
      g = c.generated
      name = generated_detection.ensure_generated_detection(
          data_dir, num_classes=c.num_classes, image_size=g.image_size, num_train=g.num_train,
          num_eval=g.num_eval)
    self._train_source = image_classification.open_split(name, c.train_split, data_dir, c.skip_bad_records)
    self._eval_source = image_classification.open_split(name, c.eval_split, data_dir, c.skip_bad_records)

  @property
  def num_train_examples(self):
    return len(self._train_source)

  @property
  def num_eval_examples(self):
    return len(self._eval_source)

  def train_batches(self, seed, process_index, process_count, start_step=0):
    c = self.config
    return pipeline.train_batches(self._train_source, global_batch_size=c.global_batch_size,
                                  image_size=c.image_size, max_boxes=c.max_boxes, seed=seed,
                                  process_index=process_index, process_count=process_count, augment=c.augment,
                                  num_threads=c.data_threads, start_batch=start_step)

  def eval_batches(self, process_index, process_count):
    c = self.config
    batches = pipeline.eval_batches(self._eval_source, global_batch_size=c.global_batch_size,
                                    image_size=c.image_size, max_boxes=c.max_boxes, process_index=process_index,
                                    process_count=process_count, num_threads=c.data_threads)
    # Image ids travel through the device with the detections; JAX runs without 64-bit integers.
    return ({**batch, 'image_id': batch['image_id'].astype(np.int32)} for batch in batches)

  def batch_shapes(self, global_batch_size, train):
    c = self.config
    b, s, m = global_batch_size, c.image_size, c.max_boxes
    image = jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32)
    if train:
      return {'image': image, 'boxes': jax.ShapeDtypeStruct((b, m, 4), jnp.float32),
              'classes': jax.ShapeDtypeStruct((b, m), jnp.int32), 'box_mask': jax.ShapeDtypeStruct((b, m), bool)}
    return {'image': image, 'image_id': jax.ShapeDtypeStruct((b,), jnp.int32),
            'image_hw': jax.ShapeDtypeStruct((b, 2), jnp.int32), 'mask': jax.ShapeDtypeStruct((b,), jnp.float32)}

  # --- model ---
  def init_variables(self, rng):
    s = self.config.image_size
    variables = self.model.init(rng, jnp.zeros((1, s, s, 3), jnp.float32), train=False)
    return variables['params'], {k: v for k, v in variables.items() if k != 'params'}

  def loss(self, params, model_state, batch, rng):
    del rng
    (logits_BxAxC, deltas_BxAx4), new_model_state = self.model.apply(
        {'params': params, **model_state}, batch['image'], train=True, mutable=['batch_stats'])
    per_image = ssd300_loss if self.is_ssd300 else retinanet_loss
    anchors_Ax4 = jnp.asarray(self.anchors)
    cls_loss, box_loss = jax.vmap(lambda *a: per_image(anchors_Ax4, self.config, *a))(
        logits_BxAxC, deltas_BxAx4, batch['boxes'], batch['classes'], batch['box_mask'])
    cls_loss, box_loss = jnp.mean(cls_loss), jnp.mean(box_loss)
    return cls_loss + box_loss, (new_model_state, {'class_loss': cls_loss, 'box_loss': box_loss})

  def eval_outputs(self, params, model_state, batch):
    logits_BxAxC, deltas_BxAx4 = self.model.apply({'params': params, **model_state}, batch['image'], train=False)
    p = self.config.postprocess
    detect = lambda logits, deltas: box_ops.postprocess_detections(  # noqa: E731
        logits, deltas, jnp.asarray(self.anchors), score_threshold=p.score_threshold, pre_nms_top_k=p.pre_nms_top_k,
        iou_threshold=p.iou_threshold, max_detections=p.max_detections, weights=tuple(self.config.box_weights),
        activation='softmax' if self.is_ssd300 else 'sigmoid')
    detections = jax.vmap(detect)(logits_BxAxC, deltas_BxAx4)
    if self.is_ssd300:  # Class 0 is background; dataset labels start at 1 in the model's output.
      detections['classes'] = detections['classes'] - 1
    return {**detections, 'image_id': batch['image_id'], 'image_hw': batch['image_hw'], 'mask': batch['mask']}

  def eval_metric(self, outputs):
    if self._ground_truth is None:  # Built at the first eval: inside the clock, like any read of eval data.
      self._ground_truth = pipeline.coco_ground_truth(self._eval_source)
    return coco_map(self._ground_truth, coco_detections(outputs))

  # --- optimisation ---
  def learning_rate_schedule(self, steps_per_epoch):
    o = self.config.optimizer
    warmup_steps = round(o.warmup_epochs * steps_per_epoch)
    if self.is_ssd300:
      boundaries = {round(e * steps_per_epoch): o.decay_factor for e in o.decay_boundary_epochs}
      decay = optax.piecewise_constant_schedule(o.learning_rate, {k - warmup_steps: v for k, v in boundaries.items()})
    else:
      decay = optax.constant_schedule(o.learning_rate)
    warmup = optax.linear_schedule(o.learning_rate * o.warmup_factor, o.learning_rate, max(warmup_steps, 1))
    return optax.join_schedules([warmup, decay], [warmup_steps])

  def optimizer(self, schedule):
    o = self.config.optimizer
    if o.name == 'adam':
      return optax.adamw(schedule, weight_decay=o.weight_decay) if o.weight_decay else optax.adam(schedule)
    if o.name == 'sgd':
      return optax.chain(optax.add_decayed_weights(o.weight_decay), optax.sgd(schedule, momentum=o.momentum))
    raise ValueError(f"config.optimizer.name must be 'adam' or 'sgd', not {o.name!r}")

  def init_log_events(self, params) -> list[tuple[str, object, dict]]:
    """SSD300's closed 1.1.0 rules want a `weights_initialization` event for every tensor of the reference model,
    named as the reference names it; RetinaNet's rules want none."""
    if not self.is_ssd300:
      return []
    return [('weights_initialization', None, {'tensor': name}) for name in ssd300_reference_tensor_names(params)]

  def hyperparameters(self, steps_per_epoch):
    o = self.config.optimizer
    hp = {'opt_name': o.name, 'opt_base_learning_rate': o.learning_rate, 'opt_weight_decay': o.weight_decay,
          'opt_learning_rate_warmup_factor': o.warmup_factor}
    if self.is_ssd300:
      hp.update({'model_bn_span': self.global_batch_size, 'max_samples': 1,
                 'opt_learning_rate_warmup_steps': round(o.warmup_epochs * steps_per_epoch),
                 'opt_learning_rate_decay_boundary_epochs': list(o.decay_boundary_epochs)})
    else:
      hp['opt_learning_rate_warmup_epochs'] = o.warmup_epochs
    return hp


def ssd300_reference_tensor_names(params) -> list[str]:
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


def retinanet_loss(anchors_Ax4, config, logits_AxC, deltas_Ax4, boxes_Mx4, classes_M, box_mask_M):
  """torchvision RetinaNet loss for one image: sigmoid focal loss over all non-ignored anchors plus an L1 (or
  smooth L1) box loss over the positives, each divided by max(1, number of positive anchors)."""
  m, l = config.matching, config.loss
  matched_A = box_ops.match_anchors(anchors_Ax4, boxes_Mx4, box_mask_M, positive_iou=m.positive_iou,
                                    negative_iou=m.negative_iou, allow_low_quality=m.allow_low_quality)
  positive_A = matched_A >= 0
  counted_A = matched_A != -2  # Anchors between the IoU thresholds count in neither loss.
  gt_index_A = jnp.maximum(matched_A, 0)
  targets_AxC = jax.nn.one_hot(classes_M[gt_index_A], config.num_classes) * positive_A[:, None]
  focal_AxC = box_ops.sigmoid_focal_loss(logits_AxC, targets_AxC, l.focal_alpha, l.focal_gamma)
  num_positive = jnp.maximum(jnp.sum(positive_A), 1)
  cls_loss = jnp.sum(focal_AxC * counted_A[:, None]) / num_positive
  target_deltas_Ax4 = box_ops.encode_boxes(boxes_Mx4[gt_index_A], anchors_Ax4, tuple(config.box_weights))
  box_Ax4 = box_ops.smooth_l1(deltas_Ax4 - target_deltas_Ax4, l.box_beta)
  box_loss = jnp.sum(box_Ax4 * positive_A[:, None]) / num_positive
  return cls_loss, box_loss


def ssd300_loss(anchors_Ax4, config, logits_AxC1, deltas_Ax4, boxes_Mx4, classes_M, box_mask_M):
  """MLPerf SSD loss for one image: softmax cross-entropy with 3:1 hard-negative mining plus smooth L1 over
  positives, divided by the number of positives."""
  m, l = config.matching, config.loss
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
  hard_negative_A = rank_A < l.negatives_ratio * num_positive
  cls_loss = jnp.sum(ce_A * (positive_A | hard_negative_A))
  target_deltas_Ax4 = box_ops.encode_boxes(boxes_Mx4[gt_index_A], anchors_Ax4, tuple(config.box_weights))
  box_loss = jnp.sum(box_ops.smooth_l1(deltas_Ax4 - target_deltas_Ax4, l.box_beta) * positive_A[:, None])
  normaliser = jnp.maximum(num_positive, 1)
  return cls_loss / normaliser, box_loss / normaliser


def coco_detections(outputs: list) -> list[dict]:
  """Host eval outputs -> COCO result records (absolute xywh boxes in the original image size)."""
  records = []
  for out in outputs:
    for b in np.flatnonzero(np.asarray(out['mask']) > 0):
      height, width = (float(v) for v in out['image_hw'][b])
      valid = np.asarray(out['valid'][b], bool)
      for (ymin, xmin, ymax, xmax), score, cls in zip(out['boxes'][b][valid], out['scores'][b][valid],
                                                      out['classes'][b][valid]):
        records.append({'image_id': int(out['image_id'][b]), 'category_id': int(cls), 'score': float(score),
                        'bbox': [float(xmin) * width, float(ymin) * height, float(xmax - xmin) * width,
                                 float(ymax - ymin) * height]})
  return records


def coco_map(ground_truth: dict, detections: list[dict]) -> float:
  """mAP@[0.50:0.95] by pycocotools' COCOeval (its printed tables are kept out of the run's output)."""
  from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
  from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel
  if not detections:
    return 0.0
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO()
    gt.dataset = ground_truth
    gt.createIndex()
    evaluator = COCOeval(gt, gt.loadRes(detections), iouType='bbox')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return float(evaluator.stats[0])
