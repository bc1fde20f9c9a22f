"""LoadGen test settings (mlperf.conf, user.conf, flags, calibration), one test run, and reading its summary."""

import dataclasses
import os
import re
import time
from typing import Callable

import numpy as np

from suite.errors import UserError

SCENARIOS = ('SingleStream', 'MultiStream', 'Server', 'Offline')
MODES = {'performance': 'PerformanceOnly', 'accuracy': 'AccuracyOnly'}
SUMMARY_FILE = 'mlperf_log_summary.txt'
ACCURACY_LOG = 'mlperf_log_accuracy.json'
# The summary line holding each scenario's headline figure, and what it is.
HEADLINE = {
    'SingleStream': (r'90\.0th percentile latency \(ns\)', 'p90_latency_ms'),
    'MultiStream': (r'99\.0th percentile latency \(ns\)', 'p99_latency_ms'),
    'Server': (r'Completed samples per second', 'samples_per_s'),
    'Offline': (r'Samples per second', 'samples_per_s'),
}


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
  """mlperf.conf (compiled into LoadGen) for the official model name, then the user's user.conf, then flags."""
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


def calibrate(settings, scenario: str, measure: Callable[[int], float], max_batch: int, keep: set[str],
              overrides: Overrides) -> dict:
  """Sets LoadGen's expectations from measured latencies where neither flags nor user.conf did.

  LoadGen pre-generates its query schedule from them: an expected latency above the truth (or an Offline
  throughput below it) leaves too few queries to fill the minimum duration and the run is INVALID, so the
  latency is under- and the throughput over-estimated on purpose.
  """
  measured = {}
  if scenario == 'SingleStream' and overrides.expected_latency_ms is None and 'target_latency' not in keep:
    measured['latency_1_s'] = measure(1)
    settings.single_stream_expected_latency_ns = max(int(0.5 * measured['latency_1_s'] * 1e9), 1000)
  if scenario == 'MultiStream' and overrides.expected_latency_ms is None and 'target_latency' not in keep:
    spq = settings.multi_stream_samples_per_query
    measured[f'latency_{spq}_s'] = measure(spq)
    settings.multi_stream_expected_latency_ns = max(int(0.5 * measured[f'latency_{spq}_s'] * 1e9), 1000)
  if scenario == 'Offline' and overrides.target_qps is None and 'target_qps' not in keep:
    measured[f'latency_{max_batch}_s'] = measure(max_batch)
    settings.offline_expected_qps = 1.5 * max_batch / measured[f'latency_{max_batch}_s']
  if scenario == 'Server' and overrides.target_qps is None and 'target_qps' not in keep:
    # The largest batch that computes in a quarter of the latency bound, at a quarter of its throughput: queues
    # stay short, and a sample's wait for its batch plus the batch itself stays under the bound at p99 even on
    # a host whose other work takes the cores now and then.
    bound_s = settings.server_target_latency_ns / 1e9
    best = (1, measure(1))
    measured['latency_1_s'] = best[1]
    size = 2
    while size <= max_batch:
      latency = measured[f'latency_{size}_s'] = measure(size)
      if latency > bound_s / 4:
        break
      best = (size, latency)
      size *= 2
    settings.server_target_qps = 0.25 * best[0] / best[1]
  return measured


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


def run_test(sut_handle, qsl_handle, settings, output_dir: str) -> None:
  """One LoadGen test; its mlperf_log_* files go to `output_dir`."""
  import mlperf_loadgen as lg  # pylint: disable=import-outside-toplevel
  os.makedirs(output_dir, exist_ok=True)
  log_output = lg.LogOutputSettings()
  log_output.outdir = os.path.abspath(output_dir)
  log_output.copy_summary_to_stdout = False
  log_settings = lg.LogSettings()
  log_settings.log_output = log_output
  log_settings.enable_trace = False  # The trace is large and costs time on the issuing thread.
  lg.StartTestWithLogSettings(sut_handle, qsl_handle, settings, log_settings)


def parse_summary(text: str) -> dict[str, str]:
  """'key : value' lines of mlperf_log_summary.txt (the first of each key)."""
  fields: dict[str, str] = {}
  for line in text.splitlines():
    key, sep, value = line.partition(':')
    if sep and key.strip() and key.strip() not in fields:
      fields[key.strip()] = value.strip()
  return fields


def headline(scenario: str, fields: dict[str, str]) -> tuple[str, float | None]:
  """(name, value) of the scenario's headline figure from the parsed summary (latencies in ms)."""
  pattern, name = HEADLINE[scenario]
  for key, value in fields.items():
    if re.fullmatch(pattern, key):
      number = float(value)
      return name, number / 1e6 if name.endswith('_ms') else number
  return name, None


def read_result(output_dir: str, scenario: str) -> dict:
  """Validity and the headline figure of a performance run."""
  path = os.path.join(output_dir, SUMMARY_FILE)
  if not os.path.exists(path):
    return {'result': None, 'valid': None}
  with open(path, encoding='utf-8') as f:
    fields = parse_summary(f.read())
  name, value = headline(scenario, fields)
  return {'result': fields.get('Result is'), 'valid': fields.get('Result is') == 'VALID', name: value,
          'headline': name}
