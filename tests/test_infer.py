"""MLPerf LoadGen inference on the tiny ResNet: every scenario VALID, accuracy = training eval, no lost sample."""

import json
import os
import subprocess
import threading

import numpy as np
import pytest

from suite.common import mlperf_log, registry
from suite.inference import bench as infer_bench
from suite.inference import loadgen as infer_loadgen
from suite.inference import model as infer_model
from suite.inference.qsl import SampleLibrary
from suite.inference.sut import SUT, BatchPolicy, Sample, take_batch
from tests.conftest import run_suite

# Short, explicit settings: LoadGen's early-stopping minimums still apply (64 SingleStream queries, 662
# MultiStream queries, a few hundred Server queries), so VALID here means what it means in a real run. The
# expected latencies and Offline throughput are calibrated by the SUT. Server gets a low rate and a 500 ms bound
# instead of resnet50's 15 ms: on 2 CPU cores shared with other jobs, descheduling alone puts the p99 of a tiny
# model anywhere from 15 to 200 ms, and this test checks the machinery, not the host's speed.
SHORT = {
    'SingleStream': ['--min_duration_ms=1000', '--min_query_count=64'],
    'MultiStream': ['--min_duration_ms=1000', '--min_query_count=662'],
    'Server': ['--min_duration_ms=1000', '--min_query_count=500', '--target_qps=100', '--server_batch_size=8',
               '--server_target_latency_ms=500'],
    'Offline': ['--min_duration_ms=1000', '--min_query_count=512'],
}


# What the MLPerf Inference submission checker (tools/submission/submission_checker.py, RESULT_FIELD_NEW for v2.0 to
# v6.0) reads from mlperf_log_detail.txt as each scenario's result.
CHECKER_RESULT_FIELD = {'SingleStream': 'early_stopping_latency_ss', 'MultiStream': 'early_stopping_latency_ms',
                        'Server': 'result_completed_samples_per_sec', 'Offline': 'result_samples_per_second'}
# Logs of real LoadGen 6.0.17 runs of the tiny ResNet (`python -m suite.infer --workload=resnet --scale=tiny
# --platform=cpu --mode=performance --scenario=SingleStream --min_duration_ms=2000`, and MultiStream with
# --min_duration_ms=1000 --min_query_count=662), kept as fixtures.
LOADGEN_LOGS = os.path.join(os.path.dirname(__file__), 'data', 'loadgen')


@pytest.fixture(scope='module')
def trained(resnet_tiny_trained):
  """The session's tiny ResNet checkpoint (tests/conftest.py), shared with the audit tests."""
  return resnet_tiny_trained


