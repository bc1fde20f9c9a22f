"""Fault injection: kill, preempt, corrupt and fill the disk under `suite.main`; check resumption and lost data.

`python -m suite.faults [--trials=N] [--data_dir=D]` runs the tiny ResNet as subprocesses, prints a table and writes
faults.json. A fault passes when the run resumes (where that applies), its final metric equals the uninterrupted
run's with the same seed, errors arrive as one `error:` line, and no file written before the fault is lost.
"""

import dataclasses
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import flags

from suite.common import cli as cli_lib
from suite.common import mlperf_log, outputs

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Registered only when run as a program, so importing this module (tests) defines no global flags."""
  flags.DEFINE_integer('trials', 1, 'How many times to try each fault (each at its own random step).')
  flags.DEFINE_string('data_dir', None, 'TFDS data folder with (or to receive) the generated tiny dataset '
                      '(default: a folder inside --work_dir).')
  flags.DEFINE_string('work_dir', None, 'Where the runs and faults.json go (default: a new temporary folder).')
  flags.DEFINE_integer('seed', 11, 'Run seed of every run (the same seed must give the same final metric).')
  flags.DEFINE_integer('max_epochs', 1, 'Epochs per run (32 steps each at the tiny scale).')
  flags.DEFINE_integer('checkpoint_every_steps', 8, 'Checkpoint cadence of the runs.')

STEPS_PER_EPOCH = 32  # resnet tiny: 4,096 examples / batch 128.
GLOBAL_BATCH = 128
_APPEND_ONLY = (outputs.RESULT_LOG, outputs.METRICS)


@dataclasses.dataclass
class Trial:
  fault: str
  trial: int
  at_step: int | None = None
  exit_codes: list[int] = dataclasses.field(default_factory=list)
  resumed_from: int | None = None
  final_metric: float | None = None
  matches: bool | None = None
  data_lost: list[str] = dataclasses.field(default_factory=list)
  note: str = ''
  ok: bool = False


class Runner:
  """Starts `python -m suite.main` runs that share a data folder and a JAX compilation cache (same executables,
  so results stay bit-identical; only the compile time is saved)."""

  def __init__(self, work_dir: str, data_dir: str, seed: int, max_epochs: int, checkpoint_every_steps: int,
               cache_dir: str | None = None):
    self.work_dir = work_dir
    self.data_dir = data_dir
    self.seed = seed
    self.args = ['--workload=resnet', '--scale=tiny', f'--seed={seed}', f'--config.max_epochs={max_epochs}',
                 f'--checkpoint_every_steps={checkpoint_every_steps}',
                 '--peak_flops=1e12']  # Only MFU uses it; measuring it would cost every run a matmul benchmark.
    self.env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1', 'JAX_PLATFORMS': 'cpu',
                'JAX_COMPILATION_CACHE_DIR': cache_dir or os.path.join(work_dir, 'jax_cache'),
                'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
    self._count = 0

  def start(self, out: str, *extra: str, data_dir: str | None = None) -> subprocess.Popen:
    self._count += 1
    # stderr to a file: absl's INFO lines could fill a pipe nobody reads until the end and stall the run.
    log = open(os.path.join(self.work_dir, f'run{self._count:02d}.stderr'), 'w+', encoding='utf-8')
    proc = subprocess.Popen([sys.executable, '-m', 'suite.main', *self.args, f'--data_dir={data_dir or self.data_dir}',
                             f'--output_dir={out}', *extra], env=self.env, stdout=subprocess.DEVNULL, stderr=log,
                            text=True)
    proc.stderr_file = log
    return proc

  def run(self, out: str, *extra: str, data_dir: str | None = None) -> tuple[int, str]:
    proc = self.start(out, *extra, data_dir=data_dir)
    return proc.wait(), stderr_of(proc)


def stderr_of(proc: subprocess.Popen) -> str:
  proc.stderr_file.seek(0)
  text = proc.stderr_file.read()
  proc.stderr_file.close()
  return text


def wait_for_checkpoint(out: str, step: int, proc: subprocess.Popen, timeout_s: float = 600) -> None:
  deadline = time.monotonic() + timeout_s
  while not os.path.exists(os.path.join(out, 'checkpoints', str(step), 'commit_success.txt')):
    if proc.poll() is not None:
      raise RuntimeError(f'the run ended (exit {proc.returncode}) before checkpoint {step}:\n{stderr_of(proc)[-2000:]}')
    if time.monotonic() > deadline:
      raise RuntimeError(f'no checkpoint {step} after {timeout_s} s')
    time.sleep(0.1)


# --- What a run left behind ---


def snapshot(out: str) -> dict[str, bytes]:
  """The run's record files as they are now (small: logs, metrics, summary)."""
  files = {}
  for name in (*_APPEND_ONLY, outputs.SUMMARY):
    path = os.path.join(out, name)
    if os.path.exists(path):
      with open(path, 'rb') as f:
        files[name] = f.read()
  return files


