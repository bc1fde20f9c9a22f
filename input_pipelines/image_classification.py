"""Image-classification input pipeline: grain over any TFDS image/label ArrayRecord dataset, ImageNet-style."""

import functools
import io
import itertools
import math
import os
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core import constants as tfds_constants

from input_pipelines import checked_source
from suite.common.errors import UserError

# ImageNet channel statistics in 0-255 units (MLPerf ResNet reference).
IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
IMAGENET_STD = np.array([58.395, 57.12, 57.375], np.float32)

CROP_RATIO_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
EVAL_CROP_FRACTION = 0.875  # Resize the shorter side to image_size / 0.875, then centre crop image_size.


# --- Opening a split ---


def resolve_data_dir(data_dir: str | None) -> str:
  """--data_dir, else $TFDS_DATA_DIR, else TFDS's own default (~/tensorflow_datasets)."""
  return os.path.expanduser(data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def open_split(dataset: str, split: str, data_dir: str | None, skip_bad_records: bool = False, *,
               is_eval: bool = False) -> Any:
  """A random-access source (len, [i]) over one split; images stay encoded bytes, labels are ints.

  Raises UserError with the `tfds build` command when the dataset or split is not prepared in data_dir. A corrupt
  record raises CorruptRecordError naming its file when read (or, with skip_bad_records, is replaced and counted:
  training splits only; an `is_eval` split is always read whole, so skip_bad_records must be False there).
  """
  where = data_dir or os.environ.get('TFDS_DATA_DIR') or tfds_constants.DATA_DIR
  fix = (f'prepare it with `tfds build {dataset} --data_dir={where} --file_format=array_record` '
         '(see BUILD.md)')
  missing = f'dataset {dataset!r} (split {split!r}) not found in {where}: {fix}'
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
  except Exception:  # tfds raises DatasetNotFoundError, ValueError or ImportError for unknown names/configs.
    raise UserError(missing) from None
  # Check first: asking tfds for a data source of an unprepared dataset would start preparing (downloading) it.
  if not builder.is_prepared():
    raise UserError(missing)
  try:
    # Skip decoding so that we decode with PIL ourselves (JPEG draft mode: decode big images at reduced size).
    source = builder.as_data_source(split=split, decoders={'image': tfds.decode.SkipDecoding()})
  except Exception as e:  # Unknown split (ValueError), TFRecord-only files (NotImplementedError), ...
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(f'dataset {dataset!r} (split {split!r}) in {where} cannot be read ({reason}): {fix}') from None
  return checked_source.CheckedSource(source, dataset, split, data_dir, skip_bad_records, is_eval=is_eval)


# --- Per-image preprocessing (numpy/PIL; pure functions of their inputs) ---


def normalize(pixels_HxWx3: np.ndarray) -> np.ndarray:
  """uint8 RGB -> float32, ImageNet mean/std normalised."""
  return (pixels_HxWx3.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD


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


def crop_resize(image: Image.Image, box: tuple[float, float, float, float], image_size: int) -> np.ndarray:
  """Crops `box` (in the image's full-size pixel coordinates) from an opened, not yet decoded image and resizes it
  bilinearly to a square uint8[image_size, image_size, 3]."""
  width, height = image.size
  left, top, right, bottom = box
  # JPEGs decode at 1/2, 1/4 or 1/8 scale for much less work; ask for the smallest that keeps the crop at least
  # image_size pixels on each side (a no-op for PNG).
  scale = image_size / min(right - left, bottom - top)
  if scale < 1:
    image.draft('RGB', (math.ceil(width * scale), math.ceil(height * scale)))
  sx, sy = image.size[0] / width, image.size[1] / height
  resized = image.convert('RGB').resize((image_size, image_size), Image.Resampling.BILINEAR,
                                        box=(left * sx, top * sy, right * sx, bottom * sy))
  return np.asarray(resized)


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


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise UserError(f'global batch size {global_batch_size} is not divisible by the {process_count} processes')
  return global_batch_size // process_count


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Batches in one eval pass, the last one padded; the same on every process."""
  return -(-num_examples // global_batch_size)


def train_batches(source, *, global_batch_size: int, image_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, crop_min_scale: float = 0.08, num_threads: int = 8,
                  start_batch: int = 0) -> Iterator[dict]:
  """Endless augmented training batches for this process: {'image': f32[B, S, S, 3], 'label': i32[B]},
  B = global_batch_size // process_count, starting at global batch `start_batch` (to resume a run)."""
  return global_train_stream(source, functools.partial(_train_example, image_size=image_size,
                                                       crop_min_scale=crop_min_scale),
                             global_batch_size=global_batch_size, seed=seed, process_index=process_index,
                             process_count=process_count, num_threads=num_threads, start_batch=start_batch)


def global_train_stream(source, preprocess, *, global_batch_size: int, seed: int, process_index: int,
                        process_count: int, num_threads: int, start_batch: int) -> Iterator[dict]:
  """The endless, seeded training stream shared by the pipelines; `preprocess(example, rng)` augments one example.

  The global batch stream depends only on the seed: every process shuffles and augments the same global stream
  and takes positions process_index, process_index + process_count, ... of it, so the processes' batches k
  together form global batch k whatever the process count. The stream is indexable, so starting at batch
  `start_batch` costs nothing (no batch before it is read).
  """
  batch_size = local_batch_size(global_batch_size, process_count)
  if len(source) < global_batch_size:
    raise UserError(f'the training split has {len(source)} examples, fewer than one global batch '
                    f'({global_batch_size}): lower --config.global_batch_size')
  shuffle_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
  # Every example once per epoch, each epoch a fresh permutation (grain reseeds the shuffle per repetition). When
  # the batch does not divide the split, the batch at an epoch's end is "mixed": it ends with the first examples
  # of the next epoch (one of the options the MLPerf training rules allow; the runner evaluates an epoch only
  # after its mixed batch, as they require: see `Workload.epoch_end_step`).
  ds = grain.MapDataset.source(source).shuffle(seed=int(shuffle_seed)).repeat()
  # Augment before sharding: an example's crop and flip depend on its global stream position, not on the shard.
  ds = ds.random_map(preprocess, seed=int(augment_seed))
  ds = ds.slice(slice(start_batch * global_batch_size + process_index, None, process_count))
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size)
  return iter(ds.to_iter_dataset(read_options).batch(batch_size, drop_remainder=True))


def eval_batches(source, *, global_batch_size: int, image_size: int, process_index: int = 0,
                 process_count: int = 1, num_threads: int = 8) -> Iterator[dict]:
  """One pass over the split in order: {'image', 'label', 'mask': f32[B]} with fixed B; the last global batch is
  padded with mask-0 examples, and each real example lands on exactly one process."""
  return global_eval_stream(functools.partial(_eval_example, source=source, image_size=image_size), len(source),
                            global_batch_size=global_batch_size, process_index=process_index,
                            process_count=process_count, num_threads=num_threads)


def global_eval_stream(example_at, num_examples: int, *, global_batch_size: int, process_index: int,
                       process_count: int, num_threads: int) -> Iterator[dict]:
  """One in-order pass shared by the pipelines: `example_at(position)` makes the example (or a mask-0 pad past
  the end); positions are padded to whole global batches and dealt out so each lands on exactly one process."""
  batch_size = local_batch_size(global_batch_size, process_count)
  num_positions = num_eval_batches(num_examples, global_batch_size) * global_batch_size
  ds = grain.MapDataset.range(num_positions).slice(slice(process_index, None, process_count))
  ds = ds.map(example_at)
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size)
  return iter(ds.to_iter_dataset(read_options).batch(batch_size, drop_remainder=True))


def synthetic_batches(*, global_batch_size: int, image_size: int, num_classes: int, seed: int,
                      process_count: int = 1) -> Iterator[dict]:
  """One fixed random local batch, repeated forever: measures the step without any input cost."""
  batch_size = local_batch_size(global_batch_size, process_count)
  rng = np.random.default_rng(seed)
  batch = {'image': rng.standard_normal((batch_size, image_size, image_size, 3), dtype=np.float32),
           'label': rng.integers(0, num_classes, batch_size, dtype=np.int32)}
  return itertools.repeat(batch)
