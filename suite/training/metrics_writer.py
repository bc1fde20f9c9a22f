"""One home for "write a metric": each record goes to metrics.jsonl and, as scalars, to TensorBoard event files.

The event files (<output_dir>/tensorboard/events.out.tfevents.*) hold tensorboardX's Event protos (it needs only
protobuf and numpy: no TensorFlow) in TFRecord framing. Every numeric field of a record but its step becomes the
scalar '<kind>/<field>' at that step (train/loss, train/learning_rate, train/step_time_s, train/samples_per_s,
train/model_flops_utilization, eval/top1, ...), one Event per record.

Records arrive already on the host (the runner reads a step's metrics one step late): nothing here touches a
device. Each Event is written at once, in one write, as metrics.jsonl's lines are (a killed run keeps what it
wrote; no fsync), on the caller's thread: about 0.1 ms per record, where tensorboardX's SummaryWriter, which hands
each scalar to a writer thread through a multiprocessing queue, cost 2-3 ms per record in the step loop.
"""

import os
import shutil
import socket
import struct
import time
from collections.abc import Iterator

from suite.common import outputs

TENSORBOARD = 'tensorboard'  # The event files' folder in output_dir: `tensorboard --logdir <output_dir>/tensorboard`.


class MetricsWriter:
  """Writes records to <output_dir>/metrics.jsonl and <output_dir>/tensorboard/; writes nothing when output_dir is
  None (every process but process 0). `fresh` clears event files left by a replaced run (--overwrite); a resumed run
  appends a new event file beside its earlier ones."""

  def __init__(self, output_dir: str | None, fresh: bool = True):
    self._jsonl = outputs.JsonLinesWriter(os.path.join(output_dir, outputs.METRICS) if output_dir else None)
    self._events = None
    if output_dir:
      logdir = os.path.join(output_dir, TENSORBOARD)
      if fresh:
        shutil.rmtree(logdir, ignore_errors=True)
      self._events = EventFile(logdir)

  def write(self, record: dict) -> None:
    """Appends `record` ({'kind': 'train' | 'eval', 'step': N, ...}) to metrics.jsonl and its numbers to
    TensorBoard."""
    self._jsonl.write(record)
    if self._events is not None and 'step' in record:
      kind = record.get('kind', 'metrics')
      self._events.write_scalars(int(record['step']), {f'{kind}/{name}': v for name, v in scalars(record)})

  def close(self) -> None:
    self._jsonl.close()
    if self._events is not None:
      self._events.close()
      self._events = None


class EventFile:
  """One TensorBoard event file, appended one whole record per write."""

  def __init__(self, logdir: str):
    from tensorboardX.proto import event_pb2, summary_pb2  # pylint: disable=import-outside-toplevel
    from tensorboardX.record_writer import masked_crc32c  # pylint: disable=import-outside-toplevel

    self._event, self._summary, self._crc = event_pb2.Event, summary_pb2.Summary, masked_crc32c
    os.makedirs(logdir, exist_ok=True)
    # TensorBoard reads every file whose name holds 'tfevents'; the pid keeps a resumed run's file apart.
    self.path = os.path.join(logdir, f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}')
    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    self._write(self._event(wall_time=time.time(), file_version='brain.Event:2'))

  def write_scalars(self, step: int, values: dict[str, float]) -> None:
    summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=v) for tag, v in values.items()])
    self._write(self._event(wall_time=time.time(), step=step, summary=summary))

  def _write(self, event) -> None:
    data = event.SerializeToString()
    header = struct.pack('<Q', len(data))
    record = header + struct.pack('<I', self._crc(header)) + data + struct.pack('<I', self._crc(data))
    while record:  # A write may be short (nearly full disk): finish the record or fail.
      record = record[os.write(self._fd, record):]

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


def scalars(record: dict) -> Iterator[tuple[str, float]]:
  """The (field, value) pairs of a record that TensorBoard plots: its numbers, bar the step and None."""
  for name, value in record.items():
    if name not in ('kind', 'step') and isinstance(value, int | float) and not isinstance(value, bool):
      yield name, float(value)


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """Every scalar in the event files of `logdir`, as {tag: [(step, value), ...]} in file order (float32, as
  stored). Reads the TFRecord framing (length, its CRC, the Event proto, its CRC) itself, so it needs neither
  TensorFlow nor TensorBoard."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel

  found: dict[str, list[tuple[int, float]]] = {}
  for name in sorted(os.listdir(logdir)):
    if 'tfevents' not in name:
      continue
    with open(os.path.join(logdir, name), 'rb') as f:
      data = f.read()
    offset = 0
    while offset + 12 <= len(data):
      (length,) = struct.unpack_from('<Q', data, offset)
      start = offset + 12  # 8 bytes of length, 4 of its masked CRC.
      if start + length + 4 > len(data):
        break  # A record still being written.
      event = event_pb2.Event.FromString(data[start:start + length])
      offset = start + length + 4
      for value in event.summary.value:
        if value.WhichOneof('value') == 'simple_value':
          found.setdefault(value.tag, []).append((event.step, value.simple_value))
  return found
