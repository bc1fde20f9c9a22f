"""LoadGen test settings (mlperf.conf, user.conf, flags, calibration), one test run, and reading its summary."""

import dataclasses
import os
import time
from collections.abc import Callable

import numpy as np

from suite.common import mlperf_log
from suite.common.errors import UserError

SCENARIOS = ('SingleStream', 'MultiStream', 'Server', 'Offline')
MODES = {'performance': 'PerformanceOnly', 'accuracy': 'AccuracyOnly'}
SUMMARY_FILE = 'mlperf_log_summary.txt'
DETAIL_LOG = 'mlperf_log_detail.txt'
ACCURACY_LOG = 'mlperf_log_accuracy.json'
# Each scenario's headline as the MLPerf Inference submission checker reads it (RESULT_FIELD_NEW, v2.0 to v6.0):
# a key of mlperf_log_detail.txt, and what it is. SingleStream and MultiStream report LoadGen's early-stopping
# estimate of the 90th (per sample) and 99th (per query) percentile latency, which bounds the percentile with
# confidence over the queries run; the raw percentile atop mlperf_log_summary.txt is lower, and no result.
HEADLINE = {
    'SingleStream': ('early_stopping_latency_ss', 'p90_early_stopping_latency_ms'),
    'MultiStream': ('early_stopping_latency_ms', 'p99_early_stopping_latency_ms'),
    'Server': ('result_completed_samples_per_sec', 'samples_per_s'),
    'Offline': ('result_samples_per_second', 'samples_per_s'),
}
# Detail-log checks behind LoadGen's "Result is: INVALID", named when one failed.
VALIDITY_CHECKS = ('result_min_duration_met', 'result_min_queries_met', 'early_stopping_met',
                   'result_perf_constraints_met')


@dataclasses.dataclass(frozen=True)
class Overrides:
  """Explicit settings from flags (None: keep what mlperf.conf, user.conf or the calibration gave)."""
  min_duration_ms: int | None = None
  min_query_count: int | None = None
  max_query_count: int | None = None
  target_qps: float | None = None  # Server: the scheduled rate; Offline: the expected throughput.
  expected_latency_ms: float | None = None  # SingleStream / MultiStream: the expected latency per query.
  server_target_latency_ms: float | None = None
  samples_per_query: int | None = None  # MultiStream.
  performance_sample_count: int | None = None


# Latency bounds of models that LoadGen's compiled-in mlperf.conf no longer lists (it has none for the MLPerf
# Inference v0.5 task gnmt, whose Server would otherwise get the '*' default of 10 ms at the 99th percentile): the
# values of the last v0.5 mlperf.conf (mlcommons/inference v0.5/mlperf.conf at c807d302, Oct 2019:
# `gnmt.Server.target_latency = 250`, `gnmt.Server.target_latency_percentile = 97`). Keyed by model and scenario,
# each entry maps an mlperf.conf key to (TestSettings attribute, value in its units); applied after mlperf.conf, a
# key user.conf sets is left to it, and flags override both. Run length (min_duration, min_query_count) stays this
# LoadGen's rule.
RETIRED_MODEL_SETTINGS = {
    ('gnmt', 'Server'): {'target_latency': ('server_target_latency_ns', 250 * 1_000_000),
                         'target_latency_percentile': ('server_target_latency_percentile', 0.97)},
    # mobilenet: the last mlperf.conf that listed it (mlcommons/inference 86164589, mlperf.conf, Jan 2022) set only
    # its performance sample count, 1024; its other entries were the '*' defaults.
    **{('mobilenet', scenario): {'performance_sample_count_override': ('performance_sample_count_override', 1024)}
       for scenario in SCENARIOS},
    # ssd-resnet34: the last mlperf.conf that listed it (mlcommons/inference 0a4a8c0f, mlperf.conf, Feb 2022) set its
    # performance sample count (64), its MultiStream expected latency (528 ms) and its Server bound (100 ms).
    # ssd-mobilenet's one entry there (performance sample count 256) is still in LoadGen 6.0's mlperf.conf.
    **{('ssd-resnet34', scenario): {'performance_sample_count_override': ('performance_sample_count_override', 64)}
       for scenario in SCENARIOS},
    ('ssd-resnet34', 'MultiStream'): {'performance_sample_count_override': ('performance_sample_count_override', 64),
                                      'target_latency': ('multi_stream_expected_latency_ns', 528 * 1_000_000)},
    ('ssd-resnet34', 'Server'): {'performance_sample_count_override': ('performance_sample_count_override', 64),
                                 'target_latency': ('server_target_latency_ns', 100 * 1_000_000)},
}


