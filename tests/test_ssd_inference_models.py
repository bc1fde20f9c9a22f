"""MLPerf Inference's SSD models as `ssd` variants: SSD-MobileNet-v1 (300x300) and SSD-ResNet34 (1200x1200).

Parameter counts against the reference models' definitions, anchors against the reference formulas by hand, the
reference-weights converters on random arrays in the source layout, the retired LoadGen settings, and (slow) a tiny
training run per variant plus a LoadGen accuracy run scored as mAP.
"""

import json
import math
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from suite.common import registry
from suite.inference import convert_weights
from suite.inference import loadgen as infer_loadgen
from tests.conftest import run_suite


def _workload(variant, scale='full', **overrides):
  config = registry.get_config('ssd', scale, variant)
  config.update(overrides)
  return registry.make_workload('ssd', config, scale)


def _param_shapes(workload):
  s = workload.config.image_size
  shapes = jax.eval_shape(lambda: workload.model.init(jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3)), train=False))
  return shapes


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(flax.linen.unbox(tree)))


def _ssd_r34_reference_count(num_classes=81):
  """Trainable parameters of mlcommons/inference vision/classification_and_detection/python/models/ssd_r34.py
  (SSD_R34 over base_model_r34.py ResNet34, at 0cde9777): torchvision resnet34's conv1, bn1, layer1..layer3 (convs
  without bias, BN weight and bias), five extra blocks (1x1 and 3x3 convs with bias) and a 3x3 loc and conf conv
  with bias on each of the six maps."""
  conv = lambda i, o, k, bias=False: i * o * k * k + (o if bias else 0)  # noqa: E731
  total = conv(3, 64, 7) + 2 * 64
  channels = 64
  for planes, blocks in ((64, 3), (128, 4), (256, 6)):
    for b in range(blocks):
      total += conv(channels, planes, 3) + conv(planes, planes, 3) + 4 * planes
      if b == 0 and channels != planes:
        total += conv(channels, planes, 1) + 2 * planes
      channels = planes
  outs = (256, 512, 512, 256, 256, 256)
  for i, mid in enumerate((256, 256, 128, 128, 128)):
    total += conv(outs[i], mid, 1, True) + conv(mid, outs[i + 1], 3, True)
  for c, nd in zip(outs, (4, 6, 6, 6, 4, 4)):
    total += conv(c, nd * 4, 3, True) + conv(c, nd * num_classes, 3, True)
  return total


def _ssd_mobilenet_reference_count(num_classes=91):
  """Trainable variables of ssd_mobilenet_v1_coco (TF Object Detection API; the reference's PyTorch port,
  mlcommons/inference .../models/ssd_mobilenet_v1.py at 0cde9777, has the same convs with the batch norms folded):
  MobileNet-v1's conv and 13 depthwise-separable blocks to Conv2d_13 (no conv bias, BN gamma and beta), four extra
  blocks of a 1x1 and a 3x3 conv (BN, no bias: 1024->256->512, 512->128->256, 256->128->256, 256->64->128) and a
  1x1 box and class conv with bias on each map (3 anchors on the first, 6 on the others)."""
  total = 3 * 3 * 3 * 32 + 2 * 32
  channels = 32
  for out in (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024):
    total += 9 * channels + 2 * channels + channels * out + 2 * out
    channels = out
  for mid, out in ((256, 512), (128, 256), (128, 256), (64, 128)):
    total += channels * mid + 2 * mid + 9 * mid * out + 2 * out
    channels = out
  for c, a in zip((512, 1024, 512, 256, 256, 128), (3, 6, 6, 6, 6, 6)):
    total += c * a * 4 + a * 4 + c * a * num_classes + a * num_classes
  return total


def test_parameter_counts_are_the_references():
  assert _ssd_r34_reference_count() == 19_972_534
  assert _ssd_mobilenet_reference_count() == 6_819_839
  r34, mobilenet = _workload('ssd_resnet34'), _workload('ssd_mobilenet')
  assert _count(_param_shapes(r34)['params']) == 19_972_534
  assert _count(_param_shapes(mobilenet)['params']) == 6_819_839


