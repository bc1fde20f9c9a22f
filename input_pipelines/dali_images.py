"""An optional NVIDIA DALI backend for the image-classification pipeline (`config.data_backend='dali'`).

DALI decodes the JPEG (only the crop's region: `decoders.image_slice`), resizes the crop to image_size (linear,
antialiased) and flips it; on a GPU host it decodes with device='mixed' (nvJPEG) and resizes and flips on the GPU,
elsewhere it runs all of it on the CPU (device='cpu'). The batches keep the grain path's contract
(`image_classification.train_batches` / `eval_batches`): uint8 [B, S, S, C] images (the workload normalises on the
device), int32 labels, the eval mask, and the same global-batch stream.

What is the same as the grain path, and why: the crop box and the flip of every training example are drawn on the
host by grain, with the grain path's own seeds, shuffle and per-example random stream (`random_resized_crop_box`,
then one uniform draw for the flip), and only the pixel work runs in DALI. So each global batch holds the same
examples with the same crops and flips as the grain path's, whatever the process count, and a resumed run starts
at any batch for free, as before. DALI's own random operators (`fn.random_resized_crop`, `fn.random.coin_flip`)
are not used: their generator is per pipeline, so the draws would depend on the process count and the resume point.

What differs: the pixels. The grain path decodes with PIL at a reduced DCT scale when the crop allows (`draft`)
and resizes with PIL's bilinear filter; DALI decodes the crop region at full scale and resizes with its own
antialiased linear filter. The eval images (same centre crop) agree to about one grey level on average; training
crops that PIL decodes at 1/2 to 1/8 scale differ more (see tests/test_dali.py for the measured figures).
"""

import functools
import io
import itertools
import json
import math
import os
import statistics
import time
from collections.abc import Iterator

import grain
import jax
import numpy as np
from PIL import Image

from input_pipelines import generated_images
from input_pipelines import image_classification as grain_images
from input_pipelines.streams import global_eval_positions, global_train_examples, local_batch_size
from suite.common.errors import UserError

BACKENDS = ('grain', 'dali')
INSTALL_HINT = 'install it with `pip install -c constraints.txt -e ".[dali]"` (see BUILD.md)'


def check_backend(name: str, *, small_images: bool = False) -> None:
  """UserError unless `name` is a backend this machine can run for this dataset."""
  if name not in BACKENDS:
    raise UserError(f'unknown --config.data_backend={name!r}: use one of {", ".join(BACKENDS)}')
  if name != 'dali':
    return
  _dali()
  if small_images:
    raise UserError("--config.data_backend='dali' makes the ImageNet Inception crop only; this dataset's small "
                    "images take the small-image augmentation: use --config.data_backend=grain")


def _dali():
  """The DALI modules (fn, types, pipeline_def, the JAX iterator), or UserError saying how to install them."""
  try:
    from nvidia.dali import fn, pipeline_def, types  # Optional (extra `dali`): imported on use.
    from nvidia.dali.plugin.jax import DALIGenericIterator
  except ImportError as e:
    raise UserError(f"--config.data_backend='dali' needs NVIDIA DALI, which is not installed ({e}): "
                    f'{INSTALL_HINT}, or use --config.data_backend=grain') from None
  return fn, types, pipeline_def, DALIGenericIterator


def dali_device() -> str:
  """'mixed' (nvJPEG decode, GPU resize) when JAX runs on GPUs, else 'cpu'."""
  return 'mixed' if jax.default_backend() == 'gpu' else 'cpu'


def _gpu_ordinal() -> int:
  """The CUDA ordinal of this process's first JAX device: where DALI decodes (each process of a multi-GPU host
  its own GPU)."""
  return int(getattr(jax.local_devices()[0], 'local_hardware_id', None) or 0)


# --- What the host decides per example (grain threads): the record, its crop box, its flip ---


def _image_size_of(encoded: bytes) -> tuple[int, int]:
  with Image.open(io.BytesIO(encoded)) as image:  # Reads the header only.
    return image.size


