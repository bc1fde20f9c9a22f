"""Test helper: `python -m tests.cheating_sut changing|caching FLAGS` runs suite.audit with a SUT that breaks a rule
the audit tests check (the batch latencies of the calibration, which call the forward directly, are untouched):

- changing: answers right in accuracy mode and the next class in performance mode (TEST01 must fail);
- caching: keeps each sample index's answer and serves a sample it has seen without the model (TEST04 must fail).
"""

import sys
import threading

import numpy as np

from suite.inference import audit
from suite.inference import sut as sut_lib

ACCURACY_MODE = threading.Event()  # Set while the audit's accuracy run goes on.


def _run_one_telling_the_mode(run_one):
  def wrapped(name, mode, *args, **kwargs):
    if mode == 'accuracy':
      ACCURACY_MODE.set()
    try:
      return run_one(name, mode, *args, **kwargs)
    finally:
      ACCURACY_MODE.clear()
  return wrapped


class ChangingSUT(sut_lib.SUT):
  def __init__(self, gather, predict, finish, policy, *args, **kwargs):
    if not ACCURACY_MODE.is_set():
      inner = finish
      finish = lambda out, n: [np.asarray((r + 1) % 10, r.dtype) for r in inner(out, n)]  # noqa: E731
    super().__init__(gather, predict, finish, policy, *args, **kwargs)


class CachingSUT(sut_lib.SUT):
  def __init__(self, gather, predict, finish, policy, *args, **kwargs):
    cache: dict[int, np.ndarray] = {}
    lock = threading.Lock()

    def gather_indices(indices):
      with lock:
        misses = list(dict.fromkeys(i for i in indices if i not in cache))
      return list(indices), misses, gather(misses) if misses else None

    def predict_misses(item):
      indices, misses, images = item
      return indices, misses, None if images is None else predict(images)

    def finish_from_cache(item, n):
      indices, misses, outputs = item
      if misses:
        with lock:
          cache.update(zip(misses, finish(outputs, len(misses))))
      with lock:
        return [cache[i] for i in indices]

    super().__init__(gather_indices, predict_misses, finish_from_cache, policy, *args, **kwargs)


if __name__ == '__main__':
  sut_lib.SUT = {'changing': ChangingSUT, 'caching': CachingSUT}[sys.argv.pop(1)]
  audit._run_one = _run_one_telling_the_mode(audit._run_one)  # pylint: disable=protected-access
  audit.cli()