def test_outputs_and_anchor_counts_follow_the_reference_maps():
  # SSD-MobileNet: maps 19, 10, 5, 3, 2, 1 with 3 anchors on the first and 6 elsewhere.
  mobilenet = _workload('ssd_mobilenet')
  assert mobilenet.anchors.shape == (19 * 19 * 3 + (100 + 25 + 9 + 4 + 1) * 6, 4) == (1917, 4)
  # SSD-ResNet34 at 1200: heads of stride 3 over maps 50, 25, 13, 7, 3, 3 with 4, 6, 6, 6, 4, 4 boxes.
  r34 = _workload('ssd_resnet34')
  assert r34.anchors.shape == (2500 * 4 + 625 * 6 + 169 * 6 + 49 * 6 + 9 * 4 + 9 * 4, 4) == (15130, 4)
  for workload, anchors, columns in ((mobilenet, 1917, 91), (r34, 15130, 81)):
    s = workload.config.image_size
    logits, deltas = jax.eval_shape(lambda v, w=workload, s=s: w.model.apply(v, jnp.zeros((1, s, s, 3)), train=False),
                                    _param_shapes(workload))
    assert logits.shape == (1, anchors, columns) and deltas.shape == (1, anchors, 4)


def test_tf_ssd_anchors_by_hand():
  anchors = _workload('ssd_mobilenet').anchors
  c = 0.5 / 19  # Layer 0's first location; its boxes: (scale 0.1, ratio 1), (0.2, 2), (0.2, 0.5).
  np.testing.assert_allclose(anchors[0], [c - 0.05, c - 0.05, c + 0.05, c + 0.05], atol=1e-7)
  h, w = 0.2 / math.sqrt(2), 0.2 * math.sqrt(2)  # Height s / sqrt(r), width s * sqrt(r).
  np.testing.assert_allclose(anchors[1], [c - h / 2, c - w / 2, c + h / 2, c + w / 2], atol=1e-7)
  # Layer 1 starts at 19 * 19 * 3: scale 0.2 + 0.75 / 5 = 0.35, ratio 1, centre 0.5 / 10.
  np.testing.assert_allclose(anchors[1083], [0.05 - 0.175, 0.05 - 0.175, 0.05 + 0.175, 0.05 + 0.175], atol=1e-7)
  # Layer 0 row 0, column 1 (the next location): centre x 1.5 / 19.
  np.testing.assert_allclose(anchors[3, 1::2], [1.5 / 19 - 0.05, 1.5 / 19 + 0.05], atol=1e-7)
  # The last box: the 1x1 map's interpolated square, sqrt(0.95 * 1.0), centred.
  s = math.sqrt(0.95)
  np.testing.assert_allclose(anchors[-1], [0.5 - s / 2, 0.5 - s / 2, 0.5 + s / 2, 0.5 + s / 2], atol=1e-6)


def test_ssd_r34_default_boxes_by_hand():
  boxes = _workload('ssd_resnet34').anchors
  # Map 0 (50x50, fk 1200 // 24 = 50): sk1 = int(21 * 4) / 1200 = 0.07; the second box sqrt(0.07 * 0.15).
  c = 0.5 / 50
  np.testing.assert_allclose(boxes[0], [c - 0.035, c - 0.035, c + 0.035, c + 0.035], atol=1e-7)
  s = math.sqrt(0.07 * 0.15)
  np.testing.assert_allclose(boxes[1], [c - s / 2, c - s / 2, c + s / 2, c + s / 2], atol=1e-7)
  # The last box: map 5 (3x3, fk 1200 // 400 = 3) at row 2, column 2, sk1 = 1044 / 1200, the transposed ratio-2
  # box (w, h) = (sk1 / sqrt(2), sk1 * sqrt(2)), its height clamped to 1 before the corners (as the reference).
  sk1 = 1044 / 1200
  w, centre = sk1 / math.sqrt(2), 2.5 / 3
  np.testing.assert_allclose(boxes[-1], [centre - 0.5, centre - w / 2, centre + 0.5, centre + w / 2], atol=1e-6)


