"""MLPerf LoadGen inference on the tiny ResNet: every scenario VALID, accuracy = training eval, no lost sample."""

import json
import threading

import numpy as np
import pytest

from suite import infer_loadgen, infer_model, registry
from suite.sut import SUT, BatchPolicy, Sample, take_batch
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


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_dir):
  """One tiny ResNet checkpoint for the module: one epoch (about 0.5 top-1) is a non-trivial accuracy to
  reproduce, at a quarter of the cost of training to the target."""
  out = tmp_path_factory.mktemp('infer') / 'train'
  result = run_suite('--workload=resnet', '--scale=tiny', '--seed=11', f'--data_dir={data_dir}',
                     f'--output_dir={out}', '--config.max_epochs=1')
  assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: stopped at max_epochs, weights still saved.
  return out


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
  assert (out / 'mlperf_log_detail.txt').exists()


@pytest.mark.slow
def test_accuracy_mode_reproduces_the_training_eval(trained, data_dir, tmp_path):
  out = tmp_path / 'accuracy'
  result = _infer(trained, data_dir, out, '--scenario=Offline', '--mode=accuracy')
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
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


def test_batch_sizes_cover_each_scenario():
  assert infer_model.batch_sizes_for('SingleStream', 8, 1) == (1,)
  assert infer_model.batch_sizes_for('MultiStream', 8, 8) == (8,)
  assert infer_model.batch_sizes_for('Offline', 8, 128) == (1, 128)
  assert infer_model.batch_sizes_for('Server', 8, 16) == (1, 2, 4, 8, 16)
