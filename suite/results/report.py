"""Plots and a Markdown report of one set of runs, or a comparison of several (`python -m suite.report DIR...`).

A DIR is a `suite.results.runs` output (score.json + run_<k>/) or a single `suite.main` run folder. Writes into --out:
metric_vs_time.png, metric_vs_epoch.png, time_to_train.png, throughput.png and report.md. Each figure is built
by a function that returns the matplotlib Figure, with gid 'run', 'target' or 'score' on its lines, so tests can
count curves from the figure's data.

Every time comes from the runs' MLPerf logs (result_0.txt), never from summary.json: time to train is the first
run_start to the last run_stop, and eval points are placed at their eval_accuracy line's time. A run resumed from a
checkpoint is thus shown on the wall clock, the time it was down included, and is marked in the table and figure.
"""

import dataclasses
import json
import os

import matplotlib
from absl import flags
from matplotlib.figure import Figure  # Figures built without pyplot: no backend to pick, none switched on import.

from suite.common import cli as cli_lib
from suite.common import (
  mlperf_log,
  outputs,
)
from suite.results import runs as runs_lib
from suite.results import score as score_lib

FIGURES = ('metric_vs_time', 'metric_vs_epoch', 'time_to_train', 'throughput')


@dataclasses.dataclass
class Run:
  name: str
  summary: dict
  metrics: list[dict]
  log: list[dict] = dataclasses.field(default_factory=list)  # The MLPerf log's events (mlperf_log.read_events).

  @property
  def span(self) -> mlperf_log.RunSpan:
    return mlperf_log.run_span(self.log)

  @property
  def time_to_train_s(self) -> float | None:
    """The log's first run_start to its last run_stop (wall time, a resumed run's downtime included)."""
    return self.span.time_to_train_s

  @property
  def evals(self) -> list[dict]:
    """Eval records with `elapsed_s` from the log (eval_accuracy time - first run_start); metrics.jsonl's when the
    log has no evals."""
    start = self.span.start_ms
    logged = [e for e in self.log if e['key'] == mlperf_log.KEYS.EVAL_ACCURACY]
    if start is None or not logged:
      return [m for m in self.metrics if m.get('kind') == 'eval']
    metric = self.summary.get('target_metric') or 'metric'
    return [{'kind': 'eval', 'epoch': (e.get('metadata') or {}).get('epoch_num'),
             'elapsed_s': (e['time_ms'] - start) / 1000, metric: e['value']} for e in logged]

  @property
  def trains(self) -> list[dict]:
    return [m for m in self.metrics if m.get('kind') == 'train']


@dataclasses.dataclass
class RunSet:
  name: str
  path: str
  runs: list[Run]
  score: dict  # The fields of score.json that suite.results.runs.summarize computes.

  @property
  def metric_name(self) -> str:
    return next((r.summary['target_metric'] for r in self.runs if r.summary.get('target_metric')), 'metric')

  @property
  def targets(self) -> list[float]:
    return sorted({r.summary['target'] for r in self.runs if r.summary.get('target') is not None})


def _run_dirs(path: str) -> list[str]:
  dirs = outputs.run_dirs(path, containing=outputs.SUMMARY)
  return dirs or ([path] if os.path.exists(os.path.join(path, outputs.SUMMARY)) else [])


def load_set(path: str, name: str | None = None) -> RunSet:
  """Reads a set folder (or one run folder). The score is computed here from the runs' logs
  (suite.results.runs.summarize
  over their log times), not taken from score.json, which may predate a run resumed by hand."""
  dirs = _run_dirs(path)
  if not dirs:
    raise ValueError(f'{path}: no summary.json in it or in its run_* folders')
  runs = []
  for d in dirs:
    with open(os.path.join(d, outputs.SUMMARY), encoding='utf-8') as f:
      summary = json.load(f)
    runs.append(Run(os.path.basename(d.rstrip('/')), summary, runs_lib.read_jsonl(os.path.join(d, outputs.METRICS)),
                    mlperf_log.read_events(os.path.join(d, outputs.RESULT_LOG))))
  records = [{'seed': r.summary.get('seed'), 'status': r.summary['status'], 'epochs': r.summary.get('epochs'),
              'time_to_train_s': r.time_to_train_s, 'resumed_from_step': _resumed_from(r)} for r in runs]
  score = runs_lib.summarize(records, runs[0].summary.get('workload', ''))
  return RunSet(name or os.path.basename(os.path.abspath(path)), path, runs, score)


def _resumed_from(run: Run) -> int | None:
  """The step the run last resumed from (the log's `resumed` events, else summary.json's), None if never."""
  steps = run.span.resumed_from_steps
  return steps[-1] if steps else run.summary.get('resumed_from_step')


