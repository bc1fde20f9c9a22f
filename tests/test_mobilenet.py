"""The `mobilenet` workload: MobileNet-v1's published size and MACs, the recipe's optimizer and schedule by hand, the
reference-weights converter on a random model in the ONNX source layout, and the tiny run through LoadGen."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import optax
import pytest
from onnx import helper, numpy_helper

from models import flops, mobilenet
from suite.common import mlperf_log, registry, sharding
from suite.common.errors import UserError
from suite.inference import convert_weights
from suite.inference import loadgen as infer_loadgen
from suite.inference import model as infer_model
from suite.workloads import mobilenet as mobilenet_workload
from tests.conftest import check_log, run_suite


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_full_model_has_the_published_size_and_macs():
  """Keras' MobileNet (alpha 1.0, 224, 1000 classes): 4,253,864 parameters of which 4,231,976 trainable (the rest
  are batch-norm moving statistics); slim's mobilenet_v1.py table: the base to Conv2d_13_pointwise has
  567,716,352 MACs at 224x224. The suite's ImageNet labels are 0..999, so the full model has 1000 classes (the
  reference's 1001st, "background", is dropped by the converter)."""
  workload = registry.make_workload('mobilenet', registry.get_config('mobilenet', 'full'), 'full')
  params, model_state = jax.eval_shape(workload.init_variables, jax.random.PRNGKey(0))
  assert _count(params) == 4_231_976
  assert _count(params) + _count(model_state) == 4_253_864
  image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  base = flops.forward_macs(mobilenet.MobileNetV1Backbone(), image, train=False)
  assert base == 567_716_352
  assert flops.forward_macs(workload.model, image, train=False) == base + 1024 * 1000
  features = jax.eval_shape(lambda: mobilenet.MobileNetV1Backbone(0.5).init_with_output(
      jax.random.PRNGKey(0), jnp.zeros((1, 300, 300, 3)), train=False)[0])
  assert [f.shape for f in features] == [(1, 19, 19, 256), (1, 10, 10, 512)]  # SSD's two maps at stride 16 and 32


