"""Image-classification input pipeline: grain over any TFDS image/label ArrayRecord dataset, ImageNet-style, or
CIFAR-style for small images."""

import dataclasses
import functools
import io
import itertools
import math
from collections.abc import Iterator

import numpy as np
from PIL import Image

from input_pipelines import sources
from input_pipelines.image_ops import crop_resize
from input_pipelines.streams import global_eval_stream, global_train_stream, local_batch_size
from suite.common.errors import UserError

CROP_RATIO_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
EVAL_CROP_FRACTION = 0.875  # Resize the shorter side to image_size / 0.875, then centre crop image_size.
# Datasets whose images are at most this many pixels a side (MNIST 28, CIFAR 32, STL/ImageNet64 64) train with the
# small-image augmentation (`small_train_image`), not the Inception crop: a crop of 8% of a 32-pixel image is a
# blur of a few pixels, and a small CNN's textbook recipe keeps the whole object.
SMALL_IMAGE_MAX_SIDE = 64


# --- What a dataset's metadata says ---


@dataclasses.dataclass(frozen=True)
class DatasetFacts:
  """An image/label dataset's shape, from its TFDS metadata (never from reading its records)."""
  num_classes: int
  channels: int  # 1 (grey) or 3 (RGB; any other channel count is converted to RGB).
  image_size: int | None  # The side of its square images; None when the size varies or is not square.
  small_images: bool  # Every image is at most SMALL_IMAGE_MAX_SIDE pixels a side.
  splits: tuple[str, ...]


def dataset_facts(dataset: str, data_dir: str | None) -> DatasetFacts:
  """Reads the `image` and `label` features and the splits of a prepared TFDS dataset; UserError if it is not an
  image dataset with a ClassLabel `label`."""
  info = sources.dataset_info(dataset, data_dir)
  features = info.features
  image, label = (features[key] if key in features else None for key in ('image', 'label'))
  if image is None or getattr(label, 'num_classes', None) is None:
    raise UserError(f"dataset {dataset!r} is not an image classification dataset: it needs an 'image' feature and "
                    f"a ClassLabel 'label' feature (it has {', '.join(features.keys())})")
  height, width, channels = (tuple(image.shape) + (None, None, None))[:3]
  fixed = height is not None and width is not None
  return DatasetFacts(num_classes=int(label.num_classes), channels=1 if channels == 1 else 3,
                      image_size=height if fixed and height == width else None,
                      small_images=fixed and max(height, width) <= SMALL_IMAGE_MAX_SIDE,
                      splits=tuple(info.splits.keys()))


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


def train_image(encoded: bytes, rng: np.random.Generator, *, image_size: int, crop_min_scale: float,
                channels: int = 3) -> np.ndarray:
  """ImageNet training augmentation: random-resized crop, bilinear resize, random horizontal flip; uint8 (the
  workload normalises on the device: image_ops.normalize_on_device)."""
  with Image.open(io.BytesIO(encoded)) as image:  # Lazy: only the header is read until crop_resize decodes.
    box = random_resized_crop_box(rng, *image.size, min_scale=crop_min_scale)
    pixels_HxWxC = crop_resize(image, box, image_size, channels)
  if rng.random() < 0.5:
    pixels_HxWxC = pixels_HxWxC[:, ::-1]
  return pixels_HxWxC


