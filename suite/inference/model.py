"""The inference side of a workload: trained weights, the AOT-compiled forward per batch size, response bytes."""

import dataclasses
import os
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np

from suite.common import sharding
from suite.common.errors import UserError
from suite.training import checkpoint, steps
from suite.workloads.base import Workload


def loadgen_model(workload: Workload) -> str:
  """The workload's model name in LoadGen's mlperf.conf; one line when its task has no LoadGen benchmark."""
  if workload.loadgen_model is None:
    raise UserError(f'{workload.benchmark} ({workload.variant}) is not an MLPerf Inference model: no LoadGen '
                    'settings exist for it (choose another --workload or --variant)')
  return workload.loadgen_model


def batch_sizes_for(scenario: str, samples_per_query: int, max_batch: int) -> tuple[int, ...]:
  """The batch sizes to compile: exactly what a scenario can ask for, so no query ever waits on a compile.

  Server batches dynamically, so it gets every power of two up to its max batch (a partial batch pads to the
  next one, wasting at most half); Offline runs full batches and pads only its last.
  """
  if scenario == 'SingleStream':
    return (1,)
  if scenario == 'MultiStream':
    return (samples_per_query,)
  sizes = {1, max_batch}
  if scenario == 'Server':
    sizes |= {2**k for k in range(max_batch.bit_length()) if 2**k < max_batch}
  return tuple(sorted(sizes))


@dataclasses.dataclass
class Predictor:
  """Executables compiled ahead of time for fixed batch sizes; a call pads its batch to the next size up."""
  executables: dict[int, Any]
  params: Any
  model_state: Any
  input_shardings: dict[int, Any]
  compile_s: float = 0.0
  # How the forward computes (suite.inference.quantize.prepare): {'precision': ...} and, for int8, its calibration.
  precision: dict = dataclasses.field(default_factory=lambda: {'precision': None})
  forward: Any = None  # The workload whose `predict` was compiled (a quantised one's copy, at int8).

  @property
  def max_batch(self) -> int:
    return max(self.executables)

  def padded_size(self, n: int) -> int:
    fits = [b for b in self.executables if b >= n]
    if not fits:
      raise ValueError(f'a batch of {n} exceeds the largest compiled batch {self.max_batch}')
    return min(fits)

  def __call__(self, images: np.ndarray) -> Any:
    """Dispatches one batch (asynchronously: the result is a device future)."""
    n = images.shape[0]
    size = self.padded_size(n)
    if size != n:
      images = np.concatenate([images, np.zeros((size - n, *images.shape[1:]), images.dtype)])
    device_images = jax.device_put(images, self.input_shardings[size])
    return self.executables[size](self.params, self.model_state, device_images)


def compile_predictor(workload: Workload, mesh, params, model_state, batch_sizes: tuple[int, ...]) -> Predictor:
  """Lowers and compiles the forward for each batch size, with the weights as arguments (not baked-in
  constants) in the layout they were restored to."""
  start = time.perf_counter()
  image = workload.batch_shapes(1, train=False)[workload.inference_input_key]
  forward = jax.jit(workload.predict)
  abstract = lambda tree: jax.tree.map(  # noqa: E731
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
  executables, input_shardings = {}, {}
  num_devices = mesh.devices.size
  for b in batch_sizes:
    # A batch the devices cannot split evenly (batch 1 on 8 devices) is replicated instead.
    input_shardings[b] = sharding.batch_sharding(mesh) if b % num_devices == 0 else sharding.replicated(mesh)
    images = jax.ShapeDtypeStruct((b, *image.shape[1:]), image.dtype, sharding=input_shardings[b])
    executables[b] = forward.lower(abstract(params), abstract(model_state), images).compile()
  return Predictor(executables, params, model_state, input_shardings, time.perf_counter() - start, forward=workload)


def restore_weights(workload: Workload, mesh, checkpoint_dir: str) -> tuple[Any, Any]:
  """(params, model_state) of a training run's final checkpoint, laid out as training laid them out."""
  if not os.path.isdir(checkpoint_dir):
    raise UserError(f'--checkpoint={checkpoint_dir} does not exist: pass the --output_dir of a training run')
  schedule = workload.learning_rate_schedule(workload.num_train_examples / workload.global_batch_size)
  _, _, state_specs, _ = steps.sharded_state_layout(workload, mesh, workload.optimizer(schedule))
  state = checkpoint.restore(checkpoint_dir, state_specs)
  return state.params, state.model_state


def default_cache_dir() -> str:
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'mlperf_jax_suite')


def tiny_checkpoint(workload_name: str, variant: str, data_dir: str | None, cache_dir: str, platform: str | None,
                    seed: int = 0) -> str:
  """A trained tiny model of a workload's variant for accuracy mode to mean something: trained once into the cache
  (one folder per variant: they share a workload name, not a model), then reused."""
  run_dir = os.path.join(cache_dir, f"{workload_name}{f'-{variant}' if variant else ''}-tiny-seed{seed}")
  if os.path.isdir(os.path.join(run_dir, checkpoint.CHECKPOINTS)):
    return run_dir
  args = [sys.executable, '-m', 'suite.main', f'--workload={workload_name}', '--scale=tiny', f'--seed={seed}',
          f'--output_dir={run_dir}', '--overwrite']
  args += [f'--variant={variant}'] if variant else []
  args += [f'--data_dir={data_dir}'] if data_dir else []
  args += [f'--platform={platform}'] if platform else []
  result = subprocess.run(args, capture_output=True, text=True, check=False)
  # Exit 1 (target missed) still leaves trained weights; only bad input (2) or a crash has none.
  if result.returncode not in (0, 1) or not os.path.isdir(os.path.join(run_dir, checkpoint.CHECKPOINTS)):
    tail = (result.stderr.strip().splitlines() or ['no output'])[-1]
    raise UserError(f'training the tiny {workload_name} model into {run_dir} failed ({tail})')
  return run_dir
