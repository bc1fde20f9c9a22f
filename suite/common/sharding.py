"""The device mesh, the shardings built on it, and moving host batches onto it."""

import queue
import threading
import time
from collections.abc import Iterator

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from suite.common.errors import UserError

MESH_AXES = ('data', 'fsdp', 'tensor')
# The batch is split over every axis that holds a different slice of the data: data and FSDP parallelism.
BATCH_AXES = ('data', 'fsdp')
# Logical axis name (what models annotate) -> mesh axes that may split it, in order of preference. A name absent
# here, or a mesh axis that does not divide the dimension, stays whole (replicated).
LOGICAL_AXIS_RULES = (
    ('batch', BATCH_AXES),
    ('embed', ('fsdp',)),
    ('mlp', ('tensor',)),
    ('heads', ('tensor',)),
    ('vocab', ('tensor',)),
    ('conv_out', ('tensor', 'fsdp')),
    ('conv_in', ()),
    ('conv_h', ()),
    ('conv_w', ()),
    # Embedding-table rows (recommenders): a table too large for one device is split by rows over the mesh.
    ('table_rows', ('tensor', 'fsdp')),
    ('table_dim', ()),
    # Decoder LMs (models/llama.py), MaxText-style: parameters FSDP over 'embed', tensor-parallel over heads and
    # MLP; the stacked-layer axis and head_dim stay whole. Activations: batch over data x fsdp, heads/MLP/vocab
    # over tensor, length and embed whole.
    ('kv_heads', ('tensor',)),
    ('head_dim', ()),
    ('layers', ()),
    ('activation_batch', BATCH_AXES),
    ('activation_length', ()),
    ('activation_embed', ()),
    ('activation_heads', ('tensor',)),
    ('activation_kv_heads', ('tensor',)),
    ('activation_head_dim', ()),
    ('activation_mlp', ('tensor',)),
    ('activation_vocab', ('tensor',)),
)

DEFAULT_MESH = 'data:-1,fsdp:1,tensor:1'


def parse_mesh_spec(spec: str, flag: str = '--mesh') -> dict[str, int]:
  """'data:-1,fsdp:2' -> {'data': -1, 'fsdp': 2, 'tensor': 1}; unknown axes or malformed parts fail in one line."""
  sizes = dict.fromkeys(MESH_AXES, 1)
  for part in filter(None, (p.strip() for p in spec.split(','))):
    name, _, size = part.partition(':')
    if name not in sizes or not size.lstrip('-').isdigit() or int(size) == 0 or int(size) < -1:
      raise UserError(f"bad {flag} part '{part}': use AXIS:SIZE with AXIS in {', '.join(MESH_AXES)} and SIZE a "
                      f'positive integer or -1 (e.g. {flag}={DEFAULT_MESH})')
    sizes[name] = int(size)
  if list(sizes.values()).count(-1) > 1:
    raise UserError(f'{flag}={spec}: at most one axis may be -1 (inferred)')
  return sizes


