"""What a run shows on the console: the suite's own lines, without third-party INFO chatter, and a progress bar
on long work when stderr is a terminal (plain lines, as before, when it is a log file).

Orbax, TFDS and jax log through absl or Python logging like the suite itself, so their lines are told apart by
the file that logged them: below WARNING, only lines from the suite's own packages reach the console at the
default verbosity; `--verbosity=1` (or `-v 1`) shows everything again. Warnings and errors always pass.
"""

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from absl import logging as absl_logging

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OWN_PACKAGES = tuple(os.path.join(_REPO, name) + os.sep for name in ('suite', 'models', 'input_pipelines', 'launch'))


class OwnLinesFilter(logging.Filter):
  """Passes warnings and errors from anyone, and lower levels only from the suite's own files (or from anyone once
  absl's verbosity is above INFO)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING or absl_logging.get_verbosity() > absl_logging.INFO:
      return True
    return os.path.abspath(record.pathname).startswith(OWN_PACKAGES)


def quiet_third_party_logs() -> None:
  """Keeps other libraries' INFO lines off the console (idempotent). Also turns TFDS's progress bars off when
  stderr is not a terminal, where they would fill a log file with carriage returns."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, OwnLinesFilter) for f in handler.filters):
    handler.addFilter(OwnLinesFilter())
  if not is_terminal() and 'tensorflow_datasets' in sys.modules:  # Imported by whichever workload reads TFDS.
    sys.modules['tensorflow_datasets'].display_progress_bar(False)


def is_terminal(stream=None) -> bool:
  stream = sys.stderr if stream is None else stream
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # No isatty, or a closed stream.
    return False


def progress_bar(total: float, unit: str, stream=None, enabled: bool = True, **kwargs):
  """A tqdm bar on `stream` (default stderr) when it is a terminal (and `enabled`: process 0's), else a disabled
  one whose calls do nothing. Updating it reads no device value: callers pass numbers already on the host."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  stream = sys.stderr if stream is None else stream
  return tqdm(total=total, unit=unit, file=stream, disable=not (enabled and is_terminal(stream)),
              dynamic_ncols=True, leave=True, **kwargs)


class _AboveBar:
  """A stream for a logging handler that prints each line above the tqdm bars instead of through them."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> None:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    text = text.rstrip('\n')
    if text:
      tqdm.write(text, file=self._stream)

  def flush(self) -> None:
    self._stream.flush()


@contextlib.contextmanager
def logs_above_bars(stream=None) -> Iterator[None]:
  """While a bar is shown on a terminal, absl's console lines are printed above it rather than torn through it."""
  stream = sys.stderr if stream is None else stream
  handler = absl_logging.get_absl_handler().python_handler
  if not is_terminal(stream) or handler.stream is not stream:
    yield
    return
  handler.setStream(_AboveBar(stream))
  try:
    yield
  finally:
    handler.setStream(stream)
