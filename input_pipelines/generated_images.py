"""A generated, learnable image-classification dataset in TFDS ArrayRecord form, laid out like imagenet2012."""

import colorsys
import dataclasses
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from suite.common.errors import UserError

# The generator is seeded, so a config name fully determines the bytes written.
_SEED = 20240601
_SPLIT_IDS = {'train': 0, 'validation': 1}
# Two flip- and crop-invariant patterns per colour: class = colour x orientation.
_ORIENTATIONS = ('horizontal', 'vertical')
# A few labels are wrong on purpose, so the best achievable top-1 is ~0.95, not 1.0: the open-division
# compliance rules reject an eval_accuracy of 1.0, and a ceiling also keeps the target meaningful.
LABEL_NOISE = 0.05


@dataclasses.dataclass(eq=False)
class GeneratedImagesConfig(tfds.core.BuilderConfig):
  """The sizes of one generated dataset; the config name encodes them so sizes never share a cache folder."""

  num_classes: int = 10
  image_size: int = 32
  num_train: int = 2048
  num_eval: int = 512
  # The stored images: 0 means image_size x image_size; else `source_size` wide and 3/4 of it high (4:3, the
  # shape of most ImageNet and COCO photos: 500x375, 640x480). 'png' (lossless) or 'jpeg' (quality 90).
  source_size: int = 0
  encoding: str = 'png'


ENCODINGS = ('png', 'jpeg')
JPEG_QUALITY = 90
# Pixel noise (standard deviation) of the JPEG datasets: with it a 500x375 image encodes to about 110 kB at
# quality 90, the mean size of an ImageNet training JPEG (its 138 GB over 1.28M images).
JPEG_NOISE = 26.0


def config_name(*, num_classes: int, image_size: int, num_train: int, num_eval: int, source_size: int = 0,
                encoding: str = 'png') -> str:
  """E.g. 'c10_s32_n2048_e512', or 'c10_s500_n384_e64_jpeg' for 500x375 JPEGs: the stored size and encoding are
  part of the name, so datasets that differ in them never share a cache folder."""
  name = f'c{num_classes}_s{source_size or image_size}_n{num_train}_e{num_eval}'
  return name if encoding == 'png' and not source_size else f'{name}_{encoding}'


def source_shape(image_size: int, source_size: int = 0) -> tuple[int, int]:
  """(height, width) of the stored images."""
  return (image_size, image_size) if not source_size else (round(source_size * 3 / 4), source_size)


def make_config(*, num_classes: int, image_size: int, num_train: int, num_eval: int, source_size: int = 0,
                encoding: str = 'png') -> GeneratedImagesConfig:
  if encoding not in ENCODINGS:
    raise UserError(f'generated.encoding={encoding!r}: use one of {", ".join(ENCODINGS)}')
  sizes = dict(num_classes=num_classes, image_size=image_size, num_train=num_train, num_eval=num_eval,
               source_size=source_size, encoding=encoding)
  return GeneratedImagesConfig(name=config_name(**sizes), description=f'Generated stripes, {sizes}.', **sizes)


