"""LoadGen calibration from a probe of the SUT, the Server batcher sized from the bound, and the Server peak search."""

import json
import os

import pytest

from suite.inference import loadgen as infer_loadgen
from suite.inference import server_search
from suite.inference.server_search import Trial
from tests.conftest import run_suite

LOADGEN_LOGS = os.path.join(os.path.dirname(__file__), 'data', 'loadgen')


def _fake_server(limit: float, calls: list | None = None):
  """A Server whose runs end VALID up to `limit` queries/s, p99 a tenth of the rate (in ms)."""
  def run_at(qps: float) -> Trial:
    if calls is not None:
      calls.append(qps)
    return Trial(qps, qps <= limit, qps / 10)
  return run_at


def test_bisection_brackets_the_peak_by_hand():
  # low VALID, high INVALID, then midpoints until the two are within 5%: 139.0625 / 134.375 = 1.035.
  peak, trials = server_search.bisect_peak(_fake_server(137), 50, 200, max_trials=8, tolerance=0.05)
  assert [t.target_qps for t in trials] == [50, 200, 125, 162.5, 143.75, 134.375, 139.0625]
  assert [t.valid for t in trials] == [True, False, True, False, False, True, False]
  assert peak.target_qps == 134.375 and peak.p99_latency_ms == 13.4375
  # low INVALID: halved until VALID (12.5), then bisected between 12.5 and the lowest INVALID, 25.
  peak, trials = server_search.bisect_peak(_fake_server(20), 50, 200, max_trials=8, tolerance=0.05)
  assert [t.target_qps for t in trials] == [50, 25, 12.5, 18.75, 21.875, 20.3125, 19.53125]
  assert peak.target_qps == 19.53125
  # high VALID: doubled until INVALID (800), then bisected; the trial budget ends it at 8 runs.
  peak, trials = server_search.bisect_peak(_fake_server(500), 50, 200, max_trials=8, tolerance=0.05)
  assert [t.target_qps for t in trials] == [50, 200, 400, 800, 600, 500, 550, 525]
  assert peak.target_qps == 500
  peak, trials = server_search.bisect_peak(_fake_server(500), 50, 200, max_trials=5, tolerance=0.05)
  assert len(trials) == 5 and peak.target_qps == 400
  # Nothing VALID: no peak, and the halving stops at the budget.
  peak, trials = server_search.bisect_peak(_fake_server(1), 50, 200, max_trials=4)
  assert peak is None and [t.target_qps for t in trials] == [50, 25, 12.5, 6.25]


def test_confirmation_steps_down_to_a_rate_that_passed():
  calls = []
  runs = server_search.confirm(_fake_server(100, calls), 134.375, tolerance=0.05, attempts=3,
                               passed=(50, 125, 134.375))
  # 134.375 fails; the next rate is the lower of 0.9 x 134.375 = 120.94 and the highest passed below, 125.
  assert calls == [134.375, 134.375 * 0.9, 50]
  assert [r.valid for r in runs] == [False, False, True]
  calls.clear()
  runs = server_search.confirm(_fake_server(200, calls), 134.375, passed=(50, 125))
  assert calls == [134.375] and runs[-1].valid


def test_batcher_is_sized_from_the_bound():
  latencies = {1: 0.001, 2: 0.002, 4: 0.003, 8: 0.005, 16: 0.009, 32: 0.030}
  # A quarter of 15 ms is 3.75 ms: batch 4 (3 ms) fits, 8 (5 ms) does not; the timeout is that quarter.
  assert server_search.server_batching(latencies, 0.015) == (4, 0.015 / 4)
  assert server_search.server_batching(latencies, 0.100) == (16, 0.025)
  assert server_search.server_batching(latencies, 0.002) == (1, 0.0005)  # Nothing fits: the smallest batch.
  # Explicit flags win, each on its own.
  assert server_search.server_batching(latencies, 0.015, max_batch=16) == (16, 0.015 / 4)
  assert server_search.server_batching(latencies, 0.015, timeout_s=0.002) == (4, 0.002)
  # Measuring stops after the first batch slower than the quarter; the bracket is the best throughput within the
  # max batch (16 / 9 ms = 1777.8/s) and a quarter of it.
  measured = server_search.measure_batches(latencies.__getitem__, 0.015, cap=128)
  assert list(measured) == [1, 2, 4, 8]
  low, high = server_search.bracket(latencies, 16)
  assert high == pytest.approx(16 / 0.009) and low == pytest.approx(16 / 0.009 / 4)


