"""Pretrained backbones for full `ssd`: torchvision ImageNet state dicts load into our Flax backbones, the frozen
layers stay frozen, and a closed run refuses to start from random weights.

The state dicts here are random values under the exact names and shapes of torchvision's resnet.py (written out
below from its naming rules, and checked against torchvision's published parameter counts), so no torch and no
download is needed. Placement is checked twice: every tensor lands in exactly one leaf, and the loaded backbone's
forward pass equals a NumPy transcription of torchvision's forward (OIHW convs with groups, BN with running stats).
"""

import hashlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from models import torchvision_weights
from models.retinanet import ResNeXtBackbone, RetinaNet
from models.ssd300 import SSD300, ResNetBackbone
from suite.common import config as config_lib
from suite.common import mlperf_log, registry
from suite.common.errors import UserError
from suite.training import optimizers
from tests.conftest import check_log, run_suite

EPS = 1e-5  # torch BatchNorm2d / FrozenBatchNorm2d (torchvision >= 0.8).


# --- torchvision's state dict layout (torchvision/models/resnet.py) ---

def _bn(prefix: str, channels: int) -> dict:
  return {f'{prefix}.weight': (channels,), f'{prefix}.bias': (channels,), f'{prefix}.running_mean': (channels,),
          f'{prefix}.running_var': (channels,), f'{prefix}.num_batches_tracked': ()}


