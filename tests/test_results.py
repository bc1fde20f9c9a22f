"""Run sets, packages, reports and sweeps end to end: judged by the official mlperf_logging tools.

The trained runs are short tiny-resnet runs (1,024 generated images, target 0.2 top-1, reached at epoch 2 or 3)
so that five of them, the package resnet needs, fit in a couple of minutes; one module-scoped set serves every
test.
"""

import json
import os
import shutil
import sqlite3

import pytest

from suite.common import mlperf_log
from suite.common.mlperf_log import MLPerfLog, run_span
from suite.results import package as package_lib
from suite.results import report as report_lib
from suite.results import runs as runs_lib
from suite.results import score as score_lib
from suite.results import sweep as sweep_lib
from tests.conftest import run_suite
from tests.test_score import write_closed_set

SHORT = ['--config.generated.num_train=1024', '--config.generated.num_eval=128', '--config.max_epochs=4',
         '--config.target=0.2', '--config.log_every_steps=4', '--peak_flops=1e11']  # Skip the CPU peak matmul.


@pytest.fixture(scope='module')
def run_set(tmp_path_factory, data_dir):
  """Five short tiny-resnet runs through `python -m suite.runs` (seeds 11..15)."""
  out = tmp_path_factory.mktemp('sets') / 'resnet5'
  result = run_suite('--workload=resnet', '--scale=tiny', '--num_runs=5', '--base_seed=11', f'--output_dir={out}',
                     '--', f'--data_dir={data_dir}', *SHORT, module='suite.runs', timeout=1800)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return out, result


@pytest.fixture(scope='module')
def package(run_set, tmp_path_factory):
  runs_dir, _ = run_set
  out = tmp_path_factory.mktemp('pkg')
  result = run_suite(f'--runs_dir={runs_dir}', '--org=jaxsuite', '--system=cpu_host', f'--out={out}',
                     '--set', 'cooling=air', module='suite.package')
  return out, result


def test_bad_input_stops_the_set_with_its_error_line(tmp_path):
  result = run_suite('--workload=resnet', '--scale=tiny', '--num_runs=3', f'--output_dir={tmp_path / "s"}',
                     '--config.no_such_key=1', module='suite.runs')
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'no_such_key' in errors[0]
  assert not os.path.exists(tmp_path / 's' / 'run_1')  # Stopped at the first run.


@pytest.mark.slow
def test_set_writes_score_json_with_distinct_seeds(run_set):
  out, result = run_set
  score = json.loads((out / 'score.json').read_text())
  assert score['seeds'] == [11, 12, 13, 14, 15]
  assert len(score['runs']) == 5 and all(os.path.exists(out / f'run_{k}' / 'result_0.txt') for k in range(5))
  times = [r['time_to_train_s'] for r in score['runs']]
  converged = [r['status'] == 'success' for r in score['runs']]
  # All must converge: in the open division the summarizer also scores an aborted run's time (its log passes the
  # open rules), so with one aborted run its score and ours would differ by design.
  assert all(converged), score['runs']
  assert score['score_s'] == pytest.approx(score_lib.mlperf_score(times, converged))
  assert score['score_min'] == pytest.approx(score['score_s'] / 60)
  low, high = score['bootstrap_95_s']
  assert low <= score['score_s'] <= high
  assert score['epochs_to_target'] == [r['epochs'] if r['status'] == 'success' else None for r in score['runs']]
  for run in score['runs']:  # Log time (what the summarizer scores) and the run's own clock agree.
    assert abs(run['time_to_train_s'] - run['summary_time_to_train_s']) < 0.01
  assert 'run 5/5' in result.stderr  # The progress lines.
  assert 'score' in result.stdout.splitlines()[-1]


@pytest.mark.slow
def test_open_package_passes_the_official_package_checker(package):
  out, result = package
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'package_checker: PASS' in result.stdout
  desc = json.loads((out / 'jaxsuite' / 'systems' / 'cpu_host.json').read_text())
  assert set(desc) == set(package_lib.SYSTEM_FIELDS) and len(desc) == 33
  assert all(isinstance(v, str) for v in desc.values())
  assert desc['division'] == 'open' and desc['status'] == 'Available on-premise' and desc['cooling'] == 'air'
  assert desc['framework'].startswith('JAX ')
  results = sorted(os.listdir(out / 'jaxsuite' / 'results' / 'cpu_host' / 'resnet'))
  assert results == [f'result_{i}.txt' for i in range(5)]
  impl = out / 'jaxsuite' / 'benchmarks' / 'resnet' / 'implementations' / 'jax'
  assert 'suite.main' in (impl / 'README.md').read_text() and (impl / 'suite' / 'main.py').exists()


