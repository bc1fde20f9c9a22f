"""Inference precision: the forward in float32, bfloat16 or int8 (static post-training quantisation with qwix).

int8 follows qwix's static-range recipe: the model is wrapped once with qwix's QAT provider to collect activation
statistics (`quant_stats`) over calibration samples, then once with its PTQ provider, whose parameter tree holds
int8 weights with a float32 scale per output channel and a float32 scale per quantised activation (the mean over
the calibration samples of each sample's absolute maximum). Every convolution and dense layer then runs as an
int8 x int8 op with an int32 accumulator, rescaled to float32; everything else (batch norm, pooling, the heads'
post-processing) stays as the float model computes it.

It is generic over the linen workloads whose inference hook calls `self.model.apply({'params': ..., **model_state},
...)`: the workload's own `predict` runs over a shallow copy of the workload whose `model` is the wrapped one.
"""

import copy
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from suite.common.errors import UserError
from suite.workloads.base import Workload

PRECISIONS = ('f32', 'bf16', 'int8')
COMPUTE_DTYPES = {'f32': jnp.float32, 'bf16': jnp.bfloat16, 'int8': jnp.float32}
# Default calibration set of a tiny run: the first samples of the train split, as many as MLPerf Inference's
# ImageNet lists name (calibration/ImageNet/cal_image_list_option_1.txt in mlcommons/inference at 8682a270:
# 500 validation images, ILSVRC2012_val_*.JPEG; its README: use at most one of the lists).
DEFAULT_CALIBRATION_COUNT = 500
# Calibration batch: the samples go through the forward at most this many at a time, in batches of one size (qwix
# averages the batches' mean statistics, so equal batches weigh every sample equally, and one executable runs them).
CALIBRATION_BATCH = 64


def check_precision(precision: str | None) -> None:
  if precision is not None and precision not in PRECISIONS:
    raise UserError(f"--precision={precision} is not one of {', '.join(PRECISIONS)}")


def _rules():
  import qwix  # pylint: disable=import-outside-toplevel
  # Every conv and dense op: int8 weights (absmax per output channel) and int8 inputs with a static absmax scale.
  return [qwix.QuantizationRule(module_path='.*', weight_qtype=jnp.int8, act_qtype=jnp.int8, act_static_scale=True,
                                weight_calibration_method='absmax', act_calibration_method='absmax')]


def with_model(workload: Workload, model) -> Workload:
  """A shallow copy of the workload whose hooks run `model` (data sources and config shared)."""
  other = copy.copy(workload)
  other.model = model
  return other


def with_compute_dtype(workload: Workload, precision: str) -> Workload:
  """The workload with its model computing in the precision's float dtype (parameters keep their dtype)."""
  model = getattr(workload, 'model', None)
  if model is None or not dataclasses.is_dataclass(model) or 'dtype' not in {
      f.name for f in dataclasses.fields(model)}:
    raise UserError(f'--precision={precision} needs a flax linen model with a `dtype` field; '
                    f'{workload.benchmark} has none: leave --precision out')
  return with_model(workload, model.clone(dtype=COMPUTE_DTYPES[precision]))


def _calibration_provider():
  """qwix's QAT provider, whose static-scale ops record `quant_stats`, with its convolution's forward called
  directly: qwix 0.1.8 records a conv's statistics inside the op's custom_vjp, where the flax variable update
  leaks a tracer (dot_general records them outside); calibration never differentiates, so the VJP is not needed."""
  import qwix  # pylint: disable=import-outside-toplevel
  from qwix._src.core import conv_general_qt  # pylint: disable=import-outside-toplevel

  class CalibrationProvider(qwix.QtProvider):

    def conv_general_dilated(self, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                             dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                             preferred_element_type=None, out_sharding=None):
      rule, op_id = self._get_current_rule_and_op_id('conv_general_dilated', only_rule=False)
      if rule is None or rule.weight_qtype is None:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            batch_group_count=batch_group_count, precision=precision, preferred_element_type=preferred_element_type,
            out_sharding=out_sharding)
      config = self._create_conv_general_qt_config(rule, op_id, lhs, rhs)
      out, _ = conv_general_qt.conv_general_qt_fwd(lhs, rhs, config, window_strides, padding, lhs_dilation,
                                                   rhs_dilation, dimension_numbers, feature_group_count,
                                                   batch_group_count, out_sharding)
      return out

  return CalibrationProvider(_rules())


