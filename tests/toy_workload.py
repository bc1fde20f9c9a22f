"""A workload defined outside `suite/`: a linear classifier of Gaussian blobs, to show that the contract alone
(one module + one registry line) is enough to train, log, score and serve a benchmark."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from suite.workloads import base as workload_lib

NUM_CLASSES, SIZE = 4, 4


def _blobs(num: int, seed: int):
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(0).normal(0, 1.0, (NUM_CLASSES, SIZE, SIZE, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, num).astype(np.int32)
  images = centres[labels] + rng.normal(0, 0.7, (num, SIZE, SIZE, 3)).astype(np.float32)
  return images, labels


class ToyWorkload(workload_lib.Workload):
  benchmark = 'resnet'  # Logged as a benchmark the checker knows; everything else is this module's own.
  ruleset = '4.0.0'
  variant = 'toy'
  metric_name = 'top1'
  closed_free_fields = ('global_batch_size',)
  loadgen_model = 'resnet50'
  inference_reference_accuracy = 0.5

  @classmethod
  def get_config(cls, scale):
    del scale
    return ml_collections.ConfigDict(dict(global_batch_size=64, learning_rate=0.5, target=0.9, eval_every_epochs=1,
                                          max_epochs=8, log_every_steps=4))

  def __init__(self, config, scale):
    super().__init__(config, scale)
    self.model = nn.Dense(NUM_CLASSES)
    self.train, self.eval = None, None

  def open_data(self, data_dir):
    del data_dir
    self.train, self.eval = _blobs(512, 1), _blobs(100, 2)

  @property
  def num_train_examples(self):
    return len(self.train[1])

  @property
  def num_eval_examples(self):
    return len(self.eval[1])

  def train_batches(self, seed, process_index, process_count, start_step=0):
    images, labels = self.train
    b = self.global_batch_size
    order = np.random.default_rng(seed).permutation(np.tile(np.arange(len(labels)), 64))
    for step in range(start_step, len(order) // b):
      idx = order[step * b:(step + 1) * b][process_index::process_count]
      yield {'image': images[idx], 'label': labels[idx]}

  def eval_batches(self, process_index, process_count):
    images, labels = self.eval
    b = self.global_batch_size
    for start in range(0, len(labels), b):
      idx = np.arange(start, start + b)
      mask = (idx < len(labels)).astype(np.float32)
      idx = np.minimum(idx, len(labels) - 1)[process_index::process_count]
      yield {'image': images[idx], 'label': labels[idx], 'mask': mask[process_index::process_count]}

  def batch_shapes(self, global_batch_size, train):
    shapes = {'image': jax.ShapeDtypeStruct((global_batch_size, SIZE, SIZE, 3), jnp.float32),
              'label': jax.ShapeDtypeStruct((global_batch_size,), jnp.int32)}
    if not train:
      shapes['mask'] = jax.ShapeDtypeStruct((global_batch_size,), jnp.float32)
    return shapes

  def _logits(self, params, images):
    return self.model.apply({'params': params}, images.reshape(images.shape[0], -1))

  def init_variables(self, rng):
    return self.model.init(rng, jnp.zeros((1, SIZE * SIZE * 3)))['params'], {}

  def loss(self, params, model_state, batch, rng):
    del rng
    logits = self._logits(params, batch['image'])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])), (model_state, {})

  def eval_outputs(self, params, model_state, batch):
    correct = (jnp.argmax(self._logits(params, batch['image']), -1) == batch['label']) * batch['mask']
    return {'correct': jnp.sum(correct), 'count': jnp.sum(batch['mask'])}

  def eval_metric(self, outputs):
    return sum(float(o['correct']) for o in outputs) / sum(float(o['count']) for o in outputs)

  def learning_rate_schedule(self, steps_per_epoch):
    return optax.constant_schedule(self.config.learning_rate)

  def optimizer(self, schedule):
    return optax.sgd(schedule)

  def hyperparameters(self, steps_per_epoch):
    return {'opt_name': 'sgd'}

  def predict(self, params, model_state, images):
    return jnp.argmax(self._logits(params, images), -1).astype(jnp.int32)

  def encode_responses(self, host_outputs, n):
    return [np.ascontiguousarray(host_outputs[i:i + 1], np.int32) for i in range(n)]

  def decode_response(self, data):
    return np.frombuffer(data, np.int32)

  def score_responses(self, responses, eval_samples):
    return sum(int(self.decode_response(d)[0]) == int(eval_samples[i]['label'])
               for i, d in responses.items()) / len(eval_samples)


VARIANTS = {ToyWorkload.variant: ToyWorkload}