def user_conf_keys(path: str | None, model: str, scenario: str) -> set[str]:
  """Setting names a user.conf sets for this model and scenario (so calibration leaves them alone)."""
  if not path:
    return set()
  keys = set()
  with open(path, encoding='utf-8') as f:
    for line in f:
      line = line.split('#', 1)[0].strip()
      parts = line.split('=', 1)[0].strip().split('.')
      if '=' in line and len(parts) == 3 and parts[0] in ('*', model) and parts[1] in ('*', scenario):
        keys.add(parts[2])
  return keys


def build_settings(model: str, scenario: str, mode: str, user_conf: str | None, overrides: Overrides,
                   total_count: int):
  """mlperf.conf (compiled into LoadGen) for the official model name and RETIRED_MODEL_SETTINGS, then the user's
  user.conf, then flags."""
  import mlperf_loadgen as lg  # pylint: disable=import-outside-toplevel
  if scenario not in SCENARIOS:
    raise UserError(f"unknown scenario '{scenario}': choose one of {', '.join(SCENARIOS)} (--scenario=NAME)")
  ts = lg.TestSettings()
  if ts.FromConfig('', model, scenario, 0) != 0:
    raise UserError(f'LoadGen has no mlperf.conf settings for {model}/{scenario}')
  if user_conf:
    if not os.path.isfile(user_conf):
      raise UserError(f'--user_conf={user_conf} does not exist')
    if ts.FromConfig(user_conf, model, scenario, 1) != 0:
      raise UserError(f'LoadGen cannot read --user_conf={user_conf} (see its key = value format in mlperf.conf)')
  user_keys = user_conf_keys(user_conf, model, scenario)
  for key, (attribute, value) in RETIRED_MODEL_SETTINGS.get((model, scenario), {}).items():
    if key not in user_keys:
      setattr(ts, attribute, value)
  ts.scenario = getattr(lg.TestScenario, scenario)
  ts.mode = getattr(lg.TestMode, MODES[mode])
  o = overrides
  if o.min_duration_ms is not None:
    ts.min_duration_ms = o.min_duration_ms
  if o.min_query_count is not None:
    ts.min_query_count = o.min_query_count
  if o.max_query_count is not None:
    ts.max_query_count = o.max_query_count
  if o.samples_per_query is not None:
    ts.multi_stream_samples_per_query = o.samples_per_query
  if o.server_target_latency_ms is not None:
    ts.server_target_latency_ns = int(o.server_target_latency_ms * 1e6)
  if o.target_qps is not None:
    ts.server_target_qps = ts.offline_expected_qps = o.target_qps
  if o.expected_latency_ms is not None:
    ts.single_stream_expected_latency_ns = ts.multi_stream_expected_latency_ns = int(o.expected_latency_ms * 1e6)
  count = o.performance_sample_count or ts.performance_sample_count_override or total_count
  # A tiny eval split is smaller than the official performance sample count; LoadGen must not ask for more.
  ts.performance_sample_count_override = min(count, total_count)
  return ts


# How long the calibration probe runs (a short LoadGen test of the real SUT, in the scenario, before the test):
# a tenth of the test's minimum duration, within these bounds.
PROBE_MS = (1_000, 10_000)
# Probes run, the fastest taken: host noise only ever slows a probe, and an expectation above the truth only
# lengthens a run where one below it can end it INVALID (a SingleStream probe slowed 6x by other jobs left a
# 20 s test a third of its queries).
PROBES = 2


# A bare zero-filled batch runs faster than the SUT's path (host gather, LoadGen's threads): a tiny ResNet's
# 128-batch measured 2,633 samples/s bare where its Offline test sustained 2,241.
BARE_BIAS = 1.5


def expected_rate(settings, scenario: str) -> float:
  """What LoadGen plans the schedule from, as a rate: Offline samples/s, Server queries/s, SingleStream and
  MultiStream queries/s (the inverse of the expected latency)."""
  if scenario == 'Offline':
    return settings.offline_expected_qps
  if scenario == 'Server':
    return settings.server_target_qps
  latency_ns = (settings.single_stream_expected_latency_ns if scenario == 'SingleStream'
                else settings.multi_stream_expected_latency_ns)
  return 1e9 / latency_ns