@pytest.mark.slow
def test_our_score_equals_the_result_summarizers(package):
  out, _ = package
  report = json.loads((out / 'package_report.json').read_text())
  verdicts = report['verdicts']
  assert verdicts['result_summarizer']['score_min'] is not None, verdicts
  assert verdicts['our_score_min'] == pytest.approx(verdicts['result_summarizer']['score_min'], rel=1e-9)
  assert verdicts['scores_agree'] is True
  # resnet 4.0.0 has reference points; batch 128 in 2 epochs is far from them, so the RCP checker rejects the
  # set (the package checker runs it only for the closed division).
  assert verdicts['rcp_checker']['passed'] is False


@pytest.mark.slow
def test_package_of_fewer_than_five_resnet_runs_fails_the_file_count(run_set, tmp_path):
  runs_dir, _ = run_set
  three = tmp_path / 'three'
  for k in range(3):
    shutil.copytree(runs_dir / f'run_{k}', three / f'run_{k}', ignore=shutil.ignore_patterns('checkpoints'))
  result = run_suite(f'--runs_dir={three}', '--org=jaxsuite', '--system=cpu_host', f'--out={tmp_path / "pkg"}',
                     module='suite.package')
  assert result.returncode == 1
  # The one check that fails: resnet needs exactly 5 result files (mlperf_logging.benchmark_meta).
  assert 'package_checker: FAIL' in result.stdout
  assert 'Incorrect number of files' in result.stdout and 'found 3, expected 5' in result.stdout


@pytest.mark.slow
def test_report_pngs_and_curves(run_set, tmp_path):
  runs_dir, _ = run_set
  written = report_lib.write_report([str(runs_dir)], str(tmp_path / 'report'))
  for name in report_lib.FIGURES:
    assert os.path.getsize(written[name]) > 1000, name
  report = open(written['report']).read()
  assert report.count('| run_') == 5 and 'metric_vs_time.png' in report

  figures = report_lib.build_figures([report_lib.load_set(str(runs_dir))])
  for name in ('metric_vs_time', 'metric_vs_epoch'):
    lines = figures[name].axes[0].get_lines()
    assert sum(line.get_gid() == 'run' for line in lines) == 5, name
    assert [line.get_ydata()[0] for line in lines if line.get_gid() == 'target'] == [0.2]
  ttt = figures['time_to_train'].axes[0]
  assert sum(len(c.get_offsets()) for c in ttt.collections) == 5  # One point per run.
  assert sum(line.get_gid() == 'score' for line in ttt.get_lines()) == 1
  assert sum(line.get_gid() == 'run' for line in figures['throughput'].axes[0].get_lines()) == 5


@pytest.mark.slow
def test_sweep_writes_sqlite_rows_and_a_comparison(tmp_path, data_dir):
  out = tmp_path / 'sweep'
  db = tmp_path / 'results.sqlite'
  result = run_suite('--workload=resnet', '--scale=tiny', '--sweep=config.optimizer.learning_rate=4.0,2.0',
                     '--num_runs=1', '--base_seed=21', f'--output_dir={out}', f'--data_dir={data_dir}', *SHORT,
                     module='suite.sweep', timeout=1800)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  rows = sqlite3.connect(db).execute(
      'SELECT workload, scale, point, overrides, seed, status, time_to_train_s, final_metric, timestamp '
      'FROM runs ORDER BY id').fetchall()
  assert [r[2] for r in rows] == ['learning_rate=4.0', 'learning_rate=2.0']
  assert [json.loads(r[3]) for r in rows] == [{'config.optimizer.learning_rate': '4.0'},
                                              {'config.optimizer.learning_rate': '2.0'}]
  assert all(r[0] == 'resnet' and r[1] == 'tiny' and r[4] == 21 and r[6] > 0 and r[8] for r in rows)
  report = (out / 'report' / 'report.md').read_text()
  assert 'ratio to first' in report and '| learning_rate=2.0 |' in report
  figures = report_lib.build_figures([report_lib.load_set(str(out / p)) for p in ('learning_rate=4.0',
                                                                                  'learning_rate=2.0')])
  assert sum(line.get_gid() == 'run' for line in figures['metric_vs_epoch'].axes[0].get_lines()) == 2


# --- Resumed runs: the clock does not pause. Timed from the first run_start to the last run_stop everywhere. ---

def _events(path):
  """The log's events (the spans are computed here independently of the result tools under test)."""
  return mlperf_log.read_events(path, strict=True)


def _span_s(path):
  times = {e['key']: e['time_ms'] for e in _events(path) if e['key'] in ('run_start', 'run_stop')}
  return (times['run_stop'] - times['run_start']) / 1000


