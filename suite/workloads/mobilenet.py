"""MobileNet-v1 image classification: MLPerf Inference's `mobilenet` (v0.5), trainable like any workload.

MLPerf Inference v0.5 measured the TF slim mobilenet_v1_1.0_224 checkpoint (FP32 top-1 71.676%, mlcommons/inference
vision/classification_and_detection/README.md) and closed submissions had to reach 98% of it (the v0.5 submission
checker: `"mobilenet": ("acc", 71.68 * 0.98)`, mlcommons/inference 86164589 tools/submission/submission-checker.py).
MLPerf Training never had a MobileNet benchmark, so the checker has no rules for it: runs log benchmark `mobilenet`
in the open division (as NCF's), and `full` is the published recipe rather than a closed reference.

`full` trains on imagenet2012 at 224x224 with the recipe the paper names (Howard et al. 2017, section 4: "RMSprop
with asynchronous gradient descent similar to Inception V3", i.e. Szegedy et al. 2016: RMSProp decay 0.9, epsilon
1.0, learning rate 0.045 decayed by 0.94 every two epochs) as TF slim runs it: tensorflow/models
research/slim/nets/mobilenet_v1_train.py (3b998e4f) decays 0.045 by 0.94 every 2.5 epochs, staircase, and
train_image_classifier.py's RMSProp has decay 0.9, momentum 0.9, epsilon 1.0; the L2 weight decay 4e-5 applies to
the conv kernels but not the depthwise ones (mobilenet_v1_arg_scope, regularize_depthwise=False); no label
smoothing. The recipe's asynchronous replicas each ran a small batch; here one synchronous global batch of 1,024 at
the same base rate (RMSProp's per-parameter scaling makes the step size depend little on the batch). Images are
scaled to [-1, 1] (slim's inception preprocessing, and MLPerf's pre_process_mobilenet), so the reference's
weights serve unchanged. `tiny` is MobileNet-v1 at width 0.25 on the generated 32x32 images.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from mlperf_logging import benchmark_meta

from models import mobilenet
from suite.common.errors import UserError
from suite.workloads import base as workload_lib
from suite.workloads import resnet

# The recipe's L2 weight decay (slim mobilenet_v1_arg_scope weight_decay=0.00004).
WEIGHT_DECAY = 4e-5


def get_config(scale: str) -> ml_collections.ConfigDict:
  """The hyperparameters of one scale; any field can be overridden with --config.KEY=VALUE."""
  c = resnet.get_config(scale)  # The ImageNet / generated-images data fields.
  del c.model, c.optimizer
  c.model = ml_collections.ConfigDict(dict(width_multiplier=1.0, dtype='bfloat16', bn_momentum=mobilenet.BN_MOMENTUM))
  c.global_batch_size = 1024
  c.label_smoothing = 0.0
  c.optimizer = ml_collections.ConfigDict(dict(
      name='rmsprop', learning_rate=0.045, decay_factor=0.94, epochs_per_decay=2.5, rmsprop_decay=0.9,
      momentum=0.9, epsilon=1.0, weight_decay=WEIGHT_DECAY))
  # 98% of the FP32 reference's top-1, MLPerf Inference v0.5's closed bound for mobilenet.
  c.target = round(MobileNetWorkload.inference_closed_fraction * MobileNetWorkload.inference_reference_accuracy, 5)
  c.eval_every_epochs = 4
  c.max_epochs = 100
  c.log_every_steps = 100
  if scale == 'tiny':
    # Batch-norm moving averages at 0.9997 would still hold their initial values after a few hundred steps.
    c.model = ml_collections.ConfigDict(dict(width_multiplier=0.25, dtype='float32', bn_momentum=0.9))
    c.global_batch_size = 128
    # 0.2 was faster for some seeds but unstable for others (seed 0 swung between 0.56 and 0.72 for seven epochs).
    c.optimizer.update(learning_rate=0.1, epochs_per_decay=1.0, decay_factor=0.8)
    # Chance is 0.1; 0.8 takes three to six epochs of real learning (seeds 0, 2: 3 epochs, 0.89 and 0.81; seeds 3,
    # 4: 6 epochs).
    c.target = 0.8
    c.eval_every_epochs = 1
    c.max_epochs = 10
    c.log_every_steps = 8
  return c


def _decays(params) -> dict:
  """The recipe's L2 decay: conv kernels (the classifier's included) but not the depthwise ones, nor BN or biases."""
  def decays(path, p):
    names = [getattr(k, 'key', '') for k in path]
    return p.ndim == 4 and not any(n.endswith('_depthwise') for n in names)
  return jax.tree_util.tree_map_with_path(decays, params)


def exponential_schedule(base: float, factor: float, decay_steps: int):
  """slim's tf.train.exponential_decay(staircase=True): base * factor ** floor(step / decay_steps)."""
  return optax.exponential_decay(base, max(decay_steps, 1), factor, staircase=True)


