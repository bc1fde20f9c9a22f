"""Static-shape, jit-able box arithmetic for the detection workloads (RetinaNet and SSD300).

Anchors, IoU, anchor matching, box coding, class-aware NMS, post-processing and the losses' elementwise terms.
Boxes are normalised to [0, 1] and ordered (ymin, xmin, ymax, xmax), the TFDS `BBoxFeature` order; box deltas are
ordered the same way, (ty, tx, th, tw). Every function on device keeps its shapes static (padding plus a validity
mask) so a workload's train and eval steps compile once.
"""

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# torchvision's BoxCoder clamp on dh/dw before exp(): no decoded box grows by more than 1000/16 over its anchor.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)

# Matcher codes, as in torchvision's `det_utils.Matcher`.
BACKGROUND = -1
IGNORE = -2


# --- anchors (numpy, computed once on the host) ---


def generate_anchors(image_size: int, strides: Sequence[int], sizes: Sequence[float],
                     aspect_ratios: Sequence[float], scales: Sequence[float]) -> np.ndarray:
  """RetinaNet anchors for a square `image_size` image, float32 [A, 4] (normalised ymin, xmin, ymax, xmax).

  Level l has a ceil(image_size / strides[l]) square grid; the anchor at (row i, column j) is centred at
  ((i + 0.5) * stride, (j + 0.5) * stride) pixels, and has area (sizes[l] * scale)**2 and height / width = ratio.
  Order of A (the order the heads' outputs are flattened in, see `models/retinanet.py`): level-major, then row,
  then column, then the anchor slot at that location, scale-major: slot = scale_index * len(aspect_ratios) +
  ratio_index. So A = sum_l ceil(image_size / strides[l])**2 * len(scales) * len(aspect_ratios). Anchors are not
  clipped to the image (as in torchvision).
  """
  if len(strides) != len(sizes):
    raise ValueError(f'one anchor size per level: {len(strides)} strides but {len(sizes)} sizes')
  # (scale, ratio) pairs in slot order; h * w = (size * scale)**2 and h / w = ratio.
  pairs = list(itertools.product(scales, aspect_ratios))
  unit_h_S = np.array([s * math.sqrt(r) for s, r in pairs])
  unit_w_S = np.array([s / math.sqrt(r) for s, r in pairs])
  levels = []
  for stride, size in zip(strides, sizes):
    grid = math.ceil(image_size / stride)
    centres_G = (np.arange(grid) + 0.5) * stride
    cy_GxGxS = np.broadcast_to(centres_G[:, None, None], (grid, grid, len(pairs)))
    cx_GxGxS = np.broadcast_to(centres_G[None, :, None], (grid, grid, len(pairs)))
    half_h_S, half_w_S = 0.5 * size * unit_h_S, 0.5 * size * unit_w_S
    boxes_GxGxSx4 = np.stack([cy_GxGxS - half_h_S, cx_GxGxS - half_w_S, cy_GxGxS + half_h_S, cx_GxGxS + half_w_S],
                             axis=-1)
    levels.append(boxes_GxGxSx4.reshape(-1, 4))
  return (np.concatenate(levels) / image_size).astype(np.float32)


def ssd300_default_boxes() -> np.ndarray:
  """The 8732 default boxes of the MLPerf SSD300 reference (`DefaultBoxes` in its utils.py), float32 [8732, 4].

  Feature maps 38, 19, 10, 5, 3, 1 with steps 8, 16, 32, 64, 100, 300 and scales 21..315 of a 300-pixel image; per
  location: the square sk, the square sqrt(sk * sk_next), then (w, h) = (sk * sqrt(a), sk / sqrt(a)) and its
  transpose for each aspect ratio a. As the reference does, (cx, cy, w, h) is clamped to [0, 1] *before* the
  conversion to corners, so corners of the smallest border boxes can lie slightly outside [0, 1].
  Order: level-major, then row, column, default box -- the order `models/ssd300.py` flattens its heads in (the
  PyTorch reference puts the default box before row and column; only consistency with the model matters).
  """
  fig_size = 300
  feat_sizes = (38, 19, 10, 5, 3, 1)
  steps = (8, 16, 32, 64, 100, 300)
  scales = (21, 45, 99, 153, 207, 261, 315)
  aspect_ratios = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
  boxes = []
  for level, feat in enumerate(feat_sizes):
    fk = fig_size / steps[level]
    sk1 = scales[level] / fig_size
    sk2 = scales[level + 1] / fig_size
    sizes_wh = [(sk1, sk1), (math.sqrt(sk1 * sk2),) * 2]
    for alpha in aspect_ratios[level]:
      w, h = sk1 * math.sqrt(alpha), sk1 / math.sqrt(alpha)
      sizes_wh += [(w, h), (h, w)]
    for i, j in itertools.product(range(feat), repeat=2):
      for w, h in sizes_wh:
        boxes.append(((j + 0.5) / fk, (i + 0.5) / fk, w, h))
  cxcywh_Ax4 = np.clip(np.array(boxes, np.float64), 0.0, 1.0)
  cx, cy, w, h = cxcywh_Ax4.T
  corners_Ax4 = np.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1).astype(np.float32)
  assert corners_Ax4.shape == (8732, 4), corners_Ax4.shape
  return corners_Ax4


