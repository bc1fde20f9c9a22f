"""The optional NVIDIA DALI backend of the image-classification pipeline (config.data_backend='dali').

Without DALI installed (CI: it is the pip extra `dali`, not `test`) only the bad-input tests run; the others skip.
DALI runs here on the CPU (device='cpu'); on a GPU host the same pipeline decodes with device='mixed'.
"""

import io
import os

import numpy as np
import pytest
from PIL import Image

from input_pipelines import dali_images  # Imports DALI only when it makes batches.
from input_pipelines import image_classification as grain_images
from input_pipelines.generated_images import photo_jpeg
from suite.common import registry
from tests.conftest import run_suite

IMAGE_SIZE = 224
# ImageNet-like (height, width): landscape and portrait 4:3, 2:3, a square, and one whose shorter side is below
# IMAGE_SIZE (eval keeps its whole centred square and upsamples it).
SIZES = [(375, 500), (500, 375), (480, 640), (333, 500), (500, 500), (180, 200)]


def _jpeg(pixels_HxWxC: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels_HxWxC).save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


@pytest.fixture(scope='module')
def jpegs():
  """A source (len, [i]) of ImageNet-sized JPEG records, label = index."""
  # Smooth colour waves plus sensor-like noise: detail at every scale, so a crop or scale error shows.
  return [{'image': photo_jpeg(h, w, i), 'label': i} for i, (h, w) in enumerate(SIZES)]


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.abs(a.astype(np.int32) - b.astype(np.int32))


# --- Bad input (no DALI needed) ---


@pytest.mark.parametrize('backend, expected', [
    ('dali', "needs NVIDIA DALI, which is not installed"),
    ('pillow', "unknown --config.data_backend='pillow': use one of grain, dali"),
])
def test_dali_missing_or_unknown_backend_is_one_error_line(backend, expected, tmp_path, monkeypatch):
  # A `nvidia` package whose `dali` fails to import stands for a machine without the extra, DALI installed or not.
  fake = tmp_path / 'no_dali' / 'nvidia'
  (fake / 'dali').mkdir(parents=True)
  (fake / '__init__.py').write_text('')
  (fake / 'dali' / '__init__.py').write_text("raise ImportError('No module named nvidia.dali')\n")
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [str(fake.parent), os.environ.get('PYTHONPATH')])))
  result = run_suite('--workload=resnet', '--scale=tiny', f'--config.data_backend={backend}',
                     f'--data_dir={tmp_path}', f'--output_dir={tmp_path / "out"}')
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
  assert expected in errors[0]
  if backend == 'dali':
    assert '.[dali]' in errors[0] and 'data_backend=grain' in errors[0]


# --- With DALI ---


def _needs_dali():
  pytest.importorskip('nvidia.dali', reason='NVIDIA DALI is not installed (pip extra `dali`)', exc_type=ImportError)


def test_eval_batches_match_the_grain_path(jpegs):
  _needs_dali()
  kwargs = dict(global_batch_size=4, image_size=IMAGE_SIZE, num_threads=2)
  dali = list(dali_images.eval_batches(jpegs, **kwargs))
  grain = list(grain_images.eval_batches(jpegs, **kwargs))
  assert len(dali) == len(grain) == 2  # 6 images: the second batch is padded with two mask-0 zero images.
  for d, g in zip(dali, grain, strict=True):
    assert {k: (v.shape, v.dtype) for k, v in d.items()} == {k: (v.shape, v.dtype) for k, v in g.items()}
    assert d['image'].dtype == np.uint8 and d['image'].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(d['label'], g['label'])
    np.testing.assert_array_equal(d['mask'], g['mask'])
  np.testing.assert_array_equal(dali[1]['mask'], [1, 1, 0, 0])
  assert not dali[1]['image'][2:].any()
  # The same centre crop, resized by two linear filters: PIL's bilinear (its support widened by the downscale
  # factor) and DALI's antialiased linear, from the same libjpeg-turbo decode (no DCT reduction at these sizes:
  # the crops are less than twice IMAGE_SIZE). They differ by rounding, within one grey level almost everywhere
  # (measured: 0.14-0.19 mean per image, 99th percentile 1, at most 4 levels, on the upsampled 180x200 image's
  # border). A crop off by one pixel, or the whole image instead of its 0.875 centre, gives a mean of 10+.
  real = np.concatenate([dali[0]['image'], dali[1]['image'][:2]]), np.concatenate([grain[0]['image'],
                                                                                   grain[1]['image'][:2]])
  diff = _abs_diff(*real)
  assert diff.any()  # Made by DALI, not handed over from the grain path.
  assert diff.mean(axis=(1, 2, 3)).max() < 0.4, diff.mean(axis=(1, 2, 3))
  assert np.mean(diff > 1) < 0.01 and diff.max() <= 8


