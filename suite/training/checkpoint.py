"""The one checkpoint manager: Orbax checkpoints of the sharded train state under <output_dir>/checkpoints."""

import os

import jax
import orbax.checkpoint as ocp
from absl import logging

from suite.common.errors import UserError, first_line

CHECKPOINTS = 'checkpoints'


def manager(output_dir: str, max_to_keep: int = 3, asynchronous: bool = True) -> ocp.CheckpointManager:
  """Keeps the last `max_to_keep` checkpoints; async saves let the step loop go on while files are written."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=asynchronous)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(output_dir, CHECKPOINTS)), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict | None = None) -> None:
  """The sharded state plus a small JSON of host facts (step, seed, clock) that resuming needs."""
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {})))


def _checkpoints_dir(directory: str) -> str:
  directory = os.path.abspath(directory)
  return os.path.join(directory, CHECKPOINTS) if os.path.isdir(os.path.join(directory, CHECKPOINTS)) else directory


def has_checkpoints(directory: str) -> bool:
  path = os.path.join(os.path.abspath(directory), CHECKPOINTS)
  return os.path.isdir(path) and bool(ocp.CheckpointManager(path).all_steps())


def restore_latest_valid(directory: str, abstract_state) -> tuple[object, dict]:
  """(state, meta) of the newest checkpoint that reads back whole, laid out like `abstract_state`
  (ShapeDtypeStructs with shardings). A corrupt or partial newer one is reported in one line and skipped."""
  directory = _checkpoints_dir(directory)
  mngr = ocp.CheckpointManager(directory)
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    raise UserError(f'no checkpoint in {directory}: pass the --output_dir of a training run')
  for step in steps:
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                            meta=ocp.args.JsonRestore()))
      return restored['state'], dict(restored['meta'])
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('checkpoint %s/%d cannot be read (%s): trying an older one', directory, step,
                      first_line(e, 200))
  raise UserError(f'no readable checkpoint in {directory} (tried steps {steps}): they are corrupt or from another '
                  'workload/config')


def restore(directory: str, abstract_state):
  """The state of the newest readable checkpoint in a run folder (or its checkpoints folder)."""
  return restore_latest_valid(directory, abstract_state)[0]


def abstract_like(state):
  """ShapeDtypeStructs (with shardings) of a live state, to restore into the same layout."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