class _Recorder:
  """Stands in for a workload's linen model: forwards `apply`, with `mutable` / `init` added, and keeps what the
  flax call returned beside the output (the workload's hook returns only the output)."""

  def __init__(self, model, mode: str):
    self.model, self.mode, self.variables = model, mode, None

  def apply(self, variables, *args, **kwargs):
    if self.mode == 'init':
      out, self.variables = self.model.init_with_output(jax.random.key(0), *args, **kwargs)
    else:
      out, self.variables = self.model.apply(variables, *args, mutable=['quant_stats'], **kwargs)
    return out

  def __getattr__(self, name):
    return getattr(self.model, name)


def calibrate(workload: Workload, params, model_state, batches: Iterator[np.ndarray]) -> dict:
  """qwix's activation statistics of the float32 model over the calibration batches (`quant_stats`)."""
  import qwix  # pylint: disable=import-outside-toplevel
  float_workload = with_compute_dtype(workload, 'int8')
  recorder = _Recorder(qwix.quantize_model(float_workload.model, _calibration_provider()), 'calibrate')
  calibrating = with_model(float_workload, recorder)

  @jax.jit
  def step(params, model_state, stats, images):
    calibrating.predict(params, {**model_state, 'quant_stats': stats}, images)
    return recorder.variables['quant_stats']

  # On one device: statistics need no mesh, and a few calibration batches spread over many devices cost more in
  # transfers than they gain.
  params, model_state = jax.device_put(jax.device_get((params, model_state)), jax.devices()[0])
  stats = None
  for images in batches:
    if stats is None:  # Zero statistics of the right structure, so that every batch runs one executable.
      stats = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), jax.eval_shape(step, params, model_state, {},
                                                                                images))
    # Host statistics each time (a few floats a layer): the same argument placement every call, no recompile.
    stats = jax.device_get(step(params, model_state, stats, images))
  if stats is None:
    raise UserError('the calibration set is empty: pass a --calibration_list with at least one sample')
  return stats


def quantize(workload: Workload, params, model_state, stats: dict) -> tuple[Workload, Any]:
  """(the workload running the int8 model, its parameters: int8 weights and float32 scales)."""
  import qwix  # pylint: disable=import-outside-toplevel
  float_workload = with_compute_dtype(workload, 'int8')
  recorder = _Recorder(qwix.quantize_model(float_workload.model, qwix.PtqProvider(_rules())), 'init')
  initializing = with_model(float_workload, recorder)
  image = workload.batch_shapes(1, train=False)[workload.inference_input_key]
  # The PTQ model's parameter tree (abstract): which arrays are quantised, and how.
  def init(images):
    initializing.predict(None, {}, images)
    return recorder.variables['params']

  abstract = jax.eval_shape(init, image)
  # One executable rather than an op-by-op dispatch of every kernel's quantisation.
  # A tree fresh from `init` holds flax's partitioning boxes; a restored one plain arrays: qwix takes the latter.
  qparams = jax.jit(lambda params: qwix.quantize_params(params, abstract, stats))(nn.unbox(params))
  return with_model(float_workload, recorder.model), qparams


def for_precision(workload: Workload, precision: str | None, params, model_state,
                  calibration: Iterator[np.ndarray] | None = None) -> tuple[Workload, Any]:
  """(workload whose `predict` is the forward at `precision`, the parameters it takes); None: unchanged."""
  check_precision(precision)
  if precision is None:
    return workload, params
  if precision != 'int8':
    return with_compute_dtype(workload, precision), params
  if calibration is None:
    raise UserError('--precision=int8 needs calibration samples: pass --calibration_list=FILE')
  return quantize(workload, params, model_state, calibrate(workload, params, model_state, calibration))


def check_options(precision: str | None, calibration_list: str | None, scale: str) -> None:
  """Bad precision flags fail before any work: an unknown precision, a missing list, a full run with no list."""
  check_precision(precision)
  if calibration_list and precision != 'int8':
    raise UserError(f"--calibration_list is for --precision=int8 (not {precision or 'the default'}): drop it or "
                    'pass --precision=int8')
  if precision == 'int8':
    if calibration_list:
      read_calibration_list(calibration_list)
    elif scale != 'tiny':
      raise UserError('--precision=int8 needs --calibration_list=FILE at --scale=full: the samples whose '
                      "activations set the int8 scales (MLPerf's calibration/ImageNet/cal_image_list_option_1.txt)")