def torchvision_shapes(block: str, layers, groups: int = 1, width_per_group: int = 64, width: int = 64,
                       num_classes: int | None = 1000) -> dict[str, tuple]:
  """Name -> shape of `ResNet(block, layers, groups, width_per_group).state_dict()`: conv1/bn1 stem, layer{s}.{i}
  blocks (Bottleneck: conv1 1x1, conv2 grouped 3x3, conv3 1x1; BasicBlock: conv1 3x3, conv2 3x3), a
  downsample.0 (1x1 conv) + downsample.1 (BN) on a block whose stride or channels change, and fc. `width` scales
  the stem (64 in torchvision) for small test models."""
  shapes = {'conv1.weight': (width, 3, 7, 7), **_bn('bn1', width)}
  inplanes = width
  for s, blocks in enumerate(layers):
    planes = width * 2**s
    for i in range(blocks):
      stride = 2 if s > 0 and i == 0 else 1
      p = f'layer{s + 1}.{i}'
      if block == 'bottleneck':
        inner = int(planes * (width_per_group / 64.)) * groups
        out = planes * 4
        shapes.update({f'{p}.conv1.weight': (inner, inplanes, 1, 1), **_bn(f'{p}.bn1', inner),
                       f'{p}.conv2.weight': (inner, inner // groups, 3, 3), **_bn(f'{p}.bn2', inner),
                       f'{p}.conv3.weight': (out, inner, 1, 1), **_bn(f'{p}.bn3', out)})
      else:
        out = planes
        shapes.update({f'{p}.conv1.weight': (out, inplanes, 3, 3), **_bn(f'{p}.bn1', out),
                       f'{p}.conv2.weight': (out, out, 3, 3), **_bn(f'{p}.bn2', out)})
      if stride != 1 or inplanes != out:
        shapes.update({f'{p}.downsample.0.weight': (out, inplanes, 1, 1), **_bn(f'{p}.downsample.1', out)})
      inplanes = out
  if num_classes:
    shapes.update({'fc.weight': (num_classes, inplanes), 'fc.bias': (num_classes,)})
  return shapes


RESNEXT50_32X4D = dict(block='bottleneck', layers=(3, 4, 6, 3), groups=32, width_per_group=4)
RESNET34 = dict(block='basic', layers=(3, 4, 6, 3))


def random_state_dict(shapes: dict, seed: int) -> dict[str, np.ndarray]:
  """Values that keep a deep forward pass O(1): He-scaled convs, BN near identity, positive variances."""
  rng = np.random.default_rng(seed)
  sd = {}
  for name, shape in shapes.items():
    if name.endswith('num_batches_tracked'):
      sd[name] = np.array(12345, np.int64)
    elif len(shape) == 4:
      sd[name] = (rng.standard_normal(shape, np.float32) * np.sqrt(2 / np.prod(shape[1:]))).astype(np.float32)
    elif name.endswith('running_var'):
      sd[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    elif name.endswith('.weight') and not name.startswith('fc'):
      sd[name] = rng.uniform(0.3, 0.8, shape).astype(np.float32)
    else:
      sd[name] = (0.1 * rng.standard_normal(shape, np.float32)).astype(np.float32)
  return sd


def _trained_count(shapes: dict) -> int:
  """What torch's `model.parameters()` counts: weights and biases, not running statistics."""
  return sum(int(np.prod(s)) for n, s in shapes.items() if n.endswith(('.weight', '.bias')))


# --- NumPy transcription of torchvision's forward (NCHW, float64, batch of one) ---

def np_conv(x_CHW, w_OIhw, stride: int = 1, groups: int = 1):
  """torch.nn.functional.conv2d with padding k // 2, no bias."""
  _, h, w = x_CHW.shape
  o, ig, k, _ = w_OIhw.shape
  pad = k // 2
  xp = np.pad(x_CHW, ((0, 0), (pad, pad), (pad, pad)))
  ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
  patches = np.stack([xp[:, i:i + stride * ho:stride, j:j + stride * wo:stride] for i in range(k) for j in range(k)],
                     axis=1)  # (C, k*k, Ho, Wo)
  patches = patches.reshape(groups, ig, k * k, ho * wo)
  out = np.einsum('goik,gikp->gop', w_OIhw.reshape(groups, o // groups, ig, k * k).astype(np.float64), patches)
  return out.reshape(o, ho, wo)


def np_bn(x_CHW, sd, prefix):
  scale = sd[f'{prefix}.weight'] / np.sqrt(sd[f'{prefix}.running_var'].astype(np.float64) + EPS)
  return (x_CHW - sd[f'{prefix}.running_mean'][:, None, None]) * scale[:, None, None] + sd[f'{prefix}.bias'][:, None,
                                                                                                             None]


def np_maxpool_3x3_s2_p1(x_CHW):
  xp = np.pad(x_CHW, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  ho, wo = (x_CHW.shape[1] - 1) // 2 + 1, (x_CHW.shape[2] - 1) // 2 + 1
  return np.max([xp[:, i:i + 2 * ho:2, j:j + 2 * wo:2] for i in range(3) for j in range(3)], axis=0)


def np_torchvision_resnet(sd, x_CHW, block: str, layers, stage_strides, groups: int = 1):
  """Stem, then each stage's output (torchvision's forward; `stage_strides` as the SSD reference's _ModifyBlock
  sets them: layer3 of its ResNet-34 at stride 1)."""
  relu = lambda v: np.maximum(v, 0)  # noqa: E731
  stem = relu(np_bn(np_conv(x_CHW, sd['conv1.weight'], 2), sd, 'bn1'))
  x = np_maxpool_3x3_s2_p1(stem)
  outputs = []
  for s, (blocks, stage_stride) in enumerate(zip(layers, stage_strides)):
    for i in range(blocks):
      p, stride = f'layer{s + 1}.{i}', stage_stride if i == 0 else 1
      if block == 'bottleneck':
        y = relu(np_bn(np_conv(x, sd[f'{p}.conv1.weight']), sd, f'{p}.bn1'))
        y = relu(np_bn(np_conv(y, sd[f'{p}.conv2.weight'], stride, groups), sd, f'{p}.bn2'))
        y = np_bn(np_conv(y, sd[f'{p}.conv3.weight']), sd, f'{p}.bn3')
      else:
        y = relu(np_bn(np_conv(x, sd[f'{p}.conv1.weight'], stride), sd, f'{p}.bn1'))
        y = np_bn(np_conv(y, sd[f'{p}.conv2.weight']), sd, f'{p}.bn2')
      identity = x
      if f'{p}.downsample.0.weight' in sd:
        identity = np_bn(np_conv(x, sd[f'{p}.downsample.0.weight'], stride), sd, f'{p}.downsample.1')
      x = relu(y + identity)
    outputs.append(x)
  return stem, outputs


# --- fixtures ---

def _abstract_variables(module, size: int):
  """(params, batch_stats) of `module` as ShapeDtypeStructs: the tree a checkpoint fills, with no init compute."""
  variables = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                                          train=False)))
  return variables['params'], {'batch_stats': variables['batch_stats']}


@pytest.fixture(scope='module')
def resnext50(tmp_path_factory):
  sd = random_state_dict(torchvision_shapes(**RESNEXT50_32X4D), seed=0)
  path = str(tmp_path_factory.mktemp('ckpt') / 'resnext50_32x4d.safetensors')
  safetensors.numpy.save_file(sd, path)
  return sd, path


@pytest.fixture(scope='module')
def resnet34(tmp_path_factory):
  sd = random_state_dict(torchvision_shapes(**RESNET34), seed=1)
  path = str(tmp_path_factory.mktemp('ckpt') / 'resnet34.npz')
  np.savez(path, **sd)
  return sd, path


def _torch_to_flax(name: str, value: np.ndarray) -> np.ndarray:
  return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value


def _digest(a) -> str:
  return hashlib.sha1(np.ascontiguousarray(np.asarray(a, np.float32)).tobytes()).hexdigest()


def _assert_every_tensor_in_one_place(sd, params_backbone, stats_backbone, dropped_prefixes):
  """Each used tensor (OIHW -> HWIO for convs) equals exactly one backbone leaf, and each leaf is one tensor of the
  kind its name says (kernel <- conv weight, scale/bias <- BN weight/bias, mean/var <- running stats)."""
  used = {n: v for n, v in sd.items() if not n.endswith('num_batches_tracked') and not n.startswith(dropped_prefixes)}
  by_digest = {_digest(_torch_to_flax(n, v)): n for n, v in used.items()}
  assert len(by_digest) == len(used)
  leaves = {('params',) + k: v for k, v in traverse_util.flatten_dict(params_backbone).items()}
  leaves.update({('batch_stats',) + k: v for k, v in traverse_util.flatten_dict(stats_backbone).items()})
  placed = {}
  for path, leaf in leaves.items():
    assert isinstance(leaf, (np.ndarray, jax.Array)), f'{path} was not loaded'
    name = by_digest.get(_digest(leaf))
    assert name is not None, f'{path} holds no tensor of the checkpoint'
    assert leaf.shape == _torch_to_flax(name, used[name]).shape
    suffix = {'kernel': '.weight', 'scale': '.weight', 'bias': '.bias', 'mean': '.running_mean',
              'var': '.running_var'}[path[-1]]
    assert name.endswith(suffix), (path, name)
    assert (path[-1] == 'kernel') == (used[name].ndim == 4), (path, name)
    placed[name] = path
  assert sorted(placed) == sorted(used), set(used) - set(placed)  # Every tensor used, none twice.
  return placed


# --- the layout itself ---

def test_torchvision_layouts_have_torchvisions_parameter_counts():
  # torchvision's published counts: resnext50_32x4d 25,028,904; resnet34 21,797,672 (1000-class fc included).
  assert _trained_count(torchvision_shapes(**RESNEXT50_32X4D)) == 25_028_904
  assert _trained_count(torchvision_shapes(**RESNET34)) == 21_797_672
  # 53 convs + 53 BNs + fc for ResNeXt-50; ResNet-34: 36 convs + 36 BNs + fc (BN: 5 entries each).
  assert len(torchvision_shapes(**RESNEXT50_32X4D)) == 53 + 53 * 5 + 2
  assert len(torchvision_shapes(**RESNET34)) == 36 + 36 * 5 + 2


# --- RetinaNet: ResNeXt50-32x4d from .safetensors ---

def test_resnext50_safetensors_fills_the_full_retinanet_backbone(resnext50):
  sd, path = resnext50
  params, model_state = _abstract_variables(RetinaNet(num_classes=264), 64)
  new_params, new_state = torchvision_weights.load_backbone(path, params, model_state, stage_sizes=(3, 4, 6, 3))
  placed = _assert_every_tensor_in_one_place(sd, new_params['backbone'], new_state['batch_stats']['backbone'],
                                             ('fc.',))
  assert placed['conv1.weight'] == ('params', 'stem_conv', 'kernel')
  assert placed['layer4.2.bn3.running_var'] == ('batch_stats', 'ResNeXtBlock_15', 'BatchNorm_2', 'var')
  # The FPN and heads are not the checkpoint's: left as they were.
  assert new_params['fpn'] is params['fpn'] and new_params['class_head'] is params['class_head']


def test_loaded_resnext50_forward_equals_numpy_torchvision(resnext50):
  """Stem conv + BN, then C3-C5 of the whole loaded backbone, against NumPy's torchvision forward at 32x32."""
  sd, path = resnext50
  backbone = ResNeXtBackbone()
  params, model_state = _abstract_variables(backbone, 32)
  wrap = lambda tree: {'backbone': tree}  # noqa: E731 (load_backbone fills a model's 'backbone' scope)
  loaded_params, loaded_state = torchvision_weights.load_backbone(
      path, wrap(params), {'batch_stats': wrap(model_state['batch_stats'])}, stage_sizes=(3, 4, 6, 3))
  variables = {'params': loaded_params['backbone'], 'batch_stats': loaded_state['batch_stats']['backbone']}
  image_HWC = np.random.default_rng(2).standard_normal((32, 32, 3)).astype(np.float32)
  (c3, c4, c5), inter = backbone.apply(variables, image_HWC[None], train=False,
                                       capture_intermediates=lambda mdl, _: mdl.name == 'stem_bn')
  stem, stages = np_torchvision_resnet(sd, image_HWC.transpose(2, 0, 1).astype(np.float64), 'bottleneck',
                                       (3, 4, 6, 3), (1, 2, 2, 2), groups=32)
  ours_stem = np.maximum(np.asarray(inter['intermediates']['stem_bn']['__call__'][0][0]), 0).transpose(2, 0, 1)
  np.testing.assert_allclose(ours_stem, stem, rtol=1e-4, atol=1e-4)
  for ours, ref in zip((c3, c4, c5), stages[1:]):
    ours = np.asarray(ours[0]).transpose(2, 0, 1)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


# --- SSD300: ResNet-34 from .npz ---

def test_resnet34_npz_fills_the_ssd300_backbone_and_drops_layer4(resnet34):
  sd, path = resnet34
  params, model_state = _abstract_variables(SSD300(num_classes=81), 300)
  new_params, new_state = torchvision_weights.load_backbone(path, params, model_state, stage_sizes=(3, 4, 6),
                                                            dropped=('layer4.', 'fc.'))
  placed = _assert_every_tensor_in_one_place(sd, new_params['backbone'], new_state['batch_stats']['backbone'],
                                             ('layer4.', 'fc.'))
  # layer3.0 changes channels at stride 1 (the reference's _ModifyBlock): its downsample is the projection.
  assert placed['layer3.0.downsample.0.weight'] == ('params', 'BasicBlock_7', 'proj_conv', 'kernel')
  assert placed['layer3.0.downsample.1.weight'] == ('params', 'BasicBlock_7', 'BatchNorm_2', 'scale')
  assert new_params['extra_0_reduce'] is params['extra_0_reduce']


def test_loaded_resnet34_trunk_forward_equals_numpy_reference(resnet34):
  sd, path = resnet34
  backbone = ResNetBackbone()
  params, model_state = _abstract_variables(backbone, 32)
  loaded_params, loaded_state = torchvision_weights.load_backbone(
      path, {'backbone': params}, {'batch_stats': {'backbone': model_state['batch_stats']}}, stage_sizes=(3, 4, 6),
      dropped=('layer4.', 'fc.'))
  variables = {'params': loaded_params['backbone'], 'batch_stats': loaded_state['batch_stats']['backbone']}
  image_HWC = np.random.default_rng(3).standard_normal((32, 32, 3)).astype(np.float32)
  ours = np.asarray(backbone.apply(variables, image_HWC[None], train=False)[0]).transpose(2, 0, 1)
  _, stages = np_torchvision_resnet(sd, image_HWC.transpose(2, 0, 1).astype(np.float64), 'basic', (3, 4, 6),
                                    (1, 2, 1))
  assert ours.shape == stages[-1].shape == (256, 4, 4)
  np.testing.assert_allclose(ours, stages[-1], rtol=1e-3, atol=1e-3 * np.abs(stages[-1]).max())


# --- formats and errors (a small 4-stage ResNeXt: same names, small tensors) ---

SMALL = dict(block='bottleneck', layers=(1, 2, 1, 1), groups=4, width_per_group=4, width=16)


def _small_tree():
  return _abstract_variables(RetinaNet(num_classes=3, backbone_stage_sizes=(1, 2, 1, 1), backbone_width=16, groups=4,
                                       width_per_group=4, fpn_channels=8, head_convs=1), 64)


def _load_small(path):
  params, model_state = _small_tree()
  return torchvision_weights.load_backbone(path, params, model_state, stage_sizes=(1, 2, 1, 1))


def test_safetensors_and_npz_load_the_same_tree(tmp_path):
  sd = random_state_dict(torchvision_shapes(**SMALL), seed=4)
  safetensors.numpy.save_file(sd, str(tmp_path / 'a.safetensors'))
  np.savez(tmp_path / 'a.npz', **sd)
  a = _load_small(str(tmp_path / 'a.safetensors'))
  b = _load_small(str(tmp_path / 'a.npz'))
  flat_a, flat_b = traverse_util.flatten_dict(a[0]['backbone']), traverse_util.flatten_dict(b[0]['backbone'])
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_array_equal(flat_a[k], flat_b[k])
  # A grouped 3x3: torch (O, I/groups, kh, kw) -> Flax (kh, kw, I/groups, O).
  np.testing.assert_array_equal(a[0]['backbone']['ResNeXtBlock_1']['Conv_1']['kernel'],
                                sd['layer2.0.conv2.weight'].transpose(2, 3, 1, 0))
  assert a[0]['backbone']['ResNeXtBlock_1']['Conv_1']['kernel'].shape == (3, 3, 2, 8)  # 8 channels in 4 groups.


def _error_of(tmp_path, sd, name='bad.safetensors') -> str:
  path = str(tmp_path / name)
  if name.endswith('.npz'):
    np.savez(path, **sd)
  else:
    safetensors.numpy.save_file(sd, path)
  with pytest.raises(UserError) as e:
    _load_small(path)
  message = str(e.value)
  assert '\n' not in message and path in message, message
  return message


def test_bad_checkpoints_are_one_line_errors_naming_the_tensor(tmp_path):
  good = random_state_dict(torchvision_shapes(**SMALL), seed=5)
  missing = {k: v for k, v in good.items() if k != 'layer2.1.conv2.weight'}
  assert "missing tensor 'layer2.1.conv2.weight'" in _error_of(tmp_path, missing)
  unknown = {**good, 'layer2.1.conv4.weight': good['layer2.1.conv2.weight']}
  assert "unknown tensor 'layer2.1.conv4.weight'" in _error_of(tmp_path, unknown, 'unknown.npz')
  misshaped = {**good, 'layer3.0.bn2.running_var': np.ones(7, np.float32)}
  message = _error_of(tmp_path, misshaped, 'misshaped.safetensors')
  assert "tensor 'layer3.0.bn2.running_var' has shape (7,)" in message and 'needs (16,)' in message, message
  # A conv's expected shape is given in torchvision's OIHW, as the user's file holds it.
  swapped = {**good, 'layer2.0.conv2.weight': good['layer2.0.conv2.weight'].transpose(1, 0, 2, 3).copy()}
  message = _error_of(tmp_path, swapped, 'swapped.npz')
  assert "tensor 'layer2.0.conv2.weight' has shape (2, 8, 3, 3)" in message and 'needs (8, 2, 3, 3)' in message
  # A checkpoint of another architecture (ResNet-34 names into a ResNeXt) fails on its first differing tensor.
  assert 'tensor' in _error_of(tmp_path, random_state_dict(torchvision_shapes(block='basic', layers=(1, 2, 1, 1),
                                                                              width=16), seed=6), 'r34.npz')
  for path, why in ((tmp_path / 'nope.safetensors', 'no such file'), (tmp_path / 'a.pth', '.safetensors or .npz')):
    if path.suffix == '.pth':
      path.write_bytes(b'PK\x03\x04')
    with pytest.raises(UserError, match=why):
      _load_small(str(path))
  for name, data in (('junk.safetensors', b'not a safetensors file'), ('junk.npz', b'PK\x03\x04junk'),
                     ('bf16.safetensors', _bfloat16_safetensors())):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError, match='cannot read') as e:
      _load_small(str(tmp_path / name))
    assert '\n' not in str(e.value)
  assert 'float32' in str(e.value)


def _bfloat16_safetensors() -> bytes:
  """A file safetensors' NumPy reader cannot read (NumPy has no bfloat16): header length, JSON header, data."""
  header = b'{"conv1.weight":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}'
  return len(header).to_bytes(8, 'little') + header + b'\x80\x3f\x00\x40'


# --- what trains: the reference's trainable_backbone_layers=3 and FrozenBatchNorm2d ---

def _label_counts(workload, params) -> dict[str, int]:
  labels = optimizers.parameter_labels(params, workload.frozen_parameter)
  counts = {}
  for label, leaf in zip(jax.tree.leaves(labels), jax.tree.leaves(params)):
    counts[label] = counts.get(label, 0) + int(np.prod(leaf.shape))
  return counts


def test_full_retinanet_trains_exactly_what_the_reference_trains(tmp_path):
  """With a backbone checkpoint the reference freezes conv1 and layer1 (trainable_backbone_layers=3) and its
  FrozenBatchNorm2d affines are buffers: 211,648 conv weights (conv1 9,408 + layer1 202,240) + 68,224 BN affines
  frozen; the 37,060,652 - 211,648 = 36,849,004 tensors its `requires_grad` keeps are exactly ours."""
  config = registry.get_config('ssd', 'full', 'retinanet')
  config.backbone_checkpoint = str(tmp_path / 'x.safetensors')
  (tmp_path / 'x.safetensors').touch()
  workload = registry.workload_class('ssd', 'retinanet')(config, 'full')
  params, _ = jax.eval_shape(workload.init_variables, jax.random.key(0))
  assert _label_counts(workload, nn.unbox(params)) == {'trained': 36_849_004, 'frozen': 211_648 + 68_224}
  # From scratch (open division) the reference trains every conv (_validate_trainable_layers: 5 when not
  # pretrained), and FrozenBatchNorm2d still keeps its affines fixed.
  config.backbone_checkpoint = ''
  scratch = registry.workload_class('ssd', 'retinanet')(config, 'full')
  assert _label_counts(scratch, nn.unbox(params)) == {'trained': 37_060_652, 'frozen': 68_224}


def test_ssd300_trains_every_tensor_as_its_reference_does(tmp_path):
  """The 1.1.0 SSD reference hands ssd300.parameters() (ordinary BatchNorm2d) to SGD: nothing frozen."""
  config = registry.get_config('ssd', 'full', 'ssd300')
  config.backbone_checkpoint = str(tmp_path / 'x.npz')
  (tmp_path / 'x.npz').touch()
  workload = registry.workload_class('ssd', 'ssd300')(config, 'full')
  params, _ = jax.eval_shape(workload.init_variables, jax.random.key(0))
  assert _label_counts(workload, nn.unbox(params)) == {'trained': 19_972_534}


def _random_variables(workload, seed: int = 0):
  """(params, model_state) of the workload's model with random values, from shapes only (an init would compile)."""
  rng = np.random.default_rng(seed)
  params, model_state = nn.unbox(jax.eval_shape(workload.init_variables, jax.random.key(0)))
  fill = lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype)  # noqa: E731
  return jax.tree.map(fill, params), jax.tree.map(lambda s: np.ones(s.shape, s.dtype), model_state)


