"""torchvision ImageNet ResNet/ResNeXt weights in our Flax backbones, and which of them the references train.

A checkpoint is a torchvision `state_dict()` (e.g. resnext50_32x4d-7cdf4587.pth, resnet34-333f7ec4.pth, the
weights the MLPerf detection references start from) saved once as `.safetensors` or `.npz` (BUILD.md), read here
with NumPy only: no torch at run time. Names map by torchvision's layout: `conv1`/`bn1` is our `stem_conv`/
`stem_bn`; `layer{s}.{i}` is our backbone's `<Block>_<k>` (blocks numbered across stages); in a block `conv{j}`/
`bn{j}` are `Conv_{j-1}`/`BatchNorm_{j-1}` and `downsample.0`/`.1` are `proj_conv` and the BN after the body's.
Conv weights go OIHW -> HWIO (grouped convs too: torch (O, I/groups, kh, kw), Flax (kh, kw, I/groups, O)); BN
weight/bias -> scale/bias in `params`, running_mean/var -> mean/var in `batch_stats`.
"""

import hashlib
import io
import re
import zipfile
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util

from suite.common.errors import UserError, first_line

BLOCK = re.compile(r'^(\w+Block)_(\d+)$')
# torchvision's trainable layers, last first (torchvision.models.detection.backbone_utils.resnet_fpn_backbone).
LAYERS_LAST_FIRST = ('layer4', 'layer3', 'layer2', 'layer1', 'conv1')
_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'), 'running_mean': ('batch_stats', 'mean'),
       'running_var': ('batch_stats', 'var')}