def tf_ssd_anchors(feature_sizes: Sequence[int], min_scale: float = 0.2, max_scale: float = 0.95,
                   aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3),
                   interpolated_scale_aspect_ratio: float = 1.0) -> np.ndarray:
  """The TF Object Detection API's SSD anchors (`create_ssd_anchors` with reduce_boxes_in_lowest_layer, a square
  image and base anchor size 1), float32 [A, 4] normalised (ymin, xmin, ymax, xmax), as SSD-MobileNet-v1 uses them
  (the reference's port: mlcommons/inference vision/classification_and_detection/python/models/anchor_generator.py
  at 0cde9777).

  Layer l of L has scale s_l = min_scale + (max_scale - min_scale) * l / (L - 1) (and s_L = 1); its boxes are
  (0.1, ratio 1), (s_0, 2), (s_0, 0.5) on layer 0, and (s_l, r) for each aspect ratio r plus (sqrt(s_l * s_l+1), 1)
  elsewhere; a box of scale s and ratio r is s / sqrt(r) high and s * sqrt(r) wide. Centres sit at
  ((i + 0.5) / n, (j + 0.5) / n) on an n x n grid. Order: layer, row, column, box (TF's tiling order). Not clipped.
  """
  num_layers = len(feature_sizes)
  scales = [min_scale + (max_scale - min_scale) * i / (num_layers - 1) for i in range(num_layers)] + [1.0]
  levels = []
  for layer, n in enumerate(feature_sizes):
    scale, scale_next = scales[layer], scales[layer + 1]
    if layer == 0:
      specs = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
    else:
      specs = [(scale, r) for r in aspect_ratios] + [(math.sqrt(scale * scale_next), interpolated_scale_aspect_ratio)]
    heights_S = np.array([s / math.sqrt(r) for s, r in specs])
    widths_S = np.array([s * math.sqrt(r) for s, r in specs])
    centres_G = (np.arange(n) + 0.5) / n
    cy = np.broadcast_to(centres_G[:, None, None], (n, n, len(specs)))
    cx = np.broadcast_to(centres_G[None, :, None], (n, n, len(specs)))
    levels.append(np.stack([cy - 0.5 * heights_S, cx - 0.5 * widths_S, cy + 0.5 * heights_S, cx + 0.5 * widths_S],
                           axis=-1).reshape(-1, 4))
  return np.concatenate(levels).astype(np.float32)


def ssd_r34_default_boxes(fig_size: int, feature_sizes: Sequence[int],
                          num_defaults: Sequence[int] = (4, 6, 6, 6, 4, 4)) -> np.ndarray:
  """SSD-ResNet34's default boxes (`dboxes_R34_coco` of mlcommons/inference
  vision/classification_and_detection/python/models/ssd_r34.py at 0cde9777), float32 [A, 4] normalised
  (ymin, xmin, ymax, xmax); 15,130 at fig_size 1200 with maps 50, 25, 13, 7, 3, 3.

  Integer arithmetic as the reference: steps int(fig / n), fk = fig // step, scales int(s * fig / 300) for s in
  21, 45, 99, 153, 207, 261, 315; per location the square sk, the square sqrt(sk * sk_next), then (w, h) = (sk *
  sqrt(a), sk / sqrt(a)) and its transpose per aspect ratio (2 on maps with 4 boxes, 2 and 3 on maps with 6);
  (cx, cy, w, h) clamped to [0, 1] before the conversion to corners. Order: map, row, column, box -- the order
  `models/ssd300.py` flattens its heads in (the reference puts the box before row and column).
  """
  scales = [int(s * fig_size / 300) for s in (21, 45, 99, 153, 207, 261, 315)]
  boxes = []
  for level, n in enumerate(feature_sizes):
    fk = fig_size // int(fig_size / n)
    sk1, sk2 = scales[level] / fig_size, scales[level + 1] / fig_size
    sizes_wh = [(sk1, sk1), (math.sqrt(sk1 * sk2),) * 2]
    for alpha in ((2,) if num_defaults[level] == 4 else (2, 3)):
      w, h = sk1 * math.sqrt(alpha), sk1 / math.sqrt(alpha)
      sizes_wh += [(w, h), (h, w)]
    for i, j in itertools.product(range(n), repeat=2):
      for w, h in sizes_wh:
        boxes.append(((j + 0.5) / fk, (i + 0.5) / fk, w, h))
  cx, cy, w, h = np.clip(np.array(boxes, np.float64), 0.0, 1.0).T
  return np.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1).astype(np.float32)