def make_resumed(run_dir, step: int, downtime_s: float) -> float:
  """Turns a finished run's folder into what the runner leaves when the run is preempted (SIGTERM) after its first
  eval and resumed `downtime_s` later: a run_stop 'aborted'/'preempted' at the cut, a `resumed` event with the step,
  the rest of the run shifted by the downtime (run_start stays once, as the runner logs it); summary.json gets
  resumed_from_step and keeps its time_to_train_s, which, like the runner's clock, leaves the downtime out.
  Returns the wall span the result tools must report: the original span plus the downtime."""
  log = os.path.join(run_dir, 'result_0.txt')
  original_s = _span_s(log)
  events = _events(log)
  cut = next(i for i, e in enumerate(events) if e['key'] == 'eval_accuracy') + 1
  at, shift = events[cut - 1]['time_ms'], round(downtime_s * 1000)
  template = {k: v for k, v in events[cut - 1].items() if k not in ('key', 'value', 'metadata', 'time_ms')}
  stop = {**template, 'event_type': 'INTERVAL_END', 'key': 'run_stop', 'value': None, 'time_ms': at + 1,
          'metadata': {'status': 'aborted', 'reason': 'preempted'}}
  resumed = {**template, 'event_type': 'POINT_IN_TIME', 'key': 'resumed', 'value': step, 'time_ms': at + shift,
             'metadata': {'from_step': step, 'note': 'resumed run: not valid for closed-division scoring'}}
  later = [{**e, 'time_ms': e['time_ms'] + shift} for e in events[cut:]]
  with open(log, 'w', encoding='utf-8') as f:
    for event in events[:cut] + [stop, resumed] + later:
      f.write(mlperf_log.MLLOG_PREFIX + json.dumps(event) + '\n')
  summary_path = os.path.join(run_dir, 'summary.json')
  with open(summary_path, encoding='utf-8') as f:
    summary = json.load(f)
  summary['resumed_from_step'] = step
  with open(summary_path, 'w', encoding='utf-8') as f:
    json.dump(summary, f)
  return original_s + downtime_s


DOWNTIME_S = 3600.0


@pytest.fixture(scope='module')
def resumed_set(run_set, tmp_path_factory):
  """The five real runs, with run_2 preempted after its first eval and resumed an hour later."""
  runs_dir, _ = run_set
  out = tmp_path_factory.mktemp('resumed') / 'set'
  shutil.copytree(runs_dir, out, ignore=shutil.ignore_patterns('checkpoints', 'report'))
  metrics = runs_lib.read_jsonl(str(out / 'run_2' / 'metrics.jsonl'))
  step = next(r['step'] for r in metrics if r['kind'] == 'eval')
  spans = [_span_s(out / f'run_{k}' / 'result_0.txt') for k in range(5)]
  spans[2] = make_resumed(out / 'run_2', step, DOWNTIME_S)
  return out, step, spans


def test_run_span_is_first_run_start_to_last_run_stop(tmp_path):
  preempted = str(tmp_path / 'sigterm.txt')  # Stopped with run_stop at 30 s, resumed at 100 s, done at 150 s.
  log = MLPerfLog(preempted)
  log.start('run_start', time_ms=10_000)
  log.end('run_stop', metadata={'status': 'aborted', 'reason': 'preempted'}, time_ms=30_000)
  log.event('resumed', 24, metadata={'from_step': 24}, time_ms=100_000)
  log.event('eval_accuracy', 0.8, metadata={'epoch_num': 2}, time_ms=149_000)
  log.end('run_stop', metadata={'status': 'success'}, time_ms=150_000)
  log.close()
  span = run_span(preempted)
  assert (span.time_to_train_s, span.status, span.resumed_from_steps, span.epochs) == (140.0, 'success', (24,), 2)
  killed = str(tmp_path / 'sigkill.txt')  # Killed without a run_stop, resumed twice.
  log2 = MLPerfLog(killed)
  log2.start('run_start', time_ms=5_000)
  log2.event('resumed', 8, time_ms=60_000)
  log2.event('resumed', 16, time_ms=90_000)
  log2.end('run_stop', metadata={'status': 'aborted', 'reason': 'max_epochs'}, time_ms=125_500)
  log2.close()
  span = run_span(killed)
  assert (span.time_to_train_s, span.status, span.resumed) == (120.5, 'aborted', True)
  assert span.resumed_from_steps == (8, 16)
  assert run_span(str(tmp_path / 'missing.txt')).time_to_train_s is None