def read_state_dict(path: str) -> tuple[dict[str, np.ndarray], str]:
  """(name -> array, SHA-256 of the file) of a `.safetensors` or `.npz` state dict; a bad file is a UserError."""
  if not path.endswith(('.safetensors', '.npz')):
    raise UserError(f'backbone checkpoint {path}: need a .safetensors or .npz state dict (convert a torchvision '
                    '.pth once as BUILD.md shows)')
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise UserError(f'backbone checkpoint {path}: {e.strerror.lower() if e.strerror else e}') from None
  try:
    if path.endswith('.safetensors'):
      tensors = safetensors.numpy.load(data)
    else:
      with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        tensors = {name: npz[name] for name in npz.files}
  except KeyError as e:  # safetensors' NumPy reader knows no bfloat16.
    raise UserError(f'backbone checkpoint {path}: cannot read dtype {e}: save the tensors as float32') from None
  except (safetensors.SafetensorError, zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
    raise UserError(f'backbone checkpoint {path}: cannot read it ({first_line(e)})') from None
  return tensors, hashlib.sha256(data).hexdigest()


def tensor_map(backbone_params, stage_sizes: Sequence[int]) -> dict[str, tuple[str, tuple[str, ...]]]:
  """torchvision name -> (collection, path within the backbone) for every tensor our backbone holds."""
  names = {'conv1.weight': ('params', ('stem_conv', 'kernel'))}
  names.update({f'bn1.{t}': (c, ('stem_bn', leaf)) for t, (c, leaf) in _BN.items()})
  blocks = sorted((k for k in backbone_params if BLOCK.match(k)), key=lambda k: int(BLOCK.match(k).group(2)))
  if len(blocks) != sum(stage_sizes):
    raise ValueError(f'backbone has {len(blocks)} blocks, stage_sizes={tuple(stage_sizes)} says {sum(stage_sizes)}')
  stage_of = [(s, i) for s, n in enumerate(stage_sizes) for i in range(n)]
  for block, (s, i) in zip(blocks, stage_of):
    prefix = f'layer{s + 1}.{i}'
    body = sorted((k for k in backbone_params[block] if k.startswith('Conv_')), key=lambda k: int(k[5:]))
    parts = [(f'conv{j + 1}', conv, f'bn{j + 1}', f'BatchNorm_{j}') for j, conv in enumerate(body)]
    if 'proj_conv' in backbone_params[block]:
      parts.append(('downsample.0', 'proj_conv', 'downsample.1', f'BatchNorm_{len(body)}'))
    for conv_name, conv, bn_name, bn in parts:
      names[f'{prefix}.{conv_name}.weight'] = ('params', (block, conv, 'kernel'))
      names.update({f'{prefix}.{bn_name}.{t}': (c, (block, bn, leaf)) for t, (c, leaf) in _BN.items()})
  return names


def load_backbone(path: str, params, model_state, stage_sizes: Sequence[int], dropped: tuple[str, ...] = ('fc.',),
                  scope: str = 'backbone') -> tuple[Any, Any]:
  """(params, model_state) with the `scope` backbone's tensors replaced by the checkpoint's.

  Tensors under `dropped` prefixes (the classifier; for a truncated trunk, its unused stages) and BN
  `num_batches_tracked` counters are skipped, as the references' IntermediateLayerGetter / truncation drop them;
  any other unknown, missing or mis-shaped tensor is one UserError naming it. A replaced leaf keeps its old leaf's
  dtype and, for a jax.Array, its sharding (every process reads the whole file and places its own shards).
  """
  tensors, _ = read_state_dict(path)
  return place_backbone(tensors, path, params, model_state, stage_sizes, dropped, scope)


def place_backbone(tensors: dict[str, np.ndarray], path: str, params, model_state, stage_sizes: Sequence[int],
                   dropped: tuple[str, ...] = ('fc.',), scope: str = 'backbone') -> tuple[Any, Any]:
  """`load_backbone` on an already read state dict (`path` only names it in errors)."""
  names = tensor_map(params[scope], stage_sizes)
  for name in tensors:
    if name not in names and not name.endswith('.num_batches_tracked') and not name.startswith(dropped):
      raise UserError(f"backbone checkpoint {path}: unknown tensor '{name}': not a tensor of this model's "
                      f'torchvision backbone (stages {tuple(stage_sizes)}); is it the right architecture?')
  trees = {'params': traverse_util.flatten_dict(params[scope]),
           'batch_stats': traverse_util.flatten_dict(model_state['batch_stats'][scope])}
  for name, (collection, leaf_path) in names.items():
    if name not in tensors:
      raise UserError(f"backbone checkpoint {path}: missing tensor '{name}' (the model's "
                      f"{'/'.join((scope,) + leaf_path)})")
    value = np.asarray(tensors[name])
    old = trees[collection][leaf_path]
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    if value.shape != tuple(old.shape):
      torch_shape = tuple(old.shape[i] for i in (3, 2, 0, 1)) if len(old.shape) == 4 else tuple(old.shape)
      raise UserError(f"backbone checkpoint {path}: tensor '{name}' has shape {tuple(tensors[name].shape)}, the "
                      f"model's {'/'.join((scope,) + leaf_path)} needs {torch_shape} (torchvision layout)")
    if not np.issubdtype(value.dtype, np.floating):
      raise UserError(f"backbone checkpoint {path}: tensor '{name}' is {value.dtype}, not floating point")
    trees[collection][leaf_path] = _place_like(value.astype(old.dtype), old)
  new_params = {**params, scope: traverse_util.unflatten_dict(trees['params'])}
  new_stats = {**model_state['batch_stats'], scope: traverse_util.unflatten_dict(trees['batch_stats'])}
  return new_params, {**model_state, 'batch_stats': new_stats}


def _place_like(value: np.ndarray, old) -> Any:
  """`value` laid out as `old`: the same sharding for a jax.Array, else the NumPy array itself."""
  if isinstance(old, jax.Array):
    return jax.make_array_from_callback(value.shape, old.sharding, lambda index: value[index])
  return value


def reference_frozen(path: Sequence[str], stage_sizes: Sequence[int], trainable_layers: int, frozen_bn: bool,
                     scope: str = 'backbone') -> bool:
  """Whether the reference keeps this parameter (path of names from the params root) fixed.

  torchvision's `resnet_fpn_backbone(trainable_layers=n)` trains only the last n of layer4, layer3, layer2, layer1,
  conv1 (bn1 too when n == 5) and sets requires_grad=False on the rest; its FrozenBatchNorm2d keeps weight and bias
  as buffers, so with `frozen_bn` no BN affine trains at all. Only the backbone is ever frozen.
  """
  if len(path) < 2 or path[0] != scope:
    return False
  module = path[1]
  is_bn = module == 'stem_bn' or (len(path) > 2 and path[2].startswith('BatchNorm_'))
  if frozen_bn and is_bn:
    return True
  if module in ('stem_conv', 'stem_bn'):
    layer = 'conv1' if module == 'stem_conv' else 'bn1'
  else:
    match = BLOCK.match(module)
    if not match:
      return False
    block, stage = int(match.group(2)), 0
    while block >= sum(stage_sizes[:stage + 1]):
      stage += 1
    layer = f'layer{stage + 1}'
  trained = list(LAYERS_LAST_FIRST[:trainable_layers]) + (['bn1'] if trainable_layers == 5 else [])
  return layer not in trained
