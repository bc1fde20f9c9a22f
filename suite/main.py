"""Entry point: `python -m suite.main --workload=resnet --scale=tiny` trains to the target and reports time to train.

Parses flags (two passes: the workload and scale pick the config that `--config.KEY=VALUE` then overrides),
selects the JAX platform, and hands a config to the runner. Bad input ends in one line and exit status 2.
"""

import os
import sys

from absl import app, flags, logging

from suite.common import config as config_lib
from suite.common import registry
from suite.common.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string('workload', 'resnet', f'Benchmark to run: one of {", ".join(sorted(registry.WORKLOADS))}.')
flags.DEFINE_enum('scale', 'full', ['full', 'tiny'],
                  'full: the real MLPerf benchmark; tiny: a small model on generated data that trains on a CPU.')
flags.DEFINE_string('variant', '', "A workload's named config variant (e.g. --workload=ssd --variant=ssd300).")
flags.DEFINE_enum('platform', None, ['cpu', 'gpu', 'tpu'], 'JAX backend to run on (default: the best available).')
flags.DEFINE_string('data_dir', None, 'TFDS data folder (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).')
flags.DEFINE_string('output_dir', None, 'Where result_0.txt, summary.json and metrics.jsonl go '
                    '(default: runs/<workload>-<scale>-<time>, process 0\'s time in a multi-process job).')
flags.DEFINE_integer('seed', None, 'Run seed (default: a fresh random one, drawn by process 0 in a multi-process '
                     'job; MLPerf runs need distinct seeds).')
flags.DEFINE_enum('division', None, ['closed', 'open'], 'MLPerf division (default: closed for full, open for tiny).')
flags.DEFINE_string('submission_org', 'jax-suite', 'submission_org in the MLPerf log.')
flags.DEFINE_string('submission_platform', '', "submission_platform in the log (default: '<n>x<device kind>').")
flags.DEFINE_enum('submission_status', 'onprem', ['cloud', 'onprem', 'preview', 'research'],
                  'submission_status in the MLPerf log.')
flags.DEFINE_float('peak_flops', None, 'Peak FLOP/s per device for FLOPs utilisation (default: the device kind\'s '
                   'data-sheet dense bf16 peak; measured on CPU; none for other kinds).')
flags.DEFINE_bool('overwrite', False, 'Replace the files of a finished run in --output_dir.')
flags.DEFINE_string('mesh', 'data:-1,fsdp:1,tensor:1', 'Device mesh within a slice, AXIS:SIZE over data, fsdp '
                    'and tensor; one size may be -1 (inferred).')
flags.DEFINE_string('dcn_mesh', '', 'How slices combine over the data-centre network, e.g. data:2 for two slices.')
flags.DEFINE_string('profile_steps', '', 'START:END: capture a jax.profiler trace of these steps into '
                    '<output_dir>/profile (view with TensorBoard or Perfetto).')
flags.DEFINE_integer('checkpoint_every_steps', 0, 'Save the train state every N steps (asynchronously; 0: off).')
flags.DEFINE_float('checkpoint_every_s', 0.0, 'Save the train state every S seconds (0: off).')
flags.DEFINE_integer('keep_checkpoints', 3, 'How many recent checkpoints to keep.')
flags.DEFINE_bool('resume', False, 'Continue the run in --output_dir from its latest valid checkpoint.')
flags.DEFINE_string('cache_clear_cmd', '', 'Shell command that clears the page cache before the run (default: sync '
                    'and /proc/sys/vm/drop_caches, which needs root); cache_clear is logged True only if it worked.')
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0, for a multi-process run off TPU pods/SLURM.')
flags.DEFINE_integer('num_processes', None, 'Processes in the job (with --coordinator_address).')
flags.DEFINE_integer('process_id', None, "This process's index in [0, num_processes).")
flags.DEFINE_integer('distributed_timeout_s', 300, 'A peer that never arrives or stops answering ends the job '
                     'after this many seconds.')

_JAX_PLATFORMS = {'cpu': 'cpu', 'gpu': 'cuda,rocm', 'tpu': 'tpu'}


def parse_flags(argv: list[str]) -> list[str]:
  """Pass 1 reads --workload/--scale; pass 2 parses everything against that workload's locked config."""
  try:
    FLAGS(argv, known_only=True)
    where = f'{FLAGS.workload} (scale {FLAGS.scale})'
    config = registry.get_config(FLAGS.workload, FLAGS.scale, FLAGS.variant)
    rest = config_lib.parse_with_overrides(argv, config, where)
    if division() == 'closed':
      config_lib.check_closed(registry.workload_class(FLAGS.workload, FLAGS.variant),
                              registry.get_config(FLAGS.workload, FLAGS.scale, FLAGS.variant), FLAGS.config, where)
    return rest
  except UserError as e:
    _fail(str(e))
  except flags.Error as e:
    _fail(f'{e} (see --helpfull)')