def test_search_keeps_each_run_in_its_folder(tmp_path):
  def run_at(qps, folder, trial):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, infer_loadgen.DETAIL_LOG), 'w', encoding='utf-8') as f:
      f.write(f'{qps} {trial}')
    # The search's trials pass up to 137/s; the confirmations (trial False) only up to 100/s.
    return Trial(qps, qps <= (137 if trial else 100), qps / 10, output_dir=folder)

  out = str(tmp_path)
  report = server_search.search(run_at, out, 50, 200, max_trials=8)
  assert [r['target_qps'] for r in report['trials']] == [50, 200, 125, 162.5, 143.75, 134.375, 139.0625]
  assert [r['result'] for r in report['confirmations']] == ['INVALID', 'INVALID', 'VALID']
  assert report['search_peak_qps'] == 134.375 and report['peak_qps'] == 50 and report['p99_latency_ms'] == 5
  assert sorted(os.listdir(tmp_path / 'peak_search')) == [
      'confirm_00', 'confirm_01', 'trial_00_50.0qps', 'trial_01_200.0qps', 'trial_02_125.0qps', 'trial_03_162.5qps',
      'trial_04_143.8qps', 'trial_05_134.4qps', 'trial_06_139.1qps']
  # The INVALID confirmations' files moved aside; the test's own run (the last) stays in OUTPUT_DIR.
  assert (tmp_path / 'peak_search' / 'confirm_00' / infer_loadgen.DETAIL_LOG).read_text() == '134.375 False'
  assert (tmp_path / infer_loadgen.DETAIL_LOG).read_text() == '50 False'
  assert report['confirmations'][0]['output_dir'].endswith('confirm_00')


def _settings(scenario, **overrides):
  return infer_loadgen.build_settings('resnet50', scenario, 'performance', None,
                                      infer_loadgen.Overrides(**overrides), 512)


@pytest.mark.parametrize('scenario', ['Offline', 'SingleStream', 'MultiStream'])
def test_calibration_takes_the_probed_rate(scenario):
  """The expectation LoadGen plans from is the rate the probe measured, not the bare batch's."""
  probed, rates = [], iter([900.0, 1234.0])
  settings = _settings(scenario)
  info = infer_loadgen.calibrate(settings, scenario, lambda b: 0.004, 128, set(), infer_loadgen.Overrides(),
                                 probe=lambda rate: probed.append(rate) or next(rates))
  size = {'Offline': 128, 'SingleStream': 1, 'MultiStream': 8}[scenario]
  estimate = infer_loadgen.BARE_BIAS * (size if scenario == 'Offline' else 1) / 0.004
  # Two probes, each told to expect the bare estimate; the faster one's rate is the expectation.
  assert infer_loadgen.PROBES == 2 and probed == [pytest.approx(estimate)] * 2
  assert info['source'] == 'probe' and info['probe_qps'] == [900.0, 1234.0]
  if scenario == 'Offline':
    assert settings.offline_expected_qps == 1234.0
  elif scenario == 'SingleStream':
    assert settings.single_stream_expected_latency_ns == int(1e9 / 1234)
  else:
    assert settings.multi_stream_expected_latency_ns == int(1e9 / 1234)
  assert info['expected_qps'] == pytest.approx(1234.0, rel=1e-6)
  # A probe that measured nothing (its run failed) leaves the bare estimate.
  settings = _settings(scenario)
  info = infer_loadgen.calibrate(settings, scenario, lambda b: 0.004, 128, set(), infer_loadgen.Overrides(),
                                 probe=lambda rate: None)
  assert info['source'] == 'batch_latency' and info['expected_qps'] == pytest.approx(estimate, rel=1e-6)


def test_calibration_leaves_flags_and_user_conf_alone():
  def probe(rate):
    raise AssertionError('no probe when the expectation is given')

  settings = _settings('Offline', target_qps=777.0)
  info = infer_loadgen.calibrate(settings, 'Offline', lambda b: 0.004, 128, set(),
                                 infer_loadgen.Overrides(target_qps=777.0), probe=probe)
  assert info == {'source': 'flags', 'expected_qps': 777.0} and settings.offline_expected_qps == 777.0
  settings = _settings('SingleStream')
  before = settings.single_stream_expected_latency_ns
  info = infer_loadgen.calibrate(settings, 'SingleStream', lambda b: 0.004, 1, {'target_latency'},
                                 infer_loadgen.Overrides(), probe=probe)
  assert info['source'] == 'user_conf' and settings.single_stream_expected_latency_ns == before