def test_ssd_resnet34_keeps_the_last_mlperf_conf_settings():
  for scenario in infer_loadgen.SCENARIOS:
    settings = infer_loadgen.build_settings('ssd-resnet34', scenario, 'performance', None, infer_loadgen.Overrides(),
                                            5000)
    assert settings.performance_sample_count_override == 64
  server = infer_loadgen.build_settings('ssd-resnet34', 'Server', 'performance', None, infer_loadgen.Overrides(), 5000)
  assert server.server_target_latency_ns == 100_000_000
  multi = infer_loadgen.build_settings('ssd-resnet34', 'MultiStream', 'performance', None, infer_loadgen.Overrides(),
                                       5000)
  assert multi.multi_stream_expected_latency_ns == 528_000_000
  mobilenet = infer_loadgen.build_settings('ssd-mobilenet', 'Offline', 'performance', None, infer_loadgen.Overrides(),
                                           5000)
  assert mobilenet.performance_sample_count_override == 256
  assert _workload('ssd_mobilenet').inference_closed_bound == pytest.approx(0.99 * 0.22)
  assert _workload('ssd_resnet34').inference_closed_bound == pytest.approx(0.99 * 0.20)


def _flat(tree):
  return {'/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(flax.linen.unbox(tree)).items()}


def test_ssd_mobilenet_reference_weights_from_tf_names_in_onnx_layout():
  workload = _workload('ssd_mobilenet', 'tiny')
  params, state = workload.init_variables(jax.random.PRNGKey(0))
  params, stats = _flat(params), _flat(state['batch_stats'])
  rng = np.random.default_rng(0)
  arrays, expect = {}, {}

  def oihw(name, ours):  # The frozen TF graph's constant, as tf2onnx leaves it: OIHW, ':0' suffix.
    value = rng.standard_normal(params[ours].shape[::-1]).astype(np.float32).transpose(0, 1, 3, 2)
    arrays[name + ':0'] = value
    expect[ours] = value.transpose(2, 3, 1, 0)

  def vector(name, ours):
    value = rng.standard_normal(params[ours].shape).astype(np.float32)
    arrays[name] = value
    expect[ours] = value

  fe = 'FeatureExtractor/MobilenetV1'
  layers = ['Conv2d_0'] + [f'Conv2d_{i}_{k}' for i in range(1, 14) for k in ('depthwise', 'pointwise')]
  for layer in layers:
    kernel = 'depthwise_weights' if 'depthwise' in layer else 'weights'
    oihw(f'{fe}/{layer}/{kernel}', f'MobilenetV1/{layer}/conv/kernel')
    vector(f'{fe}/MobilenetV1/{layer}/BatchNorm/batchnorm/sub', f'MobilenetV1/{layer}/BatchNorm/bias')
    if 'depthwise' in layer:
      vector(f'{fe}/MobilenetV1/{layer}/BatchNorm/batchnorm/mul', f'MobilenetV1/{layer}/BatchNorm/scale')
  for i, d in zip(range(2, 6), (512, 256, 256, 128)):
    for ours, tf in ((f'extra_{i}_1x1', f'Conv2d_13_pointwise_1_Conv2d_{i}_1x1_{d // 2}'),
                     (f'extra_{i}_3x3_s2', f'Conv2d_13_pointwise_2_Conv2d_{i}_3x3_s2_{d}')):
      oihw(f'{fe}/{tf}/weights', f'{ours}/conv/kernel')
      vector(f'{fe}/{tf}/BatchNorm/batchnorm/sub', f'{ours}/BatchNorm/bias')
  for level in range(6):
    for ours, tf in ((f'box_head_{level}', 'BoxEncodingPredictor'), (f'class_head_{level}', 'ClassPredictor')):
      oihw(f'BoxPredictor_{level}/{tf}/weights', f'{ours}/kernel')
      vector(f'BoxPredictor_{level}/{tf}/biases', f'{ours}/bias')
  # A depthwise kernel in ONNX is [C, 1, 3, 3]; Flax's is [3, 3, 1, C].
  assert arrays[f'{fe}/Conv2d_1_depthwise/depthwise_weights:0'].shape[1:] == (1, 3, 3)

  new_params, new_state = workload.reference_weights(arrays)
  new_params, new_stats = _flat(new_params), _flat(new_state['batch_stats'])
  assert new_params.keys() == params.keys() and new_stats.keys() == stats.keys()
  for name, value in expect.items():
    np.testing.assert_array_equal(new_params[name], value, err_msg=name)
  # Folded batch norms: scale 1 where the graph folded it into the kernel, mean 0, variance 1 - epsilon.
  np.testing.assert_array_equal(new_params['MobilenetV1/Conv2d_1_pointwise/BatchNorm/scale'], 1.0)
  for name, value in new_stats.items():
    np.testing.assert_allclose(value, 0.0 if name.endswith('mean') else 1.0 - 1e-3, err_msg=name)
  s = workload.config.image_size
  variables = {'params': flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in new_params.items()}),
               **new_state}
  logits, _ = workload.model.apply(variables, jnp.zeros((1, s, s, 3)), train=False)
  assert np.isfinite(np.asarray(logits)).all()
  del arrays['BoxPredictor_3/ClassPredictor/biases']
  with pytest.raises(Exception, match='BoxPredictor_3/ClassPredictor'):
    workload.reference_weights(arrays)


