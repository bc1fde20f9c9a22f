"""Test helper: `python -m tests.failing_sut infer|infer_bench FLAGS` runs suite.inference.run or .bench with a
forward that raises for every third batch the SUT dispatches (calibration and the bench's bare loop, which run on
other threads, are untouched), as a device or host failure during a LoadGen test would."""

import itertools
import sys
import threading

from suite.inference import model as infer_model


def inject_failures(every: int = 3) -> None:
  predict = infer_model.Predictor.__call__
  sut_calls = itertools.count(1)

  def failing(self, images):
    if threading.current_thread().name == 'sut-batcher' and next(sut_calls) % every == 0:
      raise RuntimeError('injected device failure')
    return predict(self, images)

  infer_model.Predictor.__call__ = failing


if __name__ == '__main__':
  from suite.inference import bench as infer_bench  # pylint: disable=import-outside-toplevel
  from suite.inference import run as infer  # pylint: disable=import-outside-toplevel
  command = {'infer': infer.cli, 'infer_bench': infer_bench.cli}[sys.argv.pop(1)]
  inject_failures()
  command()
