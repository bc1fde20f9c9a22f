"""Clears the host's page cache before a run, so each run of a set starts as cold as the first (mllog `cache_clear`).

Linux: `sync`, then '3' into /proc/sys/vm/drop_caches (needs root and a writable /proc/sys, which containers often
lack), or a user's `--cache_clear_cmd` (e.g. `sudo /sbin/drop-caches`). What really happened is returned, logged as
`cache_clear` and kept in summary.json; a clear that could not happen is a warning, never a silent True.
"""

import dataclasses
import os
import subprocess
import time

from absl import logging

DROP_CACHES = '/proc/sys/vm/drop_caches'
COMMAND_TIMEOUT_S = 600.0


@dataclasses.dataclass(frozen=True)
class CacheClear:
  """The outcome: `how` is what was tried ('drop_caches' or 'command'); `error` says why `cleared` is False."""
  cleared: bool
  how: str | None
  error: str | None = None
  seconds: float = 0.0

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def drop_page_cache(path: str = DROP_CACHES) -> CacheClear:
  """sync, then ask the kernel to drop clean page-cache, dentry and inode entries (`path` is injectable for tests)."""
  start = time.monotonic()
  os.sync()  # drop_caches frees only clean pages: write the dirty ones out first.
  try:
    fd = os.open(path, os.O_WRONLY)  # Never O_CREAT: a missing /proc file must fail, not become a regular file.
    try:
      os.write(fd, b'3')
    finally:
      os.close(fd)
  except OSError as e:
    reason = e.strerror or type(e).__name__
    return CacheClear(False, 'drop_caches', f'cannot write {path}: {reason} (it needs root and a writable '
                      '/proc/sys; pass --cache_clear_cmd with a command that may, e.g. a sudo rule)',
                      time.monotonic() - start)
  return CacheClear(True, 'drop_caches', None, time.monotonic() - start)


def run_command(command: str, timeout_s: float = COMMAND_TIMEOUT_S) -> CacheClear:
  """Runs the user's shell command; it cleared the cache if it exits 0."""
  start = time.monotonic()
  try:
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=timeout_s, check=False)
  except subprocess.TimeoutExpired:
    return CacheClear(False, 'command', f'--cache_clear_cmd {command!r} did not finish within {timeout_s:.0f} s',
                      time.monotonic() - start)
  if result.returncode != 0:
    last = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or ['no output'])[-1][:300]
    return CacheClear(False, 'command', f'--cache_clear_cmd {command!r} exited with status {result.returncode}: '
                      f'{last}', time.monotonic() - start)
  return CacheClear(True, 'command', None, time.monotonic() - start)


def clear(command: str = '', drop_caches_path: str = DROP_CACHES) -> CacheClear:
  """Clears the page cache with `command` if given, else with drop_caches; warns when it could not."""
  result = run_command(command) if command else drop_page_cache(drop_caches_path)
  if result.cleared:
    logging.info('page cache cleared (%s) in %.1f s', result.how, result.seconds)
  else:
    logging.warning('page cache NOT cleared before the run; the MLPerf log says cache_clear=False: %s', result.error)
  return result