def division() -> str:
  """--division, else closed for `full` (the real benchmark) and open for `tiny`."""
  return FLAGS.division or ('closed' if FLAGS.scale == 'full' else 'open')


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def select_platform(platform: str | None):
  """Points JAX at the requested backend and joins the distributed job, failing in one line if this machine
  lacks the backend or the job cannot form."""
  import jax  # pylint: disable=import-outside-toplevel

  from suite.common import distributed  # pylint: disable=import-outside-toplevel
  if platform:
    jax.config.update('jax_platforms', _JAX_PLATFORMS[platform])
  # Before anything asks for devices: the backend must be created knowing about the other processes.
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         FLAGS.distributed_timeout_s)
  try:
    return jax.devices()
  except RuntimeError as e:
    raise UserError(f"platform '{platform}' is not available here ({str(e).splitlines()[0]}): install the JAX "
                    f"build for it (see BUILD.md) or choose another --platform") from None


def run_from_flags() -> dict:
  from suite.common import distributed  # pylint: disable=import-outside-toplevel
  from suite.training import runner  # pylint: disable=import-outside-toplevel
  select_platform(FLAGS.platform)
  workload = registry.make_workload(FLAGS.workload, FLAGS.config, FLAGS.scale)
  # Every process of a job gets process 0's seed and default folder: one job, one seed, one folder.
  seed, output_dir = distributed.job_seed_and_output_dir(FLAGS.seed, FLAGS.output_dir,
                                                         f'{FLAGS.workload}-{FLAGS.scale}')
  options = runner.RunOptions(
      output_dir=output_dir, data_dir=FLAGS.data_dir, seed=seed,
      division=division(),
      submission_org=FLAGS.submission_org, submission_platform=FLAGS.submission_platform,
      submission_status=FLAGS.submission_status, peak_flops=FLAGS.peak_flops, overwrite=FLAGS.overwrite,
      mesh=FLAGS.mesh, dcn_mesh=FLAGS.dcn_mesh, profile_steps=parse_profile_steps(FLAGS.profile_steps),
      checkpoint_every_steps=FLAGS.checkpoint_every_steps, checkpoint_every_s=FLAGS.checkpoint_every_s,
      keep_checkpoints=FLAGS.keep_checkpoints, resume=FLAGS.resume, cache_clear_cmd=FLAGS.cache_clear_cmd)
  logging.info('workload %s (%s), seed %d, config:\n%s', FLAGS.workload, FLAGS.scale, seed, FLAGS.config)
  return runner.run(workload, options)


def parse_profile_steps(value: str) -> tuple[int, int] | None:
  if not value:
    return None
  start, _, stop = value.partition(':')
  if not (start.isdigit() and stop.isdigit() and 0 < int(start) < int(stop)):
    raise UserError(f"bad --profile_steps={value}: use START:END with 0 < START < END, e.g. --profile_steps=10:20")
  return int(start), int(stop)


def human_line(s: dict) -> str:
  verdict = '>=' if s['status'] == 'success' else 'short of'
  metric = 'not evaluated' if s['final_metric'] is None else f"{s['final_metric']:.4f}"
  return (f"{s['workload']} ({s['scale']}, {s['division']}): {s['status']}"
          f"{'' if s['status'] == 'success' else ' (' + s['reason'] + ')'}, time to train "
          f"{s['time_to_train_s']:.1f} s{_resumed_note(s)}; {s['target_metric']} {metric} {verdict} target "
          f"{s['target']}; {s['train_steps']} steps, {s['samples_per_s']:.0f} samples/s, "
          f"MFU {_fraction(s['model_flops_utilization'])} (XLA FLOPs {_fraction(s['xla_flops_utilization'])}); "
          f"files in {s['output_dir']}")


def _resumed_note(s: dict) -> str:
  if s.get('resumed_from_step') is None:
    return ''
  wall = s.get('wall_time_to_train_s')
  return (f" of training (resumed from step {s['resumed_from_step']}: "
          f"{'?' if wall is None else f'{wall:.1f}'} s of wall time, what the rules count; not a closed result)")


def _fraction(value: float | None) -> str:
  return 'n/a' if value is None else f'{value:.3f}'


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  try:
    summary = run_from_flags()
  except UserError as e:
    _fail(str(e))
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    # A peer died or stopped answering: say so in one line and leave at once. A normal exit would run
    # jax.distributed's shutdown barrier, which waits for the dead peer and then aborts with pages of logs.
    first_line = (str(e).strip().splitlines() or [''])[0][:300]
    print(f'error: process {jax.process_index()} lost contact with another process of the job ({first_line}): '
          'see the other processes\' logs; restart the job (with --resume to keep the checkpointed work)',
          file=sys.stderr, flush=True)
    os._exit(3)  # pylint: disable=protected-access
  if jax.process_index() == 0:
    print(human_line(summary), flush=True)
  return 0 if summary['status'] == 'success' else 1


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