def scale_to_unit_range(images):
  """uint8 pixels -> float32 in [-1, 1] (x / 127.5 - 1): slim's inception preprocessing, which MobileNet-v1 was
  trained with and MLPerf's pre_process_mobilenet applies; a float input (already scaled) passes through."""
  if jnp.issubdtype(images.dtype, jnp.floating):
    return images
  return images.astype(jnp.float32) / 127.5 - 1.0


class MobileNetWorkload(resnet.ResNetWorkload):
  """MobileNet-v1 on ImageNet (open division); MLPerf Inference `mobilenet`. The data, eval and LoadGen response
  hooks are ResNet's."""
  benchmark = 'mobilenet'
  ruleset = '4.0.0'  # The checker's common rules the log follows; it has no mobilenet rules, so runs are open.
  variant = 'mobilenet_v1'
  metric_name = 'top1'
  dataset_description = 'imagenet2012'
  has_closed_rules = False
  closed_free_fields = ()
  loadgen_model = 'mobilenet'
  # mlcommons/inference vision/classification_and_detection/README.md: mobilenet-v1 FP32 71.676% top-1; the v0.5
  # closed bound is 98% of it (quantised mobile models), not the 99% of the other tasks.
  inference_reference_accuracy = 0.71676
  inference_closed_fraction = 0.98

  @classmethod
  def get_config(cls, scale):
    return get_config(scale)

  @classmethod
  def num_runs(cls) -> int:
    # No MLPerf Training count for mobilenet: ImageNet classification's (resnet's).
    return benchmark_meta.get_result_file_counts('training')['resnet']

  @classmethod
  def closed_violations(cls, config):
    del config
    return ['a closed mobilenet run (MLPerf Training has no MobileNet benchmark, so the checker has no rules for it)']

  def __init__(self, config, scale):  # pylint: disable=super-init-not-called
    # ResNet's __init__ would build a ResNet from config.model: set what it sets, with this model.
    workload_lib.Workload.__init__(self, config, scale)
    self._train_source = self._eval_source = None
    self.channels, self.small_images = 3, False
    self.model = mobilenet.MobileNetV1(num_classes=config.num_classes,
                                       width_multiplier=config.model.width_multiplier,
                                       dtype=jnp.dtype(config.model.dtype), bn_momentum=config.model.bn_momentum)

  def _adopt_dataset(self, name, data_dir):
    del data_dir
    raise UserError(f'--config.dataset={name}: mobilenet trains on imagenet2012 (full) or the generated images '
                    '(tiny, dataset=generated)')

  # --- model ---
  def loss(self, params, model_state, batch, rng):
    logits, new_model_state = self.model.apply(
        {'params': params, **model_state}, scale_to_unit_range(batch['image']), train=True,
        mutable=['batch_stats'], rngs={'dropout': rng})
    one_hot = jax.nn.one_hot(batch['label'], self.config.num_classes)
    targets = optax.smooth_labels(one_hot, self.config.label_smoothing)
    loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    return loss, (new_model_state, {'train_accuracy': accuracy})

  def _logits(self, params, model_state, images):
    return self.model.apply({'params': params, **model_state}, scale_to_unit_range(images), train=False)

  def eval_outputs(self, params, model_state, batch):
    correct = (jnp.argmax(self._logits(params, model_state, batch['image']), -1) == batch['label']) * batch['mask']
    return {'correct': jnp.sum(correct), 'count': jnp.sum(batch['mask'])}

  def predict(self, params, model_state, images):
    return jnp.argmax(self._logits(params, model_state, images), -1).astype(jnp.int32)

  # --- optimisation ---
  def learning_rate_schedule(self, steps_per_epoch):
    o = self.config.optimizer
    return exponential_schedule(o.learning_rate, o.decay_factor, int(o.epochs_per_decay * steps_per_epoch))

  def optimizer(self, schedule):
    o = self.config.optimizer
    if o.name != 'rmsprop':
      raise ValueError(f"config.optimizer.name must be 'rmsprop', not {o.name!r}")
    # TF's RMSProp: ms starts at 1, ms = d*ms + (1-d)*g^2, mom = m*mom + lr*g/sqrt(ms + eps), w -= mom; optax's
    # rmsprop with initial_scale=1 and eps inside the root is that update. The L2 term's gradient wd*w goes in first.
    return optax.chain(optax.add_decayed_weights(o.weight_decay, mask=_decays),
                       optax.rmsprop(schedule, decay=o.rmsprop_decay, eps=o.epsilon, initial_scale=1.0,
                                     eps_in_sqrt=True, momentum=o.momentum))

  def hyperparameters(self, steps_per_epoch):
    o = self.config.optimizer
    return {'opt_name': o.name, 'opt_base_learning_rate': o.learning_rate,
            'opt_learning_rate_decay_factor': o.decay_factor,
            'opt_learning_rate_decay_steps': int(o.epochs_per_decay * steps_per_epoch),
            'opt_rmsprop_decay': o.rmsprop_decay, 'opt_rmsprop_momentum': o.momentum,
            'opt_rmsprop_epsilon': o.epsilon, 'opt_weight_decay': o.weight_decay,
            'model_width_multiplier': self.config.model.width_multiplier}

  # --- reference weights ---
  def reference_weights(self, arrays):
    shapes = nn.unbox(jax.eval_shape(self.init_variables, jax.random.PRNGKey(0)))
    return convert_reference(arrays, shapes, self.config.num_classes)