def data_lost(before: dict[str, bytes], out: str) -> list[str]:
  """Files written before the fault that are now gone, truncated (append-only files must still start with what they
  held) or no longer whole (every log line, metrics line and the summary must parse)."""
  after = snapshot(out)
  lost = [name for name in before if name not in after]
  lost += [name for name in _APPEND_ONLY
           if name in before and name in after and not after[name].startswith(before[name])]
  for name, data in after.items():
    try:  # A bad byte, line or JSON is a ValueError.
      if name == outputs.SUMMARY:
        json.loads(data)
      elif name == outputs.RESULT_LOG:
        mlperf_log.parse_events(data.decode('utf-8').splitlines(), strict=True)
      else:
        for line in data.decode('utf-8').splitlines():
          json.loads(line)
    except ValueError:
      lost.append(f'{name} (damaged)')
  return sorted(set(lost))


def final_metric(out: str) -> float | None:
  """The last eval's metric: from summary.json, or from metrics.jsonl when the summary could not be written."""
  evals = []
  path = os.path.join(out, outputs.METRICS)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      evals = [r for r in map(json.loads, f) if r['kind'] == 'eval']
  return evals[-1]['top1'] if evals else None


def summary(out: str) -> dict:
  with open(os.path.join(out, outputs.SUMMARY), encoding='utf-8') as f:
    return json.load(f)


def error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith('error: ')]


def clean_error(stderr: str) -> bool:
  """One `error:` line, last, and no traceback."""
  lines = stderr.strip().splitlines()
  return len(error_lines(stderr)) == 1 and bool(lines) and lines[-1].startswith('error: ') and (
      'Traceback' not in stderr)


# --- Faults ---


def corrupt_checkpoint(out: str) -> int:
  """Overwrites every file of the newest committed checkpoint with garbage (keeping its commit marker); its step."""
  steps = [int(os.path.basename(os.path.dirname(p)))
           for p in glob.glob(os.path.join(out, 'checkpoints', '*', 'commit_success.txt'))]
  step = max(steps)
  for root, _, files in os.walk(os.path.join(out, 'checkpoints', str(step))):
    for name in files:
      if name != 'commit_success.txt':
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'garbage')
  return step


def train_files(data_dir: str) -> list[str]:
  pattern = os.path.join(data_dir, 'generated_images', '*', '*', 'generated_images-train.array_record-*')
  return sorted(glob.glob(pattern))


def corrupt_image_record(path: str, index: int) -> None:
  """Breaks the PNG inside record `index` of one ArrayRecord file while keeping the file's framing valid: the
  records are rewritten with the same writer options, so only the image fails (flipping bytes in place would
  trip the Riegeli chunk hash instead, a read error rather than a decode error)."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  reader = array_record_module.ArrayRecordReader(path)
  options, records = reader.writer_options_string(), list(reader.read_all())
  reader.close()
  record = bytearray(records[index])
  start = record.find(b'\x89PNG\r\n\x1a\n')
  end = record.find(b'IEND', start)
  middle = (start + end) // 2  # Inside the IDAT payload: the header still opens, the checksum fails.
  record[middle:middle + 8] = bytes(8)
  records[index] = bytes(record)
  with outputs.replacing(path) as tmp:
    writer = array_record_module.ArrayRecordWriter(tmp, options)
    for r in records:
      writer.write(r)
    writer.close()


def record_at_stream_position(seed: int, num_examples: int, position: int) -> int:
  """The source index the seeded training stream reads at `position` of its first epoch (as the pipeline
  shuffles), so a corruption is hit at a chosen step, after files have been written."""
  import grain  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  shuffle_seed = int(np.random.SeedSequence(seed).generate_state(2)[0])
  return int(grain.MapDataset.range(num_examples).shuffle(seed=shuffle_seed)[position])


def copy_dataset(data_dir: str, dest: str) -> str:
  shutil.copytree(os.path.join(data_dir, 'generated_images'), os.path.join(dest, 'generated_images'))
  return dest


def _interrupted(runner: Runner, out: str, step: int, sig: int, delay_s: float = 0.0) -> int:
  """Starts a run, waits for the checkpoint of `step` (and `delay_s` more), sends `sig`; the run's exit status."""
  proc = runner.start(out)
  wait_for_checkpoint(out, step, proc)
  time.sleep(delay_s)
  proc.send_signal(sig)
  code = proc.wait(timeout=300)
  stderr_of(proc)
  return code