@pytest.mark.slow
def test_a_resumed_run_is_scored_and_recorded_on_wall_time(resumed_set, tmp_path):
  out, step, spans = resumed_set
  records = []
  for k in range(5):
    spec = runs_lib.RunSpec(k, 11 + k, str(out / f'run_{k}'))
    records.append(runs_lib.run_record(spec, 0, str(out / f'run_{k}' / 'stderr.log'), ['python', '-m', 'suite.main']))
  assert [r['time_to_train_s'] for r in records] == pytest.approx(spans, abs=1e-3)
  assert records[2]['time_to_train_s'] > DOWNTIME_S  # Not the 30-odd seconds to the preempted run_stop.
  assert [r['resumed_from_step'] for r in records] == [None, None, step, None, None]
  # The resumed run is now the slowest: the olympic average drops it (and the fastest) and averages the middle three.
  expected = sum(sorted(spans)[1:4]) / 3
  assert runs_lib.summarize(records, 'resnet')['score_s'] == pytest.approx(expected, abs=1e-3)
  assert runs_lib.summarize(records, 'resnet')['resumed_runs'] == [2]

  # suite.results.runs --rescore: score.json again from the run folders' logs (e.g. after resuming a run by hand).
  result = run_suite(f'--output_dir={out}', '--rescore', module='suite.runs')
  assert result.returncode == 0, result.stdout + result.stderr
  score = json.loads((out / 'score.json').read_text())
  assert score['score_s'] == pytest.approx(expected, abs=1e-3) and score['resumed_runs'] == [2]
  assert score['runs'][2]['time_to_train_s'] == pytest.approx(spans[2], abs=1e-3)
  assert 'resumed' in result.stdout.splitlines()[-1]

  # suite.results.sweep's SQLite row: the same record, marked.
  db = sweep_lib.open_db(str(tmp_path / 'results.sqlite'))
  sweep_lib.insert_run(db, 'sweep-1', 'resnet', 'tiny', sweep_lib.Point('p', {}), records[2], [])
  row = db.execute('SELECT time_to_train_s, resumed_from_step FROM runs').fetchone()
  assert row == (pytest.approx(spans[2], abs=1e-3), step)


@pytest.mark.slow
def test_report_reads_times_from_the_log(resumed_set):
  out, _, spans = resumed_set
  summary = json.loads((out / 'run_2' / 'summary.json').read_text())
  assert summary['time_to_train_s'] < DOWNTIME_S  # The summary leaves the downtime out; the report must not.
  rs = report_lib.load_set(str(out))
  assert [r.time_to_train_s for r in rs.runs] == pytest.approx(spans, abs=1e-3)
  assert rs.score['score_s'] == pytest.approx(sum(sorted(spans)[1:4]) / 3, abs=1e-3)
  row = next(line for line in report_lib.runs_table(rs) if line.startswith('| run_2 '))
  assert f'{spans[2]:.2f}' in row and 'resumed from step' in row
  ttt = report_lib.build_figures([rs])['time_to_train'].axes[0]
  ys = sorted(y for c in ttt.collections for _, y in c.get_offsets())
  assert ys == pytest.approx(sorted(spans), abs=1e-3)


@pytest.mark.slow
def test_open_package_flags_a_resumed_run(resumed_set, tmp_path):
  out, step, spans = resumed_set
  result = run_suite(f'--runs_dir={out}', '--org=jaxsuite', '--system=cpu_host', f'--out={tmp_path / "pkg"}',
                     module='suite.package')
  report = json.loads((tmp_path / 'pkg' / 'package_report.json').read_text())
  assert [(r['run'], r['resumed_from_steps']) for r in report['resumed_runs']] == [('run_2', [step])]
  assert report['resumed_runs'][0]['time_to_train_s'] == pytest.approx(spans[2], abs=1e-3)
  flagged = [line for line in result.stdout.splitlines() if 'resumed' in line]
  assert flagged and 'run_2' in flagged[0] and str(step) in flagged[0], result.stdout


def test_closed_package_refuses_a_resumed_run(tmp_path):
  write_closed_set(tmp_path / 'set', [(25.0, 0.7601, 44), (30.0, 0.7602, 44), (27.5, 0.7610, 40), (22.0, 0.7605, 44),
                                      (26.5, 0.7595, 44)])
  make_resumed(tmp_path / 'set' / 'run_1', step=1251, downtime_s=600.0)
  result = run_suite(f'--runs_dir={tmp_path / "set"}', '--org=jaxsuite', '--system=cpu_host',
                     f'--out={tmp_path / "pkg"}', module='suite.package')
  assert result.returncode == 2, result.stdout + result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:'), result.stderr
  assert 'run_1' in lines[0] and 'resumed' in lines[0] and 'closed' in lines[0]
  assert not (tmp_path / 'pkg' / 'jaxsuite').exists()  # Refused before anything was written.
