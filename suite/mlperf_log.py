"""The one home of MLPerf logging: an official `mlperf_logging.mllog` logger writing only `:::MLLOG` lines."""

import logging

from mlperf_logging.mllog import constants

from suite import outputs
from mlperf_logging.mllog import mllog as mllog_impl

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
      self._handler.close()

