"""Per-image operations shared by the input pipelines (numpy/PIL; pure functions of their inputs)."""

import math

import numpy as np
from PIL import Image

# ImageNet channel statistics in 0-255 units (MLPerf ResNet reference).
IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
IMAGENET_STD = np.array([58.395, 57.12, 57.375], np.float32)


def normalize(pixels_HxWx3: np.ndarray) -> np.ndarray:
  """uint8 RGB -> float32, ImageNet mean/std normalised."""
  return (pixels_HxWx3.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD


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
