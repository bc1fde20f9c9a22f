"""--precision=int8 inference (suite.inference.quantize): int8 weights and convs in the compiled forward, static
activation scales from the listed calibration samples, outputs close to float32 on a trained tiny ResNet."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from input_pipelines.image_ops import normalize_on_device
from suite.common import registry, sharding
from suite.inference import model as infer_model
from suite.inference import quantize
from suite.inference.qsl import eval_samples
from tests.conftest import run_suite


@pytest.fixture(scope='module')
def restored(resnet_tiny_trained, data_dir):
  """(workload, mesh, params, model_state) of the session's tiny ResNet, in this process (8 CPU devices)."""
  workload = registry.make_workload('resnet', registry.get_config('resnet', 'tiny'), 'tiny')
  workload.open_data(data_dir)
  mesh = sharding.make_mesh()
  params, model_state = infer_model.restore_weights(workload, mesh, str(resnet_tiny_trained))
  return workload, mesh, params, model_state


def _eval_split(workload):
  examples = [e for _, e in eval_samples(workload.eval_batches(process_index=0, process_count=1))]
  return np.stack([e['image'] for e in examples]), np.array([e['label'] for e in examples])


def _hlo_ops(hlo: str, op: str) -> list[tuple[str, str]]:
  """(result type, operands) of every `op` instruction of an optimized HLO module."""
  return re.findall(rf'= (\w+)\[[^\]]*\]\S* {op}\(([^)]*)\)', hlo)


def test_int8_forward_takes_int8_weights_runs_s8_convs_and_agrees_with_f32(restored):
  workload, mesh, params, model_state = restored
  forward, qparams, info = quantize.prepare(workload, 'int8', None, mesh, params, model_state)
  assert info['precision'] == 'int8' and info['calibration_samples'] == quantize.DEFAULT_CALIBRATION_COUNT
  assert info['calibration_split'] == 'train'
  predictor = infer_model.compile_predictor(forward, mesh, qparams, model_state, (128,))
  executable = predictor.executables[128]

  # The weights the executable takes: each conv and dense kernel is an int8 array (+ a float32 scale per output
  # channel), none a float copy.
  flat = jax.tree_util.tree_flatten_with_path(executable.args_info[0][0])[0]
  kernel_args = {jax.tree_util.keystr(path): arg._aval for path, arg in flat if 'kernel' in jax.tree_util.keystr(path)}
  qvalues = {k: v for k, v in kernel_args.items() if k.endswith('qvalue')}
  float_kernels = [x for x in jax.tree_util.tree_flatten_with_path(params)[0] if 'kernel' in jax.tree_util.keystr(x[0])]
  assert len(qvalues) == len(float_kernels) == 10  # 9 convolutions and the dense head of the tiny ResNet.
  assert all(v.dtype == jnp.int8 for v in qvalues.values()), qvalues
  scales = [v for k, v in kernel_args.items() if k.endswith('scale')]
  assert len(scales) == 10 and all(s.dtype == jnp.float32 and s.shape[-1] == q.shape[-1]
                                   for s, q in zip(scales, qvalues.values()))
  assert info['int8_bytes'] == sum(int(np.prod(v.shape)) for v in qvalues.values())

  # The program: every convolution and dot takes int8 x int8 into an int32 accumulator; and in the optimized
  # HLO every one still accumulates in int32 (XLA:CPU widens some convs' int8 operands to int32 in a fusion
  # first; GPUs keep s8 operands), none is a float op.
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), (qparams, model_state))
  lowered = jax.jit(forward.predict).lower(*abstract, jax.ShapeDtypeStruct((128, 32, 32, 3), jnp.uint8)).as_text()
  signatures = re.findall(r'stablehlo\.(?:convolution|dot_general)\b.*: \(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\) '
                          r'-> tensor<[^>]*x(\w+)>', lowered)
  assert signatures == [('i8', 'i8', 'i32')] * 10, signatures
  ops = _hlo_ops(executable.as_text(), 'convolution') + _hlo_ops(executable.as_text(), 'dot')
  assert [result for result, _ in ops] == ['s32'] * 10, ops

  # Outputs against float32 over the whole eval split (512 images). The logits' error: symmetric int8 rounds
  # each of the 10 layers' inputs and weights to steps of 1/127 of a range set by the mean of the samples' maxima
  # (so larger values clip too); with activations' RMS a few times below that range the noise is a few percent
  # a layer, compounding through the depth: measured 0.169 relative RMS here, bound at 0.25. Top-1 answers:
  # this one-epoch model (top-1 about 0.5) has many near-tied logits (median top-2 margin 0.22, logits' RMS
  # 0.69) and 4.3% of its answers flip, all with a float margin below 0.15 (top-1 0.506 -> 0.520); bound at
  # 10% flips and 3 points of top-1.
  images, labels = _eval_split(workload)
  float_logits = jax.jit(lambda p, s, x: workload.model.apply({'params': p, **s}, normalize_on_device(x),
                                                              train=False))(params, model_state, images)
  int8_logits = jax.jit(lambda p, s, x: forward.model.apply({'params': p, **s}, normalize_on_device(x),
                                                            train=False))(qparams, model_state, images)
  float_logits, int8_logits = np.asarray(float_logits), np.asarray(int8_logits)
  assert int8_logits.dtype == np.float32
  error = np.sqrt(np.mean((int8_logits - float_logits)**2) / np.mean(float_logits**2))
  assert 0 < error < 0.25, error
  answers = np.concatenate([np.asarray(predictor(images[i:i + 128])) for i in range(0, len(images), 128)])
  np.testing.assert_array_equal(answers, int8_logits.argmax(-1))  # The executable is that forward.
  float_answers = float_logits.argmax(-1)
  assert np.mean(answers != float_answers) <= 0.10
  assert abs(np.mean(answers == labels) - np.mean(float_answers == labels)) <= 0.03


