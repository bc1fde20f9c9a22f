"""Generated datasets at realistic sizes (JPEGs of a given source size), as `suite.bench pipeline` reads them."""

import io

import numpy as np
import pytest
from PIL import Image

from input_pipelines import detection, generated_detection, generated_images, image_classification, sources
from suite.common import registry
from suite.common.errors import UserError
from suite.tools import bench, memory

SOURCE_SIZE = 160  # 160 wide, 120 high (4:3): small enough to generate in well under a second.


def _read(encoded: bytes) -> Image.Image:
  image = Image.open(io.BytesIO(encoded))
  image.load()
  return image


def test_tiny_dataset_names_are_unchanged_and_realistic_ones_differ():
  sizes = dict(num_classes=10, image_size=32, num_train=4096, num_eval=512)
  assert generated_images.config_name(**sizes) == 'c10_s32_n4096_e512'
  assert generated_images.config_name(**sizes, source_size=500, encoding='jpeg') == 'c10_s500_n4096_e512_jpeg'
  assert generated_images.config_name(**sizes, encoding='jpeg') == 'c10_s32_n4096_e512_jpeg'
  assert generated_images.source_shape(224, 500) == (375, 500)
  assert generated_images.source_shape(32) == (32, 32)
  with pytest.raises(UserError, match=r'generated\.encoding'):
    generated_images.make_config(**sizes, encoding='webp')


def test_realistic_images_are_jpegs_of_the_source_size_read_into_the_output_size(tmp_path):
  name = generated_images.ensure_generated_images(str(tmp_path), num_classes=10, image_size=64, num_train=8,
                                                  num_eval=2, source_size=SOURCE_SIZE, encoding='jpeg')
  assert name == 'generated_images/c10_s160_n8_e2_jpeg'
  source = sources.open_split(name, 'train', str(tmp_path))
  assert len(source) == 8
  for i in range(len(source)):
    image = _read(source[i]['image'])
    assert (image.format, image.size, image.mode) == ('JPEG', (SOURCE_SIZE, 120), 'RGB')
  # The stored pixels are the class's stripes: decoded, a horizontal-stripe image varies along rows far more than
  # along columns (JPEG's loss is small beside the stripes), a vertical one the other way round.
  for i in range(len(source)):
    record = source[i]
    pixels = np.asarray(_read(record['image']), np.float32).mean(-1)
    along_rows, along_cols = pixels.mean(1).std(), pixels.mean(0).std()
    file_name = record['file_name'].decode() if isinstance(record['file_name'], bytes) else record['file_name']
    assert file_name.endswith('.jpeg')
    index = int(file_name.split('_')[1].split('.')[0])  # Records are shuffled; the file name gives the example.
    horizontal = (index % 10) % 2 == 0  # Example k is drawn from pattern k % num_classes; even ones: horizontal.
    assert (along_rows > 3 * along_cols) if horizontal else (along_cols > 3 * along_rows)
  batch = next(image_classification.train_batches(source, global_batch_size=4, image_size=64, seed=0,
                                                  num_threads=1))
  assert batch['image'].shape == (4, 64, 64, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (4,)


def test_realistic_detection_images_are_jpegs_with_the_drawn_boxes(tmp_path):
  name = generated_detection.ensure_generated_detection(str(tmp_path), num_classes=4, image_size=48, num_train=4,
                                                        num_eval=2, source_size=SOURCE_SIZE, encoding='jpeg')
  assert name == 'generated_detection/c4_s160_n4_e2_jpeg'
  source = sources.open_split(name, 'train', str(tmp_path))
  for i in range(len(source)):
    record = source[i]
    image = _read(record['image'])
    assert (image.format, image.size) == ('JPEG', (SOURCE_SIZE, 120))
    index = int(record['image/id']) - 1  # Records are shuffled; the id gives the example.
    _, objects, masks = generated_detection.draw_example('train', index, num_classes=4, image_size=120,
                                                         width=SOURCE_SIZE)
    np.testing.assert_allclose(record['objects']['bbox'], np.stack([o['bbox'] for o in objects]), atol=1e-6)
    for o, mask in zip(objects, masks):
      rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
      # Normalised by the height for y and by the width for x (non-square canvas).
      np.testing.assert_allclose(o['bbox'], [rows[0] / 120, cols[0] / SOURCE_SIZE, (rows[-1] + 1) / 120,
                                             (cols[-1] + 1) / SOURCE_SIZE], atol=1e-6)
  batch = next(detection.train_batches(source, global_batch_size=2, image_size=96, max_boxes=8, seed=0,
                                       num_threads=1))
  assert batch['image'].shape == (2, 96, 96, 3) and batch['boxes'].shape == (2, 8, 4)


@pytest.mark.parametrize('workload', ['resnet', 'ssd'])
def test_bench_realistic_overrides_name_fields_of_the_tiny_configs(workload):
  config = memory.apply_overrides(registry.get_config(workload, 'tiny'), list(bench.REALISTIC_DATA[workload]))
  assert config.generated.encoding == 'jpeg'
  assert config.generated.source_size == {'resnet': 500, 'ssd': 640}[workload]
  assert config.image_size == {'resnet': 224, 'ssd': 800}[workload]
  assert config.generated.num_train >= config.global_batch_size