def test_train_batches_hold_the_grain_paths_examples_crops_and_flips(jpegs):
  _needs_dali()
  kwargs = dict(global_batch_size=4, image_size=IMAGE_SIZE, seed=3, num_threads=2)
  dali, grain = dali_images.train_batches(jpegs, **kwargs), grain_images.train_batches(jpegs, **kwargs)
  diffs = []
  for _ in range(6):  # Four epochs of six images: every image, several crops each.
    d, g = next(dali), next(grain)
    assert set(d) == {'image', 'label'} and d['image'].dtype == np.uint8 and d['label'].dtype == np.int32
    assert d['image'].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3) and d['label'].shape == (4,)
    np.testing.assert_array_equal(d['label'], g['label'])  # The same shuffle.
    diffs.append(_abs_diff(d['image'], g['image']).mean(axis=(1, 2, 3)))
  # The same crop box and flip as grain's; the pixels differ most where PIL decodes a crop at a reduced DCT scale
  # (a crop at least twice IMAGE_SIZE a side): measured 0.15-1.4 mean per image. A wrong box or flip gives 10+.
  diffs = np.concatenate(diffs)
  assert diffs.min() > 0 and diffs.max() < 3 and np.median(diffs) < 0.5, diffs

  # The stream: two processes' local batches together are the one-process global batch, and a stream started
  # at batch 2 (a resumed run) continues the full one; bit for bit, as DALI draws nothing itself.
  one = dali_images.train_batches(jpegs, **kwargs)
  first_three = [next(one) for _ in range(3)]
  halves = [dali_images.train_batches(jpegs, process_index=i, process_count=2, **kwargs) for i in range(2)]
  mine, yours = next(halves[0]), next(halves[1])
  np.testing.assert_array_equal(np.stack([mine['label'], yours['label']], 1).ravel(), first_three[0]['label'])
  np.testing.assert_array_equal(np.stack([mine['image'], yours['image']], 1).reshape(first_three[0]['image'].shape),
                                first_three[0]['image'])
  resumed = next(dali_images.train_batches(jpegs, start_batch=2, **kwargs))
  np.testing.assert_array_equal(resumed['image'], first_three[2]['image'])


def test_train_crops_and_flips_have_the_inception_statistics():
  _needs_dali()
  # A 500x375 left-to-right ramp 0..255: an output's right-minus-left brightness is +-255 x (crop width / 500),
  # its sign the flip.
  height, width = 375, 500
  ramp = np.broadcast_to(np.linspace(0, 255, width)[None, :, None], (height, width, 3)).astype(np.uint8)
  source = [{'image': _jpeg(ramp), 'label': 0}] * 32
  batches = dali_images.train_batches(source, global_batch_size=32, image_size=64, seed=0, num_threads=2)
  images = np.concatenate([next(batches)['image'] for _ in range(4)]).astype(np.float32)  # 128 crops.
  slope = (images[:, :, -1].mean(axis=(1, 2)) - images[:, :, 0].mean(axis=(1, 2))) * (64 / 63) / 255
  flipped = slope < 0
  # Binomial(128, 1/2): 64 +- 5.7; these bounds are 4.5 standard deviations.
  assert 38 <= flipped.sum() <= 90, flipped.sum()
  # Crop width / image width = sqrt(area fraction x aspect ratio x 375/500), area in [0.08, 1], aspect ratio in
  # [3/4, 4/3]: between sqrt(0.08 x 0.75 x 0.75) = 0.21 and 1.
  widths = np.abs(slope)
  assert widths.min() > 0.2 and widths.max() <= 1.02, (widths.min(), widths.max())
  assert widths.std() > 0.1 and 0.4 < np.median(widths) < 0.9, (widths.std(), np.median(widths))


def test_resnet_workload_selects_dali_by_config(data_dir):
  _needs_dali()
  batches = {}
  for backend in ('grain', 'dali'):
    config = registry.get_config('resnet', 'tiny')
    config.data_backend = backend
    config.global_batch_size = 32
    workload = registry.make_workload('resnet', config, 'tiny')
    workload.open_data(data_dir)
    batches[backend] = next(workload.train_batches(0, 0, 1)), next(workload.eval_batches(0, 1))
  for (d, g) in zip(batches['dali'], batches['grain'], strict=True):
    assert {k: (v.shape, v.dtype) for k, v in d.items()} == {k: (v.shape, v.dtype) for k, v in g.items()}
    np.testing.assert_array_equal(d['label'], g['label'])
  (dali_train, dali_eval), (grain_train, grain_eval) = batches['dali'], batches['grain']
  # Train: made by DALI, not grain (their linear filters round differently), yet the same crops and flips: close.
  assert not np.array_equal(dali_train['image'], grain_train['image'])
  assert _abs_diff(dali_train['image'], grain_train['image']).mean() < 3
  # Eval of 32-pixel PNGs at image_size 32: the whole image, no resize: the same lossless decode, bit for bit.
  np.testing.assert_array_equal(dali_eval['image'], grain_eval['image'])
