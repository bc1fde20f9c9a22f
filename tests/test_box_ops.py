"""Hand-computed checks of models/box_ops.py: anchors, IoU, matching, box coding, NMS, post-processing and losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import box_ops


def _iou(a, b):
  return np.asarray(jax.jit(box_ops.iou_matrix)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))


# --- IoU ---


def test_iou_of_known_boxes():
  a = [[0.0, 0.0, 0.5, 0.5]]
  iou = _iou(a, [[0.25, 0.25, 0.75, 0.75], [0.6, 0.6, 0.9, 0.9], [0.0, 0.0, 0.5, 0.5]])
  # Intersection 0.0625, union 0.25 + 0.25 - 0.0625 = 0.4375.
  np.testing.assert_allclose(iou, [[1 / 7, 0.0, 1.0]], rtol=1e-6)


def test_iou_of_zero_area_boxes_is_zero_not_nan():
  iou = _iou([[0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]], [[0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 0.5, 0.5]])
  np.testing.assert_array_equal(iou, np.zeros((2, 2)))


# --- anchors ---


def test_anchor_count_order_and_geometry():
  scales = (1.0, 2**(1 / 3), 2**(2 / 3))
  ratios = (0.5, 1.0, 2.0)
  anchors = box_ops.generate_anchors(64, (8, 16), (8.0, 16.0), ratios, scales)
  assert anchors.shape == (9 * (8 * 8 + 4 * 4), 4) == (720, 4)
  assert anchors.dtype == np.float32
  # Slot 0 = (scale 1, ratio 0.5) at row 0, column 0 of level 0: centre 4 px, h = 8 sqrt(.5), w = 8 / sqrt(.5).
  h, w = 8 * math.sqrt(0.5), 8 / math.sqrt(0.5)
  np.testing.assert_allclose(anchors[0], np.array([4 - h / 2, 4 - w / 2, 4 + h / 2, 4 + w / 2]) / 64, atol=1e-6)
  # Slot 1 = (scale 1, ratio 1): an 8 px square; slot 3 = (scale 2^(1/3), ratio 0.5).
  np.testing.assert_allclose(anchors[1], np.array([0, 0, 8, 8]) / 64, atol=1e-6)
  np.testing.assert_allclose(anchors[3, 2] - anchors[3, 0], 2**(1 / 3) * h / 64, rtol=1e-5)
  # Column-major within a row: anchor 9 is at (row 0, column 1); anchor 8 * 9 at (row 1, column 0).
  centre = lambda b: ((b[0] + b[2]) / 2 * 64, (b[1] + b[3]) / 2 * 64)  # noqa: E731
  np.testing.assert_allclose(centre(anchors[9]), (4, 12), atol=1e-5)
  np.testing.assert_allclose(centre(anchors[72]), (12, 4), atol=1e-5)
  # Level 1 starts after 64 * 9 anchors with a 16 px square at slot 1, centred at 8 px.
  np.testing.assert_allclose(anchors[64 * 9 + 1], np.array([0, 0, 16, 16]) / 64, atol=1e-6)


def test_anchor_grid_rounds_up():
  anchors = box_ops.generate_anchors(100, (32,), (32.0,), (1.0,), (1.0,))
  assert anchors.shape == (16, 4)  # ceil(100 / 32) = 4.


def test_ssd300_default_boxes():
  boxes = box_ops.ssd300_default_boxes()
  assert boxes.shape == (8732, 4) and boxes.dtype == np.float32
  # First box: the 21 px square on the 38x38 map at (0, 0), centre 0.5 / 37.5 (corners not clipped).
  c, s = 0.5 / 37.5, 21 / 300
  np.testing.assert_allclose(boxes[0], [c - s / 2, c - s / 2, c + s / 2, c + s / 2], atol=1e-6)
  # Last box: the 1x1 map's (h, w) = (261/300 * sqrt 2, 261/300 / sqrt 2); h is clamped to 1 before the corners.
  w = 261 / 300 / math.sqrt(2)
  np.testing.assert_allclose(boxes[-1], [0.0, 0.5 - w / 2, 1.0, 0.5 + w / 2], atol=1e-6)


# --- box coding ---


def test_encode_hand_computed():
  anchor = jnp.array([[0.2, 0.2, 0.4, 0.6]])  # h = 0.2, w = 0.4.
  encode = jax.jit(box_ops.encode_boxes, static_argnums=2)
  np.testing.assert_allclose(encode(anchor, anchor, (10.0, 10.0, 5.0, 5.0)), [[0, 0, 0, 0]], atol=1e-6)
  # Shifted right by half the anchor width -> tx = 0.5 * wx; twice as tall (same centre) -> th = wh * log 2.
  shifted = jnp.array([[0.2, 0.4, 0.4, 0.8]])
  np.testing.assert_allclose(encode(shifted, anchor, (10.0, 10.0, 5.0, 5.0)), [[0, 5.0, 0, 0]], atol=1e-5)
  taller = jnp.array([[0.1, 0.2, 0.5, 0.6]])
  np.testing.assert_allclose(encode(taller, anchor, (1.0, 1.0, 1.0, 1.0)), [[0, 0, math.log(2), 0]], atol=1e-6)


def test_encode_of_a_zero_padding_box_is_finite():
  deltas = box_ops.encode_boxes(jnp.zeros((1, 4)), jnp.array([[0.2, 0.2, 0.4, 0.6]]))
  assert bool(jnp.all(jnp.isfinite(deltas)))


@pytest.mark.parametrize('weights', [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_round_trip(weights):
  rng = np.random.default_rng(0)

  def random_boxes(n):
    corner = rng.uniform(0, 0.7, (n, 2))
    return np.concatenate([corner, corner + rng.uniform(0.02, 0.3, (n, 2))], axis=1).astype(np.float32)

  boxes, anchors = jnp.asarray(random_boxes(64)), jnp.asarray(random_boxes(64))
  round_trip = jax.jit(lambda b, a: box_ops.decode_boxes(box_ops.encode_boxes(b, a, weights), a, weights))
  np.testing.assert_allclose(round_trip(boxes, anchors), boxes, atol=1e-5)


def test_decode_clamps_log_size():
  anchor = jnp.array([[0.4, 0.4, 0.5, 0.5]])
  box = box_ops.decode_boxes(jnp.array([[0.0, 0.0, 100.0, 0.0]]), anchor)
  np.testing.assert_allclose(box[0, 2] - box[0, 0], 0.1 * 1000 / 16, rtol=1e-5)


# --- matching ---


def _match(anchors, gts, valid, allow_low_quality):
  fn = jax.jit(lambda a, g, v: box_ops.match_anchors(a, g, v, positive_iou=0.5, negative_iou=0.4,
                                                     allow_low_quality=allow_low_quality))
  return np.asarray(fn(jnp.asarray(anchors, jnp.float32), jnp.asarray(gts, jnp.float32), jnp.asarray(valid)))


def test_match_thresholds_and_padding():
  # Anchors inside the GT [0, 0, 1, 1]: IoU = their area = 0.6, 0.45, 0.3; the last one equals the padded GT row.
  anchors = [[0, 0, 0.6, 1], [0, 0, 0.45, 1], [0, 0, 0.3, 1], [0.7, 0.7, 0.9, 0.9]]
  gts = [[0.7, 0.7, 0.9, 0.9], [0, 0, 1, 1]]
  valid = [False, True]
  np.testing.assert_array_equal(_match(anchors, gts, valid, False), [1, -2, -1, -1])
  # The low-quality rule changes nothing here (GT 1's best anchor is already positive); the padded GT still has none.
  np.testing.assert_array_equal(_match(anchors, gts, valid, True), [1, -2, -1, -1])


def test_match_low_quality_makes_the_best_anchor_positive():
  anchors = [[0, 0, 0.3, 1], [0, 0, 0.2, 1], [0.9, 0.9, 1, 1]]
  gts = [[0, 0, 0, 0], [0, 0, 1, 1]]
  valid = [False, True]
  np.testing.assert_array_equal(_match(anchors, gts, valid, False), [-1, -1, -1])
  np.testing.assert_array_equal(_match(anchors, gts, valid, True), [1, -1, -1])
  # With no valid GT every anchor is background.
  np.testing.assert_array_equal(_match(anchors, gts, [False, False], True), [-1, -1, -1])


# --- NMS and post-processing ---


_NMS_BOXES = [[0.6, 0.6, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5], [0.01, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]]
_NMS_SCORES = [0.7, 0.9, 0.8, 0.95]
_NMS_VALID = [True, True, True, False]  # The invalid box would suppress everything if it counted.


def _nms(classes, max_output=5):
  fn = jax.jit(lambda b, s, c, v: box_ops.batched_nms(b, s, c, v, iou_threshold=0.5, max_output=max_output))
  indices, valid = fn(jnp.array(_NMS_BOXES), jnp.array(_NMS_SCORES), jnp.array(classes, jnp.int32),
                      jnp.array(_NMS_VALID))
  assert indices.shape == valid.shape == (max_output,) and indices.dtype == jnp.int32
  return np.asarray(indices), np.asarray(valid)


def test_nms_suppresses_the_lower_scored_overlap_of_one_class():
  indices, valid = _nms([1, 1, 1, 1])
  np.testing.assert_array_equal(valid, [True, True, False, False, False])
  np.testing.assert_array_equal(indices[valid], [1, 0])  # Box 2 (IoU 0.98 with box 1, lower score) is gone.


def test_nms_keeps_overlapping_boxes_of_different_classes():
  indices, valid = _nms([1, 2, 3, 2])
  np.testing.assert_array_equal(valid, [True, True, True, False, False])
  np.testing.assert_array_equal(indices[valid], [1, 2, 0])  # Sorted by descending score.


def test_nms_stops_at_max_output():
  indices, valid = _nms([1, 2, 3, 2], max_output=2)
  np.testing.assert_array_equal(indices, [1, 2])
  assert valid.all()


def test_postprocess_sigmoid():
  anchors = jnp.array([[0.0, 0.0, 0.5, 0.5], [0.01, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
  # Anchors 0 and 1 overlap: class 0 keeps anchor 0 only; class 1 on anchor 1 survives (another class);
  # anchor 2 scores under the threshold everywhere.
  logits = jnp.array([[3.0, -9.0], [2.0, 1.0], [-9.0, -9.0]])
  fn = jax.jit(lambda logits, d, a: box_ops.postprocess_detections(
      logits, d, a, score_threshold=0.05, pre_nms_top_k=4, iou_threshold=0.5, max_detections=5,
      weights=(1.0, 1.0, 1.0, 1.0), activation='sigmoid'))
  out = fn(logits, jnp.zeros((3, 4)), anchors)
  np.testing.assert_array_equal(out['valid'], [True, True, False, False, False])
  np.testing.assert_array_equal(out['classes'][:2], [0, 1])
  np.testing.assert_allclose(out['scores'][:2], jax.nn.sigmoid(jnp.array([3.0, 1.0])), rtol=1e-6)
  np.testing.assert_allclose(out['boxes'][:2], anchors[:2], atol=1e-6)
  assert float(jnp.sum(jnp.abs(out['boxes'][2:]))) == 0.0


def test_postprocess_softmax_skips_background_and_batches_with_vmap():
  anchors = jnp.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
  # Anchor 0 is background; anchor 1 is class 2 (logit column 2). Box deltas move anchor 1 out of the image: clipped.
  logits = jnp.array([[9.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
  deltas = jnp.array([[0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
  fn = jax.jit(jax.vmap(lambda logits, d: box_ops.postprocess_detections(
      logits, d, anchors, score_threshold=0.5, pre_nms_top_k=10, iou_threshold=0.5, max_detections=3,
      weights=(10.0, 10.0, 5.0, 5.0), activation='softmax')))
  out = fn(logits[None], deltas[None])
  np.testing.assert_array_equal(out['valid'], [[True, False, False]])
  assert int(out['classes'][0, 0]) == 2
  np.testing.assert_allclose(out['boxes'][0, 0], [0.75, 0.5, 1.0, 1.0], atol=1e-6)


# --- losses ---


def test_sigmoid_focal_loss_hand_computed():
  loss = jax.jit(box_ops.sigmoid_focal_loss)(jnp.array([0.0, 2.0]), jnp.array([1.0, 0.0]))
  # Logit 0, target 1: p_t = 0.5, CE = log 2, alpha_t = 0.25.
  expected_pos = 0.25 * 0.5**2 * math.log(2)
  # Logit 2, target 0: p = sigmoid(2), p_t = 1 - p, CE = log(1 + e^2), alpha_t = 0.75.
  p = 1 / (1 + math.exp(-2))
  expected_neg = 0.75 * p**2 * math.log1p(math.exp(2))
  np.testing.assert_allclose(loss, [expected_pos, expected_neg], rtol=1e-6)
  assert expected_pos == pytest.approx(0.0433217, abs=1e-7)


def test_smooth_l1():
  x = jnp.array([-2.0, -0.5, 0.0, 0.5, 2.0])
  np.testing.assert_allclose(box_ops.smooth_l1(x, 1.0), [1.5, 0.125, 0.0, 0.125, 1.5])
  np.testing.assert_allclose(box_ops.smooth_l1(x, 0.0), [2.0, 0.5, 0.0, 0.5, 2.0])
  grad = jax.jit(jax.grad(lambda v: jnp.sum(box_ops.smooth_l1(v, 0.0))))(x)
  assert bool(jnp.all(jnp.isfinite(grad)))
