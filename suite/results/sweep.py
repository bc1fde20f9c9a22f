"""A grid of run sets (`python -m suite.sweep`): one suite.results.runs set per point, a comparison report, SQLite rows.

`--sweep='config.optimizer.learning_rate=0.1,0.2,0.4'` (repeatable; the grid is the cartesian product) runs
each point into DIR/<point-name>, writes DIR/report/ comparing the points (the first point is the baseline), and
appends one row per run to the `runs` table of --results_db (default: DIR/../results.sqlite) so later sweeps
can be compared with earlier ones. Every point uses the same seeds (paired comparison: a difference between
points is not a difference of seeds). Unknown flags go to every run, as with suite.results.runs.
"""

import dataclasses
import itertools
import json
import os
import secrets
import sqlite3
import sys
import time

from absl import flags

from suite.common import cli as cli_lib
from suite.common import outputs
from suite.results import report as report_lib
from suite.results import runs as runs_lib

_SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  sweep_id TEXT NOT NULL,
  timestamp TEXT NOT NULL,
  workload TEXT NOT NULL,
  scale TEXT NOT NULL,
  point TEXT NOT NULL,
  overrides TEXT NOT NULL,
  seed INTEGER,
  status TEXT,
  time_to_train_s REAL,
  target_metric TEXT,
  final_metric REAL,
  epochs INTEGER,
  run_dir TEXT,
  extra_args TEXT,
  resumed_from_step INTEGER
)"""
# Columns added since the first schema: an older results file gets them (NULL in its old rows) when opened.
_ADDED_COLUMNS = {'resumed_from_step': 'INTEGER'}


@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  overrides: dict[str, str]

  @property
  def flags(self) -> list[str]:
    return [f'--{key}={value}' for key, value in self.overrides.items()]


def parse_axis(spec: str) -> tuple[str, list[str]]:
  """'config.a.b=1,2' -> ('config.a.b', ['1', '2'])."""
  key, sep, values = spec.partition('=')
  key = key.strip().lstrip('-')
  items = [v.strip() for v in values.split(',') if v.strip()]
  if not sep or not key or not items:
    raise ValueError(f"--sweep={spec!r}: expected KEY=V1,V2,... (e.g. config.optimizer.learning_rate=0.1,0.2)")
  return key, items


def point_name(overrides: dict[str, str]) -> str:
  """A folder name: the last part of each key with its value, e.g. 'learning_rate=0.1,warmup_epochs=2'."""
  return ','.join(f"{key.split('.')[-1]}={value}" for key, value in overrides.items()).replace('/', '_')


def grid(axes: list[tuple[str, list[str]]]) -> list[Point]:
  """The cartesian product of the axes, in the order given (the first point is the report's baseline)."""
  keys = [k for k, _ in axes]
  if len(set(keys)) != len(keys):
    raise ValueError(f'a key is swept twice: {keys}')
  points = []
  for values in itertools.product(*[v for _, v in axes]):
    overrides = dict(zip(keys, values))
    points.append(Point(point_name(overrides), overrides))
  return points


def open_db(path: str) -> sqlite3.Connection:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  db = sqlite3.connect(path)
  db.execute(_SCHEMA)
  have = {row[1] for row in db.execute('PRAGMA table_info(runs)')}
  for column, kind in _ADDED_COLUMNS.items():
    if column not in have:
      db.execute(f'ALTER TABLE runs ADD COLUMN {column} {kind}')
  db.commit()
  return db


def insert_run(db: sqlite3.Connection, sweep_id: str, workload: str, scale: str, point: Point, run: dict,
               extra_args: list[str]) -> None:
  """One row per run, committed at once: an interrupted sweep keeps the rows of the runs it finished. The time is
  the run record's (suite.results.runs.run_record: the log's first run_start to last run_stop); a run resumed from a
  checkpoint has its resumed_from_step, NULL otherwise."""
  db.execute('INSERT INTO runs (sweep_id, timestamp, workload, scale, point, overrides, seed, status, '
             'time_to_train_s, target_metric, final_metric, epochs, run_dir, extra_args, resumed_from_step) '
             'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
             (sweep_id, time.strftime('%Y-%m-%dT%H:%M:%S%z'), workload, scale, point.name,
              json.dumps(point.overrides, sort_keys=True), run['seed'], run['status'], run['time_to_train_s'],
              run.get('target_metric'), run['final_metric'], run['epochs'], os.path.abspath(run['dir']),
              json.dumps(extra_args), run.get('resumed_from_step')))
  db.commit()


def run_sweep(workload: str, scale: str, points: list[Point], num_runs: int | None, output_dir: str, db_path: str,
              base_seed: int | None = None, extra_args: list[str] | None = None, stream=sys.stderr) -> dict:
  """Runs every point's set, records each run in SQLite, and writes the comparison report."""
  base_seed = secrets.randbelow(2**30) if base_seed is None else base_seed  # One draw shared by all points.
  sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
  extra_args = list(extra_args or [])
  db = open_db(db_path)
  results = []
  try:
    for i, point in enumerate(points):
      stream.write(f'point {i + 1}/{len(points)}: {point.name}\n')
      args = extra_args + point.flags
      result = runs_lib.run_set(
          workload, scale, num_runs, os.path.join(output_dir, point.name), base_seed, args, stream,
          on_run=lambda run, p=point, a=args: insert_run(db, sweep_id, workload, scale, p, run, a))
      results.append({'point': point.name, 'overrides': point.overrides, 'score_s': result['score_s'],
                      'converged_runs': result['converged_runs'], 'num_runs': result['num_runs'],
                      'resumed_runs': result['resumed_runs'], 'dir': result['output_dir']})
  finally:
    db.close()
  written = report_lib.write_report([r['dir'] for r in results], os.path.join(output_dir, 'report'),
                                    [r['point'] for r in results])
  sweep = {'sweep_id': sweep_id, 'workload': workload, 'scale': scale, 'base_seed': base_seed,
           'results_db': os.path.abspath(db_path), 'report': written['report'], 'points': results}
  outputs.write_json(os.path.join(output_dir, 'sweep.json'), sweep, sort_keys=False)
  return sweep


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """This command's flags; every other flag goes to each run."""
  cli_lib.define_workload_and_scale(flag_values=flag_values)
  flags.DEFINE_multi_string('sweep', [], 'KEY=V1,V2,...: one axis of the grid (required); KEY is a '
                            'suite.main flag, e.g. config.optimizer.name=sgd,lars.', flag_values=flag_values)
  flags.DEFINE_integer('num_runs', None, "Runs per point (default: the benchmark's count).", lower_bound=1,
                       flag_values=flag_values)
  flags.DEFINE_string('output_dir', None, 'The sweep goes here: one folder per point, report/ and sweep.json '
                      '(required).', flag_values=flag_values)
  flags.DEFINE_integer('base_seed', None, 'Seeds of every point (default: one random draw).', flag_values=flag_values)
  flags.DEFINE_string('results_db', None, 'SQLite file (default: <output_dir>/../results.sqlite).',
                      flag_values=flag_values)


def parse_args(argv: list[str], flag_values: flags.FlagValues | None = None) -> tuple[flags.FlagValues, list[str]]:
  """This command's flags from `argv` (no program name; into a fresh FlagValues unless given one) and the flags
  passed to every run, without a `--` before them. Bad input: one `error:` line and exit status 2."""
  flag_values, extra = cli_lib.parse_pass_through('suite.sweep', argv, flag_values, define_flags)
  if not flag_values.sweep:
    cli_lib.fail("pass --sweep=KEY=V1,V2,... (e.g. --sweep='config.optimizer.learning_rate=0.1,0.2')")
  if flag_values.output_dir is None:
    cli_lib.fail("pass --output_dir=DIR: the sweep's folder")
  return flag_values, extra


def main(argv: list[str]) -> int:
  """argv: the program, then the flags passed to every run."""
  try:
    points = grid([parse_axis(s) for s in FLAGS.sweep])
  except ValueError as e:
    cli_lib.print_error(str(e))
    return cli_lib.EXIT_BAD_INPUT
  db_path = FLAGS.results_db or os.path.join(os.path.dirname(os.path.abspath(FLAGS.output_dir)), 'results.sqlite')
  try:
    sweep = run_sweep(FLAGS.workload, FLAGS.scale, points, FLAGS.num_runs, FLAGS.output_dir, db_path,
                      FLAGS.base_seed, argv[1:])
  except runs_lib.BadInput as e:
    cli_lib.print_error(str(e))
    return cli_lib.EXIT_BAD_INPUT
  base = sweep['points'][0]['score_s']
  for p in sweep['points']:
    ratio = f"{p['score_s'] / base:.3f}x" if p['score_s'] is not None and base else '-'
    score = '-' if p['score_s'] is None else f"{p['score_s']:.1f} s"
    resumed = f", run(s) {p['resumed_runs']} resumed (wall time)" if p['resumed_runs'] else ''
    print(f"{p['point']}: score {score} ({ratio} of the first), {p['converged_runs']}/{p['num_runs']} reached "
          f'target{resumed}')
  print(f"report: {sweep['report']}; rows in {sweep['results_db']} (sweep_id {sweep['sweep_id']})")
  return cli_lib.EXIT_OK


def cli() -> None:
  """The `python -m suite.sweep` command."""
  define_flags()
  cli_lib.run(main, __doc__, flags_parser=lambda argv: [argv[0], *parse_args(argv[1:], FLAGS)[1]])


if __name__ == '__main__':
  cli()