def _small_retinanet_workload(checkpoint: str):
  config = registry.get_config('ssd', 'tiny', 'retinanet')
  config.model.update(stage_sizes=(1, 2, 1, 1), frozen_bn=True)
  config.backbone_checkpoint = checkpoint
  return registry.workload_class('ssd', 'retinanet')(config, 'tiny')


def test_a_train_step_leaves_frozen_layers_and_frozen_bn_at_the_checkpoint(tmp_path):
  sd = random_state_dict(torchvision_shapes(**SMALL), seed=7)
  path = str(tmp_path / 'small.safetensors')
  safetensors.numpy.save_file(sd, path)
  workload = _small_retinanet_workload(path)
  params, model_state = workload.load_pretrained(*_random_variables(workload))
  tx = workload.optimizer(optax.constant_schedule(1e-2))
  opt_state = tx.init(params)
  rng = np.random.default_rng(8)
  s, m = workload.config.image_size, workload.config.max_boxes
  batch = {'image': rng.standard_normal((2, s, s, 3)).astype(np.float32),
           'boxes': np.tile(np.array([[0.1, 0.1, 0.6, 0.5]], np.float32), (2, m, 1)),
           'classes': np.ones((2, m), np.int32), 'box_mask': np.arange(m)[None].repeat(2, 0) < 2}
  @jax.jit
  def step(params, model_state, opt_state):
    grads, (new_model_state, _) = jax.grad(workload.loss, has_aux=True)(params, model_state, batch,
                                                                        jax.random.key(1))
    updates, _ = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_model_state
  new_params, new_model_state = step(params, model_state, opt_state)
  flat_new = traverse_util.flatten_dict(new_params)
  frozen, trained = [], []
  for path, old in traverse_util.flatten_dict(params).items():
    (frozen if np.array_equal(old, flat_new[path]) else trained).append('/'.join(path))
  backbone_bn = [p for p in frozen if p.startswith('backbone/') and ('BatchNorm' in p or 'stem_bn' in p)]
  # conv1 (stem) and layer1 (ResNeXtBlock_0) frozen; every backbone BN affine frozen; nothing else.
  assert sorted(set(frozen) - set(backbone_bn)) == ['backbone/ResNeXtBlock_0/Conv_0/kernel',
                                                    'backbone/ResNeXtBlock_0/Conv_1/kernel',
                                                    'backbone/ResNeXtBlock_0/Conv_2/kernel',
                                                    'backbone/ResNeXtBlock_0/proj_conv/kernel',
                                                    'backbone/stem_conv/kernel']
  assert len(backbone_bn) == 2 * (1 + 4 + 4 + 3 + 4 + 4)  # stem + 5 blocks' BNs (4 with a projection), 2 each.
  assert 'backbone/ResNeXtBlock_1/Conv_1/kernel' in trained and 'fpn/lateral_3/kernel' in trained
  # Frozen BN: train mode used and kept the checkpoint's statistics.
  np.testing.assert_array_equal(new_model_state['batch_stats']['backbone']['stem_bn']['var'], sd['bn1.running_var'])
  jax.tree.map(np.testing.assert_array_equal, new_model_state, model_state)
  np.testing.assert_array_equal(new_params['backbone']['stem_conv']['kernel'],
                                sd['conv1.weight'].transpose(2, 3, 1, 0))