def _resume(runner: Runner, trial: Trial, out: str, reference: float) -> str:
  before = snapshot(out)
  code, stderr = runner.run(out, '--resume')
  trial.exit_codes.append(code)
  trial.data_lost = data_lost(before, out)
  if code in (0, 1):
    trial.resumed_from = summary(out)['resumed_from_step']
  trial.final_metric = final_metric(out)
  trial.matches = trial.final_metric == reference
  return stderr


def kill_trials(runner: Runner, rng: random.Random, trial_no: int, reference: float, total_steps: int,
                every: int) -> list[Trial]:
  """SIGKILL at a random checkpointed step, then --resume; and the same killed run with its newest checkpoint
  corrupted, then --resume (must fall back to the previous one with one warning line)."""
  step = rng.choice(range(2 * every, total_steps, every))  # At least two checkpoints: one to fall back to.
  out = os.path.join(runner.work_dir, f'sigkill{trial_no}')
  # A random delay: the kill lands between checkpoints, as a real crash would.
  code = _interrupted(runner, out, step, signal.SIGKILL, delay_s=rng.uniform(0.0, 2.0))
  corrupt_out = out + '-corrupt-checkpoint'
  shutil.copytree(out, corrupt_out)

  kill = Trial('sigkill', trial_no, at_step=step, exit_codes=[code])
  _resume(runner, kill, out, reference)
  kill.ok = kill.resumed_from is not None and kill.resumed_from >= step and kill.matches and not kill.data_lost

  bad = Trial('corrupt_checkpoint', trial_no, at_step=corrupt_checkpoint(corrupt_out), exit_codes=[code])
  stderr = _resume(runner, bad, corrupt_out, reference)
  warnings = [line for line in stderr.splitlines() if 'cannot be read' in line and 'trying an older one' in line]
  bad.note = f'{len(warnings)} warning line(s)'
  bad.ok = (len(warnings) == 1 and bad.resumed_from is not None and bad.resumed_from < bad.at_step and bad.matches
            and not bad.data_lost)
  return [kill, bad]


def term_trials(runner: Runner, rng: random.Random, trial_no: int, reference: float, total_steps: int,
                every: int) -> list[Trial]:
  """SIGTERM (preemption) at a random step, then --resume; and the same preempted run resumed onto a full disk
  (its summary.json.tmp points at /dev/full): one `disk full` line, the preempted summary left as it was."""
  step = rng.choice(range(every, total_steps, every))
  out = os.path.join(runner.work_dir, f'sigterm{trial_no}')
  code = _interrupted(runner, out, step, signal.SIGTERM)
  full_out = out + '-disk-full'
  shutil.copytree(out, full_out)

  term = Trial('sigterm', trial_no, at_step=step, exit_codes=[code])
  _resume(runner, term, out, reference)
  term.ok = code == 1 and term.resumed_from is not None and term.matches and not term.data_lost

  full = Trial('disk_full', trial_no, at_step=None, exit_codes=[code], note='summary write hits ENOSPC (/dev/full)')
  before = snapshot(full_out)
  os.symlink('/dev/full', os.path.join(full_out, outputs.SUMMARY + '.tmp'))
  full_code, stderr = runner.run(full_out, '--resume')
  full.exit_codes.append(full_code)
  full.data_lost = data_lost(before, full_out)
  full.final_metric = final_metric(full_out)
  full.matches = full.final_metric == reference
  kept = snapshot(full_out).get(outputs.SUMMARY) == before.get(outputs.SUMMARY)
  tmp_left = os.path.lexists(os.path.join(full_out, outputs.SUMMARY + '.tmp'))
  line = (error_lines(stderr) or [''])[-1]
  full.note += f'; error line: {line[:100]!r}'
  full.ok = (full_code == 2 and clean_error(stderr) and 'disk full' in line and kept and not tmp_left
             and full.matches and not full.data_lost)
  return [term, full]


