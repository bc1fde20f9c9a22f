"""The files a run leaves in --output_dir: result_0.txt (MLPerf log), metrics.jsonl and summary.json."""

import json
import os
import shutil

from suite.errors import UserError

RESULT_LOG = 'result_0.txt'
METRICS = 'metrics.jsonl'
SUMMARY = 'summary.json'


def prepare_output_dir(output_dir: str, overwrite: bool, resume: bool = False) -> None:
  """Creates the folder; refuses to clobber a run's files unless asked to (--overwrite), and to resume a run
  that already finished."""
  existing = [name for name in (RESULT_LOG, SUMMARY) if os.path.exists(os.path.join(output_dir, name))]
  if resume:
    if SUMMARY in existing and _summary_reason(output_dir) != 'preempted':
      raise UserError(f'{output_dir} holds a finished run (summary.json): nothing to resume; use a new --output_dir')
    os.makedirs(output_dir, exist_ok=True)
    return
  if existing and not overwrite:
    raise UserError(f'{output_dir} already holds a run ({", ".join(existing)}): choose a new --output_dir, '
                    'pass --resume to continue it, or --overwrite to replace it')
  os.makedirs(output_dir, exist_ok=True)
  for name in (RESULT_LOG, METRICS, SUMMARY):  # --overwrite: start this run's files afresh.
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


class MetricsWriter:
  """Appends one JSON object per line; flushed each time so a killed run keeps what it wrote."""

  def __init__(self, path: str | None):
    self._file = open(path, 'a', encoding='utf-8') if path else None

  def write(self, record: dict) -> None:
    if self._file:
      self._file.write(json.dumps(record) + '\n')
      self._file.flush()

  def close(self) -> None:
    if self._file:
      self._file.close()


def write_summary(path: str, summary: dict) -> None:
  """Writes atomically (temp file + rename): a crash mid-write never leaves a truncated summary."""
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)
