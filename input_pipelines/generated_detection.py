"""A generated, learnable object-detection dataset in TFDS ArrayRecord form, laid out exactly like coco/2017."""

import colorsys
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from input_pipelines import generated_images
from suite.common.errors import UserError

# The generator is seeded per example, so a config name fully determines the bytes written and any one example
# can be recomputed on its own (tests do).
_SEED = 20240717
_SPLIT_IDS = {'train': 0, 'validation': 1}
# Flip-invariant shapes, so that a horizontal flip never changes an object's class.
SHAPES = ('square', 'disc', 'triangle')
MAX_OBJECTS = 4
SIZE_RANGE = (0.15, 0.5)  # Object side as a fraction of the canvas side.
PLACEMENT_TRIES = 20


@dataclasses.dataclass(eq=False)
class GeneratedDetectionConfig(tfds.core.BuilderConfig):
  """The sizes of one generated dataset; the config name encodes them so sizes never share a cache folder."""

  num_classes: int = 4
  image_size: int = 64
  num_train: int = 1024
  num_eval: int = 128
  # As in generated_images: 0 means image_size square; else source_size x 3/4 of it (COCO's common 640x480).
  source_size: int = 0
  encoding: str = 'png'


def make_config(*, num_classes: int, image_size: int, num_train: int, num_eval: int, source_size: int = 0,
                encoding: str = 'png') -> GeneratedDetectionConfig:
  if encoding not in generated_images.ENCODINGS:
    raise UserError(f'generated.encoding={encoding!r}: use one of {", ".join(generated_images.ENCODINGS)}')
  sizes = dict(num_classes=num_classes, image_size=image_size, num_train=num_train, num_eval=num_eval,
               source_size=source_size, encoding=encoding)
  return GeneratedDetectionConfig(name=generated_images.config_name(**sizes),
                                  description=f'Generated shapes, {sizes}.', **sizes)


def class_names(num_classes: int) -> list[str]:
  """E.g. ['c0_square', 'c1_disc', 'c2_triangle', 'c3_square']: class k is SHAPES[k % 3] in hue k / num_classes."""
  return [f'c{k}_{SHAPES[k % len(SHAPES)]}' for k in range(num_classes)]


class GeneratedDetection(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes on a noisy canvas, 1-4 per image, exact boxes; features and splits like coco/2017."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}
  # As in generated_images: every config comes from `make_config`, readers find it from its files, and nothing is
  # downloaded so there is no checksums file to look up.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    # `dataset_info_from_configs` needs the builder to live inside the tfds package; build the info directly.
    c = self.builder_config
    features = tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(*generated_images.source_shape(c.image_size, c.source_size), 3),
                                     encoding_format=c.encoding),
        'image/filename': tfds.features.Text(),
        'image/id': np.int64,
        'objects': tfds.features.Sequence({
            'id': np.int64,
            'area': np.int64,
            'bbox': tfds.features.BBoxFeature(),
            'label': tfds.features.ClassLabel(names=class_names(c.num_classes)),
            'is_crowd': np.bool_,
        }),
    })
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    return {'train': self._generate_examples('train', c.num_train),
            'validation': self._generate_examples('validation', c.num_eval)}

  def _generate_examples(self, split: str, num_examples: int):
    c = self.builder_config
    next_object_id = 1  # COCO ids start at 1; unique within a split.
    height, width = generated_images.source_shape(c.image_size, c.source_size)
    for i in range(num_examples):
      pixels_HxWx3, objects, _ = draw_example(split, i, num_classes=c.num_classes, image_size=height, width=width)
      file_name = f'{split}_{i:07d}.{c.encoding}'
      for o in objects:
        o['id'] = next_object_id
        next_object_id += 1
      yield file_name, {'image': generated_images.encode(pixels_HxWx3, c.encoding), 'image/filename': file_name,
                        'image/id': image_id(i), 'objects': objects}


def image_id(index: int) -> int:
  """The `image/id` of the split's example `index` (COCO image ids are positive)."""
  return index + 1


