"""What the detection variants share: the data (COCO-layout TFDS splits), the eval (post-processed detections,
pycocotools mAP), the inference hooks, the base config, and the pretrained backbone (a torchvision ImageNet
checkpoint loaded at init, the reference's frozen layers masked out of the update, a closed full run refused
without it). A variant supplies its model, anchors, loss, optimizer, logged hyperparameters and which torchvision
backbone its reference starts from.
"""

import abc
import contextlib
import io
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from input_pipelines import detection as pipeline
from input_pipelines import generated_detection, sources
from input_pipelines.image_ops import normalize_on_device
from models import box_ops, flops, torchvision_weights
from suite.common.errors import UserError
from suite.training import optimizers
from suite.workloads import base as workload_lib

# Columns of one detection in an inference response: normalised box (ymin, xmin, ymax, xmax), score, class.
DETECTION_FIELDS = 6


def base_config() -> ml_collections.ConfigDict:
  """The fields every detection variant has; a variant sets its model, anchors, optimizer and benchmark values."""
  c = ml_collections.ConfigDict()
  c.dataset = 'mlperf_openimages'
  c.train_split = 'train'
  c.eval_split = 'validation'
  c.num_classes = 264  # Object classes, background excluded.
  c.image_size = 800
  c.max_boxes = 100
  c.augment = 'flip'
  c.data_threads = 16
  c.data_workers = 0  # Input worker processes (grain mp_prefetch); 0: data_threads threads only. Same batches.
  c.skip_bad_records = False  # True: replace an undecodable train record by the next good one, and count it.
  # source_size / encoding: the stored images (generated_detection.GeneratedDetectionConfig); 0 / 'png': squares.
  c.generated = ml_collections.ConfigDict(dict(num_train=0, num_eval=0, image_size=0, source_size=0, encoding='png'))
  c.matching = ml_collections.ConfigDict(dict(positive_iou=0.5, negative_iou=0.4, allow_low_quality=True))
  c.loss = ml_collections.ConfigDict(dict(focal_alpha=0.25, focal_gamma=2.0, box_beta=0.0, negatives_ratio=3))
  c.box_weights = (1.0, 1.0, 1.0, 1.0)
  c.postprocess = ml_collections.ConfigDict(dict(score_threshold=0.05, pre_nms_top_k=1000, iou_threshold=0.5,
                                                 max_detections=300))
  c.eval_every_epochs = 1
  c.log_every_steps = 100
  # A torchvision ImageNet state dict of the backbone (.safetensors or .npz, BUILD.md); '' starts from random
  # weights, which only the open division allows for a full model.
  c.backbone_checkpoint = ''
  return c