def small_train_image(encoded: bytes, rng: np.random.Generator, *, image_size: int, channels: int = 3) -> np.ndarray:
  """Small-image training augmentation, the textbook CIFAR recipe (He et al. 2016, sec. 4.2): the whole image at
  image_size, padded with image_size/8 black pixels a side (4 for 32) and a random image_size crop of that, i.e. a
  random shift; then a random horizontal flip for colour images only. uint8, as `train_image`.

  No flip for grey images: the small grey datasets are handwriting and glyphs (MNIST, EMNIST, KMNIST, Omniglot,
  digits), where a mirrored 2, 3 or 7 is no longer the same character, and their textbook recipes never flip.
  Colour ones are mostly photos of objects (CIFAR, STL), where a mirror image is the same class.
  """
  pixels_HxWxC = whole_image(encoded, image_size=image_size, channels=channels)
  pad = max(1, image_size // 8)
  padded = np.pad(pixels_HxWxC, ((pad, pad), (pad, pad), (0, 0)))
  top, left = (int(offset) for offset in rng.integers(0, 2 * pad + 1, size=2))
  pixels_HxWxC = padded[top:top + image_size, left:left + image_size]
  if channels == 3 and rng.random() < 0.5:
    pixels_HxWxC = pixels_HxWxC[:, ::-1]
  return pixels_HxWxC


def augmentation_name(channels: int, small_images: bool) -> str:
  """What train_batches does to each training image, in words (for the log)."""
  if small_images:
    return 'random shift + flip' if channels == 3 else 'random shift'
  return 'Inception crop + flip'


def whole_image(encoded: bytes, *, image_size: int, channels: int = 3) -> np.ndarray:
  """The whole image resized (bilinear) to uint8[image_size, image_size, channels]; unchanged if already that."""
  with Image.open(io.BytesIO(encoded)) as image:
    return crop_resize(image, (0, 0, *image.size), image_size, channels)


def eval_image(encoded: bytes, *, image_size: int, channels: int = 3, small_images: bool = False) -> np.ndarray:
  """ImageNet eval preprocessing: centre crop (see eval_crop_box), bilinear resize; uint8, normalised on the device
  as in training. Small images (see small_train_image) are evaluated whole."""
  if small_images:
    return whole_image(encoded, image_size=image_size, channels=channels)
  with Image.open(io.BytesIO(encoded)) as image:
    return crop_resize(image, eval_crop_box(*image.size, image_size), image_size, channels)


# --- Batches ---


def _train_example(record: dict, rng: np.random.Generator, *, image_size: int, crop_min_scale: float, channels: int,
                   small_images: bool) -> dict:
  if small_images:
    image = small_train_image(record['image'], rng, image_size=image_size, channels=channels)
  else:
    image = train_image(record['image'], rng, image_size=image_size, crop_min_scale=crop_min_scale, channels=channels)
  return {'image': image, 'label': np.int32(record['label'])}


def _eval_example(index: int, *, source, image_size: int, channels: int, small_images: bool) -> dict:
  """Position `index` of the padded eval pass: a real example (mask 1) or, past the end, padding (mask 0)."""
  if index >= len(source):
    return {'image': np.zeros((image_size, image_size, channels), np.uint8), 'label': np.int32(0),
            'mask': np.float32(0.0)}
  record = source[index]
  return {'image': eval_image(record['image'], image_size=image_size, channels=channels, small_images=small_images),
          'label': np.int32(record['label']), 'mask': np.float32(1.0)}


def train_batches(source, *, global_batch_size: int, image_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, crop_min_scale: float = 0.08, num_threads: int = 8,
                  start_batch: int = 0, channels: int = 3, small_images: bool = False,
                  num_workers: int = 0) -> Iterator[dict]:
  """Endless augmented training batches for this process: {'image': u8[B, S, S, channels], 'label': i32[B]},
  B = global_batch_size // process_count, starting at global batch `start_batch` (to resume a run). Augmentation:
  the Inception crop (`train_image`), or with small_images the shift and flip of `small_train_image`. The same
  batches for any num_threads and num_workers (worker processes; 0: threads only), see global_train_stream."""
  return global_train_stream(source, functools.partial(_train_example, image_size=image_size,
                                                       crop_min_scale=crop_min_scale, channels=channels,
                                                       small_images=small_images),
                             global_batch_size=global_batch_size, seed=seed, process_index=process_index,
                             process_count=process_count, num_threads=num_threads, start_batch=start_batch,
                             num_workers=num_workers)


def eval_batches(source, *, global_batch_size: int, image_size: int, process_index: int = 0,
                 process_count: int = 1, num_threads: int = 8, channels: int = 3,
                 small_images: bool = False) -> Iterator[dict]:
  """One pass over the split in order: {'image': u8, 'label', 'mask': f32[B]} with fixed B; the last global batch is
  padded with mask-0 examples, and each real example lands on exactly one process."""
  return global_eval_stream(functools.partial(_eval_example, source=source, image_size=image_size, channels=channels,
                                              small_images=small_images), len(source),
                            global_batch_size=global_batch_size, process_index=process_index,
                            process_count=process_count, num_threads=num_threads)


def synthetic_batches(*, global_batch_size: int, image_size: int, num_classes: int, seed: int,
                      process_count: int = 1) -> Iterator[dict]:
  """One fixed random local batch of uint8 noise (the real pipeline's dtype), repeated forever: measures the step
  without any input cost."""
  batch_size = local_batch_size(global_batch_size, process_count)
  rng = np.random.default_rng(seed)
  batch = {'image': rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8),
           'label': rng.integers(0, num_classes, batch_size, dtype=np.int32)}
  return itertools.repeat(batch)