Workload = MobileNetWorkload
VARIANTS = {MobileNetWorkload.variant: MobileNetWorkload}


# --- the reference's weights (MLPerf Inference's mobilenet_v1_1.0_224.onnx) ---
# tf2onnx converted the slim frozen graph (mlcommons/inference vision/classification_and_detection/tools/
# convert-to-onnx.sh, --inputs-as-nchw, opset 8), so its initializers keep the TF variable names with a suffix
# (e.g. `MobilenetV1/Conv2d_0/weights/read:0`), conv kernels in ONNX's [out, in/groups, h, w] (TF's [h, w, in, out]
# is accepted too), and the classifier has 1001 classes, class 0 "background" (MLPerf's PostProcessArgMax offset
# -1). Batch norm is either kept (gamma/beta/moving_mean/moving_variance) or folded into the convs (a bias).

def find_array(arrays: dict, name: str) -> tuple[str, np.ndarray]:
  """(key, array) of the one initializer that is the TF variable `name`: the name itself, or it with a scope
  before (`FeatureExtractor/...`) or a tensor suffix after (`/read:0`, `:0`, `__12`)."""
  pattern = re.compile(r'(?:^|.*/)' + re.escape(name) + r'(?:$|[/:_].*)')
  keys = [k for k in arrays if pattern.fullmatch(k)]
  if not keys:
    raise UserError(f'the reference weights have no {name!r}: is this the MobileNet-v1 ONNX model '
                    '(mobilenet_v1_1.0_224.onnx)?')
  if len(keys) > 1:
    raise UserError(f'the reference weights have {len(keys)} arrays named like {name!r} ({", ".join(keys[:4])})')
  return keys[0], np.asarray(arrays[keys[0]], np.float32)


