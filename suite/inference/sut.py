"""LoadGen's system under test: callbacks that only enqueue, a batcher and a completer on worker threads.

LoadGen calls `issue_queries` on its own threads and holds the GIL while it does, so the callback only appends
to a queue. The batcher thread takes up to `max_batch` samples, waiting at most `timeout_s` after the first one
for more (Server's dynamic batching; 0 elsewhere), gathers their inputs and dispatches the compiled forward (a
query's samples in QSL index order when the policy says so). The
completer thread waits for the device, encodes the responses and calls QuerySamplesComplete, so the next batch
is being dispatched while the last one computes. Every sample is answered: a failure answers its samples with
an empty response and is counted, because one unanswered sample hangs LoadGen forever.
"""

import collections
import dataclasses
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class BatchPolicy:
  max_batch: int
  timeout_s: float = 0.0  # How long the oldest queued sample may wait for others before its batch runs.
  # Batch a query's samples in QSL index order (the workload's eval order: translation's sorts sentences by
  # length, so each batch holds sentences of similar length).
  by_index: bool = False


@dataclasses.dataclass(frozen=True)
class Sample:
  id: int  # LoadGen's response id.
  index: int  # QSL index.
  arrival: float  # time.monotonic() when LoadGen issued it.


def take_batch(pending: collections.deque, policy: BatchPolicy, now: float, flushing: bool) -> list[Sample] | None:
  """The next batch to run, or None to keep waiting: full, or its oldest sample has waited long enough."""
  if not pending:
    return None
  if len(pending) >= policy.max_batch or flushing or now >= pending[0].arrival + policy.timeout_s:
    return [pending.popleft() for _ in range(min(policy.max_batch, len(pending)))]
  return None


class SUT:
  """Answers LoadGen's queries with `predict` (dispatch a host batch) and `finish` (device result -> one
  response array per sample)."""

  _STOP = object()

  def __init__(self, gather: Callable[[list[int]], np.ndarray], predict: Callable[[np.ndarray], Any],
               finish: Callable[[Any, int], list[np.ndarray]], policy: BatchPolicy, max_in_flight: int = 2,
               complete: Callable[[list], None] | None = None):
    self._gather, self._predict, self._finish = gather, predict, finish
    self.policy = policy
    self._complete = complete  # Tests may capture responses instead of calling LoadGen.
    self._pending: collections.deque = collections.deque()
    self._cond = threading.Condition()
    self._flushing = False
    self._stopping = False
    # Bounded: the batcher runs at most `max_in_flight` batches ahead of the device.
    self._in_flight: queue.Queue = queue.Queue(maxsize=max_in_flight)
    self._lock = threading.Lock()
    self.errors = 0  # Samples answered empty because something failed.
    self.error_messages: list[str] = []
    self.batches = 0
    self.samples = 0
    self._threads = [threading.Thread(target=self._batch_loop, daemon=True, name='sut-batcher'),
                     threading.Thread(target=self._complete_loop, daemon=True, name='sut-completer')]
    for t in self._threads:
      t.start()

  # --- LoadGen callbacks: enqueue only ---
  def issue_queries(self, query_samples) -> None:
    now = time.monotonic()
    try:
      samples = [Sample(q.id, q.index, now) for q in query_samples]
      if self.policy.by_index:
        samples.sort(key=lambda s: s.index)
    except Exception as e:  # pylint: disable=broad-except
      self._fail([Sample(q.id, 0, now) for q in query_samples], e)
      return
    with self._cond:
      self._pending.extend(samples)
      self._cond.notify()

  def flush_queries(self) -> None:
    with self._cond:
      self._flushing = True
      self._cond.notify()

  def construct(self):
    """The LoadGen handle; destroy it with lg.DestroySUT."""
    import mlperf_loadgen as lg  # pylint: disable=import-outside-toplevel
    return lg.ConstructSUT(self.issue_queries, self.flush_queries)

  def stop(self, timeout_s: float = 10.0) -> None:
    """Finishes queued work, then ends the worker threads."""
    with self._cond:
      self._stopping = True
      self._cond.notify()
    for t in self._threads:
      t.join(timeout_s)

  # --- worker threads ---
  def _next_batch(self) -> list[Sample] | None:
    with self._cond:
      while True:
        batch = take_batch(self._pending, self.policy, time.monotonic(), self._flushing or self._stopping)
        if batch:
          if not self._pending:
            self._flushing = False
          return batch
        if self._stopping:
          return None
        timeout = self._pending[0].arrival + self.policy.timeout_s - time.monotonic() if self._pending else None
        self._cond.wait(timeout)

  def _batch_loop(self) -> None:
    while (batch := self._next_batch()) is not None:
      try:
        outputs = self._predict(self._gather([s.index for s in batch]))
      except Exception as e:  # pylint: disable=broad-except
        self._fail(batch, e)
        continue
      self._in_flight.put((batch, outputs))
    self._in_flight.put(self._STOP)

  def _complete_loop(self) -> None:
    while (item := self._in_flight.get()) is not self._STOP:
      batch, outputs = item
      try:
        responses = self._finish(outputs, len(batch))
        if len(responses) != len(batch):
          raise ValueError(f'{len(responses)} responses for {len(batch)} samples')
      except Exception as e:  # pylint: disable=broad-except
        self._fail(batch, e)
        continue
      self._respond(batch, responses)
      with self._lock:
        self.batches += 1
        self.samples += len(batch)

  def _respond(self, batch: list[Sample], arrays: list[np.ndarray | None]) -> None:
    import mlperf_loadgen as lg  # pylint: disable=import-outside-toplevel
    # `arrays` holds the buffers until QuerySamplesComplete has copied them (it returns after copying).
    responses = [lg.QuerySampleResponse(s.id, a.ctypes.data, a.nbytes) if a is not None and a.nbytes
                 else lg.QuerySampleResponse(s.id, 0, 0) for s, a in zip(batch, arrays)]
    (self._complete or lg.QuerySamplesComplete)(responses)

  def _fail(self, batch: list[Sample], error: Exception) -> None:
    with self._lock:
      self.errors += len(batch)
      if len(self.error_messages) < 5:
        self.error_messages.append(''.join(traceback.format_exception_only(type(error), error)).strip())
    self._respond(batch, [None] * len(batch))
