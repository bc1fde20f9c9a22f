"""A set of N runs of one workload (`python -m suite.runs`), scored the MLPerf way into DIR/score.json.

Each run is `python -m suite.main` in its own subprocess (a fresh process: no compile cache or RNG state shared
between runs, as separate MLPerf runs would be) writing DIR/run_<k>, with its own seed. Flags this module does
not know (`--data_dir`, `--config.KEY=VALUE`, `--division`, ...) are passed to every run unchanged; a `--`
before them is allowed. Exit status: 0 when the set has a score, 1 when it has none, 2 for bad input (a run that
exits 2 stops the set, with its `error:` line).

Times come from each run's MLPerf log, first `run_start` to last `run_stop`: a run resumed from a checkpoint is
timed on the wall clock, the time it was down included (the rules do not let the clock pause), and is marked
(`resumed_from_step`, `resumed_runs`). `--rescore` rewrites score.json from the run folders, e.g. after resuming
one of the set's runs by hand.
"""

import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable

from absl import flags

from suite.common import cli as cli_lib
from suite.common import console, mlperf_log, outputs
from suite.common.errors import UserError
from suite.results import score as score_lib

SCORE_FILE = 'score.json'
_POLL_S = 0.5


class BadInput(Exception):
  """A run refused its input (exit status 2): every other run would too."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of a set: where it goes and with which seed."""
  index: int
  seed: int
  output_dir: str


def make_seeds(num_runs: int, base_seed: int | None) -> list[int]:
  """Distinct seeds: base_seed, base_seed+1, ... (reproducible), or distinct random ones when base_seed is None."""
  if base_seed is not None:
    return [(base_seed + k) % 2**31 for k in range(num_runs)]
  return random.SystemRandom().sample(range(2**31), num_runs)  # Without replacement: never a repeat.


def plan(output_dir: str, num_runs: int, base_seed: int | None) -> list[RunSpec]:
  return [RunSpec(k, seed, outputs.run_dir(output_dir, k))
          for k, seed in enumerate(make_seeds(num_runs, base_seed))]


def main_command(workload: str, scale: str, spec: RunSpec, extra_args: list[str]) -> list[str]:
  return [sys.executable, '-m', 'suite.main', f'--workload={workload}', f'--scale={scale}', f'--seed={spec.seed}',
          f'--output_dir={spec.output_dir}', *extra_args]


def read_jsonl(path: str) -> list[dict]:
  """Records written so far; a half-written last line (the run is still writing) is skipped."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return records


def eval_metric_name(record: dict) -> str | None:
  """The metric of an eval record: its one key besides the bookkeeping ones (e.g. top1, mAP)."""
  names = [k for k in record if k not in ('kind', 'epoch', 'step', 'elapsed_s')]
  return names[0] if names else None


def progress_line(spec: RunSpec, num_runs: int, records: list[dict], elapsed_s: float, width: int = 20) -> str:
  """`run 2/5 [#####.....] seed 7  epoch 1.50  top1 0.4805  12 s` from the run's metrics.jsonl so far."""
  done = spec.index / num_runs
  bar = '#' * round(done * width) + '.' * (width - round(done * width))
  return f'run {spec.index + 1}/{num_runs} [{bar}] {run_status(spec, records, elapsed_s)}'


def run_status(spec: RunSpec, records: list[dict], elapsed_s: float) -> str:
  """`seed 7  epoch 1.50  top1 0.4805  12 s`: where the running run is (a terminal's bar shows it beside it)."""
  epoch = max((r.get('epoch', 0) for r in records), default=0)
  evals = [r for r in records if r.get('kind') == 'eval']
  metric = ''
  if evals:
    name = eval_metric_name(evals[-1])
    metric = f'  {name} {evals[-1][name]:.4f}' if name else ''
  return f'seed {spec.seed}  epoch {epoch:.2f}{metric}  {elapsed_s:.0f} s'


def _error_line(stderr_path: str) -> str:
  with open(stderr_path, encoding='utf-8', errors='replace') as f:
    lines = f.read().splitlines()
  errors = [line for line in lines if line.startswith('error:')]
  return errors[-1] if errors else (lines[-1] if lines else 'no output')


def _show(line: str, stream, last: dict) -> None:
  """A terminal gets one line redrawn in place; a log file gets a line only when the epoch or metric changed."""
  if stream.isatty():
    stream.write('\r' + line[:160].ljust(100))
    stream.flush()
    return
  key = line.rsplit('  ', 1)[0]  # Without the ticking seconds.
  if key != last.get('key'):
    stream.write(line + '\n')
    stream.flush()
    last['key'] = key