def _infer(trained, data_dir, out, *args):
  return run_suite('--workload=resnet', '--scale=tiny', f'--checkpoint={trained}', f'--data_dir={data_dir}',
                   f'--output_dir={out}', *args, module='suite.infer', timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize('scenario', infer_loadgen.SCENARIOS)
def test_each_scenario_is_valid_in_performance_mode(trained, data_dir, tmp_path, scenario):
  out = tmp_path / scenario
  result = _infer(trained, data_dir, out, f'--scenario={scenario}', '--mode=performance', *SHORT[scenario])
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  assert 'Result is : VALID' in (out / 'mlperf_log_summary.txt').read_text()
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['scenario'] == scenario and summary['valid'] is True and summary['errors'] == 0
  assert summary['headline_value'] > 0
  # The headline is the detail log's figure the submission checker reads (the early-stopping estimate for
  # SingleStream and MultiStream), taken here independently of the suite's result reading.
  detail = {}
  for entry in mlperf_log.read_events(str(out / 'mlperf_log_detail.txt'), strict=True):
    detail.setdefault(entry['key'], entry['value'])
  key = CHECKER_RESULT_FIELD[scenario]
  assert summary['headline_value'] == detail[key] / (1e6 if scenario.endswith('Stream') else 1)
  calibration = summary['calibration']
  if scenario != 'Server':  # LoadGen planned from the faster of two short probes of the SUT (OUTPUT_DIR/calibration).
    assert calibration['source'] == 'probe'
    probed = [infer_loadgen.measured_rate(str(out / 'calibration' / f'probe_{i}'), scenario) for i in (0, 1)]
    assert calibration['probe_qps'] == probed
    assert calibration['expected_qps'] == pytest.approx(max(probed), rel=1e-5)
  assert calibration['measured_qps'] == infer_loadgen.measured_rate(str(out), scenario)
  assert calibration['expected_over_measured'] == calibration['expected_qps'] / calibration['measured_qps']


@pytest.mark.slow
def test_accuracy_mode_reproduces_the_training_eval(trained, data_dir, tmp_path):
  out = tmp_path / 'accuracy'
  result = _infer(trained, data_dir, out, '--scenario=Offline', '--mode=accuracy')
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  # The checkpoint was restored through Orbax, whose INFO lines stay off the console as in training.
  assert 'orbax' not in result.stderr.lower() and 'Restoring' not in result.stderr, result.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  accuracy = summary['accuracy']
  train_eval = json.loads((trained / 'summary.json').read_text())['final_metric']
  assert accuracy['samples_scored'] == accuracy['eval_samples'] == 512
  # Same samples, same preprocessing, same weights: only the batch size differs, so at most a float tie flips.
  assert abs(accuracy['accuracy'] - train_eval) <= 1 / 512, (accuracy, train_eval)
  assert accuracy['closed_bound'] == pytest.approx(0.99 * 0.76456)

  standalone = run_suite(f'--log={out / "mlperf_log_accuracy.json"}', '--workload=resnet', '--scale=tiny',
                         f'--data_dir={data_dir}', module='suite.infer_accuracy', timeout=300)
  assert standalone.returncode == 0, standalone.stderr[-3000:]
  assert json.loads(standalone.stdout)['accuracy'] == accuracy['accuracy']


def test_bad_input_is_one_error_line(tmp_path):
  for args in (['--scenario=Bogus'], ['--scenario=Offline', f'--checkpoint={tmp_path / "missing"}']):
    result = run_suite('--workload=resnet', '--scale=tiny', f'--output_dir={tmp_path / "out"}', *args,
                       module='suite.infer', timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:'), result.stderr


def _run_loadgen(sut: SUT, scenario: str, out, total: int = 64) -> bool:
  """Runs LoadGen against `sut` on a thread; False if it did not finish (a lost response hangs it)."""
  import mlperf_loadgen as lg  # pylint: disable=import-outside-toplevel
  settings = infer_loadgen.build_settings(
      'resnet50', scenario, 'performance', None,
      infer_loadgen.Overrides(min_duration_ms=200, min_query_count=64, target_qps=500, expected_latency_ms=0.1),
      total)
  qsl, handle = lg.ConstructQSL(total, total, lambda i: None, lambda i: None), sut.construct()
  thread = threading.Thread(target=infer_loadgen.run_test, args=(handle, qsl, settings, str(out)), daemon=True)
  thread.start()
  thread.join(60)
  sut.stop()
  return not thread.is_alive()


@pytest.mark.parametrize('scenario', infer_loadgen.SCENARIOS)
@pytest.mark.parametrize('where', ['predict', 'finish'])
def test_a_failing_sut_still_answers_every_sample(tmp_path, scenario, where):
  images = np.zeros((64, 4), np.float32)
  calls = []

  def predict(x):
    calls.append(len(x))
    if where == 'predict' and len(calls) % 3 == 0:
      raise RuntimeError('injected device failure')
    return x[:, 0]

  def finish(out, n):
    if where == 'finish' and len(calls) % 3 == 0:
      raise RuntimeError('injected host failure')
    return [np.zeros(1, np.int32) for _ in range(n)]

  sut = SUT(lambda idx: images[idx], predict, finish, BatchPolicy(8, 0.001))
  assert _run_loadgen(sut, scenario, tmp_path), 'LoadGen hung: a sample was never answered'
  assert sut.errors > 0 and sut.error_messages[0].startswith('RuntimeError: injected')
  summary = (tmp_path / 'mlperf_log_summary.txt').read_text()
  assert 'Result is' in summary  # LoadGen finished and reported, the failed samples included.


def test_batcher_waits_for_a_full_batch_or_the_timeout():
  import collections  # pylint: disable=import-outside-toplevel
  pending = collections.deque(Sample(i, i, 10.0) for i in range(3))
  policy = BatchPolicy(max_batch=4, timeout_s=0.005)
  assert take_batch(pending, policy, now=10.001, flushing=False) is None  # Not full, not timed out.
  assert [s.id for s in take_batch(pending, policy, now=10.006, flushing=False)] == [0, 1, 2]
  pending.extend(Sample(i, i, 11.0) for i in range(6))
  assert len(take_batch(pending, policy, now=11.0, flushing=False)) == 4  # Full: runs at once.
  assert len(take_batch(pending, policy, now=11.0, flushing=True)) == 2  # LoadGen's flush: runs what is left.


def test_responses_round_trip_through_the_workloads_hooks():
  resnet_workload = registry.make_workload('resnet', registry.get_config('resnet', 'tiny'), 'tiny')
  classes = np.array([3, 7, 1], np.int32)
  responses = resnet_workload.encode_responses(classes, 2)
  assert [int(resnet_workload.decode_response(r.tobytes())[0]) for r in responses] == [3, 7]
  assert resnet_workload.decode_response(b'')[0] == -1  # A failed sample scores as wrong.
  labels = [{'label': 3}, {'label': 7}]
  assert resnet_workload.score_responses({0: classes[:1].tobytes(), 1: b''}, labels) == 0.5
  ssd_workload = registry.make_workload('ssd', registry.get_config('ssd', 'tiny'), 'tiny')
  detections = {'boxes': np.random.rand(2, 5, 4).astype(np.float32), 'scores': np.random.rand(2, 5),
                'classes': np.arange(10).reshape(2, 5), 'valid': np.array([[1, 1, 0, 0, 0], [0] * 5], bool)}
  rows = [ssd_workload.decode_response(r.tobytes()) for r in ssd_workload.encode_responses(detections, 2)]
  assert rows[0].shape == (2, 6) and rows[1].shape == (0, 6)
  np.testing.assert_allclose(rows[0][:, :4], detections['boxes'][0, :2])


def test_sample_library_holds_the_eval_pipelines_uint8_images(data_dir):
  """The QSL keeps the pipeline's uint8 pixels (a quarter of float32's memory); the workload's predict normalises
  them on the device, so the compiled forward takes uint8 too."""
  workload = registry.make_workload('resnet', registry.get_config('resnet', 'tiny'), 'tiny')
  workload.open_data(data_dir)
  qsl = SampleLibrary.for_workload(workload, performance_count=16)
  qsl.load(list(range(16)))
  images = qsl.gather(list(range(16)))
  assert images.dtype == np.uint8 and images.shape == (16, 32, 32, 3) and images.nbytes == 16 * 32 * 32 * 3
  first_eval = next(workload.eval_batches(process_index=0, process_count=1))['image'][:16]
  np.testing.assert_array_equal(images, first_eval)
  assert workload.batch_shapes(1, train=False)[workload.inference_input_key].dtype == np.uint8


def test_batch_sizes_cover_each_scenario():
  assert infer_model.batch_sizes_for('SingleStream', 8, 1) == (1,)
  assert infer_model.batch_sizes_for('MultiStream', 8, 8) == (8,)
  assert infer_model.batch_sizes_for('Offline', 8, 128) == (1, 128)
  assert infer_model.batch_sizes_for('Server', 8, 16) == (1, 2, 4, 8, 16)


@pytest.mark.parametrize('scenario, estimate_ns, raw_ns', [('SingleStream', 2_733_746, 2_591_399),
                                                            ('MultiStream', 15_855_632, 14_491_854)])
def test_latency_headline_is_the_early_stopping_estimate(scenario, estimate_ns, raw_ns):
  folder = os.path.join(LOADGEN_LOGS, scenario)
  with open(os.path.join(folder, 'mlperf_log_summary.txt'), encoding='utf-8') as f:
    text = f.read()
  # The summary's top line is the raw percentile; its early-stopping section gives the estimate that is the result.
  percentile = '90.0' if scenario == 'SingleStream' else '99.0'
  assert f'{percentile}th percentile latency (ns) : {raw_ns}' in text
  assert f'Early stopping {percentile}th percentile estimate: {estimate_ns}' in text
  result = infer_loadgen.read_result(folder, scenario)
  assert result['valid'] is True and 'early_stopping' in result['headline']
  assert result[result['headline']] == estimate_ns / 1e6
  assert infer_loadgen.judge(result, 'performance', sut_errors=0) == []


def test_a_run_is_invalid_on_any_failed_sample_or_loadgen_verdict():
  result = infer_loadgen.read_result(os.path.join(LOADGEN_LOGS, 'SingleStream'), 'SingleStream')
  reasons = infer_loadgen.judge(result, 'performance', 3, ['RuntimeError: injected'])
  assert reasons == ['the SUT failed 3 sample(s), first: RuntimeError: injected']
  assert infer_loadgen.judge(result, 'accuracy', 1) == ['the SUT failed 1 sample(s)']
  invalid = {**result, 'result': 'INVALID', 'valid': False, 'checks_failed': ['early_stopping_met']}
  assert infer_loadgen.judge(invalid, 'performance', 0) == ['LoadGen result INVALID (early_stopping_met false)']
  no_estimate = {**result, result['headline']: 0.0}  # Too few queries for an early-stopping estimate.
  assert infer_loadgen.judge(no_estimate, 'performance', 0) == [
      'no p90_early_stopping_latency_ms in mlperf_log_detail.txt']


def test_infer_bench_counts_only_valid_error_free_runs():
  runs = [{'valid': True, 'errors': 0, 'completed_samples_per_s': 50.0},
          {'valid': True, 'errors': 2, 'completed_samples_per_s': 80.0},  # LoadGen VALID, but samples failed.
          {'valid': False, 'errors': 0, 'completed_samples_per_s': 90.0}]
  assert infer_bench.server_qps_at_bound(runs) == 50.0
  assert infer_bench.server_qps_at_bound(runs[1:]) is None


def _failing_sut(*args):
  return run_suite(*args, module='tests.failing_sut', timeout=300)


@pytest.mark.slow
def test_sut_errors_make_the_run_invalid_with_exit_status_1(trained, data_dir, tmp_path):
  out = tmp_path / 'failing'
  result = _failing_sut('infer', '--workload=resnet', '--scale=tiny', f'--checkpoint={trained}',
                        f'--data_dir={data_dir}', f'--output_dir={out}', '--scenario=SingleStream',
                        *SHORT['SingleStream'])
  assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['errors'] > 0
  assert summary['loadgen_result'] == 'VALID'  # Failed samples were answered (empty): LoadGen cannot tell.
  assert summary['valid'] is False and summary['result'] == 'INVALID'
  assert 'RuntimeError: injected device failure' in summary['reason']
  assert 'INVALID' in result.stdout and 'injected device failure' in result.stdout


@pytest.mark.slow
def test_infer_bench_reports_no_figure_for_an_erroring_run(trained, data_dir, tmp_path):
  result = _failing_sut('infer_bench', '--workload=resnet', '--scale=tiny', f'--checkpoint={trained}',
                        f'--data_dir={data_dir}', f'--output_dir={tmp_path / "bench"}', '--offline_seconds=0.5',
                        '--server_seconds=0.5', '--server_fractions=0.1', '--offline_batch_size=32')
  assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
  report = json.loads(result.stdout)
  assert report['offline_errors'] > 0 and report['offline_valid'] is False
  assert 'injected device failure' in report['offline_reason']
  assert report['offline_sut_samples_per_s'] is None and report['offline_ratio'] is None
  assert report['offline_bare_samples_per_s'] > 0  # The bare loop runs outside the SUT: untouched.
  assert all(r['errors'] and not r['valid'] for r in report['server_runs'])
  assert report['server_qps_at_bound'] is None


def test_the_tiny_default_checkpoint_is_trained_per_variant(tmp_path, monkeypatch):
  # Variants share a workload name, not a model: each gets its own cached tiny run, trained as that variant.
  calls = []

  def fake_train(args, **_):
    calls.append(args)
    os.makedirs(os.path.join(next(a.split('=', 1)[1] for a in args if a.startswith('--output_dir=')), 'checkpoints'))
    return subprocess.CompletedProcess(args, 0, '', '')

  monkeypatch.setattr(infer_model.subprocess, 'run', fake_train)
  dirs = {v: infer_model.tiny_checkpoint('ssd', v, None, str(tmp_path), None) for v in ('retinanet', 'ssd_resnet34')}
  assert dirs['retinanet'] != dirs['ssd_resnet34'] and len(calls) == 2
  assert '--variant=ssd_resnet34' in calls[1] and f'--output_dir={dirs["ssd_resnet34"]}' in calls[1]
  assert infer_model.tiny_checkpoint('ssd', 'ssd_resnet34', None, str(tmp_path), None) == dirs['ssd_resnet34']
  assert len(calls) == 2  # Trained once, then reused.