def conv_kernel(arrays: dict, name: str, shape: tuple[int, ...], depthwise: bool = False) -> np.ndarray:
  """A conv kernel in flax's [h, w, in/groups, out] from ONNX's [out, in/groups, h, w] (or TF's [h, w, in, out],
  depthwise [h, w, channels, 1])."""
  key, w = find_array(arrays, name)
  h, wd, cin, cout = shape
  if w.shape == (cout, cin, h, wd):
    return w.transpose(2, 3, 1, 0)
  tf_shape = (h, wd, cout, 1) if depthwise else (h, wd, cin, cout)
  if w.shape == tf_shape:
    return w.reshape(shape)
  raise UserError(f'reference weight {key!r} has shape {w.shape}, expected {(cout, cin, h, wd)} (ONNX) or '
                  f'{tf_shape} (TF): a model of another width or class count?')


def batch_norm(arrays: dict, scope: str, channels: int) -> tuple[dict, dict]:
  """({scale, bias}, {mean, var}) of a conv's batch norm; a folded one (only a bias) becomes the identity norm
  plus that bias (var 1 - epsilon, so that var + epsilon = 1)."""
  names = ('gamma', 'beta', 'moving_mean', 'moving_variance')
  values = {}
  try:
    for n in names:
      values[n] = find_array(arrays, f'{scope}/BatchNorm/{n}')
  except UserError:
    if values:
      raise
    key, bias = _folded_bias(arrays, scope)
    values = {'gamma': (key, np.ones(channels, np.float32)), 'beta': (key, bias),
              'moving_mean': (key, np.zeros(channels, np.float32)),
              'moving_variance': (key, np.full(channels, 1 - mobilenet.BN_EPSILON, np.float32))}
  for key, v in values.values():
    if v.shape != (channels,):
      raise UserError(f'reference weight {key!r} has shape {v.shape}, expected ({channels},)')
  return ({'scale': values['gamma'][1], 'bias': values['beta'][1]},
          {'mean': values['moving_mean'][1], 'var': values['moving_variance'][1]})


def _folded_bias(arrays: dict, scope: str):
  for suffix in ('biases', 'bias', 'Conv2D_bn_offset', 'depthwise_bn_offset', 'BatchNorm/beta'):
    try:
      return find_array(arrays, f'{scope}/{suffix}')
    except UserError:
      continue
  raise UserError(f'the reference weights have no batch norm (gamma, beta, moving_mean, moving_variance) nor a '
                  f'folded bias for {scope!r}')


def convert_reference(arrays: dict, variables: tuple, num_classes: int, scope: str = 'MobilenetV1') -> tuple:
  """(params, model_state) in the layout of `variables` (an init's, for the shapes) from the reference's arrays."""
  params, model_state = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), variables)
  backbone, stats = params['MobilenetV1'], model_state['batch_stats']['MobilenetV1']
  for layer, p in backbone.items():
    shape = p['conv']['kernel'].shape
    depthwise = layer.endswith('_depthwise')
    tf_name = f'{scope}/{layer}/depthwise_weights' if depthwise else f'{scope}/{layer}/weights'
    p['conv']['kernel'] = conv_kernel(arrays, tf_name, shape, depthwise)
    p['BatchNorm'], stats[layer]['BatchNorm'] = batch_norm(arrays, f'{scope}/{layer}', shape[-1])
  head = params['Logits']
  _, _, cin, _ = head['kernel'].shape
  key, w = find_array(arrays, f'{scope}/Logits/Conv2d_1c_1x1/weights')
  _, b = find_array(arrays, f'{scope}/Logits/Conv2d_1c_1x1/biases')
  sources = w.shape[0] if w.shape[1:] == (cin, 1, 1) else w.shape[-1]
  # The reference's 1001 classes put "background" first: it is dropped for a 1000-class model.
  offset = sources - num_classes
  if offset not in (0, 1) or b.shape != (sources,):
    raise UserError(f'reference weight {key!r} has shape {w.shape} and its bias {b.shape}: expected '
                    f'{num_classes} or {num_classes + 1} classes over {cin} channels')
  kernel = conv_kernel(arrays, f'{scope}/Logits/Conv2d_1c_1x1/weights', (1, 1, cin, sources))
  head['kernel'], head['bias'] = kernel[..., offset:], b[offset:]
  return params, model_state