def _train_plan(record: dict, rng: np.random.Generator, *, crop_min_scale: float) -> dict:
  # The draws of `image_classification.train_image`, in its order: the crop box, then the flip.
  box = grain_images.random_resized_crop_box(rng, *_image_size_of(record['image']), min_scale=crop_min_scale)
  flip = rng.random() < 0.5
  return {'encoded': record['image'], 'label': record['label'], 'box': box, 'flip': flip, 'mask': 1.0}


def _eval_plan(index: int, *, source, image_size: int) -> dict:
  """Position `index` of the padded eval pass; past the end a mask-0 pad (record 0 decoded, then zeroed)."""
  record = source[min(index, len(source) - 1)]
  box = grain_images.eval_crop_box(*_image_size_of(record['image']), image_size)
  return {'encoded': record['image'], 'label': record['label'] if index < len(source) else 0, 'box': box,
          'flip': False, 'mask': float(index < len(source))}


def _feed_columns(plans: list[dict]) -> tuple[list, ...]:
  """One local batch of plans as DALI external-source columns (one numpy array per sample)."""
  encoded, starts, ends, roi_starts, roi_ends, flips, labels, masks = ([] for _ in range(8))
  for p in plans:
    left, top, right, bottom = p['box']
    # Decode the whole pixels the box touches; resize exactly the (fractional) box inside them.
    x0, y0 = math.floor(left), math.floor(top)
    x1, y1 = max(math.ceil(right), x0 + 1), max(math.ceil(bottom), y0 + 1)
    encoded.append(np.frombuffer(p['encoded'], np.uint8))
    starts.append(np.array([x0, y0], np.int32))  # axis_names 'WH'
    ends.append(np.array([x1, y1], np.int32))
    roi_starts.append(np.array([top - y0, left - x0], np.float32))  # (H, W): the resize's spatial order
    roi_ends.append(np.array([bottom - y0, right - x0], np.float32))
    flips.append(np.array(int(p['flip']), np.int32))
    labels.append(np.array(p['label'], np.int32))
    masks.append(np.array(p['mask'], np.float32))
  return encoded, starts, ends, roi_starts, roi_ends, flips, labels, masks


def _batches(plans: Iterator[dict], *, batch_size: int, image_size: int, channels: int, num_threads: int,
             outputs: tuple[str, ...]) -> Iterator[dict]:
  """Local batches of `outputs` ('image', 'label', 'mask') from an iterator of per-example plans, made by a DALI
  pipeline (decode the box's region, resize it to image_size, flip) and read through DALI's JAX iterator; host
  numpy arrays, as the grain path's. Ends when `plans` ends (only whole batches: callers pad)."""
  fn, types, pipeline_def, DALIGenericIterator = _dali()
  device = dali_device()

  def feed():
    batch = list(itertools.islice(plans, batch_size))
    if len(batch) < batch_size:
      raise StopIteration
    return _feed_columns(batch)[:5 + len(outputs)]  # The pixels' 6 columns, then label (and mask).

  @pipeline_def(batch_size=batch_size, num_threads=max(1, num_threads),
                device_id=_gpu_ordinal() if device == 'mixed' else None, seed=0)
  def images():
    encoded, start, end, roi_start, roi_end, flip, *labels_and_mask = fn.external_source(
        source=feed, num_outputs=5 + len(outputs), batch=True, device='cpu')
    pixels = fn.decoders.image_slice(encoded, start=start, end=end, axis_names='WH', device=device,
                                     output_type=types.GRAY if channels == 1 else types.RGB)
    pixels = fn.resize(pixels, size=(image_size, image_size), roi_start=roi_start, roi_end=roi_end,
                       roi_relative=False, interp_type=types.INTERP_LINEAR, antialias=True)
    pixels = fn.flip(pixels, horizontal=flip)
    return (pixels, *labels_and_mask)

  for batch in DALIGenericIterator([images()], list(outputs)):
    yield {key: np.asarray(value) for key, value in batch.items()}


