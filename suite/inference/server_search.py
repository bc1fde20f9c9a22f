"""Server: the dynamic batcher sized from the latency bound, and the search for the highest VALID target_qps.

MLPerf Inference's Server result is the highest scheduled rate whose run ends VALID: the p99 latency within the
bound and LoadGen's early-stopping check met. `find_peak` brackets that rate from the SUT's measured batch
throughput and bisects over target_qps with short LoadGen Server runs (each in its own folder); a confirmation run
at the peak is the result, stepping down if that run ends INVALID.
"""

import dataclasses
import os
from collections.abc import Callable

# The oldest queued sample waits at most a quarter of the bound for a fuller batch, and a batch computes within a
# quarter of it: with one batch ahead of it on the device, a sample's latency stays within three quarters of the
# bound, a quarter left for the host's threads and the queue at the peak rate.
BOUND_SHARE = 0.25
MAX_SERVER_BATCH = 128  # The largest dynamic batch tried when no --server_batch_size is given.
# Short trials: LoadGen's Server early stopping (loadgen/results.cc, PerformanceSummary::EarlyStopping, at
# mlcommons/inference b66003e) needs h(t) + t queries for t over the bound; h(0) is 459 at the 99th percentile and
# 0.99 confidence, so 1,024 queries let a trial end VALID with a few over the bound.
TRIAL_QUERIES = 1024
TRIAL_MS = 10_000


@dataclasses.dataclass(frozen=True)
class Trial:
  """One LoadGen Server run at a scheduled rate."""
  target_qps: float
  valid: bool
  p99_latency_ms: float | None = None
  completed_samples_per_s: float | None = None
  reason: str | None = None
  output_dir: str | None = None

  def row(self) -> dict:
    return {**dataclasses.asdict(self), 'result': 'VALID' if self.valid else 'INVALID'}


def server_batching(latencies: dict[int, float], bound_s: float, max_batch: int | None = None,
                    timeout_s: float | None = None) -> tuple[int, float]:
  """(largest dynamic batch, batch timeout) for a latency bound, from the measured latency of each batch size:
  the largest batch that computes within BOUND_SHARE of the bound (at least the smallest measured), and a timeout
  of BOUND_SHARE of the bound. An explicit `max_batch` or `timeout_s` wins."""
  if max_batch is None:
    fits = [b for b, latency in latencies.items() if latency <= BOUND_SHARE * bound_s]
    max_batch = max(fits) if fits else min(latencies)
  return max_batch, BOUND_SHARE * bound_s if timeout_s is None else timeout_s


def measure_batches(measure: Callable[[int], float], bound_s: float, cap: int,
                    compile_size: Callable[[int], None] = lambda b: None) -> dict[int, float]:
  """Latency of each power-of-two batch from 1 up to `cap`, stopping after the first one slower than
  BOUND_SHARE of the bound (larger ones would be slower still); `compile_size` readies a size before its
  measurement."""
  latencies, size = {}, 1
  while size <= cap:
    compile_size(size)
    latencies[size] = measure(size)
    if latencies[size] > BOUND_SHARE * bound_s:
      break
    size *= 2
  return latencies


def bracket(latencies: dict[int, float], max_batch: int) -> tuple[float, float]:
  """(low, high) target_qps to start the search from: the best batch throughput at or under `max_batch` (the
  rate no Server run can sustain above, the batcher's waits aside) and a quarter of it."""
  high = max(b / latency for b, latency in latencies.items() if b <= max_batch)
  return BOUND_SHARE * high, high


def bisect_peak(run_at: Callable[[float], Trial], low: float, high: float, max_trials: int = 8,
                tolerance: float = 0.05, factor: float = 2.0) -> tuple[Trial | None, list[Trial]]:
  """(highest VALID trial, every trial in order) over at most `max_trials` runs.

  Runs `low` first, halving it (by `factor`) until a rate ends VALID; then `high`, doubling it while it ends
  VALID; then bisects between the highest VALID and the lowest INVALID rate until they are within `tolerance`
  of each other. None when no rate tried ended VALID.
  """
  trials: list[Trial] = []

  def attempt(qps: float) -> Trial:
    trial = run_at(qps)
    trials.append(trial)
    return trial

  trial = attempt(low)
  failed = None
  while not trial.valid and len(trials) < max_trials:
    failed = trial
    trial = attempt(trial.target_qps / factor)
  if not trial.valid:
    return None, trials
  passed = trial
  if failed is None:
    next_qps = max(high, passed.target_qps * factor)
    while failed is None and len(trials) < max_trials:
      trial = attempt(next_qps)
      if trial.valid:
        passed, next_qps = trial, trial.target_qps * factor
      else:
        failed = trial
  while failed is not None and failed.target_qps > (1 + tolerance) * passed.target_qps and len(trials) < max_trials:
    trial = attempt((passed.target_qps + failed.target_qps) / 2)
    if trial.valid:
      passed = trial
    else:
      failed = trial
  return passed, trials


