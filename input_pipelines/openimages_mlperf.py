"""TFDS builder `mlperf_openimages`: the MLPerf OpenImages subset (COCO-format JSON) in the coco/2017 feature layout.

Input: the folder written by the MLPerf reference's download script
(training/retinanet/scripts/download_openimages_mlperf.sh), passed as the manual dir:
  <manual_dir>/{train,validation}/labels/openimages-mlperf.json  COCO format, bbox absolute [x, y, w, h]
  <manual_dir>/{train,validation}/data/<file_name>               the JPEGs
Prepare once with `python -m input_pipelines.openimages_mlperf --manual_dir=DIR --data_dir=DIR`.
"""

import json
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from suite.common import cli as cli_lib
from suite.common.errors import UserError

NUM_CLASSES = 264
SPLITS = ('train', 'validation')
LABELS_FILE = os.path.join('labels', 'openimages-mlperf.json')
IMAGES_DIR = 'data'


class MlperfOpenimages(tfds.core.GeneratorBasedBuilder):
  """The MLPerf Training OpenImages subset (264 classes) for RetinaNet, with coco/2017's features."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Run the MLPerf reference download script (training/retinanet/scripts/download_openimages_mlperf.sh -d DIR) '
      'and pass DIR as the manual dir: it must hold train/ and validation/, each with labels/openimages-mlperf.json '
      'and data/*.jpg.')
  # Nothing is downloaded, so no checksums file to look up next to the code (see generated_images).
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    # `dataset_info_from_configs` needs the builder to live inside the tfds package; build the info directly.
    features = tfds.features.FeaturesDict({
        'image': tfds.features.Image(encoding_format='jpeg'),
        'image/filename': tfds.features.Text(),
        'image/id': np.int64,
        'objects': tfds.features.Sequence({
            'id': np.int64,
            'area': np.int64,
            'bbox': tfds.features.BBoxFeature(),
            # Names are set from the JSON's categories when the dataset is prepared (as tfds's coco builder does).
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            'is_crowd': np.bool_,
        }),
    })
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features,
                                 homepage='https://github.com/mlcommons/training/tree/master/retinanet')

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    annotations = {split: read_annotations(manual_dir, split) for split in SPLITS}
    names = category_names(annotations['train'])
    if category_names(annotations['validation']) != names:
      raise UserError(f'{manual_dir}: train and validation list different categories')
    self.info.features['objects']['label'].names = names
    return {split: self._generate_examples(manual_dir, split, annotations[split]) for split in SPLITS}

  def _generate_examples(self, manual_dir: str, split: str, annotations: dict) -> Iterator[tuple[str, dict]]:
    image_dir = os.path.join(manual_dir, split, IMAGES_DIR)
    for file_name, example in convert_examples(annotations):
      with open(os.path.join(image_dir, file_name), 'rb') as f:
        # Encoded bytes: without TensorFlow, tfds.features.Image cannot read or encode images itself.
        example['image'] = f.read()
      yield file_name, example


def labels_path(manual_dir: str, split: str) -> str:
  """The split's COCO-format JSON; UserError with the instructions when it is missing."""
  path = os.path.join(manual_dir, split, LABELS_FILE)
  if not os.path.exists(path):
    raise UserError(f'{path} not found: {MlperfOpenimages.MANUAL_DOWNLOAD_INSTRUCTIONS}')
  return path


def read_annotations(manual_dir: str, split: str) -> dict:
  with open(labels_path(manual_dir, split)) as f:
    return json.load(f)


def sorted_categories(annotations: dict) -> list[dict]:
  """The categories in id order: label k is the k-th of them."""
  categories = sorted(annotations['categories'], key=lambda c: c['id'])
  if len(categories) != NUM_CLASSES:
    raise UserError(f'the MLPerf OpenImages subset has {NUM_CLASSES} categories, this JSON {len(categories)}: '
                    'is it the output of the MLPerf download script?')
  return categories


def category_names(annotations: dict) -> list[str]:
  return [c['name'] for c in sorted_categories(annotations)]


def convert_examples(annotations: dict) -> Iterator[tuple[str, dict]]:
  """(file name, example without 'image') per JSON image in id order, objects in the coco/2017 layout: bbox
  normalised (ymin, xmin, ymax, xmax) by the JSON's image size, label = index of the category in id order; the
  image and annotation ids are kept. Images without objects are kept, as tfds's coco builder does."""
  label_of = {c['id']: label for label, c in enumerate(sorted_categories(annotations))}
  objects_of: dict[int, list[dict]] = {}
  for a in annotations['annotations']:
    objects_of.setdefault(a['image_id'], []).append(a)
  for image in sorted(annotations['images'], key=lambda i: i['id']):
    height, width = image['height'], image['width']
    objects = []
    for a in objects_of.get(image['id'], []):
      x, y, w, h = a['bbox']
      # Clip: boxes written from relative coordinates may exceed the image by a rounding error, and BBoxFeature
      # rejects coordinates outside [0, 1].
      bbox = np.clip([y / height, x / width, (y + h) / height, (x + w) / width], 0.0, 1.0)
      objects.append({'id': a['id'], 'area': round(a.get('area', w * h)), 'bbox': bbox.astype(np.float32),
                      'label': label_of[a['category_id']], 'is_crowd': bool(a.get('iscrowd', 0))})
    yield image['file_name'], {'image/filename': image['file_name'], 'image/id': image['id'], 'objects': objects}


def prepare_openimages(manual_dir: str, data_dir: str) -> str:
  """Converts the manual dir into ArrayRecord files under data_dir; returns the name for `tfds.data_source`."""
  for split in SPLITS:  # Before tfds, whose own message for a missing manual dir does not say what goes in it.
    labels_path(manual_dir, split)
  builder = MlperfOpenimages(data_dir=os.fspath(data_dir), file_format='array_record')
  download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir), try_download_gcs=False,
                                                 compute_stats=tfds.download.ComputeStatsMode.SKIP)
  builder.download_and_prepare(download_config=download_config)
  return MlperfOpenimages.name


def define_flags() -> None:
  flags.DEFINE_string('manual_dir', None, 'The MLPerf download script output folder.', required=True)
  flags.DEFINE_string('data_dir', None, 'The TFDS data folder to write into.', required=True)


def main(argv: list[str]) -> None:
  del argv
  try:
    name = prepare_openimages(flags.FLAGS.manual_dir, flags.FLAGS.data_dir)
  except UserError as e:
    cli_lib.fail(str(e))
  print(f'prepared {name} in {flags.FLAGS.data_dir}')


def cli() -> None:
  """The `python -m input_pipelines.openimages_mlperf` command (absl flags, the suite's exit codes)."""
  define_flags()
  cli_lib.run(main, __doc__)


if __name__ == '__main__':
  cli()