def test_calibration_uses_the_listed_samples(restored, tmp_path):
  workload, mesh, params, model_state = restored
  source = workload._eval_source  # pylint: disable=protected-access
  names = [source[i]['file_name'] for i in (5, 17, 40)]
  names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
  by_name, by_index, other = tmp_path / 'names.txt', tmp_path / 'indices.txt', tmp_path / 'other.txt'
  by_name.write_text(''.join(f'{n}\n' for n in names))  # MLPerf's format: one eval image file name a line.
  by_index.write_text('5\n17\n40\n')
  other.write_text('1\n2\n3\n')
  assert quantize.calibration_samples(workload, quantize.read_calibration_list(str(by_name))) == ('eval', [5, 17, 40])

  def stem_scale(path):
    _, qparams, info = quantize.prepare(workload, 'int8', str(path), mesh, params, model_state)
    assert info['calibration_samples'] == 3 and info['calibration_split'] == 'eval'
    return float(np.asarray(qparams['stem_conv']['conv_general_dilated0_lhs_scale'].array).ravel()[0])

  # The stem conv's input is the normalised image: its static scale is, by hand, the mean over the listed
  # samples of each one's largest absolute normalised pixel, over 127.5 (qwix's symmetric int8 bound: qmax + 0.5,
  # qwix/_src/core/numerics.py get_symmetric_bound).
  images = next(quantize.calibration_batches(workload, 'eval', [5, 17, 40]))
  expected = np.mean(np.abs(np.asarray(normalize_on_device(images))).max(axis=(1, 2, 3))) / 127.5
  assert stem_scale(by_name) == pytest.approx(expected, rel=1e-5)
  assert stem_scale(by_index) == pytest.approx(expected, rel=1e-5)
  other_images = next(quantize.calibration_batches(workload, 'eval', [1, 2, 3]))
  other_expected = np.mean(np.abs(np.asarray(normalize_on_device(other_images))).max(axis=(1, 2, 3))) / 127.5
  assert other_expected != pytest.approx(expected, rel=1e-3)  # The lists were chosen to differ.
  assert stem_scale(other) == pytest.approx(other_expected, rel=1e-5)


def test_bad_precision_flags_are_one_error_line(tmp_path):
  missing = tmp_path / 'missing.txt'
  cases = [('suite.infer', '--scale=tiny', '--scenario=Offline', '--precision=int4'),
           ('suite.infer', '--scale=tiny', '--scenario=Offline', '--precision=int8', f'--calibration_list={missing}'),
           ('suite.infer_bench', '--scale=full', '--precision=int8')]
  for module, *args in cases:
    result = run_suite('--workload=resnet', f'--output_dir={tmp_path / "out"}', *args, module=module, timeout=120)
    assert result.returncode == 2, (args, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:'), result.stderr
  assert 'calibration_list' in lines[0]


@pytest.mark.slow
def test_int8_accuracy_run_through_loadgen(resnet_tiny_trained, data_dir, tmp_path):
  out = tmp_path / 'int8'
  result = run_suite('--workload=resnet', '--scale=tiny', f'--checkpoint={resnet_tiny_trained}',
                     f'--data_dir={data_dir}', f'--output_dir={out}', '--scenario=Offline', '--mode=accuracy',
                     '--precision=int8', module='suite.infer', timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['precision'] == 'int8' and summary['calibration_samples'] == quantize.DEFAULT_CALIBRATION_COUNT
  train_eval = json.loads((resnet_tiny_trained / 'summary.json').read_text())['final_metric']
  assert summary['accuracy']['samples_scored'] == 512
  assert abs(summary['accuracy']['accuracy'] - train_eval) <= 0.03