def confirm(run_at: Callable[[float], Trial], peak: float, tolerance: float = 0.05, attempts: int = 3,
            passed: tuple[float, ...] = ()) -> list[Trial]:
  """Runs at the peak; while the run ends INVALID (host noise at the edge of the bound), steps down, at most
  `attempts` runs: to the highest rate in `passed` (rates that ended VALID in the search) below it, or by twice
  the tolerance where that is lower. The last run is the result."""
  runs = [run_at(peak)]
  while not runs[-1].valid and len(runs) < attempts:
    step = runs[-1].target_qps * (1 - 2 * tolerance)
    below = [q for q in passed if q < runs[-1].target_qps]
    runs.append(run_at(min(step, max(below)) if below else step))
  return runs


def adapt_policy(policy, bound_s: float, measure: Callable[[int], float], max_batch: int | None,
                 timeout_ms: float | None) -> tuple:
  """(the batch policy for the bound, what it was derived from): batch latencies measured up to the policy's
  largest compiled batch, then server_batching; explicit flags win."""
  latencies = measure_batches(measure, bound_s, policy.max_batch)
  batch, timeout_s = server_batching(latencies, bound_s, max_batch, None if timeout_ms is None else timeout_ms / 1e3)
  info = {'latency_bound_ms': bound_s * 1e3, 'latency_s': latencies, 'max_batch': batch,
          'timeout_ms': timeout_s * 1e3, 'max_batch_from': 'flag' if max_batch is not None else 'bound',
          'timeout_from': 'flag' if timeout_ms is not None else 'bound'}
  return dataclasses.replace(policy, max_batch=batch, timeout_s=timeout_s), info


def search(run_at: Callable[[float, str, bool], Trial], output_dir: str, low: float, high: float,
           max_trials: int = 8, tolerance: float = 0.05) -> dict:
  """bisect_peak over short runs (`run_at(qps, folder, True)`, each in OUTPUT_DIR/peak_search/trial_NN_*), then
  the test at the peak in OUTPUT_DIR (`run_at(qps, OUTPUT_DIR, False)`), stepping down as `confirm` does; an
  INVALID confirmation's LoadGen files move to OUTPUT_DIR/peak_search/confirm_NN. With no VALID trial, the test
  runs once at the lowest rate tried (and reports INVALID)."""
  count = iter(range(max_trials))
  peak, trials = bisect_peak(lambda qps: run_at(qps, trial_folder(output_dir, next(count), qps), True), low, high,
                             max_trials, tolerance)
  confirmations: list[Trial] = []

  def confirm_at(qps: float) -> Trial:
    if confirmations:  # Keep the INVALID run's files beside the trials.
      folder = os.path.join(output_dir, 'peak_search', f'confirm_{len(confirmations) - 1:02d}')
      os.makedirs(folder, exist_ok=True)
      for name in os.listdir(output_dir):
        if name.startswith('mlperf_log_'):
          os.replace(os.path.join(output_dir, name), os.path.join(folder, name))
      confirmations[-1] = dataclasses.replace(confirmations[-1], output_dir=os.path.abspath(folder))
    confirmations.append(run_at(qps, output_dir, False))
    return confirmations[-1]

  start = peak.target_qps if peak else min(t.target_qps for t in trials)
  confirm(confirm_at, start, tolerance, 3 if peak else 1, tuple(t.target_qps for t in trials if t.valid))
  final = confirmations[-1]
  return {'peak_qps': final.target_qps if final.valid else None, 'p99_latency_ms': final.p99_latency_ms,
          'completed_samples_per_s': final.completed_samples_per_s, 'search_peak_qps': peak and peak.target_qps,
          'bracket_qps': [low, high], 'tolerance': tolerance, 'trials': [t.row() for t in trials],
          'confirmations': [t.row() for t in confirmations]}


def trial_folder(root: str, index: int, qps: float) -> str:
  return os.path.join(root, 'peak_search', f'trial_{index:02d}_{qps:.1f}qps')