class DetectionWorkload(workload_lib.Workload):
  """MLPerf object detection (`ssd`): everything but the model, its loss and its optimizer."""
  benchmark = 'ssd'
  metric_name = 'mAP'
  activation = 'sigmoid'  # Per-class scores: 'sigmoid' (RetinaNet) or 'softmax' with background at 0 (SSD).

  # The reference's backbone: torchvision's name of the ImageNet model it starts from, and the checkpoint tensors
  # its detector does not use (besides BN's num_batches_tracked).
  torchvision_backbone: str
  backbone_dropped: tuple[str, ...] = ('fc.',)

  def __init__(self, config, scale):
    super().__init__(config, scale)
    if config.backbone_checkpoint and not os.path.isfile(config.backbone_checkpoint):
      raise UserError(f'--config.backbone_checkpoint={config.backbone_checkpoint}: no such file')
    self.model = self.build_model()
    self.anchors = self.build_anchors()
    self._train_source = self._eval_source = None
    self._ground_truth = None
    self._backbone_sha256 = None

  @abc.abstractmethod
  def build_model(self):
    ...

  @abc.abstractmethod
  def build_anchors(self) -> np.ndarray:
    """The anchors (default boxes), normalised (ymin, xmin, ymax, xmax), in the order of the model's outputs."""

  @abc.abstractmethod
  def per_image_loss(self, anchors_Ax4, logits_AxC, deltas_Ax4, boxes_Mx4, classes_M, box_mask_M):
    """(class loss, box loss) of one image."""

  @classmethod
  @abc.abstractmethod
  def is_reference_backbone(cls, config) -> bool:
    """Whether the config's backbone is `torchvision_backbone` (full), not a small stand-in (tiny)."""

  @abc.abstractmethod
  def backbone_stage_sizes(self) -> tuple[int, ...]:
    """Blocks per stage of our backbone, torchvision's layer1, layer2, ..."""

  def trainable_backbone_layers(self) -> int:
    """torchvision's `trainable_backbone_layers` (5: every layer trains): what the reference trains."""
    return 5

  def frozen_bn(self) -> bool:
    """Whether the backbone's BN is FrozenBatchNorm2d, whose affine the reference never trains."""
    return False

  # --- the pretrained backbone ---
  @classmethod
  def closed_violations(cls, config):
    if cls.is_reference_backbone(config) and not config.backbone_checkpoint:
      return [(f"a backbone from random weights (the reference starts from torchvision's ImageNet "
               f'{cls.torchvision_backbone} weights: convert them once as BUILD.md shows and pass '
               '--config.backbone_checkpoint=PATH)')]
    return []

  def load_pretrained(self, params, model_state):
    path = self.config.backbone_checkpoint
    if not path:
      if self.is_reference_backbone(self.config):  # Only an open run gets here (the closed guard refuses it).
        logging.warning('the %s backbone starts from random weights, not from the ImageNet weights the reference '
                        'starts from (--config.backbone_checkpoint=PATH loads them)', self.torchvision_backbone)
      return params, model_state
    tensors, self._backbone_sha256 = torchvision_weights.read_state_dict(path)
    return torchvision_weights.place_backbone(tensors, path, params, model_state, self.backbone_stage_sizes(),
                                              self.backbone_dropped)

  def frozen_parameter(self, path: tuple[str, ...]) -> bool:
    return torchvision_weights.reference_frozen(path, self.backbone_stage_sizes(), self.trainable_backbone_layers(),
                                                self.frozen_bn())

  def without_frozen(self, tx):
    """`tx` with the reference's frozen parameters (frozen layers, FrozenBatchNorm2d affines) masked out."""
    if self.trainable_backbone_layers() == 5 and not self.frozen_bn():
      return tx
    return optimizers.freeze(tx, self.frozen_parameter)

  def init_log_events(self, params):
    """How the backbone starts: 'pretrained' (the checkpoint's path and SHA-256) or 'random' (open runs only)."""
    c = self.config
    return [('backbone_initialization', 'pretrained' if c.backbone_checkpoint else 'random',
             {'architecture': self.torchvision_backbone if self.is_reference_backbone(c) else None,
              'checkpoint': c.backbone_checkpoint, 'sha256': self._backbone_sha256,
              'trainable_backbone_layers': self.trainable_backbone_layers()})]

  # --- data ---
  def open_data(self, data_dir):
    c = self.config
    data_dir = sources.resolve_data_dir(data_dir)
    name = c.dataset
    if name == 'generated':
      g = c.generated
      name = generated_detection.ensure_generated_detection(
          data_dir, num_classes=c.num_classes, image_size=g.image_size, num_train=g.num_train,
          num_eval=g.num_eval, source_size=g.get('source_size', 0), encoding=g.get('encoding', 'png'))
    self._train_source = sources.open_split(name, c.train_split, data_dir, c.skip_bad_records)
    self._eval_source = sources.open_split(name, c.eval_split, data_dir, is_eval=True)

  def skipped_train_records(self):
    return self._train_source.bad_records if self._train_source is not None else []

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
                                  num_threads=c.data_threads, start_batch=start_step, num_workers=c.data_workers)

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
    # uint8 pixels (a quarter of float32's bytes host -> device); loss and detect normalise first thing.
    image = jax.ShapeDtypeStruct((b, s, s, 3), jnp.uint8)
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

  def model_flops_per_example(self):
    return flops.training_flops_per_example(self.model, self.batch_shapes(1, train=False)['image'], train=False)

  def loss(self, params, model_state, batch, rng):
    del rng
    (logits_BxAxC, deltas_BxAx4), new_model_state = self.model.apply(
        {'params': params, **model_state}, self.normalize(batch['image']), train=True, mutable=['batch_stats'])
    anchors_Ax4 = jnp.asarray(self.anchors)
    cls_loss, box_loss = jax.vmap(lambda *a: self.per_image_loss(anchors_Ax4, *a))(
        logits_BxAxC, deltas_BxAx4, batch['boxes'], batch['classes'], batch['box_mask'])
    cls_loss, box_loss = jnp.mean(cls_loss), jnp.mean(box_loss)
    return cls_loss + box_loss, (new_model_state, {'class_loss': cls_loss, 'box_loss': box_loss})

  def detect(self, params, model_state, images_BxHxWx3) -> dict:
    """Post-processed detections of a batch: boxes, scores, classes (dataset labels) and a validity mask."""
    logits_BxAxC, deltas_BxAx4 = self.model.apply({'params': params, **model_state},
                                                  self.normalize(images_BxHxWx3), train=False)
    p = self.config.postprocess
    detect_one = lambda logits, deltas: box_ops.postprocess_detections(  # noqa: E731
        logits, deltas, jnp.asarray(self.anchors), score_threshold=p.score_threshold, pre_nms_top_k=p.pre_nms_top_k,
        iou_threshold=p.iou_threshold, max_detections=p.max_detections, weights=tuple(self.config.box_weights),
        activation=self.activation)
    detections = jax.vmap(detect_one)(logits_BxAxC, deltas_BxAx4)
    if self.activation != 'sigmoid':  # Column 0 is background; the dataset's labels are other columns.
      detections['classes'] = self.column_labels(detections['classes'])
    return detections

  def normalize(self, images_BxHxWx3):
    """uint8 pixels -> the model's float input, first thing on the device (ImageNet mean and std by default)."""
    return normalize_on_device(images_BxHxWx3)

  def column_labels(self, columns):
    """Dataset labels of class-logit columns, for a model whose column 0 is the background: column - 1."""
    return columns - 1

  def eval_outputs(self, params, model_state, batch):
    detections = self.detect(params, model_state, batch['image'])
    return {**detections, 'image_id': batch['image_id'], 'image_hw': batch['image_hw'], 'mask': batch['mask']}

  def eval_metric(self, outputs):
    return coco_map(self.ground_truth(), coco_detections(outputs))

  def ground_truth(self) -> dict:
    if self._ground_truth is None:  # Built at the first eval: inside the clock, like any read of eval data.
      self._ground_truth = pipeline.coco_ground_truth(self._eval_source)
    return self._ground_truth

  # --- inference ---
  def predict(self, params, model_state, images):
    return self.detect(params, model_state, images)

  def encode_responses(self, host_outputs, n):
    responses = []
    for i in range(n):
      valid = np.asarray(host_outputs['valid'][i], bool)
      rows = np.concatenate([np.asarray(host_outputs['boxes'][i])[valid],
                             np.asarray(host_outputs['scores'][i])[valid][:, None],
                             np.asarray(host_outputs['classes'][i])[valid][:, None].astype(np.float32)], axis=1)
      responses.append(np.ascontiguousarray(rows, np.float32))
    return responses

  def decode_response(self, data):
    return np.frombuffer(data, np.float32).reshape(-1, DETECTION_FIELDS)

  def score_responses(self, responses, eval_samples):
    outputs = []
    for index, data in sorted(responses.items()):
      rows = self.decode_response(data)
      outputs.append({'boxes': rows[None, :, :4], 'scores': rows[None, :, 4], 'classes': rows[None, :, 5].astype(int),
                      'valid': np.ones((1, len(rows)), bool), 'mask': np.ones((1,)),
                      'image_id': np.array([eval_samples[index]['image_id']]),
                      'image_hw': np.asarray(eval_samples[index]['image_hw'])[None]})
    return coco_map(self.ground_truth(), coco_detections(outputs))


def warmup_then(schedule_after: optax.Schedule, o, steps_per_epoch: float) -> optax.Schedule:
  """Linear warm-up from `warmup_factor` x the base learning rate over `warmup_epochs`, then `schedule_after`."""
  warmup_steps = round(o.warmup_epochs * steps_per_epoch)
  warmup = optax.linear_schedule(o.learning_rate * o.warmup_factor, o.learning_rate, max(warmup_steps, 1))
  return optax.join_schedules([warmup, schedule_after], [warmup_steps])


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
