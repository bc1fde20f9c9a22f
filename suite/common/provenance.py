"""What produced a run: software versions, the suite's git commit, XLA/libtpu flags, devices and topology, host,
and the peak device memory. Written as provenance.json beside summary.json (the resolved config is config.json).

`gather(mesh)` reads everything known when a run starts; `record_start` writes it (a resumed run keeps the earlier
segments' records under `earlier_segments`), and `record_peak_memory` adds the peak when the run ends. Nothing here
fails a run: what cannot be read (no git, not a checkout, a backend without memory stats) is None.
"""

import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess

from suite.common import outputs

SOFTWARE = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'tensorflow-datasets', 'mlperf-logging',
            'numpy')
# The PJRT plugins and runtimes JAX loads for an accelerator: libtpu, jax-cuda12-plugin/-pjrt, jax-rocm7-plugin, ...
_RUNTIME = re.compile(r'^(libtpu(-nightly)?|jax-(cuda|rocm)\d*-(plugin|pjrt))$')
ENV_FLAGS = ('XLA_FLAGS', 'LIBTPU_INIT_ARGS')
_SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # The `suite` package.
_GIT_TIMEOUT_S = 10
_MAX_DIRTY_PATHS = 50


def version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def software() -> dict[str, str | None]:
  """Python and the suite's libraries, each None when not installed."""
  return {'python': platform.python_version(), **{name: version(name) for name in SOFTWARE}}


def accelerator_runtime() -> dict[str, str] | None:
  """The installed accelerator runtimes and PJRT plugins (libtpu, jax-cuda12-plugin, ...); None when there are
  none (a CPU-only install)."""
  found = {}
  for dist in importlib.metadata.distributions():
    name = re.sub(r'[-_.]+', '-', (dist.metadata['Name'] or '').lower())
    if _RUNTIME.match(name):
      found[name] = dist.version
  return dict(sorted(found.items())) or None


def _git(args: list[str], cwd: str) -> str | None:
  try:
    result = subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S,
                            check=False, env={**os.environ, 'GIT_OPTIONAL_LOCKS': '0'})  # Never take index.lock.
  except (OSError, subprocess.SubprocessError):  # No git, or it hung.
    return None
  return result.stdout if result.returncode == 0 else None


def source(directory: str = _SOURCE_DIR) -> dict:
  """The git commit of the suite's own source and whether its tree is dirty (modified, staged or untracked files,
  as `git status` lists them); None for both when the source is not a git checkout (an installed wheel, or a folder
  inside some other repository) or git is missing."""
  unknown = {'git_commit': None, 'git_dirty': None, 'git_dirty_paths': None, 'path': directory}
  # The suite's own files must be tracked: a wheel installed in a venv inside another repository is not that repo.
  if _git(['ls-files', '--error-unmatch', '__init__.py'], directory) is None:
    return unknown
  commit = _git(['rev-parse', 'HEAD'], directory)
  toplevel = _git(['rev-parse', '--show-toplevel'], directory)
  status = _git(['status', '--porcelain', '--untracked-files=normal'], toplevel.strip()) if toplevel else None
  if commit is None or status is None:
    return unknown
  paths = [line[3:] for line in status.splitlines() if line.strip()]
  return {'git_commit': commit.strip(), 'git_dirty': bool(paths), 'git_dirty_paths': paths[:_MAX_DIRTY_PATHS],
          'path': toplevel.strip()}


def _coords(devices) -> list[dict] | None:
  """Each device's physical place where the backend has one (TPU: coords, core_on_chip, slice_index); None on
  backends without (CPU, GPU)."""
  if not any(getattr(d, 'coords', None) is not None for d in devices):
    return None
  places = []
  for d in devices:
    place = {'id': d.id, 'process_index': d.process_index}
    for attr in ('coords', 'core_on_chip', 'slice_index'):
      value = getattr(d, attr, None)
      if value is not None:
        place[attr] = list(value) if isinstance(value, (tuple, list)) else value
    places.append(place)
  return places


def _platform_version(device) -> str | None:
  try:
    return str(device.client.platform_version)
  except Exception:  # pylint: disable=broad-except  # Informational only.
    return None


def gather(mesh=None) -> dict:
  """Everything known when a run starts. `mesh`: the run's jax.sharding.Mesh (its shape is the topology used)."""
  import jax  # pylint: disable=import-outside-toplevel

  devices = jax.devices()
  return {
      'software': software(),
      'accelerator_runtime': accelerator_runtime(),
      'source': source(),
      'environment': {name: os.environ.get(name) for name in ENV_FLAGS},
      'devices': {'platform': devices[0].platform, 'device_kind': devices[0].device_kind,
                  'platform_version': _platform_version(devices[0]), 'device_count': len(devices),
                  'local_device_count': jax.local_device_count(), 'process_count': jax.process_count()},
      'topology': {'mesh': dict(mesh.shape) if mesh is not None else None, 'device_coords': _coords(devices)},
      'host': socket.gethostname(),
      'peak_memory': None,  # Filled in at the end of the run (record_peak_memory).
  }


def peak_memory(devices=None) -> dict | None:
  """`peak_bytes_in_use` (and `bytes_limit`) per local device, keyed by device id; None where the backend returns
  no memory stats (CPU)."""
  import jax  # pylint: disable=import-outside-toplevel

  peaks = {}
  for d in devices if devices is not None else jax.local_devices():
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except  # Some backends raise instead of returning None.
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks[str(d.id)] = {'peak_bytes_in_use': int(stats['peak_bytes_in_use']),
                          'bytes_limit': int(stats['bytes_limit']) if 'bytes_limit' in stats else None}
  if not peaks:
    return None
  return {'per_device': peaks, 'max_peak_bytes_in_use': max(p['peak_bytes_in_use'] for p in peaks.values())}


def read(path: str) -> dict | None:
  """A provenance.json, or None when there is none (or it cannot be read)."""
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def record_start(path: str, info: dict) -> None:
  """Writes `info`; a provenance.json already there is a resumed run's earlier segment(s), kept under
  `earlier_segments` (a fresh or --overwrite run's folder has none: suite.common.outputs removes it)."""
  earlier = read(path)
  if earlier is not None:
    info = {**info, 'earlier_segments': [*earlier.pop('earlier_segments', []), earlier]}
  outputs.write_json(path, info)


def record_peak_memory(path: str, devices=None) -> None:
  """Adds this segment's peak device memory to the provenance.json written at its start."""
  info = read(path)
  if info is not None:
    info['peak_memory'] = peak_memory(devices)
    outputs.write_json(path, info)