def set_expected_rate(settings, scenario: str, rate: float) -> None:
  if scenario == 'Offline':
    settings.offline_expected_qps = rate
  elif scenario == 'Server':
    settings.server_target_qps = rate
  elif scenario == 'SingleStream':
    settings.single_stream_expected_latency_ns = max(int(1e9 / rate), 1000)
  else:
    settings.multi_stream_expected_latency_ns = max(int(1e9 / rate), 1000)


def measured_rate(output_dir: str, scenario: str) -> float | None:
  """The rate a test sustained, in expected_rate's units, from its detail log: Offline samples/s; SingleStream
  queries/s as LoadGen issued them (latency plus its own overhead, which is what fills the duration); MultiStream
  the inverse of the mean query latency (the next query goes when the last completes); Server completed
  samples/s."""
  path = os.path.join(output_dir, DETAIL_LOG)
  if not os.path.exists(path):
    return None
  fields, _ = read_detail_log(path)
  key = {'Offline': 'result_samples_per_second', 'SingleStream': 'result_qps_with_loadgen_overhead',
         'MultiStream': 'result_mean_query_latency_ns', 'Server': 'result_completed_samples_per_sec'}[scenario]
  value = fields.get(key)
  if not value:
    return None
  return 1e9 / float(value) if scenario == 'MultiStream' else float(value)


