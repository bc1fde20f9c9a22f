"""Entry point: `python -m suite.convert_weights --workload=mobilenet --weights=mobilenet_v1_1.0_224.onnx
--output_dir=DIR` turns the MLPerf Inference reference model's weights into a suite checkpoint.

MLPerf Inference measures given weights, not trained ones. This reads the reference ONNX file's initializers (and
Constant nodes), named as the reference's framework named its variables, hands them to the workload's
`reference_weights` hook, which lays them out as its own model's (params, model_state), and writes a checkpoint in
DIR that `python -m suite.infer --workload=... --checkpoint=DIR` restores exactly as it restores a training run:
the whole train state (the optimizer state as a fresh init makes it, step 0) in the run's sharded layout. The
workload flags (--workload, --scale, --variant, --config.KEY, --platform) are those of every workload command; the
config must describe the reference model (e.g. `full`). Exit status: 0 written, 2 bad input (one `error:` line).
"""

import json
import os
import shutil

import numpy as np
from absl import flags

from suite.common import cli as cli_lib
from suite.common.errors import UserError, first_line

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('weights', None, "The reference model's ONNX file (e.g. MLPerf Inference's "
                      'mobilenet_v1_1.0_224.onnx).')


def read_onnx_arrays(path: str) -> dict[str, np.ndarray]:
  """Initializer (and Constant node output) name -> array of an ONNX model file."""
  import onnx  # pylint: disable=import-outside-toplevel
  from onnx import numpy_helper  # pylint: disable=import-outside-toplevel
  if not path or not os.path.isfile(path):
    raise UserError(f'--weights={path} does not exist: pass the reference ONNX file (e.g. mobilenet_v1_1.0_224.onnx)')
  try:
    model = onnx.load(path)
  except Exception as e:  # pylint: disable=broad-except  # protobuf's DecodeError and friends
    raise UserError(f'--weights={path} is not an ONNX model ({first_line(e, 120)})') from None
  arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
  for node in model.graph.node:
    if node.op_type == 'Constant' and node.output:
      for attr in node.attribute:
        if attr.name == 'value':
          arrays[node.output[0]] = numpy_helper.to_array(attr.t)
  if not arrays:
    raise UserError(f'--weights={path} holds no weights (no initializers or Constant nodes)')
  return arrays


def convert(workload, arrays: dict[str, np.ndarray], output_dir: str, overwrite: bool = False,
            source: str = '') -> dict:
  """Writes the checkpoint of the workload's reference weights to output_dir; returns what it wrote."""
  import jax  # pylint: disable=import-outside-toplevel

  from suite.common import sharding  # pylint: disable=import-outside-toplevel
  from suite.training import checkpoint, steps  # pylint: disable=import-outside-toplevel
  from suite.workloads.base import TrainState  # pylint: disable=import-outside-toplevel
  params, model_state = workload.reference_weights(arrays)
  mesh = sharding.make_mesh()
  # The optimizer state's layout does not depend on the schedule's length, nor does it need the training data (not
  # opened here): one step per epoch serves.
  tx = workload.optimizer(workload.learning_rate_schedule(1))
  init_fn, rng_shape, state_specs, state_shardings = steps.sharded_state_layout(workload, mesh, tx)
  for what, tree, specs in (('params', params, state_specs.params), ('model_state', model_state,
                                                                       state_specs.model_state)):
    got = jax.tree.map(lambda x: (tuple(np.shape(x)),), tree)
    want = jax.tree.map(lambda s: (tuple(s.shape),), specs)
    if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
      raise UserError(f'the converted {what} do not match the model of this config: check --config (e.g. '
                      'num_classes, model width) against the reference model')
  del init_fn, rng_shape
  # The train state a fresh init would make around these weights (the optimizer's state from tx.init, step 0),
  # without compiling the model's init.
  place = lambda x, spec: jax.device_put(np.asarray(x, spec.dtype), spec.sharding)  # noqa: E731
  params = jax.tree.map(place, params, state_specs.params)
  model_state = jax.tree.map(place, model_state, state_specs.model_state)
  state = TrainState(step=place(0, state_specs.step), params=params, model_state=model_state,
                     opt_state=jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params),
                     rng=place(jax.random.split(jax.random.PRNGKey(0))[1], state_specs.rng))
  if jax.tree.structure(state) != jax.tree.structure(state_specs):
    raise RuntimeError('the converted train state does not have the layout of a training run\'s')
  if checkpoint.has_checkpoints(output_dir):
    if not overwrite:
      raise UserError(f'{output_dir} already holds checkpoints: choose a new --output_dir or pass --overwrite')
    shutil.rmtree(os.path.join(output_dir, checkpoint.CHECKPOINTS))
  os.makedirs(output_dir, exist_ok=True)
  count = sum(int(np.size(x)) for x in jax.tree.leaves((params, model_state)))
  meta = {'step': 0, 'converted_from': os.path.abspath(source) if source else '', 'arrays': count}
  mngr = checkpoint.manager(output_dir, asynchronous=False)
  checkpoint.save(mngr, 0, state, meta)
  mngr.wait_until_finished()
  mngr.close()
  return {'output_dir': os.path.abspath(output_dir), 'weights': meta['converted_from'], 'values': count,
          'source_arrays': len(arrays)}


def main(argv) -> int:
  del argv
  from suite.common import registry  # pylint: disable=import-outside-toplevel
  try:
    if not FLAGS.output_dir:
      raise UserError('pass --output_dir=DIR: where the checkpoint goes (then suite.infer --checkpoint=DIR)')
    arrays = read_onnx_arrays(FLAGS.weights)
    cli_lib.select_platform(FLAGS.platform)
    workload = registry.make_workload(FLAGS.workload, cli_lib.workload_config(), FLAGS.scale)
    result = convert(workload, arrays, FLAGS.output_dir, FLAGS.overwrite, FLAGS.weights)
  except UserError as e:
    cli_lib.print_error(str(e))
    return cli_lib.EXIT_BAD_INPUT
  print(f"{FLAGS.workload}: {result['values']:,} values from {result['source_arrays']} arrays of "
        f"{result['weights']} written to {result['output_dir']}", flush=True)
  print(json.dumps(result), flush=True)
  return cli_lib.EXIT_OK


def cli() -> None:
  """The `python -m suite.convert_weights` command."""
  cli_lib.define_workload_flags()
  cli_lib.define_output_flags('none: --output_dir is required')
  define_flags()
  cli_lib.run(main, __doc__, flags_parser=cli_lib.parse_workload_flags, extra_help=cli_lib.CONFIG_HELP)


if __name__ == '__main__':
  cli()
