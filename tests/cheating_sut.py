"""Test helper: `python -m tests.cheating_sut changing|caching FLAGS` runs suite.audit with a SUT that breaks a rule
the audit tests check (calibration, which calls the forward directly, is untouched):

- changing: answers right in its first LoadGen test (the accuracy run) and then the next class instead, as a SUT
  that answers differently in performance mode would (TEST01 must fail);
- caching: keeps each sample index's answer and serves a sample it has seen without the model (TEST04 must fail).
"""

import itertools
import sys
import threading

import numpy as np

from suite.inference import audit
from suite.inference import sut as sut_lib


class ChangingSUT(sut_lib.SUT):
  tests = itertools.count()

  def __init__(self, gather, predict, finish, policy, *args, **kwargs):
    if next(self.tests) > 0:
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
  audit.cli()