def probe_duration_ms(min_duration_ms: int) -> int:
  return int(min(max(min_duration_ms // 10, PROBE_MS[0]), PROBE_MS[1]))


def calibrate(settings, scenario: str, measure: Callable[[int], float], max_batch: int, keep: set[str],
              overrides: Overrides, probe: Callable[[float], float | None] | None = None) -> dict:
  """Sets LoadGen's expectation where neither flags nor user.conf did, and says where it came from.

  LoadGen pre-generates its schedule from it (loadgen/test_settings_internal.cc and loadgen.cc at
  mlcommons/inference b66003e): Offline issues 1.1 x min_duration x expected_qps samples, so an expectation above
  the truth stretches the run (a tiny ResNet's 1.5x-scaled bare batch made a 600 s run take 19 minutes) and one
  more than 10% below it ends before min_duration (INVALID); SingleStream and MultiStream generate 2 x
  min_duration of queries at the expected latency and stop once the duration is met. A first estimate comes from
  one bare batch's latency (`measure(batch)`, times BARE_BIAS); `probe(rate)`, a short LoadGen run of the real
  SUT in the scenario with that expectation, returns the rate it sustained; the fastest of PROBES becomes the
  expectation.
  Server's target_qps is a load to offer, not an expectation: a quarter of the best measured batch throughput
  within a quarter of the bound (python -m suite.infer --find_peak searches the highest VALID one).
  """
  setting = 'target_qps' if scenario in ('Offline', 'Server') else 'target_latency'
  flag = overrides.target_qps if setting == 'target_qps' else overrides.expected_latency_ms
  if flag is not None or setting in keep:
    return {'source': 'flags' if flag is not None else 'user_conf', 'expected_qps': expected_rate(settings, scenario)}
  latencies = {}
  if scenario == 'Server':
    bound_s = settings.server_target_latency_ns / 1e9
    size = 1
    while size <= max_batch:
      latencies[size] = measure(size)
      if size > 1 and latencies[size] > bound_s / 4:
        del latencies[size]
        break
      size *= 2
    best = max(latencies, key=lambda b: b / latencies[b])
    set_expected_rate(settings, scenario, 0.25 * best / latencies[best])
    return {'source': 'batch_latency', 'batch_latency_s': latencies, 'expected_qps': settings.server_target_qps}
  size = {'SingleStream': 1, 'MultiStream': settings.multi_stream_samples_per_query, 'Offline': max_batch}[scenario]
  latencies[size] = measure(size)
  # Queries/s for the stream scenarios (one query a batch), samples/s Offline; biased up, as a rate above the
  # truth only lengthens a run (when no probe follows, the expectation stays this).
  estimate = BARE_BIAS * (size if scenario == 'Offline' else 1) / latencies[size]
  set_expected_rate(settings, scenario, estimate)
  info = {'source': 'batch_latency', 'batch_latency_s': latencies, 'estimate_qps': estimate}
  probed = [rate for _ in range(PROBES if probe else 0) if (rate := probe(estimate))]
  if probed:
    set_expected_rate(settings, scenario, max(probed))
    info.update(source='probe', probe_qps=probed)
  info['expected_qps'] = expected_rate(settings, scenario)
  return info


def measure_latency(run_batch: Callable[[np.ndarray], None], make_batch: Callable[[int], np.ndarray],
                    batch_size: int, repeats: int = 20, budget_s: float = 1.0) -> float:
  """Median wall time of one batch (host gather to result on the host), after a warm-up call; stops early
  after `budget_s` (at least 3 calls) so calibrating a slow model costs about a second."""
  images = make_batch(batch_size)
  run_batch(images)
  times: list[float] = []
  while len(times) < repeats and (len(times) < 3 or sum(times) < budget_s):
    start = time.perf_counter()
    run_batch(images)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def run_test(sut_handle, qsl_handle, settings, output_dir: str, audit_config: str = 'audit.config') -> None:
  """One LoadGen test; its mlperf_log_* files go to `output_dir`. LoadGen applies the file `audit_config` (a
  compliance test's settings) when it exists: by default ./audit.config, as LoadGen itself does."""
  import mlperf_loadgen as lg  # pylint: disable=import-outside-toplevel
  os.makedirs(output_dir, exist_ok=True)
  log_output = lg.LogOutputSettings()
  log_output.outdir = os.path.abspath(output_dir)
  log_output.copy_summary_to_stdout = False
  log_settings = lg.LogSettings()
  log_settings.log_output = log_output
  log_settings.enable_trace = False  # The trace is large and costs time on the issuing thread.
  lg.StartTestWithLogSettings(sut_handle, qsl_handle, settings, log_settings, audit_config)


def read_detail_log(path: str) -> tuple[dict, list[str]]:
  """(first value of each key, the messages LoadGen flagged `is_error`) of an mlperf_log_detail.txt, read as the
  submission checker's log parser reads it: the JSON after `:::MLLOG ` on each line (a torn last line of a killed
  run says nothing)."""
  events = mlperf_log.read_events(path)
  errors = [f"{e.get('key')}: {e.get('value')}" for e in events if (e.get('metadata') or {}).get('is_error')]
  return mlperf_log.first_values(events), errors


def read_result(output_dir: str, scenario: str) -> dict:
  """LoadGen's verdict and the scenario's headline figure (latencies in ms) from the detail log, as the
  submission checker takes them; `checks_failed` names the detail-log checks behind an INVALID."""
  key, name = HEADLINE[scenario]
  path = os.path.join(output_dir, DETAIL_LOG)
  if not os.path.exists(path):
    return {'result': None, 'valid': None, 'headline': name, name: None, 'checks_failed': [], 'loadgen_errors': []}
  fields, errors = read_detail_log(path)
  raw = fields.get(key)
  value = None if raw is None else float(raw) / 1e6 if name.endswith('_ms') else float(raw)
  result = {'result': fields.get('result_validity'), 'valid': fields.get('result_validity') == 'VALID',
            'headline': name, name: value, 'checks_failed': [c for c in VALIDITY_CHECKS if fields.get(c) is False],
            'loadgen_errors': errors}
  if scenario == 'Server':
    p99 = fields.get('result_99.00_percentile_latency_ns')
    result['p99_latency_ms'] = None if p99 is None else float(p99) / 1e6
  return result


def judge(result: dict, mode: str, sut_errors: int, sut_error_messages: list[str] = ()) -> list[str]:
  """Why a test's result is INVALID (empty: it is valid). A performance run needs LoadGen's VALID and a positive
  headline (an early-stopping estimate of 0 means too few queries); any run is INVALID when LoadGen logged an
  error or the SUT failed a sample (answered empty so LoadGen could finish: its timing and answers are not the
  system's)."""
  reasons = []
  if mode == 'performance':
    if result['result'] != 'VALID':
      failed = f" ({', '.join(result['checks_failed'])} false)" if result['checks_failed'] else ''
      reasons.append(f"LoadGen result {result['result'] or 'missing'}{failed}")
    value = result.get(result['headline'])
    if result['result'] == 'VALID' and not value:
      reasons.append(f"no {result['headline']} in {DETAIL_LOG}")
  if result['loadgen_errors']:
    reasons.append(f"LoadGen logged {len(result['loadgen_errors'])} error(s), first: {result['loadgen_errors'][0]}")
  if sut_errors:
    first = f', first: {sut_error_messages[0]}' if sut_error_messages else ''
    reasons.append(f'the SUT failed {sut_errors} sample(s){first}')
  return reasons
