"""Scores LoadGen's mlperf_log_accuracy.json by the workload's own metric, against the closed bound.

`python -m suite.infer_accuracy --log=DIR/mlperf_log_accuracy.json --workload=resnet --scale=tiny` scores a
finished accuracy run standalone (the workload flags are those of every workload command, suite.common.cli);
`suite.inference.run` calls `score` itself.
"""

import json

from absl import flags

from suite.common import cli as cli_lib
from suite.common.errors import UserError
from suite.workloads.base import Workload


def read_accuracy_log(path: str) -> dict[int, bytes]:
  """qsl index -> response bytes; LoadGen may log a sample more than once, all with the same answer."""
  try:
    with open(path, encoding='utf-8') as f:
      entries = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f'cannot read the accuracy log {path} ({e}): pass the mlperf_log_accuracy.json of an '
                    '--mode=accuracy run') from None
  return {int(e['qsl_idx']): bytes.fromhex(e['data']) for e in entries}


def score(workload: Workload, responses: dict[int, bytes], eval_samples: list[dict] | None = None) -> dict:
  """The accuracy of the logged responses over the workload's eval split, and the closed-division verdict.
  `eval_samples`: qsl.eval_metadata(workload), when the caller already read it."""
  from suite.inference import qsl  # pylint: disable=import-outside-toplevel
  eval_samples = qsl.eval_metadata(workload) if eval_samples is None else eval_samples
  if any(i >= len(eval_samples) for i in responses):
    raise UserError(f'the accuracy log has qsl indices past the {len(eval_samples)} eval samples: it is from '
                    'another workload or scale')
  value = workload.score_responses(responses, eval_samples)
  bound = workload.inference_closed_bound
  return {'metric': workload.metric_name, 'accuracy': value, 'samples_scored': len(responses),
          'eval_samples': len(eval_samples), 'reference_fp32': workload.inference_reference_accuracy,
          'closed_bound': bound, 'meets_closed_bound': bound is not None and value >= bound}


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only when run as a program (beside the workload flags): suite.inference.run imports this module."""
  flags.DEFINE_string('log', None, 'mlperf_log_accuracy.json of an --mode=accuracy run.')


def main(argv) -> int:
  del argv
  from suite.common import registry  # pylint: disable=import-outside-toplevel
  try:
    if not FLAGS.log:
      raise UserError('pass --log=DIR/mlperf_log_accuracy.json')
    workload = registry.make_workload(FLAGS.workload, cli_lib.workload_config(), FLAGS.scale)
    workload.open_data(FLAGS.data_dir)
    result = score(workload, read_accuracy_log(FLAGS.log))
  except UserError as e:
    cli_lib.print_error(str(e))
    return cli_lib.EXIT_BAD_INPUT
  print(json.dumps(result, indent=2, sort_keys=True))
  return cli_lib.EXIT_OK


def cli() -> None:
  """The `python -m suite.infer_accuracy` command."""
  cli_lib.define_workload_flags()
  define_flags()
  cli_lib.run(main, __doc__, flags_parser=cli_lib.parse_workload_flags, extra_help=cli_lib.CONFIG_HELP)


if __name__ == '__main__':
  cli()
