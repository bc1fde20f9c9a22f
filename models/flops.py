"""Analytic model FLOPs, the MLPerf / MaxText convention: a forward pass is 2 x the multiply-accumulates (MACs) of
its convolutions and dense layers, a training step 3 x the forward (the backward pass computes the gradients of
both the activations and the weights).

The MACs are counted from layer shapes: the model's forward runs abstractly (`jax.eval_shape`, no FLOP is
computed) with every linen `Conv`, `ConvLocal`, `ConvTranspose`, `Dense` and `DenseGeneral` call intercepted.
Normalisation, activations, pooling, resizing and losses are not counted (the convention counts the matmul-like
work only); nor are matmuls written as bare `jnp` ops rather than layers (attention scores, say): a workload
with those adds them in its own hook. A layer inside `nn.scan` is counted once, not once per step.
"""

import math
from typing import Any

import flax.linen as nn
import jax

TRAINING_FORWARD_MULTIPLE = 3  # forward + backward (activation and weight gradients, each the forward's cost)


def _layer_macs(module: nn.Module, inputs: Any, output: Any) -> int:
  """MACs of one call of a conv or dense layer, from its input and output shapes; 0 for any other module."""
  if isinstance(module, (nn.Conv, nn.ConvLocal)):
    # Each output element sums kernel_h x kernel_w x (input channels / groups) products.
    in_features = inputs.shape[-1] // module.feature_group_count
    return math.prod(output.shape) * math.prod(_kernel_size(module)) * in_features
  if isinstance(module, nn.ConvTranspose):
    # Each input element is multiplied by the whole kernel slice of its channel: k_h x k_w x out channels.
    return math.prod(inputs.shape) * math.prod(_kernel_size(module)) * module.features
  if isinstance(module, nn.Dense):
    return math.prod(output.shape) * inputs.shape[-1]
  if isinstance(module, nn.DenseGeneral):
    axes = module.axis if isinstance(module.axis, (tuple, list)) else (module.axis,)
    return math.prod(output.shape) * math.prod(inputs.shape[a] for a in axes)
  return 0


def _kernel_size(module) -> tuple[int, ...]:
  size = module.kernel_size
  return (size,) if isinstance(size, int) else tuple(size)


def forward_macs(model: nn.Module, *inputs: jax.ShapeDtypeStruct, **kwargs) -> int:
  """MACs of the convolutions and dense layers of one `model(*inputs, **kwargs)` call (its `init` pass)."""
  total = [0]

  def count(next_fun, args, call_kwargs, context):
    output = next_fun(*args, **call_kwargs)
    if context.method_name == '__call__' and args:
      total[0] += _layer_macs(context.module, args[0], output)
    return output

  def forward(*xs):
    with nn.intercept_methods(count):
      return model.init_with_output(jax.random.key(0), *xs, **kwargs)

  jax.eval_shape(forward, *inputs)
  return total[0]


def forward_flops(model: nn.Module, *inputs: jax.ShapeDtypeStruct, **kwargs) -> float:
  """FLOPs of one forward call: 2 per MAC."""
  return 2.0 * forward_macs(model, *inputs, **kwargs)


def training_flops_per_example(model: nn.Module, *batch_of_one: jax.ShapeDtypeStruct, **kwargs) -> float:
  """Training FLOPs of one example: 3 x the forward FLOPs of a batch of one (inputs with a leading axis of 1)."""
  if any(x.shape[:1] != (1,) for x in batch_of_one):
    raise ValueError(f'inputs must be a batch of one, got shapes {[x.shape for x in batch_of_one]}')
  return TRAINING_FORWARD_MULTIPLE * forward_flops(model, *batch_of_one, **kwargs)