def prepare(workload: Workload, precision: str | None, calibration_list: str | None, mesh, params,
            model_state) -> tuple[Workload, Any, dict]:
  """(workload whose `predict` is the forward at `precision`, its parameters laid out on the mesh, what was done)."""
  from suite.common import sharding  # pylint: disable=import-outside-toplevel
  check_precision(precision)
  if precision != 'int8':
    return *for_precision(workload, precision, params, model_state), {'precision': precision}
  entries = read_calibration_list(calibration_list) if calibration_list else None
  split, indices = calibration_samples(workload, entries)
  qworkload, qparams = for_precision(workload, precision, params, model_state,
                                     calibration_batches(workload, split, indices))
  # The scales come from host statistics: every array of the tree goes where the executables expect it.
  qparams = jax.device_put(qparams, sharding.replicated(mesh))
  return qworkload, qparams, {'precision': precision, 'calibration_samples': len(indices), 'calibration_split': split,
                              'calibration_list': calibration_list, 'int8_bytes': int8_bytes(qparams)}


def int8_bytes(tree) -> int:
  """Bytes of the int8 arrays in a parameter tree (the quantised weights)."""
  return sum(x.size for x in jax.tree.leaves(tree) if x.dtype == jnp.int8)


# --- calibration samples ---
def read_calibration_list(path: str) -> list[str] | list[int]:
  """MLPerf's calibration list format (one eval image file name a line) or one eval sample index a line."""
  if not os.path.isfile(path):
    raise UserError(f'--calibration_list={path} does not exist: pass a file with one eval image file name or '
                    'sample index a line (as MLPerf Inference calibration/ImageNet/cal_image_list_option_1.txt)')
  with open(path, encoding='utf-8') as f:
    entries = [line.strip() for line in f if line.strip()]
  if not entries:
    raise UserError(f'--calibration_list={path} is empty: list at least one image file name or sample index')
  if all(e.isdigit() for e in entries):
    return [int(e) for e in entries]
  return entries


class _Subset:
  """The records of a random-access source at the given indices, in that order."""

  def __init__(self, source, indices: list[int]):
    self.source, self.indices = source, indices

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[self.indices[int(i)]]


def _source(workload: Workload, split: str):
  """The workload's open random-access source of `split` ('train' or 'eval'; the workloads' `_{split}_source`)."""
  source = getattr(workload, f'_{split}_source', None)
  if source is None:
    raise UserError(f'{workload.benchmark} has no {split} split open to calibrate on (a synthetic dataset?): use '
                    'its real or generated dataset')
  return source


def calibration_samples(workload: Workload, entries: list[str] | list[int] | None) -> tuple[str, list[int]]:
  """(split, indices) of the calibration samples. A list names eval images (MLPerf's lists name ImageNet
  validation images), by file name or index; without one, the first DEFAULT_CALIBRATION_COUNT train samples."""
  if entries is None:
    return 'train', list(range(min(DEFAULT_CALIBRATION_COUNT, len(_source(workload, 'train')))))
  source = _source(workload, 'eval')
  if all(isinstance(e, int) for e in entries):
    bad = [e for e in entries if e >= len(source)]
    if bad:
      raise UserError(f'calibration sample index {bad[0]} is past the eval split ({len(source)} samples)')
    return 'eval', list(entries)
  wanted = {os.path.basename(e): k for k, e in enumerate(entries)}
  found: dict[int, int] = {}
  for index in range(len(source)):
    name = source[index].get('file_name')
    if name is None:
      raise UserError('the eval split holds no file names: list calibration samples by index')
    name = os.path.basename(name.decode() if isinstance(name, bytes) else str(name))
    if name in wanted:
      found[wanted.pop(name)] = index
      if not wanted:
        break
  if wanted:
    raise UserError(f'{len(wanted)} calibration images are not in the eval split (first: {next(iter(wanted))})')
  return 'eval', [found[k] for k in sorted(found)]


def calibration_batches(workload: Workload, split: str, indices: list[int], max_batch: int = CALIBRATION_BATCH):
  """The calibration samples through the eval preprocessing (what inference sees), as uint8 host batches of one
  size: the largest divisor of the sample count up to `max_batch`."""
  from suite.inference.qsl import eval_samples  # pylint: disable=import-outside-toplevel
  reading = copy.copy(workload)
  reading._eval_source = _Subset(_source(workload, split), indices)  # pylint: disable=protected-access
  images = [example[workload.inference_input_key]
            for _, example in eval_samples(reading.eval_batches(process_index=0, process_count=1))]
  batch = max(b for b in range(1, max_batch + 1) if len(images) % b == 0) if images else 1
  for start in range(0, len(images), batch):
    yield np.stack(images[start:start + batch])
