"""The one place that starts JAX's multi-controller runtime (jax.distributed) and makes the processes of a job
agree: one seed, one output folder, one preemption step. No cluster code of our own."""

import os
import secrets
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from suite.common.errors import UserError, first_line


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
    raise UserError(f'could not join the distributed job at {coordinator_address} within {timeout_s} s '
                    f'({first_line(e)}): check that every process was started with the same --coordinator_address '
                    'and --num_processes') from None


def job_seed_and_output_dir(seed: int | None, output_dir: str | None, run_name: str) -> tuple[int, str]:
  """One job, one seed, one folder: process 0 decides the seed (`seed`, else a fresh random one) and the default
  output folder (runs/<run_name>-<its local time>), and every process of the job gets the same two. An explicit
  `output_dir` is each process's own (normally the same shared path on every host)."""
  seed = secrets.randbelow(2**31) if seed is None else seed
  stamp = time.strftime('%Y%m%d-%H%M%S')
  if jax.process_count() > 1:
    seed, stamp = _from_process_0(seed, stamp)
  return seed, output_dir or os.path.join('runs', f'{run_name}-{stamp}')


def _from_process_0(seed: int, stamp: str) -> tuple[int, str]:
  """Process 0's seed and time stamp on every process, as int32s (what a collective carries without x64)."""
  payload = np.concatenate([np.array([seed], np.int64).view(np.int32),
                            np.frombuffer(stamp.encode('ascii'), np.uint8).astype(np.int32)])
  payload = np.asarray(multihost_utils.broadcast_one_to_all(payload), np.int32)
  return int(payload[:2].copy().view(np.int64)[0]), payload[2:].astype(np.uint8).tobytes().decode('ascii')


def preemption_service_running() -> bool:
  """Whether JAX's preemption service runs in this process: in every process of a jax.distributed job (unless
  jax_enable_preemption_service is off). It owns SIGTERM: a notice to any process reaches all of them."""
  return jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service


def preempted(step: int) -> bool:
  """True at the one step where every process of a preempted job stops (JAX's preemption sync point: the step
  after the largest one any process had reached when the notice came). Call it at every step, in order, on every
  process; without the preemption service it is always False. Costs well under a microsecond."""
  return preemption_service_running() and multihost_utils.reached_preemption_sync_point(step)
