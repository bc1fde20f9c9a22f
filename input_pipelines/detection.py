"""Object-detection input pipeline: grain over a TFDS dataset in the coco/2017 layout (COCO, OpenImages, generated)."""

import functools
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

# Shared with the classification pipeline: the same draft-mode crop-and-resize, the same global batch streams;
# images ship as uint8 and the workload normalises them on the device (image_ops.normalize_on_device).
from input_pipelines.image_ops import crop_resize
from input_pipelines.streams import global_eval_stream, global_train_stream
from suite.common.errors import UserError

AUGMENTATIONS = ('flip', 'ssd_crop')
# The MLPerf SSD reference's SSDCropping: keep the whole image (None), or a crop whose IoU with every box is above
# a minimum (-inf: any crop).
SSD_CROP_MIN_IOUS = (None, -np.inf, 0.1, 0.3, 0.5, 0.7, 0.9)
SSD_CROP_TRIES = 50
SSD_CROP_SIDE_RANGE = (0.3, 1.0)
SSD_CROP_ASPECT_RANGE = (0.5, 2.0)


# --- Reading one record ---


def record_objects(record: dict, *, drop_crowd: bool) -> tuple[np.ndarray, np.ndarray]:
  """(float32[N, 4] normalised ymin, xmin, ymax, xmax; int32[N] labels) of a record's objects.

  Without TensorFlow, tfds returns a Sequence as lists, empty for an image without objects, hence the reshape.
  """
  objects = record['objects']
  boxes_Nx4 = np.asarray(objects['bbox'], np.float32).reshape(-1, 4)
  labels_N = np.asarray(objects['label'], np.int32).reshape(-1)
  if drop_crowd:
    # As torchvision's detection references: a crowd box marks a region to ignore at eval, not an object to learn.
    keep_N = ~np.asarray(objects['is_crowd'], bool).reshape(-1)
    boxes_Nx4, labels_N = boxes_Nx4[keep_N], labels_N[keep_N]
  return boxes_Nx4, labels_N


def image_size_of(encoded: bytes) -> tuple[int, int]:
  """(height, width) from the image header only: PIL decodes no pixels until asked."""
  with Image.open(io.BytesIO(encoded)) as image:
    width, height = image.size
  return height, width


# --- Box augmentation (numpy; pure functions of their inputs) ---


def flip_boxes(boxes_Nx4: np.ndarray) -> np.ndarray:
  """Normalised yxyx boxes of the horizontally flipped image: x -> 1 - x, with xmin and xmax swapping roles."""
  ymin, xmin, ymax, xmax = np.moveaxis(boxes_Nx4, -1, 0)
  return np.stack([ymin, 1 - xmax, ymax, 1 - xmin], axis=-1)


def box_iou(boxes_Nx4: np.ndarray, crops_Tx4: np.ndarray) -> np.ndarray:
  """f[T, N]: IoU of each yxyx crop with each yxyx box."""
  top_left_TxNx2 = np.maximum(boxes_Nx4[None, :, :2], crops_Tx4[:, None, :2])
  bottom_right_TxNx2 = np.minimum(boxes_Nx4[None, :, 2:], crops_Tx4[:, None, 2:])
  intersection_TxN = np.prod(np.clip(bottom_right_TxNx2 - top_left_TxNx2, 0, None), axis=2)
  area_N = np.prod(boxes_Nx4[:, 2:] - boxes_Nx4[:, :2], axis=1)
  area_T = np.prod(crops_Tx4[:, 2:] - crops_Tx4[:, :2], axis=1)
  return intersection_TxN / (area_N[None, :] + area_T[:, None] - intersection_TxN)


