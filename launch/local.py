"""A real multi-process JAX job on this machine: N processes on 127.0.0.1, each with its own CPU devices.

`python -m launch.local --num_processes=2 --devices_per_process=4 -- --workload=resnet --scale=tiny`
starts `python -m suite.main` N times with --coordinator_address/--num_processes/--process_id, exactly as a
cluster launcher would on N hosts (collectives go over gloo). If one process fails, the others are given
--distributed_timeout_s to notice, then stopped; the exit status is the first failure's. The job itself is
suite.common.local_job, which `python -m suite.bench scaling` runs as well.
"""

from absl import app, flags

from suite.common import local_job

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Registered only when run as a program: importing this module defines no global flags."""
  flags.DEFINE_integer('num_processes', 2, 'Processes to start.')
  flags.DEFINE_integer('devices_per_process', 4, 'Fake CPU devices per process.')
  flags.DEFINE_integer('port', 0, 'Coordinator port on 127.0.0.1 (0: a free one).')
  flags.DEFINE_integer('grace_s', 60, 'After a process fails, how long the others get to exit by themselves.')


def main(argv):
  return local_job.run_job(argv[1:], FLAGS.num_processes, FLAGS.devices_per_process, FLAGS.port, FLAGS.grace_s)


if __name__ == '__main__':
  define_flags()
  app.run(main)
