"""Image-classification input pipeline: grain over any TFDS image/label ArrayRecord dataset, ImageNet-style."""

import functools
import io
import itertools
import math
from collections.abc import Iterator

import numpy as np
from PIL import Image

from input_pipelines.image_ops import crop_resize, normalize
from input_pipelines.streams import global_eval_stream, global_train_stream, local_batch_size

CROP_RATIO_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
EVAL_CROP_FRACTION = 0.875  # Resize the shorter side to image_size / 0.875, then centre crop image_size.


# --- Per-image preprocessing (numpy/PIL; pure functions of their inputs) ---


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int, *, min_scale: float,
                            ratio_range: tuple[float, float] = CROP_RATIO_RANGE) -> tuple[float, float, float, float]:
  """(left, top, right, bottom) of an Inception-style random crop: area fraction in [min_scale, 1], aspect ratio
  log-uniform in ratio_range; after CROP_ATTEMPTS misses, the largest centred crop within ratio_range."""
  area = width * height
  log_ratio = (math.log(ratio_range[0]), math.log(ratio_range[1]))
  for _ in range(CROP_ATTEMPTS):
    target_area = area * rng.uniform(min_scale, 1.0)
    ratio = math.exp(rng.uniform(*log_ratio))
    w = round(math.sqrt(target_area * ratio))
    h = round(math.sqrt(target_area / ratio))
    if 0 < w <= width and 0 < h <= height:
      left = int(rng.integers(0, width - w + 1))
      top = int(rng.integers(0, height - h + 1))
      return left, top, left + w, top + h
  ratio = width / height
  if ratio < ratio_range[0]:
    w, h = width, round(width / ratio_range[0])
  elif ratio > ratio_range[1]:
    w, h = round(height * ratio_range[1]), height
  else:
    w, h = width, height
  return centred_box(width, height, w, h)


def centred_box(width: int, height: int, crop_w: float, crop_h: float) -> tuple[float, float, float, float]:
  left, top = (width - crop_w) / 2, (height - crop_h) / 2
  return left, top, left + crop_w, top + crop_h


def eval_crop_box(width: int, height: int, image_size: int) -> tuple[float, float, float, float]:
  """The centred square that, resized to image_size, equals 'resize shorter side to image_size/0.875, then
  centre crop'; images whose shorter side is already <= image_size keep their whole centred square."""
  short = min(width, height)
  side = short if short <= image_size else short * EVAL_CROP_FRACTION
  return centred_box(width, height, side, side)


def train_image(encoded: bytes, rng: np.random.Generator, *, image_size: int, crop_min_scale: float) -> np.ndarray:
  """ImageNet training augmentation: random-resized crop, bilinear resize, random horizontal flip, normalise."""
  with Image.open(io.BytesIO(encoded)) as image:  # Lazy: only the header is read until crop_resize decodes.
    box = random_resized_crop_box(rng, *image.size, min_scale=crop_min_scale)
    pixels_HxWx3 = crop_resize(image, box, image_size)
  if rng.random() < 0.5:
    pixels_HxWx3 = pixels_HxWx3[:, ::-1]
  return normalize(pixels_HxWx3)


def eval_image(encoded: bytes, *, image_size: int) -> np.ndarray:
  """ImageNet eval preprocessing: centre crop (see eval_crop_box), bilinear resize, normalise."""
  with Image.open(io.BytesIO(encoded)) as image:
    return normalize(crop_resize(image, eval_crop_box(*image.size, image_size), image_size))


# --- Batches ---


def _train_example(record: dict, rng: np.random.Generator, *, image_size: int, crop_min_scale: float) -> dict:
  return {'image': train_image(record['image'], rng, image_size=image_size, crop_min_scale=crop_min_scale),
          'label': np.int32(record['label'])}


def _eval_example(index: int, *, source, image_size: int) -> dict:
  """Position `index` of the padded eval pass: a real example (mask 1) or, past the end, padding (mask 0)."""
  if index >= len(source):
    return {'image': np.zeros((image_size, image_size, 3), np.float32), 'label': np.int32(0),
            'mask': np.float32(0.0)}
  record = source[index]
  return {'image': eval_image(record['image'], image_size=image_size), 'label': np.int32(record['label']),
          'mask': np.float32(1.0)}


def train_batches(source, *, global_batch_size: int, image_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, crop_min_scale: float = 0.08, num_threads: int = 8,
                  start_batch: int = 0) -> Iterator[dict]:
  """Endless augmented training batches for this process: {'image': f32[B, S, S, 3], 'label': i32[B]},
  B = global_batch_size // process_count, starting at global batch `start_batch` (to resume a run)."""
  return global_train_stream(source, functools.partial(_train_example, image_size=image_size,
                                                       crop_min_scale=crop_min_scale),
                             global_batch_size=global_batch_size, seed=seed, process_index=process_index,
                             process_count=process_count, num_threads=num_threads, start_batch=start_batch)


def eval_batches(source, *, global_batch_size: int, image_size: int, process_index: int = 0,
                 process_count: int = 1, num_threads: int = 8) -> Iterator[dict]:
  """One pass over the split in order: {'image', 'label', 'mask': f32[B]} with fixed B; the last global batch is
  padded with mask-0 examples, and each real example lands on exactly one process."""
  return global_eval_stream(functools.partial(_eval_example, source=source, image_size=image_size), len(source),
                            global_batch_size=global_batch_size, process_index=process_index,
                            process_count=process_count, num_threads=num_threads)


def synthetic_batches(*, global_batch_size: int, image_size: int, num_classes: int, seed: int,
                      process_count: int = 1) -> Iterator[dict]:
  """One fixed random local batch, repeated forever: measures the step without any input cost."""
  batch_size = local_batch_size(global_batch_size, process_count)
  rng = np.random.default_rng(seed)
  batch = {'image': rng.standard_normal((batch_size, image_size, image_size, 3), dtype=np.float32),
           'label': rng.integers(0, num_classes, batch_size, dtype=np.int32)}
  return itertools.repeat(batch)
