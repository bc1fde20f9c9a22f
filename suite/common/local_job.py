"""A real multi-process JAX job on this machine: N `python -m suite.main` processes on 127.0.0.1, each with its own
fake CPU devices, started exactly as a cluster launcher would start them on N hosts (collectives go over gloo).

Used by `python -m launch.local` and by `python -m suite.bench scaling`; it imports no JAX (the processes do).
"""

import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_commands(suite_args: list[str], num_processes: int, port: int) -> list[list[str]]:
  """One `python -m suite.main` command line per process."""
  return [[sys.executable, '-m', 'suite.main', *suite_args, f'--coordinator_address=127.0.0.1:{port}',
           f'--num_processes={num_processes}', f'--process_id={i}'] for i in range(num_processes)]


def process_env(devices_per_process: int) -> dict:
  """The environment of one process: CPU only, with `devices_per_process` fake devices."""
  return {**os.environ, 'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices_per_process}'}


def run_job(suite_args: list[str], num_processes: int, devices_per_process: int, port: int = 0,
            grace_s: int = 60, output=None) -> int:
  """Runs the job to its end; its exit status is the first failure's. If one process fails, the others are given
  `grace_s` to notice (--distributed_timeout_s), then stopped. `output`: where the processes' stdout and stderr go
  (a file or subprocess.DEVNULL; default: this process's)."""
  port = port or free_port()
  env = process_env(devices_per_process)
  procs = [subprocess.Popen(cmd, env=env, stdout=output, stderr=output)
           for cmd in process_commands(suite_args, num_processes, port)]
  failed_at, status = None, 0
  while any(p.poll() is None for p in procs):
    codes = [p.poll() for p in procs]
    if failed_at is None and any(c not in (None, 0) for c in codes):
      failed_at = time.monotonic()
      status = next(c for c in codes if c not in (None, 0))
    if failed_at is not None and time.monotonic() - failed_at > grace_s:
      for p in procs:
        if p.poll() is None:
          p.kill()
      print(f'error: a process failed (exit {status}); stopped the others after {grace_s} s', file=sys.stderr)
    time.sleep(0.2)
  codes = [p.returncode for p in procs]
  return status or next((c for c in codes if c != 0), 0)