def test_measured_rate_is_the_detail_logs():
  # The SingleStream fixture log: 'result_qps_with_loadgen_overhead' (the rate LoadGen issued queries at) and,
  # for MultiStream, the inverse of 'result_mean_query_latency_ns'.
  values = {}
  for scenario, key in (('SingleStream', 'result_qps_with_loadgen_overhead'),
                        ('MultiStream', 'result_mean_query_latency_ns')):
    fields, _ = infer_loadgen.read_detail_log(os.path.join(LOADGEN_LOGS, scenario, infer_loadgen.DETAIL_LOG))
    values[scenario] = float(fields[key])
  assert infer_loadgen.measured_rate(os.path.join(LOADGEN_LOGS, 'SingleStream'), 'SingleStream') == values[
      'SingleStream']
  assert infer_loadgen.measured_rate(os.path.join(LOADGEN_LOGS, 'MultiStream'), 'MultiStream') == pytest.approx(
      1e9 / values['MultiStream'])
  assert infer_loadgen.measured_rate(LOADGEN_LOGS, 'Offline') is None  # No detail log there.


def _detail(folder) -> dict:
  fields, _ = infer_loadgen.read_detail_log(os.path.join(folder, infer_loadgen.DETAIL_LOG))
  return fields


@pytest.mark.slow
def test_find_peak_on_the_tiny_resnet(resnet_tiny_trained, data_dir, tmp_path):
  """A real search: short LoadGen Server runs at a 100 ms bound, each in its folder, a VALID peak, and the test
  at it VALID; the batcher was sized from the bound."""
  out = tmp_path / 'peak'
  result = run_suite('--workload=resnet', '--scale=tiny', f'--checkpoint={resnet_tiny_trained}',
                     f'--data_dir={data_dir}', f'--output_dir={out}', '--scenario=Server', '--find_peak',
                     '--server_target_latency_ms=100', '--min_duration_ms=1000', '--min_query_count=1024',
                     '--peak_trials=4', module='suite.infer', timeout=400)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  search, batching = summary['server_search'], summary['server_batching']
  assert 1 <= len(search['trials']) <= 4 and search['latency_bound_ms'] == 100
  for trial in search['trials']:  # Each trial is a real LoadGen Server test, judged from its own log.
    fields = _detail(trial['output_dir'])
    assert fields['effective_scenario'] == 'Server' and fields['effective_target_qps'] == pytest.approx(
        trial['target_qps'], rel=1e-5)
    assert trial['result'] == fields['result_validity']
  final = search['confirmations'][-1]
  assert final['result'] == 'VALID' and final['output_dir'] == str(out)
  assert search['peak_qps'] == final['target_qps'] == summary['settings']['server_target_qps']
  assert search['peak_qps'] in [t['target_qps'] for t in search['trials'] if t['result'] == 'VALID'] + [
      c['target_qps'] for c in search['confirmations']]
  fields = _detail(out)
  assert search['p99_latency_ms'] == fields['result_99.00_percentile_latency_ns'] / 1e6 <= 100
  assert summary['valid'] is True and fields['result_validity'] == 'VALID'
  # The batcher: the largest measured batch within a quarter of the bound, waiting at most that quarter.
  within = [int(b) for b, s in batching['latency_s'].items() if s <= 0.025]
  assert summary['policy']['max_batch'] == batching['max_batch'] == max(within, default=1)
  assert summary['policy']['timeout_s'] == 0.025 and batching['timeout_from'] == 'bound'


@pytest.mark.parametrize('args, says', [(['--scenario=Offline'], '--scenario=Server'),
                                        (['--scenario=Server', '--target_qps=50'], 'drop --target_qps')])
def test_find_peak_misused_is_one_error_line(tmp_path, args, says):
  result = run_suite('--workload=resnet', '--scale=tiny', f'--output_dir={tmp_path / "out"}', '--find_peak', *args,
                     module='suite.infer', timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: --find_peak') and says in lines[0], lines


def test_overwrite_drops_the_replaced_tests_probes_and_trials(tmp_path):
  from suite.inference import run as infer_run  # pylint: disable=import-outside-toplevel
  for folder in ('calibration/probe_0', 'peak_search/trial_00_50.0qps'):
    (tmp_path / folder).mkdir(parents=True)
    (tmp_path / folder / infer_loadgen.DETAIL_LOG).write_text('old')
  (tmp_path / 'summary.json').write_text('{}')
  (tmp_path / 'notes.txt').write_text('mine')
  infer_run.prepare_output_dir(str(tmp_path), overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ['notes.txt']
