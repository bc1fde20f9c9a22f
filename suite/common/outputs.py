"""The files a run leaves in --output_dir: result_0.txt (MLPerf log), metrics.jsonl, summary.json, config.json and
provenance.json."""

import contextlib
import errno
import glob
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator

from suite.common.errors import UserError

RESULT_LOG = 'result_0.txt'
METRICS = 'metrics.jsonl'
SUMMARY = 'summary.json'
CONFIG = 'config.json'  # The run's whole resolved workload config.
PROVENANCE = 'provenance.json'  # What produced the run (suite.common.provenance).


def prepare_output_dir(output_dir: str, overwrite: bool, resume: bool = False, resumable: bool = False) -> None:
  """Creates the folder; refuses to clobber a run's files unless asked to (--overwrite), to resume a run that
  already finished, and to resume a started run that left no checkpoint (its log cannot be continued)."""
  existing = [name for name in (RESULT_LOG, SUMMARY) if os.path.exists(os.path.join(output_dir, name))]
  if resume and existing and not resumable:
    raise UserError(f'{output_dir} holds a started run but no readable checkpoint to resume from: restart it with '
                    '--overwrite (add --checkpoint_every_steps=N so the next one can be resumed)')
  if resume:
    if SUMMARY in existing and _summary_reason(output_dir) != 'preempted':
      raise UserError(f'{output_dir} holds a finished run (summary.json): nothing to resume; use a new --output_dir')
    os.makedirs(output_dir, exist_ok=True)
    return
  if existing and not overwrite:
    raise UserError(f'{output_dir} already holds a run ({", ".join(existing)}): choose a new --output_dir, '
                    'pass --resume to continue it, or --overwrite to replace it')
  os.makedirs(output_dir, exist_ok=True)
  for name in (RESULT_LOG, METRICS, SUMMARY, CONFIG, PROVENANCE):  # --overwrite: start this run's files afresh.
    path = os.path.join(output_dir, name)
    if os.path.exists(path):
      os.remove(path)
  if overwrite:  # The replaced run's checkpoints must not be mistaken for this run's.
    shutil.rmtree(os.path.join(output_dir, 'checkpoints'), ignore_errors=True)


def _summary_reason(output_dir: str) -> str | None:
  try:
    with open(os.path.join(output_dir, SUMMARY), encoding='utf-8') as f:
      return json.load(f).get('reason')
  except (OSError, ValueError):
    return None


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(path: str, error: BaseException) -> UserError | None:
  """A one-line UserError when `error` (or an exception it wraps, as Orbax's async writers do) is ENOSPC/EDQUOT."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
      return UserError(f'disk full: cannot write {error.filename or path} ({os.strerror(error.errno)}): free some '
                       'space (the files written so far are intact), then rerun with --resume to keep the '
                       'checkpointed work')
    error = error.__cause__ or error.__context__
  return None


def _raise_disk_full(path: str, error: BaseException) -> None:
  user_error = disk_full_error(path, error)
  if user_error is not None:
    raise user_error from None


@contextlib.contextmanager
def on_disk_full(path: str) -> Iterator[None]:
  """Turns a disk-full error raised inside the block into one clear line about `path` (e.g. around checkpoint
  saves and waits)."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    _raise_disk_full(path, e)
    raise


class _AppendFile:
  """An append-only file written one whole line per write: a failed write (disk full) is rolled back to the last
  whole line, so what was written before is never truncated and no half line is left."""

  def __init__(self, path: str):
    self.path = path
    # Unbuffered: a line that could not be written must not linger in a buffer to be flushed later.
    self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

  def write_line(self, line: str) -> None:
    data = line.encode('utf-8') + b'\n'
    start = os.fstat(self._fd).st_size
    try:
      while data:  # A write may be short (nearly full disk): keep going until the line is whole or it fails.
        data = data[os.write(self._fd, data):]
    except OSError as e:
      with contextlib.suppress(OSError):  # Not a regular file (e.g. /dev/full): nothing to roll back.
        os.ftruncate(self._fd, start)
      _raise_disk_full(self.path, e)
      raise

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


class LogFileHandler(logging.Handler):
  """A logging handler for the MLPerf log that raises a one-line UserError when the disk is full.

  logging.FileHandler reports write errors by printing a traceback and going on without the line, which would leave
  a log that silently misses events; this one keeps whole lines and stops the run instead.
  """

  def __init__(self, path: str):
    super().__init__()
    self._file = _AppendFile(path)

  def emit(self, record: logging.LogRecord) -> None:
    self._file.write_line(self.format(record))

  def close(self) -> None:
    self._file.close()
    super().close()


class JsonLinesWriter:
  """Appends one JSON object per line, each written at once so a killed run keeps what it wrote; a full disk ends
  the run with a one-line UserError and leaves the earlier lines intact."""

  def __init__(self, path: str | None):
    self._file = _AppendFile(path) if path else None

  def write(self, record: dict) -> None:
    if self._file:
      self._file.write_line(json.dumps(record))

  def close(self) -> None:
    if self._file:
      self._file.close()


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
  """The one way a file is rewritten in place: yields a temporary path beside `path` to write the new content to,
  then renames it over `path` at once, so a reader, a crash or a full disk mid-write sees the old file or the new
  one, never a part of either. On any failure the temporary file is removed (the old file stays as it was), and a
  full disk is a one-line UserError."""
  tmp = path + '.tmp'
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    _raise_disk_full(path, e)
    raise


def write_json(path: str, data: dict, sort_keys: bool = True) -> None:
  """Writes `data` as indented JSON atomically (see replacing): a crash or a full disk mid-write never leaves a
  truncated file (e.g. a preempted run's summary stays as it was), nor a temp file. `sort_keys=False` keeps the
  order of `data` (files people read, such as score.json)."""
  with replacing(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
    json.dump(data, f, indent=2, sort_keys=sort_keys)
    f.write('\n')


# --- A set of runs (suite.results.runs): DIR/run_0, DIR/run_1, ... ---

RUN_DIR_PREFIX = 'run_'


def run_dir(set_dir: str, k: int) -> str:
  """The folder of run `k` of a set."""
  return os.path.join(set_dir, f'{RUN_DIR_PREFIX}{k}')


def run_order(name: str) -> tuple[int, str]:
  """Sort key of run folder names (or paths): by the number in run_<k>, so run_2 comes before run_10."""
  base = os.path.basename(os.path.normpath(name))
  return int(re.sub(r'\D', '', base) or 0), base


def run_dirs(set_dir: str, containing: str | None = None) -> list[str]:
  """The run_<k> folders of a set folder in run order; `containing`: only those that hold that file."""
  found = [d for d in glob.glob(os.path.join(glob.escape(set_dir), f'{RUN_DIR_PREFIX}*')) if os.path.isdir(d)]
  if containing:
    found = [d for d in found if os.path.exists(os.path.join(d, containing))]
  return sorted(found, key=run_order)