def record_trial(runner: Runner, rng: random.Random, trial_no: int) -> Trial:
  """A corrupt image record read mid-run: exit 2, one line naming the record and its file, files kept."""
  data_dir = copy_dataset(runner.data_dir, os.path.join(runner.work_dir, f'tfds-corrupt{trial_no}'))
  (path,) = train_files(data_dir)
  num_examples = STEPS_PER_EPOCH * GLOBAL_BATCH
  step = rng.randrange(STEPS_PER_EPOCH // 2, STEPS_PER_EPOCH)  # Late in epoch 1: files have been written.
  index = record_at_stream_position(runner.seed, num_examples, step * GLOBAL_BATCH + rng.randrange(GLOBAL_BATCH))
  corrupt_image_record(path, index)
  out = os.path.join(runner.work_dir, f'corrupt-record{trial_no}')
  code, stderr = runner.run(out, data_dir=data_dir)
  trial = Trial('corrupt_record', trial_no, at_step=step, exit_codes=[code])
  trial.data_lost = data_lost({}, out)
  line = (error_lines(stderr) or [''])[-1]
  names = f'record {index} of' in line and os.path.basename(path) in line
  wrote = os.path.exists(os.path.join(out, outputs.RESULT_LOG))
  trial.note = f'error line: {line[:140]!r}...'
  trial.ok = code == 2 and clean_error(stderr) and names and wrote and not trial.data_lost
  return trial


# --- Report ---


def table(trials: list[Trial]) -> str:
  header = ('fault', 'trial', 'at step', 'exit codes', 'resumed from', 'final metric', 'matches', 'data lost', 'ok')
  rows = [header] + [(t.fault, str(t.trial), str(t.at_step if t.at_step is not None else '-'),
                      ','.join(map(str, t.exit_codes)), str(t.resumed_from if t.resumed_from is not None else '-'),
                      '-' if t.final_metric is None else f'{t.final_metric:.6f}', str(t.matches),
                      str(len(t.data_lost)), 'PASS' if t.ok else 'FAIL') for t in trials]
  widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
  lines = ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
  lines.insert(1, '  '.join('-' * w for w in widths))
  lines += [f'{t.fault} #{t.trial}: {t.note}' for t in trials if t.note]
  return '\n'.join(lines)


def main(argv):
  del argv
  work_dir = os.path.abspath(FLAGS.work_dir or tempfile.mkdtemp(prefix='faults-'))
  os.makedirs(work_dir, exist_ok=True)
  data_dir = os.path.abspath(FLAGS.data_dir or os.path.join(work_dir, 'tfds'))
  runner = Runner(work_dir, data_dir, FLAGS.seed, FLAGS.max_epochs, FLAGS.checkpoint_every_steps)
  total_steps = FLAGS.max_epochs * STEPS_PER_EPOCH
  every = FLAGS.checkpoint_every_steps
  if total_steps <= 2 * every:
    cli_lib.print_error(f'--checkpoint_every_steps={every} leaves fewer than two checkpoints in --max_epochs='
                        f'{FLAGS.max_epochs} ({total_steps} steps): lower it or raise --max_epochs')
    return cli_lib.EXIT_BAD_INPUT
  start = time.monotonic()
  reference_out = os.path.join(work_dir, 'uninterrupted')
  code, stderr = runner.run(reference_out)  # Also writes the dataset and fills the compilation cache.
  if code not in (0, 1):
    sys.exit(f'the uninterrupted run failed (exit {code}):\n{stderr[-3000:]}')
  reference = summary(reference_out)['final_metric']
  print(f'uninterrupted run: final top1 {reference} ({time.monotonic() - start:.0f} s)', flush=True)
  trials = []
  for n in range(FLAGS.trials):
    rng = random.Random(f'{FLAGS.seed}-{n}')
    trials += kill_trials(runner, rng, n, reference, total_steps, every)
    trials += term_trials(runner, rng, n, reference, total_steps, every)
    trials.append(record_trial(runner, rng, n))
  print(table(trials))
  report = {'reference_final_metric': reference, 'seed': FLAGS.seed, 'max_epochs': FLAGS.max_epochs,
            'elapsed_s': time.monotonic() - start, 'trials': [dataclasses.asdict(t) for t in trials]}
  path = os.path.join(work_dir, 'faults.json')
  outputs.write_json(path, report, sort_keys=False)
  print(f'{sum(t.ok for t in trials)}/{len(trials)} faults handled; {time.monotonic() - start:.0f} s; '
        f'runs and {path} in {work_dir}')
  return 0 if all(t.ok for t in trials) else 1


def cli() -> None:
  """The `python -m suite.faults` command."""
  define_flags()
  cli_lib.run(main, __doc__)


if __name__ == '__main__':
  cli()
