"""A real multi-process JAX job on this machine: N processes on 127.0.0.1, each with its own CPU devices.

`python -m launch.local --num_processes=2 --devices_per_process=4 -- --workload=resnet --scale=tiny`
starts `python -m suite.main` N times with --coordinator_address/--num_processes/--process_id, exactly as a
cluster launcher would on N hosts (collectives go over gloo). If one process fails, the others are given
--distributed_timeout_s to notice, then stopped; the exit status is the first failure's.
"""

import os
import socket
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Registered only when run as a program: importing this module (tests, bench) defines no global flags."""
  flags.DEFINE_integer('num_processes', 2, 'Processes to start.')
  flags.DEFINE_integer('devices_per_process', 4, 'Fake CPU devices per process.')
  flags.DEFINE_integer('port', 0, 'Coordinator port on 127.0.0.1 (0: a free one).')
  flags.DEFINE_integer('grace_s', 60, 'After a process fails, how long the others get to exit by themselves.')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_commands(suite_args: list[str], num_processes: int, port: int) -> list[list[str]]:
  """One `python -m suite.main` command line per process."""
  return [[sys.executable, '-m', 'suite.main', *suite_args, f'--coordinator_address=127.0.0.1:{port}',
           f'--num_processes={num_processes}', f'--process_id={i}'] for i in range(num_processes)]


def process_env(devices_per_process: int) -> dict:
  return {**os.environ, 'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices_per_process}'}


def run_job(suite_args: list[str], num_processes: int, devices_per_process: int, port: int = 0,
            grace_s: int = 60) -> int:
  port = port or free_port()
  env = process_env(devices_per_process)
  procs = [subprocess.Popen(cmd, env=env) for cmd in process_commands(suite_args, num_processes, port)]
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


def main(argv):
  return run_job(argv[1:], FLAGS.num_processes, FLAGS.devices_per_process, FLAGS.port, FLAGS.grace_s)


if __name__ == '__main__':
  define_flags()
  app.run(main)