def train_batches(source, *, global_batch_size: int, image_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, crop_min_scale: float = 0.08, num_threads: int = 8,
                  start_batch: int = 0, channels: int = 3, small_images: bool = False,
                  num_workers: int = 0) -> Iterator[dict]:
  """`image_classification.train_batches` made by DALI: the same examples, crops and flips in every global batch
  (the stream of `streams.global_train_stream`: same seeds, shuffle, per-example random stream and process
  slicing), pixels from DALI's decoder and resize. num_threads reads records and draws crops (grain threads) and
  runs DALI's CPU operators; num_workers (grain's worker processes) does not apply: DALI has its own threads."""
  del num_workers
  check_backend('dali', small_images=small_images)
  batch_size = local_batch_size(global_batch_size, process_count)
  ds = global_train_examples(source, functools.partial(_train_plan, crop_min_scale=crop_min_scale),
                             global_batch_size=global_batch_size, seed=seed, process_index=process_index,
                             process_count=process_count, start_batch=start_batch)
  plans = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size)))
  return _batches(plans, batch_size=batch_size, image_size=image_size, channels=channels, num_threads=num_threads,
                  outputs=('image', 'label'))


def eval_batches(source, *, global_batch_size: int, image_size: int, process_index: int = 0,
                 process_count: int = 1, num_threads: int = 8, channels: int = 3,
                 small_images: bool = False) -> Iterator[dict]:
  """`image_classification.eval_batches` made by DALI: the same positions (padded to whole global batches, dealt
  out to the processes), the same centre crop; pads are zero images with mask 0."""
  check_backend('dali', small_images=small_images)
  batch_size = local_batch_size(global_batch_size, process_count)
  ds = global_eval_positions(len(source), global_batch_size=global_batch_size, process_index=process_index,
                             process_count=process_count)
  ds = ds.map(functools.partial(_eval_plan, source=source, image_size=image_size))
  plans = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size)))
  for batch in _batches(plans, batch_size=batch_size, image_size=image_size, channels=channels,
                        num_threads=num_threads, outputs=('image', 'label', 'mask')):
    if not batch['mask'].all():
      batch['image'] = np.where(batch['mask'][:, None, None, None] > 0, batch['image'], np.uint8(0))
    yield batch


# --- `python -m input_pipelines.dali_images`: images/s of both backends on ImageNet-sized JPEGs ---


def bench(num_images: int = 256, batch_size: int = 64, image_size: int = 224, steps: int = 8, repeats: int = 3,
          num_threads: int = 4) -> dict:
  """Training images/s of the grain and DALI paths over the same generated JPEGs (ImageNet's common sizes),
  interleaved repetitions, medians; DALI on this machine's device ('cpu' without a GPU)."""
  sizes = [(375, 500), (500, 375), (333, 500), (500, 333), (480, 640), (500, 500)]
  source = [{'image': generated_images.photo_jpeg(*sizes[i % len(sizes)], i), 'label': i % 10}
            for i in range(num_images)]
  makers = {'grain': grain_images.train_batches, 'dali': train_batches}
  streams = {name: make(source, global_batch_size=batch_size, image_size=image_size, seed=0,
                        num_threads=num_threads) for name, make in makers.items()}
  for stream in streams.values():
    next(stream)  # Starts the threads (and builds DALI's pipeline).
  rates = {name: [] for name in streams}
  for _ in range(repeats):
    for name, stream in streams.items():
      start = time.perf_counter()
      for _ in range(steps):
        next(stream)
      rates[name].append(batch_size * steps / (time.perf_counter() - start))
  cores = len(os.sched_getaffinity(0))
  return {'benchmark': 'dali_vs_grain', 'dali_device': dali_device(), 'image_size': image_size,
          'mean_jpeg_bytes': round(sum(len(r['image']) for r in source) / num_images), 'batch_size': batch_size,
          'host_cores': cores, 'num_threads': num_threads,
          **{f'{name}_images_per_s': statistics.median(r) for name, r in rates.items()},
          **{f'{name}_images_per_s_per_core': statistics.median(r) / cores for name, r in rates.items()}}


if __name__ == '__main__':
  print(json.dumps(bench(), indent=2))
