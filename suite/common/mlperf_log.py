"""The one home of MLPerf logging: an official `mlperf_logging.mllog` logger writing only `:::MLLOG` lines, and the
readers every result tool uses to read them back (`read_events`, `run_span`)."""

import dataclasses
import json
import logging
import os
from collections.abc import Iterable

from mlperf_logging.mllog import constants
from mlperf_logging.mllog import mllog as mllog_impl

from suite.common import outputs

KEYS = constants


class MLPerfLog:
  """Writes MLLOG lines to `path` on process 0; a no-op elsewhere (repeated keys would fail the checker).

  Each run gets its own MLLogger rather than mllog's process-wide singleton, so runs in one process never mix.
  """

  def __init__(self, path: str | None, enabled: bool = True):
    self.enabled = enabled and path is not None
    self._handler = None
    logger = logging.getLogger(f'suite.mllog.{id(self)}')
    logger.propagate = False  # Keep MLLOG lines out of absl's stderr: the file is the record.
    logger.setLevel(logging.INFO)
    if self.enabled:
      self._handler = outputs.LogFileHandler(path)  # Disk full: one clear error, not a silently lost line.
      self._handler.setFormatter(logging.Formatter('%(message)s'))
      logger.addHandler(self._handler)
    # stack offset 3: the mllog call site reported in metadata is the caller of this wrapper.
    self._mllogger = mllog_impl.MLLogger(logger=logger, default_stack_offset=3, default_clear_line=False)

  def event(self, key: str, value=None, metadata: dict | None = None, time_ms: float | None = None):
    if self.enabled:
      self._mllogger.event(key=key, value=value, metadata=metadata, time_ms=time_ms)

  def start(self, key: str, value=None, metadata: dict | None = None, time_ms: float | None = None):
    if self.enabled:
      self._mllogger.start(key=key, value=value, metadata=metadata, time_ms=time_ms)

  def end(self, key: str, value=None, metadata: dict | None = None, time_ms: float | None = None):
    if self.enabled:
      self._mllogger.end(key=key, value=value, metadata=metadata, time_ms=time_ms)

  def close(self):
    if self._handler is not None:
      # Detach too: a later log may get this one's id, and so its logger name, after garbage collection.
      self._mllogger.logger.removeHandler(self._handler)
      self._handler.close()
      self._handler = None



# --- Reading logs back: the one home for parsing `:::MLLOG` lines (the result tools all read through here). ---

MLLOG_PREFIX = ':::MLLOG '
# The event a run resumed from a checkpoint logs, with the step it resumed from (suite.training.runner).
RESUMED = 'resumed'


def parse_line(line: str) -> dict:
  """The event of one `:::MLLOG {...}` line; ValueError when it is not one whole MLLOG line (no prefix, or a JSON
  payload cut short or damaged)."""
  if not line.startswith(MLLOG_PREFIX):
    raise ValueError(f'not an MLLOG line: {line[:80]!r}')
  return json.loads(line[len(MLLOG_PREFIX):])  # json.JSONDecodeError is a ValueError.


def parse_events(lines: Iterable[str], strict: bool = False) -> list[dict]:
  """The events of MLLOG lines, in order. Not strict: other lines and torn ones (the half-written last line of a run
  still writing, or killed mid-line) are skipped. Strict: any such line is a ValueError (a log that must be whole)."""
  events = []
  for line in lines:
    line = line.rstrip('\n')
    if not strict and not line.startswith(MLLOG_PREFIX):
      continue
    try:
      events.append(parse_line(line))
    except ValueError:
      if strict:
        raise
  return events


def read_events(path: str, strict: bool = False) -> list[dict]:
  """Every MLLOG event of a log file, in order ({'key', 'value', 'time_ms', 'metadata', ...}); no file: [].
  `strict`: as in parse_events."""
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8', errors='replace') as f:
    return parse_events(f, strict)


def first_values(events: list[dict]) -> dict:
  """key -> value of the first occurrence of each key."""
  values = {}
  for event in events:
    values.setdefault(event['key'], event.get('value'))
  return values


@dataclasses.dataclass(frozen=True)
class RunSpan:
  """What a log says about its run's timed region. The rules do not let the clock pause: a resumed run is timed
  from its first `run_start` to its last `run_stop`, the time it was down included."""
  start_ms: float | None  # The first run_start.
  stop_ms: float | None  # The last run_stop (a preempted run logs one when it stops and one when it finishes).
  status: str | None  # The last run_stop's status: 'success' when the run reached its target.
  resumed_from_steps: tuple[int, ...]  # One entry per `resumed` event: the step the run continued from.
  epochs: float | None  # epoch_num of the last eval_accuracy.
  seed: int | None

  @property
  def time_to_train_s(self) -> float | None:
    if self.start_ms is None or self.stop_ms is None:
      return None
    return (self.stop_ms - self.start_ms) / 1000

  @property
  def resumed(self) -> bool:
    return bool(self.resumed_from_steps)


def run_span(events_or_path: list[dict] | str) -> RunSpan:
  """The RunSpan of a log (a path, or its events from read_events)."""
  events = read_events(events_or_path) if isinstance(events_or_path, str) else events_or_path
  starts = [e['time_ms'] for e in events if e['key'] == KEYS.RUN_START]
  stops = [e for e in events if e['key'] == KEYS.RUN_STOP]
  evals = [e for e in events if e['key'] == KEYS.EVAL_ACCURACY]
  seed = first_values(events).get(KEYS.SEED)
  return RunSpan(start_ms=starts[0] if starts else None, stop_ms=stops[-1]['time_ms'] if stops else None,
                 status=(stops[-1].get('metadata') or {}).get('status') if stops else None,
                 resumed_from_steps=tuple(e.get('value') for e in events if e['key'] == RESUMED),
                 epochs=(evals[-1].get('metadata') or {}).get('epoch_num') if evals else None, seed=seed)


def run_span_s(path: str) -> float | None:
  """Wall time from the first run_start to the last run_stop of a log, in seconds; None without both."""
  return run_span(path).time_to_train_s
