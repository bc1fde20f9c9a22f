"""Scores LoadGen's mlperf_log_accuracy.json: top-1 (resnet) or COCO mAP (ssd) against the closed bound.

`python -m suite.infer_accuracy --log=DIR/mlperf_log_accuracy.json --workload=resnet --scale=tiny` scores a
finished accuracy run standalone (the workload flags are suite.main's); `suite.infer` calls `score` itself.
"""

import json
import sys

import numpy as np
from absl import app, flags

from suite import infer_model
from suite import main as suite_main
from suite.errors import UserError
from suite.workload import Workload


def read_accuracy_log(path: str) -> dict[int, bytes]:
  """qsl index -> response bytes; LoadGen may log a sample more than once, all with the same answer."""
  try:
    with open(path, encoding='utf-8') as f:
      entries = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f'cannot read the accuracy log {path} ({e}): pass the mlperf_log_accuracy.json of an '
                    '--mode=accuracy run') from None
  return {int(e['qsl_idx']): bytes.fromhex(e['data']) for e in entries}


def top1(responses: dict[int, bytes], labels: list[int]) -> float:
  """Fraction of all eval samples answered with their label (an unanswered or empty sample counts wrong)."""
  correct = sum(int(infer_model.from_response('resnet', data)[0]) == labels[i] for i, data in responses.items())
  return correct / len(labels)


def detection_outputs(responses: dict[int, bytes], metadata: list[dict]) -> list[dict]:
  """Responses -> the per-batch output records `ssd.coco_detections` reads (one sample per record)."""
  outputs = []
  for index, data in sorted(responses.items()):
    rows = infer_model.from_response('ssd', data)
    outputs.append({'boxes': rows[None, :, :4], 'scores': rows[None, :, 4], 'classes': rows[None, :, 5].astype(int),
                    'valid': np.ones((1, len(rows)), bool), 'mask': np.ones((1,)),
                    'image_id': np.array([metadata[index]['image_id']]),
                    'image_hw': np.asarray(metadata[index]['image_hw'])[None]})
  return outputs


def score(workload: Workload, responses: dict[int, bytes]) -> dict:
  """The accuracy of the logged responses over the workload's eval split, and the closed-division verdict."""
  from suite import qsl  # pylint: disable=import-outside-toplevel
  workload_name = workload.benchmark
  metadata = qsl.eval_metadata(workload)
  if any(i >= len(metadata) for i in responses):
    raise UserError(f'the accuracy log has qsl indices past the {len(metadata)} eval samples: it is from '
                    'another workload or scale')
  if workload_name == 'resnet':
    metric, value = 'top1', top1(responses, [int(m['label']) for m in metadata])
  else:
    from input_pipelines import detection  # pylint: disable=import-outside-toplevel
    from suite.workloads import ssd  # pylint: disable=import-outside-toplevel
    ground_truth = detection.coco_ground_truth(workload._eval_source)  # pylint: disable=protected-access
    metric, value = 'mAP', ssd.coco_map(ground_truth, ssd.coco_detections(detection_outputs(responses, metadata)))
  bound = infer_model.closed_bound(workload_name)
  return {'metric': metric, 'accuracy': value, 'samples_scored': len(responses), 'eval_samples': len(metadata),
          'reference_fp32': infer_model.REFERENCE_ACCURACY[workload_name], 'closed_bound': bound,
          'meets_closed_bound': value >= bound}


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Only when run as a program: suite.infer imports this module and has its own --log-free flag set."""
  flags.DEFINE_string('log', None, 'mlperf_log_accuracy.json of an --mode=accuracy run.')


def main(argv) -> int:
  del argv
  from suite import registry  # pylint: disable=import-outside-toplevel
  try:
    if not FLAGS.log:
      raise UserError('pass --log=DIR/mlperf_log_accuracy.json')
    workload = registry.make_workload(FLAGS.workload, FLAGS.config, FLAGS.scale)
    workload.open_data(FLAGS.data_dir)
    result = score(workload, read_accuracy_log(FLAGS.log))
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(result, indent=2, sort_keys=True))
  return 0


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=suite_main.parse_flags)
