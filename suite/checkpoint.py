"""The one checkpoint manager: Orbax checkpoints of the sharded train state under <output_dir>/checkpoints."""

import os

import jax
import orbax.checkpoint as ocp

from suite.errors import UserError

CHECKPOINTS = 'checkpoints'


def manager(output_dir: str, max_to_keep: int = 3, asynchronous: bool = True) -> ocp.CheckpointManager:
  """Keeps the last `max_to_keep` checkpoints; async saves let the step loop go on while files are written."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=asynchronous)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(output_dir, CHECKPOINTS)), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  mngr.save(step, args=ocp.args.StandardSave(state))


def restore(directory: str, abstract_state, step: int | None = None):
  """Restores a state laid out like `abstract_state` (ShapeDtypeStructs with shardings) from a run folder or its
  checkpoints folder; the latest step unless `step` is given."""
  directory = os.path.abspath(directory)
  if os.path.isdir(os.path.join(directory, CHECKPOINTS)):
    directory = os.path.join(directory, CHECKPOINTS)
  mngr = ocp.CheckpointManager(directory)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise UserError(f'no checkpoint in {directory}: pass the --output_dir of a finished training run')
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except Exception as e:  # pylint: disable=broad-except
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise UserError(f'checkpoint {directory}/{step} cannot be read ({first_line}): it is corrupt or from another '
                    'workload/config') from None


def abstract_like(state):
  """ShapeDtypeStructs (with shardings) of a live state, to restore into the same layout."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