def execute(workload: str, scale: str, spec: RunSpec, num_runs: int, extra_args: list[str],
            stream=sys.stderr, bar=None) -> dict:
  """Runs one suite.main subprocess, showing progress (beside the set's tqdm `bar` on a terminal, else as plain
  lines); returns its per-run record for score.json."""
  os.makedirs(spec.output_dir, exist_ok=True)
  command = main_command(workload, scale, spec, extra_args)
  stdout_path, stderr_path = (os.path.join(spec.output_dir, n) for n in ('stdout.log', 'stderr.log'))
  start = time.monotonic()
  last: dict = {}
  with open(stdout_path, 'w', encoding='utf-8') as out, open(stderr_path, 'w', encoding='utf-8') as err:
    process = subprocess.Popen(command, stdout=out, stderr=err)
    while process.poll() is None:
      records = read_jsonl(os.path.join(spec.output_dir, outputs.METRICS))
      if bar is not None and not bar.disable:
        bar.set_postfix_str(run_status(spec, records, time.monotonic() - start))
      else:
        _show(progress_line(spec, num_runs, records, time.monotonic() - start), stream, last)
      time.sleep(_POLL_S)
  if stream.isatty() and (bar is None or bar.disable):
    stream.write('\n')
  if process.returncode == 2:
    raise BadInput(_error_line(stderr_path))
  return run_record(spec, process.returncode, stderr_path, command)


def run_record(spec: RunSpec, returncode: int, stderr_path: str, command: list[str]) -> dict:
  """What score.json keeps of a run: its summary.json fields, or 'crashed' when it left no summary. The time is the
  log's, first run_start to last run_stop (mlperf_log.run_span); summary.json's time_to_train_s, which leaves out
  the time a resumed run was down, is kept beside it as `summary_time_to_train_s` and never scored."""
  summary_path = os.path.join(spec.output_dir, outputs.SUMMARY)
  span = mlperf_log.run_span(os.path.join(spec.output_dir, outputs.RESULT_LOG))
  record = {'run': spec.index, 'seed': spec.seed, 'dir': spec.output_dir, 'returncode': returncode,
            'command': command[1:]}
  if not os.path.exists(summary_path):  # An uncaught exception also exits 1: the summary tells them apart.
    return {**record, 'status': 'crashed', 'reason': _error_line(stderr_path), 'time_to_train_s': None,
            'epochs': None, 'final_metric': None, 'resumed_from_step': None}
  with open(summary_path, encoding='utf-8') as f:
    summary = json.load(f)
  keep = ('status', 'reason', 'epochs', 'final_metric', 'target_metric', 'target',
          'samples_per_s', 'train_steps', 'division', 'workload', 'scale', 'device_kind', 'num_devices')
  resumed_from = span.resumed_from_steps[-1] if span.resumed else summary.get('resumed_from_step')
  return {**record, **{k: summary.get(k) for k in keep}, 'time_to_train_s': span.time_to_train_s,
          'summary_time_to_train_s': summary.get('time_to_train_s'), 'resumed_from_step': resumed_from}


def summarize(runs: list[dict], benchmark: str, confidence: float = 0.95) -> dict:
  """The set's score (olympic average of the converged times) and its spread, in seconds and minutes."""
  finished = [r for r in runs if r['time_to_train_s'] is not None]
  times = [r['time_to_train_s'] for r in finished]
  converged = [r['status'] == 'success' for r in finished]
  crashed = len(runs) - len(finished)  # No time at all: counts as not converged, like a log the checker rejects.
  times_all, converged_all = times + [0.0] * crashed, converged + [False] * crashed
  score = score_lib.mlperf_score(times_all, converged_all, benchmark)
  interval = score_lib.bootstrap_interval(times_all, converged_all, confidence, benchmark=benchmark)
  success_times = [t for t, ok in zip(times, converged) if ok]
  return {
      'score_s': score, 'score_min': None if score is None else score / 60,
      'num_runs': len(runs), 'converged_runs': sum(converged),
      'converged_stats_s': score_lib.describe(success_times),
      f'bootstrap_{round(confidence * 100)}_s': list(interval) if interval else None,
      'epochs_to_target': [r['epochs'] if r['status'] == 'success' else None for r in runs],
      'seeds': [r['seed'] for r in runs],
      # Timed on the wall clock like the rest, downtime included; not valid closed-division results.
      'resumed_runs': [i for i, r in enumerate(runs) if r.get('resumed_from_step') is not None],
  }


def run_set(workload: str, scale: str, num_runs: int | None, output_dir: str, base_seed: int | None = None,
            extra_args: list[str] | None = None, stream=sys.stderr,
            on_run: Callable[[dict], None] | None = None) -> dict:
  """Runs the set one run after another, writes DIR/score.json and returns it. Raises BadInput on exit 2."""
  extra_args = list(extra_args or [])
  num_runs = num_runs or score_lib.num_runs(workload, (cli_lib.flag_value(extra_args, 'variant') or ''))
  specs = plan(output_dir, num_runs, base_seed)
  runs = []
  bar = console.progress_bar(num_runs, 'run', stream=stream, desc=f'{workload} {scale} set')  # Terminal only.
  try:
    for spec in specs:
      runs.append(execute(workload, scale, spec, num_runs, extra_args, stream, bar))
      r = runs[-1]
      bar.update(1)
      bar.write(f'run {spec.index + 1}/{num_runs}: {r["status"]}, time to train {r["time_to_train_s"] or 0:.1f} s, '
                f'{r.get("target_metric") or "metric"} {r["final_metric"]}', file=stream)  # Above the bar.
      if on_run:
        on_run(r)
  finally:
    bar.close()
  result = {'workload': workload, 'scale': scale, 'output_dir': os.path.abspath(output_dir),
            'base_seed': base_seed, 'extra_args': extra_args, **summarize(runs, workload), 'runs': runs}
  outputs.write_json(os.path.join(output_dir, SCORE_FILE), result, sort_keys=False)
  return result