def _colors(n: int) -> list:
  cmap = matplotlib.colormaps['tab10']
  return [cmap(i % 10) for i in range(n)]


def _draw_targets(ax, sets: list[RunSet]) -> None:
  for target in sorted({t for s in sets for t in s.targets}):
    ax.axhline(target, color='black', linestyle='--', linewidth=1, gid='target', label=f'target {target}')


def metric_figure(sets: list[RunSet], x: str = 'elapsed_s') -> Figure:
  """Eval metric of every run against wall time since run_start (x='elapsed_s') or epochs (x='epoch')."""
  fig = Figure(figsize=(7, 4.5))
  ax = fig.subplots()
  for rs, color in zip(sets, _colors(len(sets))):
    for i, run in enumerate(rs.runs):
      evals = [e for e in run.evals if x in e]
      ax.plot([e[x] for e in evals], [e[rs.metric_name] for e in evals], marker='o', markersize=3, color=color,
              alpha=0.8, gid='run', label=rs.name if i == 0 and len(sets) > 1 else None)
  _draw_targets(ax, sets)
  ax.set_xlabel('time since run_start (s)' if x == 'elapsed_s' else 'epochs')
  ax.set_ylabel(sets[0].metric_name)
  ax.set_title(f'{sets[0].metric_name} vs {"wall time" if x == "elapsed_s" else "epochs"}')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def ttt_figure(sets: list[RunSet]) -> Figure:
  """Time to train of every run (filled: reached target, hollow: did not), one column per set, with its score."""
  fig = Figure(figsize=(max(4, 1.6 * len(sets) + 2), 4.5))
  ax = fig.subplots()
  for k, (rs, color) in enumerate(zip(sets, _colors(len(sets)))):
    n = len(rs.runs)
    xs = [k + (i - (n - 1) / 2) * min(0.5 / max(n, 1), 0.1) for i in range(n)]  # Spread so equal times stay visible.
    times = [r.time_to_train_s for r in rs.runs]
    ok = [r.summary['status'] == 'success' for r in rs.runs]
    ax.scatter([x for x, o in zip(xs, ok) if o], [t for t, o in zip(times, ok) if o], color=color, gid='converged')
    ax.scatter([x for x, o in zip(xs, ok) if not o], [t for t, o in zip(times, ok) if not o], facecolors='none',
               edgecolors=color, gid='not_converged')
    for x, t, run in zip(xs, times, rs.runs):
      if t is not None and _resumed_from(run) is not None:
        ax.annotate('resumed', (x, t), textcoords='offset points', xytext=(4, 4), fontsize=7, gid='resumed')
    if rs.score.get('score_s') is not None:
      ax.plot([k - 0.35, k + 0.35], [rs.score['score_s']] * 2, color='black', gid='score')
  ax.set_xticks(range(len(sets)), [s.name for s in sets], rotation=20 if len(sets) > 3 else 0, fontsize=8)
  ax.set_ylabel('time to train (s)')
  ax.set_title('time to train per run (line: MLPerf score)')
  ax.grid(alpha=0.3, axis='y')
  fig.tight_layout()
  return fig


def training_time_axis(trains: list[dict]) -> list[float]:
  """Cumulative training time at each logged interval (step_time_s x steps; eval time excluded)."""
  total, previous, xs = 0.0, 0, []
  for record in trains:
    total += record['step_time_s'] * (record['step'] - previous)
    previous = record['step']
    xs.append(total)
  return xs


def throughput_figure(sets: list[RunSet]) -> Figure:
  """Training samples/s of every run over its training time."""
  fig = Figure(figsize=(7, 4.5))
  ax = fig.subplots()
  for rs, color in zip(sets, _colors(len(sets))):
    for i, run in enumerate(rs.runs):
      trains = run.trains
      ax.plot(training_time_axis(trains), [t['samples_per_s'] for t in trains], color=color, alpha=0.8, gid='run',
              label=rs.name if i == 0 and len(sets) > 1 else None)
  ax.set_xlabel('training time (s, eval excluded)')
  ax.set_ylabel('samples/s')
  ax.set_title('training throughput')
  ax.grid(alpha=0.3)
  if len(sets) > 1:
    ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def build_figures(sets: list[RunSet]) -> dict[str, Figure]:
  return {'metric_vs_time': metric_figure(sets, 'elapsed_s'), 'metric_vs_epoch': metric_figure(sets, 'epoch'),
          'time_to_train': ttt_figure(sets), 'throughput': throughput_figure(sets)}


def _fmt(value, spec: str = '.2f') -> str:
  return '-' if value is None else format(value, spec)


