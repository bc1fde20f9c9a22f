"""MLPerf ResNet-50 v1.5 image classification (ruleset 4.0.0): LARS, label smoothing, top-1 >= 0.759.

`full` is the closed benchmark on ImageNet; `tiny` is a small ResNet on a generated dataset that reaches its
own target on one CPU in minutes and exercises the same code path. Pointed at another TFDS dataset
(`--config.dataset=NAME`), the workload reads its classes, image size, channels and splits from its metadata, and
`tiny` trains it with SMALL_DATASET_DEFAULTS.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from input_pipelines import dali_images, generated_images, sources
from input_pipelines import image_classification as pipeline
from input_pipelines.image_ops import normalize_on_device
from models import flops, resnet
from suite.common import config as config_lib
from suite.common.errors import UserError
from suite.training import optimizers
from suite.workloads import base as workload_lib

# What the tiny scale trains a real dataset with (--config.dataset=<TFDS name>) in place of its own optimisation
# fields, which are tuned to the generated stripes (LARS at 4.0 for ten epochs: far too hot for real images). The
# textbook small-CNN recipe (He et al. 2016 for CIFAR; Zagoruyko & Komodakis 2016 for the weight decay): SGD with
# Nesterov momentum 0.9, 0.1 at batch 128, weight decay 5e-4, here with a one-epoch warm-up and a decay over the
# rest of training (decay_epochs follows max_epochs), for 30 epochs; the target, 0.95 top-1, is what a small CNN
# reaches on handwritten digits (set --config.target to what your dataset allows). A field given on the command
# line keeps its value.
SMALL_DATASET_DEFAULTS = {
    'optimizer.name': 'sgd', 'optimizer.learning_rate': 0.1, 'optimizer.warmup_epochs': 1.0,
    'optimizer.weight_decay': 5e-4, 'max_epochs': 30, 'target': 0.95,
}


def get_config(scale: str, variant: str = '') -> ml_collections.ConfigDict:
  """The hyperparameters of one scale; any field can be overridden with --config.KEY=VALUE."""
  del variant  # One variant: ResNet-50 v1.5 (the depth and width are config fields).
  c = ml_collections.ConfigDict()
  # Data. `dataset` is any TFDS image/label dataset in --data_dir, 'generated' or 'synthetic'.
  c.dataset = 'imagenet2012'
  c.train_split = 'train'
  c.eval_split = 'validation'
  # 'grain' (PIL on host threads) or 'dali' (NVIDIA DALI: nvJPEG on a GPU host; the pip extra `dali`); the same
  # examples, crops and flips either way (input_pipelines/dali_images.py).
  c.data_backend = 'grain'
  c.num_classes = 1000
  c.image_size = 224
  c.crop_min_scale = 0.08
  c.data_threads = 16
  c.data_workers = 0  # Input worker processes (grain mp_prefetch); 0: data_threads threads only. Same batches.
  c.skip_bad_records = False  # True: replace an undecodable train record by the next good one, and count it.
  # source_size / encoding: the stored images (generated_images.GeneratedImagesConfig); 0 / 'png': image_size PNGs.
  c.generated = ml_collections.ConfigDict(dict(num_train=0, num_eval=0, image_size=0, source_size=0, encoding='png'))
  # Model.
  # stage_sizes=(): the standard stages of `depth` (ResNet-50: 3, 4, 6, 3).
  c.model = ml_collections.ConfigDict(dict(depth=50, width=64, stage_sizes=(), small_stem=False,
                                           dtype='bfloat16'))
  # Optimisation: the RCP for batch 4096 in mlperf_logging's rcp_checker (training_4.0.0/rcps_resnet.json).
  c.global_batch_size = 4096
  c.label_smoothing = 0.1
  c.optimizer = ml_collections.ConfigDict(dict(
      name='lars', learning_rate=10.0, end_learning_rate=1e-4, warmup_epochs=5.0, decay_epochs=42.0,
      poly_power=2.0, momentum=0.9, weight_decay=2e-4, epsilon=0.0, trust_coefficient=0.001))
  # Benchmark.
  c.target = 0.759
  c.eval_every_epochs = 4
  c.max_epochs = 47
  c.log_every_steps = 100

  if scale == 'tiny':
    c.dataset = 'generated'
    c.num_classes = 10
    c.image_size = 32
    c.crop_min_scale = 0.35
    c.data_threads = 4
    c.generated = ml_collections.ConfigDict(dict(num_train=4096, num_eval=512, image_size=32, source_size=0,
                                                 encoding='png'))
    c.model = ml_collections.ConfigDict(dict(depth=18, width=16, stage_sizes=(1, 1, 1), small_stem=True,
                                             dtype='float32'))
    c.global_batch_size = 128
    c.optimizer.update(learning_rate=4.0, warmup_epochs=1.0, decay_epochs=9.0)
    c.target = 0.9
    c.eval_every_epochs = 1
    c.max_epochs = 10
    c.log_every_steps = 8
  elif scale != 'full':
    raise ValueError(f'unknown scale {scale!r}')
  return c


def _decays(params) -> dict:
  """LARS weight decay and trust ratio apply to kernels only, not to batch-norm scales or biases (MLPerf ref)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


