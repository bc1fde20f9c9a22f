"""MLPerf LARS (suite/optimizers.py) against a NumPy transcription of the MLPerf reference, zero norms included."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from suite.training import optimizers
from suite.workloads import resnet

ETA, WD, MOMENTUM = 0.001, 5e-4, 0.9


def reference_lars_step(w, g, mom, lr, *, skip, momentum=MOMENTUM, weight_decay=WD, eeta=ETA, epsilon=0.0):
  """One step of mlcommons/training image_classification/tensorflow2/lars_optimizer.py, line by line:
  `compute_lr` then `_resource_apply_dense` (use_nesterov=False). `skip`: the variable's name matches the
  skip_list ['batch_normalization', 'bias', 'bn'] (common.py), i.e. a bias or batch-norm parameter."""
  w, g, mom = (np.asarray(x, np.float64) for x in (w, g, mom))
  scaled_lr = lr
  if not skip:
    w_norm = np.linalg.norm(w)
    g_norm = np.linalg.norm(g)
    trust_ratio = (eeta * w_norm / (g_norm + weight_decay * w_norm + epsilon)) if w_norm > 0 and g_norm > 0 else 1.0
    scaled_lr = lr * trust_ratio
    g = g + weight_decay * w
  mom_t = mom * momentum - g * scaled_lr
  return w + mom_t, mom_t


def _tensors(seed=0):
  """Weights and gradients of ResNet-like shapes: a conv kernel, a zero-norm kernel, a kernel with a zero gradient,
  a dense kernel, and 1-D batch-norm scale/bias and dense bias."""
  rng = np.random.default_rng(seed)
  params = {'conv': {'kernel': rng.normal(size=(3, 3, 4, 8))},
            'zero_w': {'kernel': np.zeros((1, 1, 8, 8))},
            'zero_g': {'kernel': rng.normal(size=(1, 1, 8, 8))},
            'bn': {'scale': rng.normal(size=(8,)), 'bias': rng.normal(size=(8,))},
            'head': {'kernel': rng.normal(size=(8, 10)), 'bias': rng.normal(size=(10,))}}
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape) * 0.1, params)
  grads['zero_g']['kernel'] = np.zeros((1, 1, 8, 8))
  cast = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float32), tree)  # noqa: E731
  return cast(params), cast(grads)


def _check_against_reference(tx, schedule, num_steps, epsilon=0.0):
  """Runs `tx` for `num_steps` on the same gradients and checks weights and momentum buffers against the reference."""
  params, grads = _tensors()
  ref_w = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
  ref_mom = jax.tree.map(np.zeros_like, ref_w)
  flat_skip = jax.tree.map(lambda p: p.ndim <= 1, params)
  state = tx.init(params)
  ours = params
  for step in range(num_steps):
    # A different gradient each step (scaled), so momentum mixes distinct updates.
    step_grads = jax.tree.map(lambda g, scale=1.0 + step: g * scale, grads)
    updates, state = tx.update(step_grads, state, ours)
    ours = optax.apply_updates(ours, updates)
    lr = float(schedule(step))
    out = jax.tree.map(lambda w, g, m, s, lr=lr: reference_lars_step(w, g, m, lr, skip=s, epsilon=epsilon),
                       ref_w, step_grads, ref_mom, flat_skip)
    ref_w = jax.tree.map(lambda o: o[0], out, is_leaf=lambda x: isinstance(x, tuple))
    ref_mom = jax.tree.map(lambda o: o[1], out, is_leaf=lambda x: isinstance(x, tuple))
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(ref_w)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def _schedule(step):
  return jnp.asarray([2.0, 5.0, 3.0, 1.0])[step]


def _mlperf(epsilon=0.0):
  return optimizers.mlperf_lars(_schedule, momentum=MOMENTUM, weight_decay=WD, trust_coefficient=ETA,
                                epsilon=epsilon)


def _optax_lars():
  return optax.lars(_schedule, weight_decay=WD, weight_decay_mask=optimizers.kernels_only, trust_coefficient=ETA,
                    eps=0.0, trust_ratio_mask=optimizers.kernels_only, momentum=MOMENTUM)


def test_one_update_matches_the_reference():
  _check_against_reference(_mlperf(), _schedule, num_steps=1)


def test_steps_with_momentum_and_a_schedule_match_the_reference():
  _check_against_reference(_mlperf(), _schedule, num_steps=4)


def test_epsilon_enters_the_denominator():
  _check_against_reference(_mlperf(epsilon=0.5), _schedule, num_steps=2, epsilon=0.5)


def test_optax_lars_is_a_different_optimizer():
  """The reference check has teeth: optax.lars (trust eta|w| / |g + wd w|) fails it on the same tensors."""
  with pytest.raises(AssertionError, match='conv'):
    _check_against_reference(_optax_lars(), _schedule, num_steps=1)


def test_zero_norm_guards_give_a_trust_ratio_of_one():
  params, grads = _tensors()
  tx = optimizers.scale_by_mlperf_lars_trust(ETA, WD)
  scaled, _ = tx.update(grads, tx.init(params), params)
  # |w| = 0: trust 1, so the update is g + wd * 0 = g.
  np.testing.assert_array_equal(scaled['zero_w']['kernel'], grads['zero_w']['kernel'])
  # |g| = 0: trust 1, so the update is the weight decay alone.
  np.testing.assert_allclose(scaled['zero_g']['kernel'], WD * params['zero_g']['kernel'], rtol=1e-6)
  # 1-D leaves pass through: no decay, no trust ratio.
  np.testing.assert_array_equal(scaled['bn']['scale'], grads['bn']['scale'])
  np.testing.assert_array_equal(scaled['head']['bias'], grads['head']['bias'])
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(scaled))


def test_the_learning_rate_can_be_injected():
  """Wrapped in inject_hyperparams, the learning rate lives in the state (readable, settable) and the steps agree."""
  tx = optax.inject_hyperparams(optimizers.mlperf_lars, static_args=('mask',))(
      learning_rate=_schedule, momentum=MOMENTUM, weight_decay=WD, trust_coefficient=ETA)
  params, _ = _tensors()
  state = tx.init(params)
  assert float(state.hyperparams['learning_rate']) == 2.0
  _check_against_reference(tx, _schedule, num_steps=3)


def test_jitted_update_matches():
  params, grads = _tensors()
  tx = _mlperf()
  state = tx.init(params)
  eager, _ = tx.update(grads, state, params)
  jitted, _ = jax.jit(tx.update)(grads, state, params)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_resnet_lars_config_uses_mlperf_lars():
  """The resnet workload's `lars` is the reference optimizer (its own hyperparameters, a constant learning rate)."""
  config = resnet.get_config('tiny')
  config.optimizer.update(weight_decay=WD, momentum=MOMENTUM, trust_coefficient=ETA, epsilon=0.0)
  workload = resnet.Workload(config, 'tiny')
  tx = workload.optimizer(_schedule)
  _check_against_reference(tx, _schedule, num_steps=2)