def runs_table(rs: RunSet) -> list[str]:
  rows = ['| run | seed | status | time to train (s) | epochs | ' + rs.metric_name + ' | samples/s |',
          '|---|---|---|---|---|---|---|']
  for run in rs.runs:
    s = run.summary
    resumed = _resumed_from(run)
    status = s['status'] if resumed is None else f"{s['status']}, resumed from step {resumed} (wall time)"
    rows.append(f"| {run.name} | {s.get('seed')} | {status} | {_fmt(run.time_to_train_s)} | {s.get('epochs')} | "
                f"{_fmt(s.get('final_metric'), '.4f')} | {_fmt(s.get('samples_per_s'), '.0f')} |")
  return rows


def comparison_table(sets: list[RunSet]) -> list[str]:
  """Scores side by side; ratio = score / first set's score (below 1: faster than the first)."""
  base = sets[0].score.get('score_s')
  rows = ['| set | score (s) | ratio to first | 95% bootstrap (s) | reached target | median (s) |',
          '|---|---|---|---|---|---|']
  for rs in sets:
    sc = rs.score.get('score_s')
    ratio = sc / base if sc is not None and base else None
    interval = rs.score.get('bootstrap_95_s')
    spread = f'{interval[0]:.2f}-{interval[1]:.2f}' if interval else '-'
    median = (rs.score.get('converged_stats_s') or {}).get('median')
    rows.append(f"| {rs.name} | {_fmt(sc)} | {_fmt(ratio, '.3f')} | {spread} | "
                f"{rs.score.get('converged_runs')}/{len(rs.runs)} | {_fmt(median)} |")
  return rows


def markdown(sets: list[RunSet], images: dict[str, str]) -> str:
  first = sets[0].runs[0].summary
  lines = [f"# {first.get('workload')} ({first.get('scale')}): " + (
      sets[0].name if len(sets) == 1 else f'{len(sets)} sets compared'), '']
  if len(sets) > 1:
    lines += comparison_table(sets) + ['']
  for rs in sets:
    sc = rs.score
    resumed = [rs.runs[i].name for i in sc.get('resumed_runs') or []]
    note = (f" {', '.join(resumed)} resumed from a checkpoint: timed from the first run_start to the last run_stop "
            '(the time it was down included); not a valid closed-division result.' if resumed else '')
    lines += [f'## {rs.name}', '', f"Score (olympic average, {score_lib.max_dropped(first.get('workload', ''))} "
              f"dropped at each end): {_fmt(sc.get('score_s'))} s; {sc.get('converged_runs')}/{len(rs.runs)} runs "
              f"reached the target; folder `{rs.path}`.{note}", ''] + runs_table(rs) + ['']
  lines += ['## Figures', ''] + [f'![{name}]({path})' for name, path in images.items()] + ['']
  return '\n'.join(lines)


def write_report(set_dirs: list[str], out: str, names: list[str] | None = None) -> dict[str, str]:
  """Writes the PNGs and report.md into `out`; returns name -> path of every file written."""
  sets = [load_set(d, n) for d, n in zip(set_dirs, names or [None] * len(set_dirs))]
  os.makedirs(out, exist_ok=True)
  written = {}
  for name, fig in build_figures(sets).items():
    written[name] = os.path.join(out, f'{name}.png')
    fig.savefig(written[name], dpi=100)  # A Figure without pyplot saves through Agg itself.
  report = os.path.join(out, 'report.md')
  with open(report, 'w', encoding='utf-8') as f:
    f.write(markdown(sets, {n: os.path.basename(p) for n, p in written.items()}))
  written['report'] = report
  return written


def default_out(set_dirs: list[str]) -> str:
  if len(set_dirs) == 1:
    return os.path.join(set_dirs[0], 'report')
  return os.path.join(os.path.commonpath([os.path.abspath(d) for d in set_dirs]), 'report')


FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('out', None, 'Report folder (default: DIR/report, or <common parent>/report).')


def main(argv: list[str]) -> int:
  """argv: the program, then the set folders (suite.runs output folders; the first is the baseline)."""
  dirs = argv[1:]
  if not dirs:
    cli_lib.print_error('name one or more run-set folders: python -m suite.report DIR [DIR ...] [--out=DIR]')
    return cli_lib.EXIT_BAD_INPUT
  try:
    written = write_report(dirs, FLAGS.out or default_out(dirs))
  except ValueError as e:
    cli_lib.print_error(str(e))
    return cli_lib.EXIT_BAD_INPUT
  print(f"report: {written['report']}")
  return cli_lib.EXIT_OK


def cli() -> None:
  """The `python -m suite.report` command."""
  define_flags()
  cli_lib.run(main, __doc__)


if __name__ == '__main__':
  cli()