class GeneratedImages(tfds.core.GeneratorBasedBuilder):
  """Coloured stripes: class = hue x (horizontal | vertical), with noise and jitter; splits like imagenet2012."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'First version.', '1.1.0': f'{LABEL_NOISE:.0%} of labels replaced by another class.'}
  # No BUILDER_CONFIGS: every config is made from its sizes by `make_config`, and readers find it from its files.
  # Nothing is downloaded, so no checksums file to look up next to the code (tfds's lookup also needs the
  # `importlib_resources` package, which is not installed).
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    # `dataset_info_from_configs` needs the builder to live inside the tfds package; build the info directly.
    c = self.builder_config
    features = tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(*source_shape(c.image_size, c.source_size), 3),
                                     encoding_format=c.encoding),
        'label': tfds.features.ClassLabel(num_classes=c.num_classes),
        'file_name': tfds.features.Text(),
    })
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features,
                                 supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    return {'train': self._generate_examples('train', c.num_train),
            'validation': self._generate_examples('validation', c.num_eval)}

  def _generate_examples(self, split: str, num_examples: int):
    c = self.builder_config
    rng = np.random.default_rng([_SEED, _SPLIT_IDS[split]])
    height, width = source_shape(c.image_size, c.source_size)
    for i in range(num_examples):
      pattern = i % c.num_classes  # Balanced classes; readers shuffle.
      pixels_HxWx3 = stripes_image(rng, pattern, num_classes=c.num_classes, image_size=height, width=width,
                                   noise=JPEG_NOISE if c.encoding == 'jpeg' else 14.0)
      file_name = f'{split}_{i:07d}.{c.encoding}'
      label = pattern
      if rng.random() < LABEL_NOISE:
        label = (pattern + rng.integers(1, c.num_classes)) % c.num_classes
      yield file_name, {'image': encode(pixels_HxWx3, c.encoding), 'label': label, 'file_name': file_name}


def class_colour(label: int, num_classes: int) -> np.ndarray:
  """The base RGB colour (0-255) of a class: hues evenly spaced round the colour wheel, one per class pair."""
  num_hues = -(-num_classes // len(_ORIENTATIONS))
  hue = (label // len(_ORIENTATIONS)) / num_hues
  return 255.0 * np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9))


def stripes_image(rng: np.random.Generator, label: int, *, num_classes: int, image_size: int,
                  width: int | None = None, noise: float = 14.0) -> np.ndarray:
  """One uint8[size, width (default size), 3] image of `label`: stripes of the class colour with random period,
  phase, brightness and pixel noise, so that a model must learn colour and orientation rather than memorise
  pixels."""
  height, width = image_size, width or image_size
  period = rng.uniform(0.12, 0.3) * min(height, width)
  phase = rng.uniform(0.0, 2 * np.pi)
  brightness = rng.uniform(0.65, 1.15)
  # Horizontal stripes vary along rows, vertical ones along columns; a horizontal flip keeps the orientation.
  horizontal = _ORIENTATIONS[label % len(_ORIENTATIONS)] == 'horizontal'
  coords = np.arange(height if horizontal else width, dtype=np.float32)
  wave = 0.5 + 0.5 * np.sin(2 * np.pi * coords / period + phase)
  if horizontal:
    wave_HxW = np.broadcast_to(wave[:, None], (height, width))
  else:
    wave_HxW = np.broadcast_to(wave[None, :], (height, width))
  colour = class_colour(label, num_classes) * brightness
  image_HxWx3 = colour * (0.35 + 0.65 * wave_HxW[..., None])
  image_HxWx3 += rng.normal(0.0, noise, size=image_HxWx3.shape)
  return np.clip(np.rint(image_HxWx3), 0, 255).astype(np.uint8)


def png_bytes(pixels_HxWx3: np.ndarray) -> bytes:
  """Encoded PNG: without TensorFlow, tfds.features.Image only accepts encoded bytes."""
  buffer = io.BytesIO()
  Image.fromarray(pixels_HxWx3).save(buffer, format='PNG', compress_level=1)
  return buffer.getvalue()


def jpeg_bytes(pixels_HxWx3: np.ndarray) -> bytes:
  """Encoded JPEG at JPEG_QUALITY, the quality of typical camera photos (ImageNet's average ~110 kB at 500x375)."""
  buffer = io.BytesIO()
  Image.fromarray(pixels_HxWx3).save(buffer, format='JPEG', quality=JPEG_QUALITY)
  return buffer.getvalue()


def encode(pixels_HxWx3: np.ndarray, encoding: str) -> bytes:
  return jpeg_bytes(pixels_HxWx3) if encoding == 'jpeg' else png_bytes(pixels_HxWx3)


def photo_jpeg(height: int, width: int, seed: int) -> bytes:
  """A JPEG (quality 90) of smooth colour waves plus sensor-like noise: about 76 kB at 500x375, like an ImageNet
  photo (for benchmarks that need no labels)."""
  y, x = np.mgrid[0:height, 0:width]
  waves = np.stack([128 + 100 * np.sin(x / 17 + seed), 128 + 100 * np.cos(y / 23 + seed),
                    128 + 80 * np.sin((x + y) / 31)], -1)
  noisy = waves + np.random.default_rng(seed).normal(0, 12, waves.shape)
  return jpeg_bytes(np.clip(noisy, 0, 255).astype(np.uint8))


def ensure_generated_images(data_dir: str, *, num_classes: int, image_size: int, num_train: int,
                            num_eval: int, source_size: int = 0, encoding: str = 'png') -> str:
  """Writes the dataset into data_dir unless it is already there; returns the name for `tfds.data_source`.

  tfds writes into an `incomplete.*` folder beside the version folder and renames it only when complete, so an
  interrupted run never leaves a half dataset that reads as prepared.
  """
  config = make_config(num_classes=num_classes, image_size=image_size, num_train=num_train, num_eval=num_eval,
                       source_size=source_size, encoding=encoding)
  return prepare_once(GeneratedImages, config, data_dir)


def prepare_once(builder_class, config, data_dir: str) -> str:
  """Writes a generated dataset unless it is already prepared; returns its name for `tfds.data_source`.
  Shared by the generated datasets; safe when several processes share data_dir."""
  name = f'{builder_class.name}/{config.name}'
  if not _is_prepared(data_dir, name, builder_class.VERSION):
    builder = builder_class(config=config, data_dir=os.fspath(data_dir), file_format='array_record')
    download_config = tfds.download.DownloadConfig(try_download_gcs=False,
                                                   compute_stats=tfds.download.ComputeStatsMode.SKIP)
    try:
      builder.download_and_prepare(download_config=download_config)
    except OSError:
      # Another process sharing data_dir (multi-host) renamed its identical copy into place first.
      if not _is_prepared(data_dir, name, builder_class.VERSION):
        raise
  return name


def _is_prepared(data_dir: str, name: str, version) -> bool:
  """What tfds itself checks: the final (renamed) version folder holds dataset_info.json."""
  version_dir = os.path.join(data_dir, name, str(version))
  return os.path.exists(os.path.join(version_dir, 'dataset_info.json'))