# --- IoU and matching ---


def box_area(boxes_Nx4: jax.Array) -> jax.Array:
  """Areas [N] of (ymin, xmin, ymax, xmax) boxes; inverted boxes count as empty."""
  return (jnp.maximum(boxes_Nx4[..., 2] - boxes_Nx4[..., 0], 0.0)
          * jnp.maximum(boxes_Nx4[..., 3] - boxes_Nx4[..., 1], 0.0))


def iou_matrix(boxes_a_Nx4: jax.Array, boxes_b_Mx4: jax.Array) -> jax.Array:
  """Pairwise IoU [N, M]; 0 where the union is empty (two zero-area boxes), never NaN."""
  top_left_NxMx2 = jnp.maximum(boxes_a_Nx4[:, None, :2], boxes_b_Mx4[None, :, :2])
  bottom_right_NxMx2 = jnp.minimum(boxes_a_Nx4[:, None, 2:], boxes_b_Mx4[None, :, 2:])
  hw_NxMx2 = jnp.maximum(bottom_right_NxMx2 - top_left_NxMx2, 0.0)
  inter_NxM = hw_NxMx2[..., 0] * hw_NxMx2[..., 1]
  union_NxM = box_area(boxes_a_Nx4)[:, None] + box_area(boxes_b_Mx4)[None, :] - inter_NxM
  safe_union_NxM = jnp.where(union_NxM > 0, union_NxM, 1.0)
  return jnp.where(union_NxM > 0, inter_NxM / safe_union_NxM, 0.0)


def match_anchors(anchors_Ax4: jax.Array, gt_boxes_Gx4: jax.Array, gt_valid_G: jax.Array, *, positive_iou: float,
                  negative_iou: float, allow_low_quality: bool) -> jax.Array:
  """torchvision's `Matcher`: the index [A] (int32) of each anchor's matched ground-truth box, or BACKGROUND (-1)
  where its best IoU is below `negative_iou`, or IGNORE (-2) where it is in [negative_iou, positive_iou).

  `allow_low_quality` also makes positive every anchor that is some GT's best match (ties included), matched to its
  own best GT as in torchvision. Unlike torchvision, a GT that overlaps no anchor at all (best IoU 0) creates no
  low-quality matches (torchvision would match every anchor to it). Padded rows (`gt_valid_G` False) never match.
  """
  iou_GxA = iou_matrix(gt_boxes_Gx4, anchors_Ax4)
  # -1 keeps padded rows out of the argmax below (real IoUs are >= 0) and out of each GT's best IoU.
  iou_GxA = jnp.where(gt_valid_G[:, None], iou_GxA, -1.0)
  best_iou_A = jnp.max(iou_GxA, axis=0)
  best_gt_A = jnp.argmax(iou_GxA, axis=0).astype(jnp.int32)
  matched_A = jnp.where(best_iou_A >= positive_iou, best_gt_A,
                        jnp.where(best_iou_A >= negative_iou, IGNORE, BACKGROUND)).astype(jnp.int32)
  if allow_low_quality:
    best_per_gt_G = jnp.max(iou_GxA, axis=1)
    is_best_GxA = (iou_GxA == best_per_gt_G[:, None]) & (best_per_gt_G[:, None] > 0) & gt_valid_G[:, None]
    matched_A = jnp.where(jnp.any(is_best_GxA, axis=0), best_gt_A, matched_A)
  return matched_A


# --- box coding ---


