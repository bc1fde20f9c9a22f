"""The one place that starts JAX's multi-controller runtime (jax.distributed); no cluster code of our own."""

import os

import jax

from suite.errors import UserError


def _cluster_detected() -> bool:
  """A multi-host environment that jax.distributed.initialize() configures by itself."""
  slurm_tasks = int(os.environ.get('SLURM_NTASKS', '1') or 1)
  tpu_hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return slurm_tasks > 1 or ',' in tpu_hosts


def initialize(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
               timeout_s: int) -> None:
  """Joins this process to the job: explicitly when given a coordinator, automatically on TPU pods and under
  SLURM, not at all for a single process. A peer that never arrives or dies ends the job within `timeout_s`."""
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  if not explicit and not _cluster_detected():
    return
  if explicit and (coordinator_address is None or num_processes is None or process_id is None):
    raise UserError('a multi-process run needs all of --coordinator_address=HOST:PORT, --num_processes=N and '
                    '--process_id=I (or none of them on a TPU pod or under SLURM)')
  if explicit and not 0 <= process_id < num_processes:
    raise UserError(f'--process_id={process_id} must be in [0, {num_processes})')
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=timeout_s, shutdown_timeout_seconds=timeout_s)
  except Exception as e:  # pylint: disable=broad-except
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f'could not join the distributed job at {coordinator_address} within {timeout_s} s '
                    f'({first_line}): check that every process was started with the same --coordinator_address '
                    'and --num_processes') from None