def class_colour(label: int, num_classes: int) -> np.ndarray:
  """RGB (0-255) of a class: saturated hues evenly spaced round the wheel, far from the grey background."""
  return 255.0 * np.array(colorsys.hsv_to_rgb(label / num_classes, 0.85, 0.95))


def shape_mask(shape: str, side: int) -> np.ndarray:
  """bool[side, side]: the shape filling its square, touching all four edges (so its box is the square)."""
  centre = (side - 1) / 2
  yy, xx = np.mgrid[:side, :side]
  if shape == 'square':
    return np.ones((side, side), bool)
  if shape == 'disc':
    return (yy - centre)**2 + (xx - centre)**2 <= (side / 2)**2
  if shape == 'triangle':  # Apex at the top centre, base on the bottom row.
    return np.abs(xx - centre) <= (yy + 1) / side * (side / 2)
  raise ValueError(f'unknown shape {shape!r}')


def draw_example(split: str, index: int, *, num_classes: int, image_size: int,
                 width: int | None = None) -> tuple[np.ndarray, list[dict], list[np.ndarray]]:
  """Example `index` of `split`: (uint8[S, W, 3] pixels, objects without ids, each object's bool[S, W] pixel mask),
  S = image_size rows and W = width (default S) columns.
  Boxes (normalised ymin, xmin, ymax, xmax on pixel edges) are the tight extent of each object's pixels, and boxes
  never overlap, so every box holds exactly its object's visible pixels."""
  height, width = image_size, width or image_size
  rng = np.random.default_rng([_SEED, _SPLIT_IDS[split], index])
  # Low-saturation noisy background, so that objects stand out by colour but not trivially by edges alone.
  background = rng.uniform(60, 190) + rng.uniform(-15, 15, size=3)
  canvas_HxWx3 = background + rng.normal(0.0, 18.0, size=(height, width, 3))
  lo, hi = (max(2, round(f * min(height, width))) for f in SIZE_RANGE)
  placed = []  # (top, left, bottom, right) in pixels, bottom/right exclusive.
  for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
    label = int(rng.integers(num_classes))
    for _ in range(PLACEMENT_TRIES):
      side = int(rng.integers(lo, hi + 1))
      # One draw of both corners (the same stream as one bound of size 2 when the canvas is square).
      top, left = (int(v) for v in rng.integers(0, np.array([height - side + 1, width - side + 1])))
      box = (top, left, top + side, left + side)
      if not any(_overlap(box, other) for other, _ in placed):
        placed.append((box, label))
        break
  objects, masks = [], []
  for (top, left, bottom, right), label in placed:
    mask_HxW = shape_mask(SHAPES[label % len(SHAPES)], bottom - top)
    masks.append(np.zeros((height, width), bool))
    masks[-1][top:bottom, left:right] = mask_HxW
    colour = class_colour(label, num_classes) * rng.uniform(0.8, 1.1)
    region = canvas_HxWx3[top:bottom, left:right]
    region[mask_HxW] = colour + rng.normal(0.0, 10.0, size=(int(mask_HxW.sum()), 3))
    rows, cols = np.flatnonzero(mask_HxW.any(1)), np.flatnonzero(mask_HxW.any(0))
    bbox = (np.array([top + rows[0], left + cols[0], top + rows[-1] + 1, left + cols[-1] + 1])
            / np.array([height, width, height, width]))
    objects.append({'area': int(mask_HxW.sum()), 'bbox': bbox.astype(np.float32), 'label': label,
                    'is_crowd': False})
  return np.clip(np.rint(canvas_HxWx3), 0, 255).astype(np.uint8), objects, masks


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def ensure_generated_detection(data_dir: str, *, num_classes: int, image_size: int, num_train: int,
                               num_eval: int, source_size: int = 0, encoding: str = 'png') -> str:
  """Writes the dataset into data_dir unless it is already there; returns the name for `tfds.data_source`
  (e.g. 'generated_detection/c4_s64_n1024_e128'). Safe when several processes share data_dir (see
  generated_images.ensure_generated_images)."""
  config = make_config(num_classes=num_classes, image_size=image_size, num_train=num_train, num_eval=num_eval,
                       source_size=source_size, encoding=encoding)
  return generated_images.prepare_once(GeneratedDetection, config, data_dir)