def _centre_size(boxes_Nx4: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  height = boxes_Nx4[..., 2] - boxes_Nx4[..., 0]
  width = boxes_Nx4[..., 3] - boxes_Nx4[..., 1]
  return boxes_Nx4[..., 0] + 0.5 * height, boxes_Nx4[..., 1] + 0.5 * width, height, width


def encode_boxes(boxes_Ax4: jax.Array, anchors_Ax4: jax.Array,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """Regression targets [A, 4] = (wy * dy / ha, wx * dx / wa, wh * log(h / ha), ww * log(w / wa)).

  `weights` is (wy, wx, wh, ww): (1, 1, 1, 1) for RetinaNet, (10, 10, 5, 5) for SSD300 (the reference's
  1 / scale_xy, 1 / scale_wh). Degenerate boxes (e.g. the zero padding rows gathered for background anchors) get
  large but finite targets, so masking them out of a loss cannot produce inf * 0 = NaN.
  """
  wy, wx, wh, ww = weights
  cy, cx, h, w = _centre_size(boxes_Ax4)
  acy, acx, ah, aw = _centre_size(anchors_Ax4)
  tiny = 1e-8
  h, w = jnp.maximum(h, tiny), jnp.maximum(w, tiny)
  ah, aw = jnp.maximum(ah, tiny), jnp.maximum(aw, tiny)
  return jnp.stack([wy * (cy - acy) / ah, wx * (cx - acx) / aw, wh * jnp.log(h / ah), ww * jnp.log(w / aw)],
                   axis=-1)


def decode_boxes(deltas_Ax4: jax.Array, anchors_Ax4: jax.Array,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """Inverse of `encode_boxes`: boxes [A, 4] (not clipped); dh, dw are clamped at log(1000 / 16) like torchvision."""
  wy, wx, wh, ww = weights
  acy, acx, ah, aw = _centre_size(anchors_Ax4)
  dy, dx = deltas_Ax4[..., 0] / wy, deltas_Ax4[..., 1] / wx
  dh = jnp.minimum(deltas_Ax4[..., 2] / wh, BBOX_XFORM_CLIP)
  dw = jnp.minimum(deltas_Ax4[..., 3] / ww, BBOX_XFORM_CLIP)
  cy, cx = acy + dy * ah, acx + dx * aw
  h, w = ah * jnp.exp(dh), aw * jnp.exp(dw)
  return jnp.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


# --- NMS and post-processing ---


def batched_nms(boxes_Nx4: jax.Array, scores_N: jax.Array, classes_N: jax.Array, valid_N: jax.Array, *,
                iou_threshold: float, max_output: int) -> tuple[jax.Array, jax.Array]:
  """Greedy class-aware NMS: `(indices_K, valid_K)` with K = max_output, indices into N by descending score.

  A box is dropped when its IoU with a kept, higher-scored box of the same class is > `iou_threshold` (torchvision's
  rule). Classes are kept apart by masking the IoU with class equality rather than torchvision's coordinate offset,
  which would lose float32 precision for large class ids. Slots past the kept boxes have valid False (index 0).
  IoU rows are computed inside the loop (O(N) memory, not N x N) and the loop stops once K boxes are kept.
  """
  num = boxes_Nx4.shape[0]
  order_N = jnp.argsort(jnp.where(valid_N, -scores_N, jnp.inf), stable=True)
  boxes_Nx4, classes_N, valid_N = boxes_Nx4[order_N], classes_N[order_N], valid_N[order_N]

  def body(carry):
    i, num_kept, suppressed_N, keep_N = carry
    keep_i = valid_N[i] & ~suppressed_N[i]
    overlaps_N = (iou_matrix(boxes_Nx4[i][None], boxes_Nx4)[0] > iou_threshold) & (classes_N == classes_N[i])
    return (i + 1, num_kept + keep_i.astype(jnp.int32), suppressed_N | (keep_i & overlaps_N),
            keep_N.at[i].set(keep_i))

  def cond(carry):
    i, num_kept, _, _ = carry
    return (i < num) & (num_kept < max_output)

  init = (jnp.int32(0), jnp.int32(0), jnp.zeros(num, bool), jnp.zeros(num, bool))
  _, num_kept, _, keep_N = jax.lax.while_loop(cond, body, init)
  # The kept positions are already in score order; `size` makes the result static.
  (positions_K,) = jnp.nonzero(keep_N, size=max_output, fill_value=0)
  valid_K = jnp.arange(max_output) < num_kept
  return jnp.where(valid_K, order_N[positions_K], 0).astype(jnp.int32), valid_K


def postprocess_detections(class_logits_AxC: jax.Array, box_deltas_Ax4: jax.Array, anchors_Ax4: jax.Array, *,
                           score_threshold: float, pre_nms_top_k: int, iou_threshold: float, max_detections: int,
                           weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                           activation: str = 'sigmoid') -> dict[str, jax.Array]:
  """Detections for ONE image (vmap for a batch): dict of boxes [K, 4], scores [K], classes [K] int32, valid [K]
  with K = max_detections, sorted by descending score.

  'sigmoid' (RetinaNet): one score per (anchor, class); classes are logit columns. 'softmax' (SSD300): column 0 is
  the background and is never detected; classes keep the logit column index, so they start at 1. The top
  `pre_nms_top_k` (anchor, class) pairs with score > `score_threshold` over all levels are decoded, clipped to
  [0, 1] and passed through class-aware NMS. (torchvision's RetinaNet takes its top-k per pyramid level instead.)
  """
  num_columns = class_logits_AxC.shape[-1]
  if activation == 'sigmoid':
    scores_AxC = jax.nn.sigmoid(class_logits_AxC)
    first_class = 0
  elif activation == 'softmax':
    scores_AxC = jax.nn.softmax(class_logits_AxC, axis=-1)[:, 1:]
    first_class = 1
  elif activation == 'sigmoid_background':  # SSD-MobileNet (TF): sigmoid scores, column 0 the background.
    scores_AxC = jax.nn.sigmoid(class_logits_AxC)[:, 1:]
    first_class = 1
  else:
    raise ValueError(f"activation must be 'sigmoid', 'softmax' or 'sigmoid_background', not {activation!r}")
  num_classes = num_columns - first_class
  flat_scores = scores_AxC.reshape(-1)
  above = flat_scores > score_threshold
  k = min(pre_nms_top_k, flat_scores.shape[0])
  top_scores_N, top_flat_N = jax.lax.top_k(jnp.where(above, flat_scores, -1.0), k)
  candidate_valid_N = above[top_flat_N]
  anchor_N = top_flat_N // num_classes
  classes_N = (top_flat_N % num_classes + first_class).astype(jnp.int32)
  boxes_Nx4 = jnp.clip(decode_boxes(box_deltas_Ax4[anchor_N], anchors_Ax4[anchor_N], weights), 0.0, 1.0)
  keep_K, valid_K = batched_nms(boxes_Nx4, top_scores_N, classes_N, candidate_valid_N, iou_threshold=iou_threshold,
                                max_output=max_detections)
  return {'boxes': jnp.where(valid_K[:, None], boxes_Nx4[keep_K], 0.0),
          'scores': jnp.where(valid_K, top_scores_N[keep_K], 0.0),
          'classes': jnp.where(valid_K, classes_N[keep_K], 0).astype(jnp.int32),
          'valid': valid_K}


# --- elementwise loss terms ---


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float = 0.25, gamma: float = 2.0) -> jax.Array:
  """Elementwise focal loss, torchvision.ops.sigmoid_focal_loss with reduction='none' (the MLPerf RetinaNet loss):
  BCE(logits, targets) * (1 - p_t)**gamma * alpha_t, with alpha_t = alpha for targets 1 and 1 - alpha for 0
  (no alpha weighting when alpha < 0)."""
  p = jax.nn.sigmoid(logits)
  # softplus(x) - x * t is BCE-with-logits written to stay finite for large |x|.
  ce = jax.nn.softplus(logits) - logits * targets
  p_t = p * targets + (1 - p) * (1 - targets)
  loss = ce * (1 - p_t) ** gamma
  if alpha >= 0:
    loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
  return loss


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
  """Elementwise smooth L1 of a difference `x`, torchvision/fvcore's form: 0.5 * x**2 / beta where |x| < beta,
  else |x| - 0.5 * beta; beta < 1e-5 gives plain L1 (torchvision RetinaNet's default 'l1' box loss; SSD300 uses
  beta = 1, PyTorch's SmoothL1Loss)."""
  abs_x = jnp.abs(x)
  if beta < 1e-5:  # A static branch: a where() with 0.5 * x**2 / 0 would make NaN gradients.
    return abs_x
  return jnp.where(abs_x < beta, 0.5 * x * x / beta, abs_x - 0.5 * beta)