class ResNetWorkload(workload_lib.Workload):
  """ResNet-50 v1.5 on ImageNet, MLPerf Training 4.0.0; MLPerf Inference `resnet50`."""
  benchmark = 'resnet'
  ruleset = '4.0.0'
  variant = 'resnet50'
  metric_name = 'top1'
  dataset_description = 'imagenet2012'
  # The 4.0.0 closed rules let a submitter choose the batch size, SGD or LARS, and their base learning rate,
  # warm-up, decay length, momentum and weight decay (0.0001 x 2^k); numerics and run-time knobs change no rule.
  closed_free_fields = ('global_batch_size', 'optimizer.name', 'optimizer.learning_rate', 'optimizer.warmup_epochs',
                        'optimizer.decay_epochs', 'optimizer.momentum', 'optimizer.weight_decay', 'model.dtype',
                        'max_epochs', 'log_every_steps', 'data_threads', 'data_backend', 'data_workers')
  loadgen_model = 'resnet50'
  # mlcommons/inference vision/classification_and_detection/README.md: resnet50-v1.5 FP32 76.456% top-1.
  inference_reference_accuracy = 0.76456

  @classmethod
  def get_config(cls, scale):
    return get_config(scale)

  @classmethod
  def closed_violations(cls, config) -> list[str]:
    decay = config.optimizer.weight_decay
    k = math.log2(decay / 1e-4) if decay > 0 else 0.5
    return [] if abs(k - round(k)) < 1e-9 else [f'optimizer.weight_decay={decay} is not 0.0001 x 2^k']

  def __init__(self, config, scale):
    super().__init__(config, scale)
    self.model = resnet.resnet_from_config(config.model, config.num_classes)
    self._train_source = self._eval_source = None
    # What the dataset's metadata says (see `_adopt_dataset`); ImageNet-style RGB until then.
    self.channels, self.small_images = 3, False

  @property
  def measures_quality(self):
    return self.config.dataset != 'synthetic'

  # --- data ---
  def open_data(self, data_dir):
    c = self.config
    data_dir = sources.resolve_data_dir(data_dir)
    dali_images.check_backend(c.data_backend)
    if c.dataset == 'synthetic':
      return
    name = c.dataset
    if name == 'generated':
      g = c.generated
      name = generated_images.ensure_generated_images(
          data_dir, num_classes=c.num_classes, image_size=g.image_size, num_train=g.num_train,
          num_eval=g.num_eval, source_size=g.get('source_size', 0), encoding=g.get('encoding', 'png'))
    elif name != get_config(self.scale).dataset:
      self._adopt_dataset(name, data_dir)
    self._train_source = sources.open_split(name, c.train_split, data_dir, c.skip_bad_records)
    self._eval_source = sources.open_split(name, c.eval_split, data_dir, is_eval=True)

  def _adopt_dataset(self, name, data_dir):
    """Another TFDS dataset than the scale's own (so never a closed run: the closed rules fix `dataset`). Its
    metadata sets num_classes, image_size (square images), the channels and the eval split (`validation`, else
    `test`), and small images get the small-image augmentation; at tiny scale the fields in
    SMALL_DATASET_DEFAULTS take those values. A field given on the command line keeps its value."""
    c = self.config
    facts = pipeline.dataset_facts(name, data_dir)
    given = set(config_lib.changed_keys(get_config(self.scale), c))
    if 'num_classes' not in given:
      c.num_classes = facts.num_classes
    elif c.num_classes < facts.num_classes:
      raise UserError(f'--config.num_classes={c.num_classes} but dataset {name!r} has {facts.num_classes} classes: '
                      'leave num_classes out (it is read from the dataset) or raise it')
    if facts.image_size and 'image_size' not in given:
      c.image_size = facts.image_size
    why = 'given'
    if 'eval_split' not in given:
      c.eval_split, why = _default_eval_split(name, facts.splits)
    if self.scale == 'tiny':
      for key, value in SMALL_DATASET_DEFAULTS.items():
        if key not in given:
          _set_field(c, key, value)
      if 'optimizer.decay_epochs' not in given:
        c.optimizer.decay_epochs = float(c.max_epochs - c.optimizer.warmup_epochs)
    self.channels, self.small_images = facts.channels, facts.small_images
    self.model = resnet.resnet_from_config(c.model, c.num_classes)
    augmentation = pipeline.augmentation_name(self.channels, self.small_images)
    logging.info('dataset %s: %d classes, %s images at %dx%d, %s augmentation; train split %r, eval split %r (%s)',
                 name, c.num_classes, 'grey' if self.channels == 1 else 'RGB', c.image_size, c.image_size,
                 augmentation, c.train_split, c.eval_split, why)

  def skipped_train_records(self):
    return self._train_source.bad_records if self._train_source is not None else []

  @property
  def num_train_examples(self):
    return len(self._train_source) if self._train_source is not None else 256 * self.global_batch_size

  @property
  def num_eval_examples(self):
    return len(self._eval_source) if self._eval_source is not None else self.global_batch_size

  def train_batches(self, seed, process_index, process_count, start_step=0):
    c = self.config
    if self._train_source is None:
      return pipeline.synthetic_batches(global_batch_size=c.global_batch_size, image_size=c.image_size,
                                        num_classes=c.num_classes, seed=seed, process_count=process_count)
    return self._images().train_batches(
        self._train_source, global_batch_size=c.global_batch_size, image_size=c.image_size, seed=seed,
        process_index=process_index, process_count=process_count, crop_min_scale=c.crop_min_scale,
        num_threads=c.data_threads, start_batch=start_step, channels=self.channels, small_images=self.small_images,
        num_workers=c.data_workers)

  def eval_batches(self, process_index, process_count):
    c = self.config
    if self._eval_source is None:
      batch = next(pipeline.synthetic_batches(global_batch_size=c.global_batch_size, image_size=c.image_size,
                                              num_classes=c.num_classes, seed=0, process_count=process_count))
      return iter([{**batch, 'mask': np.ones_like(batch['label'], np.float32)}])
    return self._images().eval_batches(self._eval_source, global_batch_size=c.global_batch_size,
                                       image_size=c.image_size, process_index=process_index,
                                       process_count=process_count, channels=self.channels,
                                       small_images=self.small_images)

  def _images(self):
    """The module that makes the image batches (config.data_backend): the grain pipeline or DALI's."""
    return dali_images if self.config.data_backend == 'dali' else pipeline

  def batch_shapes(self, global_batch_size, train):
    size = self.config.image_size
    # uint8 pixels (a quarter of float32's bytes host -> device); loss, eval and predict normalise first thing.
    shapes = {'image': jax.ShapeDtypeStruct((global_batch_size, size, size, self.channels), jnp.uint8),
              'label': jax.ShapeDtypeStruct((global_batch_size,), jnp.int32)}
    if not train:
      shapes['mask'] = jax.ShapeDtypeStruct((global_batch_size,), jnp.float32)
    return shapes

  # --- model ---
  def init_variables(self, rng):
    size = self.config.image_size
    variables = self.model.init(rng, jnp.zeros((1, size, size, self.channels), jnp.float32), train=False)
    return variables['params'], {'batch_stats': variables['batch_stats']}

  def model_flops_per_example(self):
    return flops.training_flops_per_example(self.model, self.batch_shapes(1, train=False)['image'], train=False)

  def loss(self, params, model_state, batch, rng):
    del rng  # ResNet training is deterministic given the batch.
    logits, new_model_state = self.model.apply({'params': params, **model_state}, normalize_on_device(batch['image']),
                                               train=True, mutable=['batch_stats'])
    one_hot = jax.nn.one_hot(batch['label'], self.config.num_classes)
    targets = optax.smooth_labels(one_hot, self.config.label_smoothing)
    loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    return loss, (new_model_state, {'train_accuracy': accuracy})

  def eval_outputs(self, params, model_state, batch):
    logits = self.model.apply({'params': params, **model_state}, normalize_on_device(batch['image']), train=False)
    correct = (jnp.argmax(logits, -1) == batch['label']) * batch['mask']
    return {'correct': jnp.sum(correct), 'count': jnp.sum(batch['mask'])}

  def eval_metric(self, outputs):
    correct = sum(float(o['correct']) for o in outputs)
    count = sum(float(o['count']) for o in outputs)
    return correct / count

  # --- optimisation ---
  def learning_rate_schedule(self, steps_per_epoch):
    o = self.config.optimizer
    return lars_schedule(o.learning_rate, o.end_learning_rate, o.poly_power,
                         warmup_steps=round(o.warmup_epochs * steps_per_epoch),
                         decay_steps=round(o.decay_epochs * steps_per_epoch))

  def optimizer(self, schedule):
    o = self.config.optimizer
    if o.name == 'lars':
      # MLPerf's LARS (trust eta|w| / (|g| + wd|w|), kernels only), not optax.lars: see suite/optimizers.py.
      return optimizers.mlperf_lars(schedule, momentum=o.momentum, weight_decay=o.weight_decay,
                                    trust_coefficient=o.trust_coefficient, epsilon=o.epsilon, mask=_decays)
    if o.name == 'sgd':
      return optax.chain(optax.add_decayed_weights(o.weight_decay, mask=_decays),
                         optax.sgd(schedule, momentum=o.momentum, nesterov=True))
    raise ValueError(f"config.optimizer.name must be 'lars' or 'sgd', not {o.name!r}")

  def hyperparameters(self, steps_per_epoch):
    o = self.config.optimizer
    common = {'opt_name': o.name, 'model_bn_span': self.global_batch_size}
    if o.name == 'sgd':
      return {**common,
              'sgd_opt_base_learning_rate': o.learning_rate, 'sgd_opt_end_learning_rate': o.end_learning_rate,
              'sgd_opt_learning_rate_decay_poly_power': o.poly_power,
              'sgd_opt_learning_rate_decay_steps': round(o.decay_epochs * steps_per_epoch),
              'opt_learning_rate_warmup_epochs': o.warmup_epochs, 'sgd_opt_momentum': o.momentum,
              'sgd_opt_weight_decay': o.weight_decay}
    return {**common,
            'lars_opt_base_learning_rate': o.learning_rate, 'lars_opt_end_learning_rate': o.end_learning_rate,
            'lars_opt_learning_rate_decay_poly_power': o.poly_power,
            'lars_opt_learning_rate_decay_steps': round(o.decay_epochs * steps_per_epoch),
            'lars_epsilon': o.epsilon, 'lars_opt_learning_rate_warmup_epochs': o.warmup_epochs,
            'lars_opt_momentum': o.momentum, 'lars_opt_weight_decay': o.weight_decay}


  # --- inference ---
  def predict(self, params, model_state, images):
    logits = self.model.apply({'params': params, **model_state}, normalize_on_device(images), train=False)
    return jnp.argmax(logits, -1).astype(jnp.int32)

  def encode_responses(self, host_outputs, n):
    return [np.ascontiguousarray(host_outputs[i:i + 1], np.int32) for i in range(n)]

  def decode_response(self, data):
    values = np.frombuffer(data, np.int32)
    return values[:1] if values.size else np.array([-1], np.int32)

  def score_responses(self, responses, eval_samples):
    correct = sum(int(self.decode_response(data)[0]) == int(eval_samples[i]['label'])
                  for i, data in responses.items())
    return correct / len(eval_samples)


