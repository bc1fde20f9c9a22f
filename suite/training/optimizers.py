"""The MLPerf optimizers that optax has no exact twin of, as optax transformations (one home for all workloads).

MLPerf LARS is not `optax.lars`: optax scales by eta*|w| / |g + wd*w| (the norm of the decayed gradient); the MLPerf
reference (mlcommons/training image_classification/tensorflow2/lars_optimizer.py, the optimizer the resnet closed
rules name `lars`) scales by eta*|w| / (|g| + wd*|w| + eps), with a trust ratio of 1 where |w| or |g| is 0.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def kernels_only(params) -> Any:
  """True for kernels (ndim > 1), False for biases and batch-norm scales and offsets.

  The reference names the skipped tensors (`skip_list=['batch_normalization', 'bias', 'bn']` in its common.py);
  in a Flax model those are exactly the 1-D parameters."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


class ScaleByMLPerfLarsTrustState(optax.EmptyState):
  """No state: the trust ratio depends only on this step's gradient and weights."""


def scale_by_mlperf_lars_trust(trust_coefficient: float = 0.001, weight_decay: float = 1e-4, epsilon: float = 0.0,
                               mask: Callable[[Any], Any] | Any | None = None) -> optax.GradientTransformation:
  """For masked leaves (default: `kernels_only`), g -> trust * (g + wd * w) with
  trust = eta * |w| / (|g| + wd * |w| + eps), or 1 where |w| = 0 or |g| = 0 (the reference's `compute_lr`);
  other leaves pass through unchanged: no weight decay and no trust ratio, as the reference skips them.

  The reference turns a 0.0 epsilon into Keras' 1e-7 (`epsilon or backend_config.epsilon()`) while logging
  `lars_epsilon` 0.0, the value the 4.0.0 rules require; we use the value given (0.0 from the resnet config),
  a relative difference in trust of 1e-7 / (|g| + wd |w|)."""
  mask = kernels_only if mask is None else mask

  def init_fn(params):
    del params
    return ScaleByMLPerfLarsTrustState()

  def update_fn(updates, state, params):
    if params is None:
      raise ValueError('scale_by_mlperf_lars_trust needs the params (pass them to update)')
    leaf_mask = mask(params) if callable(mask) else mask

    def scale(g, w, on):
      if not on:
        return g
      w_norm = jnp.linalg.norm(w.astype(jnp.float32))
      g_norm = jnp.linalg.norm(g.astype(jnp.float32))
      trust = jnp.where((w_norm > 0) & (g_norm > 0),
                        trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + epsilon), 1.0)
      return ((g + weight_decay * w) * trust).astype(g.dtype)

    return jax.tree.map(scale, updates, params, leaf_mask), state

  return optax.GradientTransformation(init_fn, update_fn)


def mlperf_lars(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9, weight_decay: float = 1e-4,
                trust_coefficient: float = 0.001, epsilon: float = 0.0,
                mask: Callable[[Any], Any] | Any | None = None) -> optax.GradientTransformation:
  """MLPerf LARS: v = momentum * v + lr * trust * (g + wd * w); w -= v (kernels); v = momentum * v + lr * g for the
  leaves `mask` leaves out (biases, batch norm). `learning_rate` may be a schedule of the step; to read or set it
  from the optimizer state, wrap with `optax.inject_hyperparams(mlperf_lars, static_args=('mask',))`."""
  return optax.chain(
      scale_by_mlperf_lars_trust(trust_coefficient, weight_decay, epsilon, mask),
      # The learning rate goes into the momentum buffer, as in the reference (mom = m * mom - lr * g').
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum, nesterov=False),
  )


def parameter_labels(params, is_frozen: Callable[[tuple[str, ...]], bool]) -> Any:
  """'frozen' or 'trained' per leaf, from its path of names (boxes such as LogicallyPartitioned are looked through)."""
  def label(path, _):
    names = tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
    return 'frozen' if is_frozen(names) else 'trained'
  return jax.tree_util.tree_map_with_path(label, params)


def freeze(tx: optax.GradientTransformation,
           is_frozen: Callable[[tuple[str, ...]], bool]) -> optax.GradientTransformation:
  """`tx` as if the frozen parameters were not there (the reference's `requires_grad=False`): their gradients are
  zeroed before `tx` (so nothing global, e.g. a gradient norm, sees them) and their updates after it (so no weight
  decay moves them). Not `optax.multi_transform`: its state holds boxed empty nodes where the frozen leaves were,
  which the state's sharding cannot place; here `tx`'s state keeps its shape (moments of frozen leaves stay 0)."""
  zero_frozen = optax.masked(optax.set_to_zero(),
                             lambda params: jax.tree.map(lambda label: label == 'frozen',
                                                         parameter_labels(params, is_frozen)))
  return optax.chain(zero_frozen, tx, zero_frozen)
