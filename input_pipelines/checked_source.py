"""A data-source wrapper that turns an unreadable or undecodable record into one clear error naming its file."""

import io
import threading
from typing import Any

from absl import logging
from PIL import Image

from suite.common.errors import UserError, first_line

SKIP_HINT = 're-prepare the dataset or set --config.skip_bad_records=True'
# A result is scored on the whole eval split: skipping an eval record would score a different, smaller split.
EVAL_HINT = 're-prepare the dataset (eval records are never skipped: a result is scored on the whole eval split)'


class CorruptRecordError(UserError):
  """A record that cannot be read or decoded; a UserError so that main reports it in one line (exit 2)."""


class CheckedSource:
  """Random access (len, [i]) over a TFDS data source that checks each record it hands out.

  A record whose bytes cannot be read (ArrayRecord/Riegeli framing or hash errors), deserialized, or whose encoded
  image fails PIL's header check and `verify()` (cheap: no pixel decode) raises CorruptRecordError naming the
  dataset, split, record index and the ArrayRecord file it lives in. With `skip_bad_records` (training data
  only), a bad record is replaced by the next good one (deterministically, so resumed runs see the same stream)
  and counted instead. An eval source (`is_eval`) never skips.
  """

  def __init__(self, source: Any, dataset: str, split: str, data_dir: str | None, skip_bad_records: bool = False,
               *, is_eval: bool = False):
    if is_eval and skip_bad_records:
      raise ValueError(f'{dataset}/{split}: eval records are never skipped (skip_bad_records is for training data)')
    self._source = source
    self._dataset = dataset
    self._split = split
    self._data_dir = data_dir
    self._skip = skip_bad_records
    self._hint = EVAL_HINT if is_eval else SKIP_HINT
    self._lock = threading.Lock()  # grain reads from several threads.
    self._bad: set[int] = set()

  def __len__(self) -> int:
    return len(self._source)

  def __getattr__(self, name: str) -> Any:
    # Transparent for callers of the wrapped source (detection reads `source.dataset_info`). Private names are
    # never forwarded: unpickling looks them up before _source exists, which would recurse.
    if name.startswith('_'):
      raise AttributeError(name)
    return getattr(self._source, name)

  def __getitem__(self, index: int) -> Any:
    index = index.__index__()
    if not self._skip:
      return self._checked(index)
    for offset in range(len(self)):
      candidate = (index + offset) % len(self)
      try:
        return self._checked(candidate)
      except CorruptRecordError as e:
        self._count_bad(candidate, e)
    raise CorruptRecordError(f'every record of {self._dataset}/{self._split} is corrupt: re-prepare the dataset')

  def __getstate__(self) -> dict:
    # Picklable like the wrapped source (grain worker processes); a lock cannot travel, a fresh one is made.
    return {k: v for k, v in self.__dict__.items() if k != '_lock'}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  @property
  def num_bad_records(self) -> int:
    """Distinct bad records met so far (only counted with skip_bad_records)."""
    with self._lock:
      return len(self._bad)

  @property
  def bad_records(self) -> list[int]:
    """Indices of the bad records met so far, sorted (only counted with skip_bad_records)."""
    with self._lock:
      return sorted(self._bad)

  def _count_bad(self, index: int, error: CorruptRecordError) -> None:
    with self._lock:
      new = index not in self._bad
      self._bad.add(index)
      count = len(self._bad)
    if new:  # Once per record: later epochs must not flood the log.
      logging.warning('skipping bad training record %d so far: %s', count,
                      str(error).removesuffix(f'; {self._hint}'))

  def _checked(self, index: int) -> Any:
    try:
      record = self._source[index]
    except Exception as e:  # pylint: disable=broad-except  # Riegeli raises RuntimeError, protobuf DecodeError, ...
      raise self._error(index, 'cannot be read', e) from None
    image = record.get('image') if isinstance(record, dict) else None
    if isinstance(image, bytes):
      try:
        with Image.open(io.BytesIO(image)) as opened:
          opened.verify()
      except Exception as e:  # pylint: disable=broad-except  # PIL raises OSError, SyntaxError, ValueError, ...
        raise self._error(index, 'cannot be decoded', e) from None
    return record

  def _error(self, index: int, what: str, cause: Exception) -> CorruptRecordError:
    reason = first_line(cause)
    return CorruptRecordError(f'corrupt record: record {index} of {self._dataset}/{self._split} '
                              f'({self._where(index)}) {what}: {type(cause).__name__}: {reason}; {self._hint}')

  def _where(self, index: int) -> str:
    """'file F, record R in that file' from the split's file instructions (they also cover sliced splits)."""
    try:
      info = getattr(self._source, 'dataset_info', None)
      instructions = info.splits[self._split].file_instructions
    except Exception:  # pylint: disable=broad-except  # Only the message depends on it: never hide the real error.
      return f'data_dir {self._data_dir}'
    first = 0
    for instruction in instructions:
      if index < first + instruction.take:
        return f'file {instruction.filename}, record {instruction.skip + index - first} in that file'
      first += instruction.take
    return f'data_dir {self._data_dir}'