Workload = ResNetWorkload
VARIANTS = {ResNetWorkload.variant: ResNetWorkload}


def _default_eval_split(dataset: str, splits) -> tuple[str, str]:
  """(split, why): `validation`, else `test`, else a UserError naming the flag."""
  if 'validation' in splits:
    return 'validation', 'its validation split'
  if 'test' in splits:
    return 'test', 'no validation split'
  raise UserError(f"dataset {dataset!r} has no 'validation' or 'test' split (it has {', '.join(splits)}): choose "
                  'one with --config.eval_split=SPLIT, e.g. --config.train_split=train[:90%] '
                  '--config.eval_split=train[90%:]')


def _set_field(config, key: str, value) -> None:
  """Sets a dotted config field, e.g. 'optimizer.learning_rate'."""
  *groups, leaf = key.split('.')
  for group in groups:
    config = config[group]
  config[leaf] = value


def lars_schedule(base: float, end: float, power: float, *, warmup_steps: int, decay_steps: int):
  """MLPerf ResNet LARS schedule: linear warmup 0 -> base, then polynomial decay base -> end over decay_steps."""
  warmup = optax.linear_schedule(0.0, base, max(warmup_steps, 1))
  decay = optax.polynomial_schedule(base, end, power, max(decay_steps, 1))
  return optax.join_schedules([warmup, decay], [warmup_steps])