def test_loaded_tensors_keep_the_state_sharding(tmp_path):
  """In a run the state lives sharded on the mesh: loaded leaves come back with each old leaf's sharding."""
  sd = random_state_dict(torchvision_shapes(**SMALL), seed=9)
  path = str(tmp_path / 'small.safetensors')
  safetensors.numpy.save_file(sd, path)
  workload = _small_retinanet_workload(path)
  params, model_state = _random_variables(workload)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('x',))
  split_out = NamedSharding(mesh, PartitionSpec(None, None, None, 'x'))
  replicated = NamedSharding(mesh, PartitionSpec())
  params = jax.tree.map(lambda a: jax.device_put(a, split_out if a.ndim == 4 and a.shape[-1] % 8 == 0
                                                 else replicated), params)
  new_params, new_state = workload.load_pretrained(params, model_state)
  kernel = new_params['backbone']['ResNeXtBlock_1']['Conv_1']['kernel']
  assert kernel.sharding == split_out == params['backbone']['ResNeXtBlock_1']['Conv_1']['kernel'].sharding
  np.testing.assert_array_equal(kernel, sd['layer2.0.conv2.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(new_state['batch_stats']['backbone']['ResNeXtBlock_0']['BatchNorm_3']['mean'],
                                sd['layer1.0.downsample.1.running_mean'])


# --- the closed division and the log ---

def test_closed_full_ssd_without_a_backbone_checkpoint_is_refused_before_any_data(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  result = run_suite('--workload=ssd', '--scale=full', '--division=closed', f'--data_dir={empty}',
                     f'--output_dir={tmp_path / "out"}', timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: --division=closed:'), result.stderr[-2000:]
  assert 'backbone_checkpoint' in lines[0] and 'resnext50_32x4d' in lines[0] and 'BUILD.md' in lines[0]
  assert not (tmp_path / 'out').exists()
  # The same guard, in process, for the SSD300 variant; a tiny closed run (no torchvision backbone) is not asked.
  for variant, scale, refused in (('ssd300', 'full', True), ('retinanet', 'tiny', False)):
    cls = registry.workload_class('ssd', variant)
    config = registry.get_config('ssd', scale, variant)
    check = lambda: config_lib.check_closed(cls, registry.get_config('ssd', scale, variant), config, 'ssd')  # noqa
    if refused:
      with pytest.raises(UserError, match='resnet34'):
        check()
      config.backbone_checkpoint = str(tmp_path / 'resnet34.npz')
    check()


def test_with_a_checkpoint_the_closed_run_goes_on_to_its_data(tmp_path):
  """Given a checkpoint that exists, the guard lets the run through: the next thing it meets is the empty folder."""
  empty = tmp_path / 'empty'
  empty.mkdir()
  ckpt = tmp_path / 'resnext50_32x4d.safetensors'
  safetensors.numpy.save_file({'conv1.weight': np.zeros((1,), np.float32)}, str(ckpt))
  result = run_suite('--workload=ssd', '--scale=full', '--division=closed', f'--data_dir={empty}',
                     f'--config.backbone_checkpoint={ckpt}', f'--output_dir={tmp_path / "out"}', timeout=300)
  assert result.returncode == 2 and 'backbone' not in result.stderr.splitlines()[-1], result.stderr[-2000:]
  missing = run_suite('--workload=ssd', '--scale=full', '--division=open', f'--data_dir={empty}',
                      f'--config.backbone_checkpoint={tmp_path / "nope.npz"}', timeout=300)
  assert missing.returncode == 2 and 'nope.npz' in missing.stderr.splitlines()[-1], missing.stderr[-2000:]


def test_the_log_says_how_the_backbone_starts(tmp_path):
  """An open run from scratch says so; a pretrained one names its checkpoint and the file's SHA-256."""
  workload = registry.workload_class('ssd', 'retinanet')(registry.get_config('ssd', 'full', 'retinanet'), 'full')
  events = {key: (value, meta) for key, value, meta in workload.init_log_events({})}
  assert events['backbone_initialization'] == ('random', {'architecture': 'resnext50_32x4d', 'checkpoint': '',
                                                          'sha256': None, 'trainable_backbone_layers': 5})
  sd = random_state_dict(torchvision_shapes(**SMALL), seed=10)
  path = str(tmp_path / 'small.safetensors')
  safetensors.numpy.save_file(sd, path)
  small = _small_retinanet_workload(path)
  small.load_pretrained(*_random_variables(small))
  events = {key: (value, meta) for key, value, meta in small.init_log_events({})}
  with open(path, 'rb') as f:
    sha256 = hashlib.sha256(f.read()).hexdigest()
  assert events['backbone_initialization'] == ('pretrained', {'architecture': None, 'checkpoint': path,
                                                              'sha256': sha256, 'trainable_backbone_layers': 3})


def test_a_run_starts_from_the_checkpoint_and_trains_only_what_the_reference_trains(tmp_path, data_dir):
  """The runner loads the checkpoint into the sharded state at init: after an epoch of a tiny open run (torchvision
  layout of the tiny 3-stage backbone, frozen BN) conv1 and layer1 and every BN are still the checkpoint's, layer2
  has trained, and the log names the file by its SHA-256 (and passes the official checker)."""
  sd = random_state_dict(torchvision_shapes('bottleneck', (1, 1, 1), groups=4, width_per_group=4, width=16), seed=11)
  ckpt = str(tmp_path / 'tiny_resnext.safetensors')
  safetensors.numpy.save_file(sd, ckpt)
  out = tmp_path / 'run'
  result = run_suite('--workload=ssd', '--scale=tiny', '--seed=1', f'--data_dir={data_dir}', f'--output_dir={out}',
                     '--config.max_epochs=1', '--config.model.frozen_bn=True', f'--config.backbone_checkpoint={ckpt}')
  assert result.returncode in (0, 1), result.stderr[-3000:]
  events = mlperf_log.read_events(str(out / 'result_0.txt'), strict=True)
  (init,) = [e for e in events if e['key'] == 'backbone_initialization']
  with open(ckpt, 'rb') as f:
    assert init['value'] == 'pretrained' and init['metadata']['sha256'] == hashlib.sha256(f.read()).hexdigest()
  checker = check_log(str(out / 'result_0.txt'), '4.1.0')
  assert checker.returncode == 0, checker.stdout + checker.stderr
  manager = ocp.CheckpointManager(str(out / 'checkpoints'))
  state = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  backbone, stats = state['params']['backbone'], state['model_state']['batch_stats']['backbone']
  hwio = lambda name: sd[name].transpose(2, 3, 1, 0)  # noqa: E731
  np.testing.assert_array_equal(backbone['stem_conv']['kernel'], hwio('conv1.weight'))
  np.testing.assert_array_equal(backbone['ResNeXtBlock_0']['Conv_1']['kernel'], hwio('layer1.0.conv2.weight'))
  np.testing.assert_array_equal(backbone['ResNeXtBlock_0']['proj_conv']['kernel'], hwio('layer1.0.downsample.0.weight'))
  np.testing.assert_array_equal(backbone['ResNeXtBlock_2']['BatchNorm_1']['scale'], sd['layer3.0.bn2.weight'])
  np.testing.assert_array_equal(stats['ResNeXtBlock_1']['BatchNorm_2']['var'], sd['layer2.0.bn3.running_var'])
  assert not np.array_equal(backbone['ResNeXtBlock_1']['Conv_1']['kernel'], hwio('layer2.0.conv2.weight'))