def ssd_random_crop(rng: np.random.Generator, boxes_Nx4: np.ndarray,
                    labels_N: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The MLPerf SSD reference's SSDCropping: (crop yxyx normalised to the image, boxes renormalised to the crop,
  their labels).

  Draws a minimum IoU from SSD_CROP_MIN_IOUS (None keeps the whole image); then up to SSD_CROP_TRIES crops with
  sides in SSD_CROP_SIDE_RANGE of the image and aspect (w/h) in SSD_CROP_ASPECT_RANGE, accepting the first whose
  IoU with every box exceeds the minimum and that holds at least one box centre. Boxes whose centre lies inside
  are kept, clipped to the crop; if all tries fail, a new minimum IoU is drawn, as the reference does.
  """
  centre_Nx2 = (boxes_Nx4[:, :2] + boxes_Nx4[:, 2:]) / 2
  while True:
    min_iou = SSD_CROP_MIN_IOUS[int(rng.integers(len(SSD_CROP_MIN_IOUS)))]
    if min_iou is None:
      return np.array([0, 0, 1, 1], np.float32), boxes_Nx4, labels_N
    # All tries drawn at once (the reference loops in Python): the first acceptable one is the same distribution,
    # at a fraction of the cost when the minimum IoU rejects most crops.
    h_T, w_T, top_u_T, left_u_T = rng.uniform(size=(4, SSD_CROP_TRIES))
    h_T, w_T = (SSD_CROP_SIDE_RANGE[0] + (SSD_CROP_SIDE_RANGE[1] - SSD_CROP_SIDE_RANGE[0]) * u for u in (h_T, w_T))
    top_T, left_T = top_u_T * (1 - h_T), left_u_T * (1 - w_T)
    crops_Tx4 = np.stack([top_T, left_T, top_T + h_T, left_T + w_T], axis=1).astype(np.float32)
    inside_TxN = np.all((centre_Nx2[None] > crops_Tx4[:, None, :2]) & (centre_Nx2[None] < crops_Tx4[:, None, 2:]),
                        axis=2)
    ok_T = ((w_T / h_T >= SSD_CROP_ASPECT_RANGE[0]) & (w_T / h_T <= SSD_CROP_ASPECT_RANGE[1])
            & np.all(box_iou(boxes_Nx4, crops_Tx4) > min_iou, axis=1) & inside_TxN.any(axis=1))
    if not ok_T.any():
      continue
    t = int(np.argmax(ok_T))
    crop_4, inside_N = crops_Tx4[t], inside_TxN[t]
    low_4, high_4 = np.tile(crop_4[:2], 2), np.tile(crop_4[2:], 2)
    kept_Kx4 = np.clip(boxes_Nx4[inside_N], low_4, high_4)
    return crop_4, (kept_Kx4 - low_4) / (high_4 - low_4), labels_N[inside_N]


def pad_boxes(boxes_Nx4: np.ndarray, labels_N: np.ndarray, max_boxes: int) -> dict:
  """Fixed-shape targets: {'boxes': f32[M, 4], 'classes': i32[M], 'box_mask': bool[M]}, zeros past the objects.

  Objects past max_boxes are dropped (the first max_boxes in dataset order are kept): the model needs fixed shapes,
  and max_boxes is set above the largest count expected in the dataset, so this rarely loses a box.
  """
  n = min(len(labels_N), max_boxes)
  boxes_Mx4 = np.zeros((max_boxes, 4), np.float32)
  classes_M = np.zeros((max_boxes,), np.int32)
  boxes_Mx4[:n], classes_M[:n] = boxes_Nx4[:n], labels_N[:n]
  return {'boxes': boxes_Mx4, 'classes': classes_M, 'box_mask': np.arange(max_boxes) < n}


# --- Per-example preprocessing ---


def train_example(record: dict, rng: np.random.Generator, *, image_size: int, max_boxes: int,
                  augment: str) -> dict:
  """Decode, augment ('flip': random horizontal flip; 'ssd_crop': SSD random crop, then the flip), resize to a square
  image_size (no aspect preservation, as the MLPerf references), pad the boxes; the image stays uint8."""
  boxes_Nx4, labels_N = record_objects(record, drop_crowd=True)
  with Image.open(io.BytesIO(record['image'])) as image:  # Lazy: crop_resize decodes (in draft mode for JPEG).
    width, height = image.size
    crop_4 = np.array([0, 0, 1, 1], np.float32)
    if augment == 'ssd_crop':
      crop_4, boxes_Nx4, labels_N = ssd_random_crop(rng, boxes_Nx4, labels_N)
    top, left, bottom, right = (float(v) for v in crop_4)
    pixels_HxWx3 = crop_resize(image, (left * width, top * height, right * width, bottom * height), image_size)
  if rng.random() < 0.5:
    pixels_HxWx3, boxes_Nx4 = pixels_HxWx3[:, ::-1], flip_boxes(boxes_Nx4)
  return {'image': pixels_HxWx3, **pad_boxes(boxes_Nx4, labels_N, max_boxes)}


def eval_image(encoded: bytes, *, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
  """(the whole image resized to a square image_size, uint8, its original (height, width))."""
  with Image.open(io.BytesIO(encoded)) as image:
    width, height = image.size
    return crop_resize(image, (0, 0, width, height), image_size), (height, width)


def _eval_example(index: int, *, source, image_size: int) -> dict:
  """Position `index` of the padded eval pass: a real example (mask 1) or, past the end, padding (mask 0)."""
  if index >= len(source):
    return {'image': np.zeros((image_size, image_size, 3), np.uint8), 'image_id': np.int64(0),
            'image_hw': np.zeros((2,), np.int32), 'mask': np.float32(0.0)}
  record = source[index]
  pixels, hw = eval_image(record['image'], image_size=image_size)
  return {'image': pixels, 'image_id': np.int64(record['image/id']), 'image_hw': np.array(hw, np.int32),
          'mask': np.float32(1.0)}


# --- Batches ---


def train_batches(source, *, global_batch_size: int, image_size: int, max_boxes: int, seed: int,
                  process_index: int = 0, process_count: int = 1, augment: str = 'flip',
                  num_threads: int = 8, start_batch: int = 0, num_workers: int = 0) -> Iterator[dict]:
  """Endless augmented training batches for this process, B = global_batch_size // process_count:
  {'image': u8[B, S, S, 3], 'boxes': f32[B, M, 4] normalised yxyx, 'classes': i32[B, M] (0-based dataset labels),
  'box_mask': bool[B, M]}, from global batch `start_batch` on; the same seeded global stream as classification.
  """
  if augment not in AUGMENTATIONS:
    raise UserError(f'augment must be one of {AUGMENTATIONS}, not {augment!r}')
  preprocess = functools.partial(train_example, image_size=image_size, max_boxes=max_boxes, augment=augment)
  return global_train_stream(source, preprocess, global_batch_size=global_batch_size, seed=seed,
                             process_index=process_index, process_count=process_count, num_threads=num_threads,
                             start_batch=start_batch, num_workers=num_workers)


def eval_batches(source, *, global_batch_size: int, image_size: int, max_boxes: int, process_index: int = 0,
                 process_count: int = 1, num_threads: int = 8) -> Iterator[dict]:
  """One pass over the split in order: {'image': u8[B, S, S, 3], 'image_id': i64[B], 'image_hw': i32[B, 2]
  (original height, width), 'mask': f32[B]}; the last global batch is padded with mask-0 examples, and each real
  example lands on exactly one process.

  max_boxes is unused: eval boxes come from `coco_ground_truth`; it is accepted so train and eval share sizes.
  """
  del max_boxes
  return global_eval_stream(functools.partial(_eval_example, source=source, image_size=image_size), len(source),
                            global_batch_size=global_batch_size, process_index=process_index,
                            process_count=process_count, num_threads=num_threads)


# --- Ground truth for pycocotools ---


def coco_ground_truth(source) -> dict[str, Any]:
  """The split as a COCO ground-truth dict for pycocotools (`coco = COCO(); coco.dataset = gt; coco.createIndex()`):
  category_id is the 0-based dataset label, as the model predicts it; bboxes are absolute xywh in the original size.

  Annotation ids are renumbered 1..N: COCOeval records matches by annotation id and reads id 0 as "unmatched", and
  it needs them unique over the split, which datasets do not all promise.
  """
  images, annotations = [], []
  seen_labels = set()
  for index in range(len(source)):
    record = source[index]
    height, width = image_size_of(record['image'])
    image_id = int(record['image/id'])
    images.append({'id': image_id, 'height': height, 'width': width})
    objects = record['objects']
    boxes_Nx4 = np.asarray(objects['bbox'], np.float64).reshape(-1, 4)
    labels_N = np.asarray(objects['label'], np.int64).reshape(-1)
    areas_N = np.asarray(objects['area'], np.float64).reshape(-1)
    crowd_N = np.asarray(objects['is_crowd'], bool).reshape(-1)
    for (ymin, xmin, ymax, xmax), label, area, crowd in zip(boxes_Nx4, labels_N, areas_N, crowd_N):
      seen_labels.add(int(label))
      annotations.append({'id': len(annotations) + 1, 'image_id': image_id, 'category_id': int(label),
                          'bbox': [xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height],
                          'area': float(area), 'iscrowd': int(crowd)})
  return {'info': {}, 'licenses': [], 'images': images, 'annotations': annotations,
          'categories': _categories(source, seen_labels)}


def _categories(source, seen_labels: set[int]) -> list[dict]:
  """All the dataset's classes when its info says them (so a class never seen in the split still counts as
  absent, not unknown), else the labels seen."""
  try:
    label_feature = source.dataset_info.features['objects']['label']
    names = list(label_feature.names)
  except (AttributeError, KeyError, TypeError):  # A plain list or another source without TFDS info.
    return [{'id': label, 'name': str(label)} for label in sorted(seen_labels)]
  return [{'id': label, 'name': name} for label, name in enumerate(names)]