def rescore(output_dir: str) -> dict:
  """Rewrites DIR/score.json from its run folders as they are now (e.g. after one was resumed by hand)."""
  path = os.path.join(output_dir, SCORE_FILE)
  if not os.path.exists(path):
    raise UserError(f'{path} not found: --rescore reads a folder written by suite.results.runs')
  with open(path, encoding='utf-8') as f:
    previous = json.load(f)
  runs = []
  for old in previous['runs']:
    spec = RunSpec(old['run'], old['seed'], outputs.run_dir(output_dir, old['run']))
    runs.append(run_record(spec, old['returncode'], os.path.join(spec.output_dir, 'stderr.log'),
                           [sys.executable, *old['command']]))
  result = {**{k: previous.get(k) for k in ('workload', 'scale', 'base_seed', 'extra_args')},
            'output_dir': os.path.abspath(output_dir), **summarize(runs, previous['workload']), 'runs': runs}
  outputs.write_json(path, result, sort_keys=False)
  return result


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """This command's flags; every other flag goes to each run."""
  cli_lib.define_workload_and_scale(flag_values=flag_values)
  flags.DEFINE_integer('num_runs', None, "Runs in the set (default: the benchmark's count in an MLPerf package, "
                       'e.g. resnet 5).', lower_bound=1, flag_values=flag_values)
  flags.DEFINE_string('output_dir', None, 'The set goes here: run_<k>/ and score.json (required).',
                      flag_values=flag_values)
  flags.DEFINE_integer('base_seed', None, 'Seeds base_seed, base_seed+1, ... (default: distinct random seeds).',
                       flag_values=flag_values)
  flags.DEFINE_bool('rescore', False, 'Run nothing: rewrite --output_dir/score.json from its run folders (e.g. '
                    'after --resume).', flag_values=flag_values)


def parse_args(argv: list[str], flag_values: flags.FlagValues | None = None) -> tuple[flags.FlagValues, list[str]]:
  """This command's flags from `argv` (no program name; into a fresh FlagValues unless given one) and the flags
  passed to every run, without a `--` before them. Bad input: one `error:` line and exit status 2."""
  flag_values, extra = cli_lib.parse_pass_through('suite.runs', argv, flag_values, define_flags)
  if flag_values.output_dir is None:
    cli_lib.fail("pass --output_dir=DIR: the set's folder (run_<k>/ and score.json)")
  reserved = [a for a in extra if a.split('=')[0] in ('--seed', '--output_dir')]
  if reserved:
    cli_lib.fail(f'{", ".join(reserved)}: set per run by suite.runs (use --base_seed and --output_dir)')
  return flag_values, extra


def format_result(result: dict) -> str:
  interval = result.get('bootstrap_95_s')
  spread = f' (95% bootstrap {interval[0]:.1f}-{interval[1]:.1f} s)' if interval else ''
  score = 'no score' if result['score_s'] is None else f"score {result['score_s']:.1f} s{spread}"
  resumed = result.get('resumed_runs')
  marked = (f'; run(s) {resumed} resumed from a checkpoint: timed on the wall clock, downtime included, and not '
            'valid closed results' if resumed else '')
  return (f"{result['workload']} ({result['scale']}): {score}; {result['converged_runs']}/{result['num_runs']} runs "
          f"reached the target; epochs to target {result['epochs_to_target']}{marked}; "
          f"{os.path.join(result['output_dir'], SCORE_FILE)}")


def main(argv: list[str]) -> int:
  """argv: the program, then the flags passed to every run."""
  try:
    if FLAGS.rescore:
      result = rescore(FLAGS.output_dir)
    else:
      result = run_set(FLAGS.workload, FLAGS.scale, FLAGS.num_runs, FLAGS.output_dir, FLAGS.base_seed, argv[1:])
  except (BadInput, UserError) as e:
    cli_lib.print_error(str(e))
    return cli_lib.EXIT_BAD_INPUT
  print(json.dumps({k: v for k, v in result.items() if k != 'runs'}, indent=2))
  print(format_result(result))
  return cli_lib.EXIT_OK if result['score_s'] is not None else cli_lib.EXIT_ABORTED


def cli() -> None:
  """The `python -m suite.runs` command."""
  define_flags()
  cli_lib.run(main, __doc__, flags_parser=lambda argv: [argv[0], *parse_args(argv[1:], FLAGS)[1]])


if __name__ == '__main__':
  cli()