def _resolve(sizes: dict[str, int], total: int, flag: str, spec: str) -> tuple[int, ...]:
  known = int(np.prod([v for v in sizes.values() if v != -1]))
  if -1 in sizes.values():
    if total % known:
      raise UserError(f'{flag}={spec}: the fixed axes ({known}) do not divide the {total} devices')
    sizes = {k: (total // known if v == -1 else v) for k, v in sizes.items()}
  shape = tuple(sizes[a] for a in MESH_AXES)
  if int(np.prod(shape)) != total:
    raise UserError(f'{flag}={spec} has {int(np.prod(shape))} devices but the job has {total}: make the product of '
                    'the axis sizes match (or use -1 for one axis)')
  return shape


def make_mesh(devices=None, mesh: str = DEFAULT_MESH, dcn_mesh: str = '') -> Mesh:
  """The (data, fsdp, tensor) mesh over all devices of all processes.

  `mesh` shapes the devices within a slice (ICI); `dcn_mesh` how slices combine (data-centre network), e.g.
  --dcn_mesh=data:2 for two slices doing data parallelism. Built from jax.devices(): ids need not be contiguous.
  """
  devices = jax.devices() if devices is None else list(devices)
  dcn = parse_mesh_spec(dcn_mesh, '--dcn_mesh') if dcn_mesh else dict.fromkeys(MESH_AXES, 1)
  num_slices = int(np.prod(list(dcn.values())))
  if -1 in dcn.values() or len(devices) % num_slices:
    raise UserError(f'--dcn_mesh={dcn_mesh}: give each axis a positive size whose product divides the '
                    f'{len(devices)} devices')
  ici_shape = _resolve(parse_mesh_spec(mesh), len(devices) // num_slices, '--mesh', mesh)
  dcn_shape = tuple(dcn[a] for a in MESH_AXES)
  if num_slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices)
  else:
    try:  # Lays axes along the physical torus on TPU; a plain reshape elsewhere.
      grid = mesh_utils.create_device_mesh(ici_shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
      grid = np.asarray(devices).reshape(ici_shape)
  return Mesh(grid, MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data and FSDP axes; everything else whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def mesh_spec_for(logical_spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Maps one parameter's logical axis names to mesh axes, skipping axes of size 1, axes already used by another
  dimension, and axes that do not divide the dimension (so any model works on any mesh)."""
  rules = dict(LOGICAL_AXIS_RULES)
  used: set[str] = set()
  out = []
  for name, dim in zip(tuple(logical_spec) + (None,) * (len(shape) - len(logical_spec)), shape):
    axes = []
    for axis in rules.get(name, ()) if name else ():
      size = int(np.prod([mesh.shape[a] for a in axes + [axis]]))
      if mesh.shape[axis] > 1 and axis not in used and dim % size == 0:
        axes.append(axis)
    used.update(axes)
    out.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
  return P(*out)


def state_shardings(abstract_state, mesh: Mesh):
  """NamedShardings for a (boxed) abstract state: from the logical names models and optax states carry."""
  logical = nn.get_partition_spec(abstract_state)
  shapes = nn.unbox(abstract_state)
  return jax.tree.map(lambda spec, s: NamedSharding(mesh, mesh_spec_for(spec, s.shape, mesh)), logical, shapes,
                      is_leaf=lambda x: isinstance(x, P))


def constrain(x: jax.Array, logical_names: tuple[str | None, ...]) -> jax.Array:
  """Constrains an activation's sharding by its logical axis names, mapped as parameters are (mesh_spec_for), on
  the mesh set by `jax.set_mesh(mesh)` around tracing; a no-op without one (or on a mesh without the suite's
  axes)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
    return x
  return jax.lax.with_sharding_constraint(x, mesh_spec_for(P(*logical_names), x.shape, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def with_sharding(shapes, sharding):
  """ShapeDtypeStructs carrying `sharding`, for ahead-of-time lowering."""
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def to_global(local_batch: dict, sharding: NamedSharding) -> dict:
  """Assembles the global batch from every process's local share (no cross-host copy of the data)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


class DevicePrefetcher:
  """Moves batches to the devices on a background thread, `size` ahead of the consumer.

  The thread overlaps host->device copies (and the host pipeline's own work) with the running step. An exception
  in the producer is re-raised in the consumer rather than lost. `wait_s` is how long the consumer waited for
  data: the input pipeline's share of the clock.
  """

  _DONE = object()

  def __init__(self, local_batches: Iterator[dict], sharding: NamedSharding, size: int = 2):
    self._buffer: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self.wait_s = 0.0
    self._local_batches = local_batches
    self._thread = threading.Thread(target=self._produce, args=(local_batches, sharding), daemon=True,
                                    name='device-prefetch')
    self._thread.start()

  def _produce(self, local_batches, sharding):
    try:
      for batch in local_batches:
        if self._stop.is_set():
          return
        self._buffer.put(to_global(batch, sharding))
      self._buffer.put(self._DONE)
    except BaseException as e:  # pylint: disable=broad-except
      self._buffer.put(e)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    start = time.perf_counter()
    item = self._buffer.get()
    self.wait_s += time.perf_counter() - start
    if item is self._DONE:
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    """Stops the producer without waiting for it (a run calls this inside its timed region)."""
    self._stop.set()
    # Unblock a producer waiting on a full queue so the thread can see the stop flag and exit.
    while not self._buffer.empty():
      self._buffer.get_nowait()

  def release(self, timeout_s: float = 30.0) -> None:
    """close(), then waits for the producer to leave the host iterator and closes that (grain's worker processes
    and their shared memory), rather than leaving it to grain's finalizers at exit. Closing it under a running
    next() is unsafe: a producer stuck past timeout_s is left to those finalizers."""
    self.close()
    self._thread.join(timeout_s)
    while not self._buffer.empty():
      self._buffer.get_nowait()
    if not self._thread.is_alive() and hasattr(self._local_batches, 'close'):
      self._local_batches.close()


def prefetch_to_devices(local_batches: Iterator[dict], sharding: NamedSharding, size: int = 2) -> DevicePrefetcher:
  return DevicePrefetcher(local_batches, sharding, size)
