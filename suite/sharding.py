"""The device mesh, the shardings built on it, and moving host batches onto it."""

import queue
import threading
from typing import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over all devices of all processes (built from jax.devices(): ids need not be
  contiguous across hosts)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis; everything else whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def with_sharding(shapes, sharding):
  """ShapeDtypeStructs carrying `sharding`, for ahead-of-time lowering."""
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def to_global(local_batch: dict, sharding: NamedSharding) -> dict:
  """Assembles the global batch from every process's local share (no cross-host copy of the data)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def prefetch_to_devices(local_batches: Iterator[dict], sharding: NamedSharding, size: int = 2) -> Iterator[dict]:
  """Moves batches to the devices on a background thread, `size` ahead of the consumer.

  The thread overlaps host->device copies (and the host pipeline's own work) with the running step. An
  exception in the producer is re-raised in the consumer rather than lost.
  """
  buffer: queue.Queue = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def produce():
    try:
      for batch in local_batches:
        if stop.is_set():
          return
        buffer.put(to_global(batch, sharding))
      buffer.put(done)
    except BaseException as e:  # pylint: disable=broad-except
      buffer.put(e)

  thread = threading.Thread(target=produce, daemon=True, name='device-prefetch')
  thread.start()
  try:
    while True:
      item = buffer.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    # Unblock a producer waiting on a full queue so the thread can see `stop` and exit.
    while not buffer.empty():
      buffer.get_nowait()