def test_ssd_resnet34_reference_weights_from_pytorch_names(tmp_path):
  workload = _workload('ssd_resnet34', 'tiny')
  params = _flat(workload.init_variables(jax.random.PRNGKey(0))[0])
  rng = np.random.default_rng(1)
  arrays = {}

  def torch_like(name, ours):
    shape = params[ours].shape
    shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape
    arrays[name] = rng.standard_normal(shape).astype(np.float32)

  def bn(prefix, ours):
    torch_like(f'{prefix}.weight', f'{ours}/scale')
    torch_like(f'{prefix}.bias', f'{ours}/bias')
    arrays[f'{prefix}.running_mean'] = rng.standard_normal(params[f'{ours}/bias'].shape).astype(np.float32)
    arrays[f'{prefix}.running_var'] = rng.random(params[f'{ours}/bias'].shape).astype(np.float32)
    arrays[f'{prefix}.num_batches_tracked'] = np.array(0)

  torch_like('model.layer1.0.weight', 'backbone/stem_conv/kernel')
  bn('model.layer1.1', 'backbone/stem_bn')
  # Tiny: one block a stage; torchvision layer1 (model.layer1.4), layer2 (model.layer1.5), layer3 (model.layer2.0).
  for block, prefix in enumerate(('model.layer1.4.0', 'model.layer1.5.0', 'model.layer2.0.0')):
    ours = f'backbone/BasicBlock_{block}'
    torch_like(f'{prefix}.conv1.weight', f'{ours}/Conv_0/kernel')
    bn(f'{prefix}.bn1', f'{ours}/BatchNorm_0')
    torch_like(f'{prefix}.conv2.weight', f'{ours}/Conv_1/kernel')
    bn(f'{prefix}.bn2', f'{ours}/BatchNorm_1')
    if f'{ours}/proj_conv/kernel' in params:
      torch_like(f'{prefix}.downsample.0.weight', f'{ours}/proj_conv/kernel')
      bn(f'{prefix}.downsample.1', f'{ours}/BatchNorm_2')
  for i in range(5):
    for index, ours in ((0, f'extra_{i}_reduce'), (2, f'extra_{i}_conv')):
      torch_like(f'additional_blocks.{i}.{index}.weight', f'{ours}/kernel')
      torch_like(f'additional_blocks.{i}.{index}.bias', f'{ours}/bias')
  for level in range(6):
    for source, ours in (('loc', f'box_head_{level}'), ('conf', f'class_head_{level}')):
      torch_like(f'{source}.{level}.weight', f'{ours}/kernel')
      torch_like(f'{source}.{level}.bias', f'{ours}/bias')

  new_params, new_state = workload.reference_weights(arrays)
  new_params = _flat(new_params)
  assert new_params.keys() == params.keys()
  np.testing.assert_array_equal(new_params['backbone/stem_conv/kernel'],
                                arrays['model.layer1.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(new_params['backbone/BasicBlock_2/Conv_1/kernel'],
                                arrays['model.layer2.0.0.conv2.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(_flat(new_state['batch_stats'])['backbone/BasicBlock_1/BatchNorm_2/var'],
                                arrays['model.layer1.5.0.downsample.1.running_var'])
  np.testing.assert_array_equal(new_params['extra_3_conv/bias'], arrays['additional_blocks.3.2.bias'])
  # Heads: the reference's channel k * boxes + d (value-major, its view(N, values, -1)) is our d * values + k, and
  # its box values (x, y, w, h) are our (y, x, h, w).
  conf, ours = arrays['conf.0.weight'], new_params['class_head_0/kernel']
  classes, boxes = 5, 4
  for d in range(boxes):
    for k in range(classes):
      np.testing.assert_array_equal(ours[..., d * classes + k], conf[k * boxes + d].transpose(1, 2, 0))
  loc_bias, ours_bias = arrays['loc.1.bias'], new_params['box_head_1/bias']
  for d in range(6):
    np.testing.assert_array_equal(ours_bias[d * 4:d * 4 + 4], loc_bias[[6 + d, d, 18 + d, 12 + d]])
  s = workload.config.image_size
  variables = {'params': flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in new_params.items()}),
               **new_state}
  logits, _ = workload.model.apply(variables, jnp.zeros((1, s, s, 3)), train=False)
  assert logits.shape == (1, workload.anchors.shape[0], classes) and np.isfinite(np.asarray(logits)).all()
  # suite.convert_weights writes them as a checkpoint without the training data (this workload's data is not open).
  written = convert_weights.convert(workload, arrays, str(tmp_path / 'converted'))
  assert written['values'] == sum(int(np.size(v)) for v in jax.tree.leaves((new_params, new_state)))
  assert os.path.isdir(tmp_path / 'converted' / 'checkpoints')
  arrays['conf.9.weight'] = arrays['conf.0.weight']
  with pytest.raises(Exception, match='unknown tensor'):
    workload.reference_weights(arrays)