def test_optimizer_is_tf_rmsprop_with_a_staircase_decay():
  """The recipe's schedule 0.045 * 0.94 ** floor(step / decay_steps), and TF RMSProp's update (ms from 1,
  mom = 0.9 mom + lr g / sqrt(ms + 1)) with the L2 term 4e-5 w on conv kernels but not depthwise ones,
  followed by hand over three steps."""
  workload = registry.make_workload('mobilenet', registry.get_config('mobilenet', 'full'), 'full')
  steps_per_epoch = 1_281_167 / 1024
  schedule = workload.learning_rate_schedule(steps_per_epoch)
  decay_steps = int(2.5 * steps_per_epoch)  # 3127
  for step in (0, decay_steps - 1, decay_steps, 10 * decay_steps + 5):
    assert float(schedule(step)) == pytest.approx(0.045 * 0.94 ** (step // decay_steps), rel=1e-6)
  params = {'MobilenetV1': {'Conv2d_1_depthwise': {'conv': {'kernel': jnp.full((1, 1, 1, 2), 0.5)}},
                            'Conv2d_1_pointwise': {'conv': {'kernel': jnp.full((1, 1, 2, 1), -1.0)},
                                                   'BatchNorm': {'scale': jnp.ones(1)}}}}
  tx = workload.optimizer(schedule)
  state = tx.init(params)
  grads = [jax.tree.map(lambda p, s=s: jnp.full_like(p, s), params) for s in (0.3, -0.2, 0.1)]
  w = {'dw': 0.5, 'pw': -1.0, 'bn': 1.0}
  ms = {k: 1.0 for k in w}
  mom = {k: 0.0 for k in w}
  for step, g in enumerate(grads):
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    lr = 0.045 * 0.94 ** (step // decay_steps)
    for k in w:
      grad = float(g['MobilenetV1']['Conv2d_1_depthwise']['conv']['kernel'][0, 0, 0, 0])
      grad += 4e-5 * w[k] if k == 'pw' else 0.0
      ms[k] = 0.9 * ms[k] + 0.1 * grad**2
      mom[k] = 0.9 * mom[k] + lr * grad / np.sqrt(ms[k] + 1.0)
      w[k] -= mom[k]
  p = params['MobilenetV1']
  assert float(p['Conv2d_1_depthwise']['conv']['kernel'][0, 0, 0, 0]) == pytest.approx(w['dw'], rel=1e-6)
  assert float(p['Conv2d_1_pointwise']['conv']['kernel'][0, 0, 0, 0]) == pytest.approx(w['pw'], rel=1e-6)
  assert float(p['Conv2d_1_pointwise']['BatchNorm']['scale'][0]) == pytest.approx(w['bn'], rel=1e-6)


def test_loadgen_settings_are_the_last_official_mobilenet_ones():
  """LoadGen 6.0's mlperf.conf has no mobilenet lines (its '*' default sample count is 0: the whole split); the
  last mlperf.conf that listed mobilenet (mlcommons/inference 86164589) set 1,024, capped at a smaller split."""
  workload = registry.make_workload('mobilenet', registry.get_config('mobilenet', 'full'), 'full')
  assert workload.inference_closed_bound == pytest.approx(0.98 * 0.71676)
  for scenario in infer_loadgen.SCENARIOS:
    settings = infer_loadgen.build_settings('mobilenet', scenario, 'performance', None, infer_loadgen.Overrides(),
                                            50_000)
    assert settings.performance_sample_count_override == 1024
  small = infer_loadgen.build_settings('mobilenet', 'Offline', 'performance', None, infer_loadgen.Overrides(), 512)
  assert small.performance_sample_count_override == 512


# --- the reference-weights converter ---

def _reference_onnx(path, width: float, classes: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A random MobileNet-v1 in the reference ONNX's layout: tf2onnx names (the slim variable, '/read:0' after it),
  conv kernels [out, in/groups, h, w], batch norm unfolded, a 1001-style classifier with class 0 background.
  Returns the arrays by name."""
  rng = np.random.default_rng(seed)
  arrays = {}
  cin = 3
  layers = [('Conv2d_0', 3, mobilenet.depth(32, width), False)]
  for i, (_, channels) in enumerate(mobilenet.SEPARABLE_BLOCKS, start=1):
    c = layers[-1][2]
    layers += [(f'Conv2d_{i}_depthwise', 3, c, True), (f'Conv2d_{i}_pointwise', 1, mobilenet.depth(channels, width),
                                                        False)]
  for name, k, cout, depthwise in layers:
    kernel = (cout, 1, k, k) if depthwise else (cout, cin, k, k)
    arrays[f'MobilenetV1/{name}/{"depthwise_weights" if depthwise else "weights"}/read:0'] = rng.normal(
        0, 0.3, kernel).astype(np.float32)
    for stat, low in (('gamma', 0.5), ('beta', -0.5), ('moving_mean', -0.5), ('moving_variance', 0.5)):
      arrays[f'MobilenetV1/{name}/BatchNorm/{stat}/read:0'] = rng.uniform(low, low + 1.0, cout).astype(np.float32)
    cin = cout
  arrays['MobilenetV1/Logits/Conv2d_1c_1x1/weights/read:0'] = rng.normal(0, 0.3, (classes + 1, cin, 1, 1)).astype(
      np.float32)
  arrays['MobilenetV1/Logits/Conv2d_1c_1x1/biases/read:0'] = rng.normal(0, 0.3, classes + 1).astype(np.float32)
  graph = helper.make_graph(
      [helper.make_node('Identity', ['input:0'], ['output:0'])], 'mobilenet_v1',
      [helper.make_tensor_value_info('input:0', onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
      [helper.make_tensor_value_info('output:0', onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
      initializer=[numpy_helper.from_array(v, name=n) for n, v in arrays.items()])
  onnx.save(helper.make_model(graph), str(path))
  return arrays


def _hand_mapped(arrays: dict, classes: int) -> tuple[dict, dict]:
  """The flax tree the arrays mean, mapped here independently of the converter."""
  params, stats = {'MobilenetV1': {}}, {'MobilenetV1': {}}
  for key, value in arrays.items():
    scope, layer, *rest = key.split('/')
    if layer == 'Logits':
      continue
    if rest[0].endswith('weights'):
      params[scope].setdefault(layer, {})['conv'] = {'kernel': np.transpose(value, (2, 3, 1, 0))}
    else:
      norm = {'gamma': 'scale', 'beta': 'bias', 'moving_mean': 'mean', 'moving_variance': 'var'}[rest[1]]
      into = params if norm in ('scale', 'bias') else stats
      into[scope].setdefault(layer, {}).setdefault('BatchNorm', {})[norm] = value
  head_w = arrays['MobilenetV1/Logits/Conv2d_1c_1x1/weights/read:0']
  params['Logits'] = {'kernel': np.transpose(head_w, (2, 3, 1, 0))[..., 1:],
                      'bias': arrays['MobilenetV1/Logits/Conv2d_1c_1x1/biases/read:0'][1:]}
  assert params['Logits']['kernel'].shape[-1] == classes
  return params, {'batch_stats': stats}


def test_converter_writes_a_checkpoint_that_infer_restores_as_the_source(tmp_path):
  config = registry.get_config('mobilenet', 'tiny')
  workload = registry.make_workload('mobilenet', config, 'tiny')
  source = tmp_path / 'mobilenet_tiny.onnx'
  arrays = _reference_onnx(source, config.model.width_multiplier, config.num_classes)
  read = convert_weights.read_onnx_arrays(str(source))
  assert sorted(read) == sorted(arrays)
  out = tmp_path / 'converted'
  result = run_suite('--workload=mobilenet', '--scale=tiny', f'--weights={source}', f'--output_dir={out}',
                     module='suite.convert_weights', timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  written = json.loads(result.stdout.strip().splitlines()[-1])
  assert written['source_arrays'] == len(arrays) and written['values'] == sum(v.size for v in arrays.values()) - 257

  # Restored the way suite.infer restores a training run.
  params, model_state = infer_model.restore_weights(workload, sharding.make_mesh(), str(out))
  want_params, want_state = _hand_mapped(arrays, config.num_classes)
  assert jax.tree.structure(params) == jax.tree.structure(want_params)
  assert jax.tree.structure(model_state) == jax.tree.structure(want_state)
  for got, want in zip(jax.tree.leaves((params, model_state)), jax.tree.leaves((want_params, want_state))):
    np.testing.assert_array_equal(np.asarray(got), want)
  images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  forward = jax.jit(workload._logits)  # pylint: disable=protected-access
  logits = forward(params, model_state, images)
  want = forward(jax.tree.map(jnp.asarray, want_params), jax.tree.map(jnp.asarray, want_state), images)
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(want))
  assert np.std(np.asarray(logits)) > 0  # a forward through the random weights, not a constant

  with pytest.raises(UserError, match='already holds checkpoints'):
    convert_weights.convert(workload, read, str(out))


def test_converter_folded_batch_norm_is_the_conv_plus_its_bias():
  """A reference whose batch norms tf2onnx folded into the convs (a bias per conv, no BN arrays) converts to the
  identity norm plus that bias: scale 1, mean 0, var 1 - epsilon."""
  bias = np.arange(8, dtype=np.float32)
  scale_bias, stats = mobilenet_workload.batch_norm({'MobilenetV1/Conv2d_0/Conv2D_bn_offset:0': bias},
                                                    'MobilenetV1/Conv2d_0', 8)
  x = np.linspace(-2, 2, 8, dtype=np.float32)
  y = (x - stats['mean']) / np.sqrt(stats['var'] + mobilenet.BN_EPSILON) * scale_bias['scale'] + scale_bias['bias']
  np.testing.assert_allclose(y, x + bias, rtol=1e-6)


def test_converter_bad_input_is_one_error_line(tmp_path):
  missing = run_suite('--workload=mobilenet', '--scale=tiny', f'--weights={tmp_path / "none.onnx"}',
                      f'--output_dir={tmp_path / "out"}', module='suite.convert_weights', timeout=300)
  assert missing.returncode == 2 and missing.stderr.count('\n') == 1, missing.stderr[-2000:]
  assert missing.stderr.startswith('error: --weights=') and 'does not exist' in missing.stderr

  wrong = tmp_path / 'wider.onnx'
  _reference_onnx(wrong, 0.5, 10)  # a wider model than tiny's 0.25
  result = run_suite('--workload=mobilenet', '--scale=tiny', f'--weights={wrong}', f'--output_dir={tmp_path / "o"}',
                     module='suite.convert_weights', timeout=300)
  assert result.returncode == 2 and result.stderr.count('\n') == 1, result.stderr[-2000:]
  assert "'MobilenetV1/Conv2d_0/weights/read:0' has shape (16, 3, 3, 3)" in result.stderr
  assert not (tmp_path / 'o').exists()

  resnet = registry.make_workload('resnet', registry.get_config('resnet', 'tiny'), 'tiny')
  with pytest.raises(UserError, match=r'^resnet has no reference-weights converter$'):
    resnet.reference_weights({})
  with pytest.raises(UserError, match="no 'MobilenetV1/Conv2d_0/weights'"):
    mobilenet_workload.find_array({'resnet/conv1/weights:0': np.zeros(1)}, 'MobilenetV1/Conv2d_0/weights')


@pytest.mark.slow
def test_tiny_mobilenet_reaches_its_target_and_loadgen_reproduces_it(tmp_path, data_dir):
  """The tiny run through the command users run, in the open division (the checker has no mobilenet rules, so it
  stops at the missing open_mobilenet.yaml), then LoadGen's accuracy mode on its checkpoint through suite.infer."""
  out = tmp_path / 'train'
  result = run_suite('--workload=mobilenet', '--scale=tiny', '--seed=0', f'--data_dir={data_dir}',
                     f'--output_dir={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['status'] == 'success' and summary['division'] == 'open'
  assert summary['final_metric'] >= registry.get_config('mobilenet', 'tiny').target
  assert summary['compiles_after_run_start'] == 0
  events = mlperf_log.read_events(str(out / 'result_0.txt'), strict=True)
  values = {e['key']: e['value'] for e in events}
  assert values['submission_benchmark'] == 'mobilenet' and values['submission_division'] == 'open'
  assert values['opt_name'] == 'rmsprop' and values['opt_base_learning_rate'] == 0.1
  checker = check_log(str(out / 'result_0.txt'))
  assert checker.returncode != 0 and 'open_mobilenet.yaml' in checker.stdout + checker.stderr

  infer = tmp_path / 'accuracy'
  result = run_suite('--workload=mobilenet', '--scale=tiny', f'--checkpoint={out}', f'--data_dir={data_dir}',
                     f'--output_dir={infer}', '--scenario=Offline', '--mode=accuracy', module='suite.infer',
                     timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  accuracy = json.loads((infer / 'summary.json').read_text())['accuracy']
  assert accuracy['samples_scored'] == accuracy['eval_samples']
  assert abs(accuracy['accuracy'] - summary['final_metric']) <= 1 / accuracy['eval_samples']
  assert accuracy['closed_bound'] == pytest.approx(0.98 * 0.71676)