@pytest.mark.slow
def test_tiny_ssd_resnet34_trains_to_its_target_and_loadgen_scores_it(tmp_path, data_dir):
  """The tiny SSD-ResNet34 (heads of stride 3 and all) trains to its 0.2 mAP target; LoadGen's accuracy mode over
  the whole eval split then scores the same detections with pycocotools."""
  train = tmp_path / 'train'
  result = run_suite('--workload=ssd', '--variant=ssd_resnet34', '--scale=tiny', '--seed=1', f'--data_dir={data_dir}',
                     f'--output_dir={train}')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((train / 'summary.json').read_text())
  assert summary['final_metric'] >= 0.2, summary
  out = tmp_path / 'accuracy'
  result = run_suite('--workload=ssd', '--variant=ssd_resnet34', '--scale=tiny', f'--checkpoint={train}',
                     f'--data_dir={data_dir}', f'--output_dir={out}', '--scenario=Offline', '--mode=accuracy',
                     module='suite.infer', timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  infer = json.loads((out / 'summary.json').read_text())
  accuracy = infer['accuracy']
  assert infer['model'] == 'ssd-resnet34' and accuracy['samples_scored'] == accuracy['eval_samples'] == 128
  # Same images, weights and post-processing; only the batch size differs.
  assert accuracy['accuracy'] == pytest.approx(summary['final_metric'], abs=0.01), (accuracy, summary)
  assert accuracy['closed_bound'] == pytest.approx(0.99 * 0.20)
