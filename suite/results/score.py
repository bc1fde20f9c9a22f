"""MLPerf score arithmetic over a set of runs: the olympic average, plain statistics and a bootstrap interval.

`mlperf_score` follows `mlperf_logging.result_summarizer` (4.1.68, `_compute_strong_score_standalone` and
`_compute_olympic_average`) exactly:
- a run that did not converge is left out of the list of times and counted as *dropped*;
- at most `max_dropped` runs may be dropped (1; 4 for unet3d). More than that: no score (the summarizer prints
  "CRITICAL ERROR: Too many non-converging runs" and leaves the cell empty);
- the converged times are sorted; the fastest `max_dropped` are removed, and from the slow end only
  `max_dropped - dropped` are removed: a run that did not converge stands in for the slowest one;
- the mean of what is left is the score; nothing left (e.g. 2 runs) gives no score.
What counts as "converged" is the caller's input. The summarizer itself drops a run whose log fails the
compliance checker; in the closed division that includes not reaching the target, but in the open division
(where the rules only ask for eval_accuracy < 1.0) it counts an aborted run's time like any other. We pass
`status == 'success'` (run_stop's status), which is what the closed division's check amounts to.
"""

import random
import statistics
from collections.abc import Sequence

from mlperf_logging import benchmark_meta

from suite.common import registry
from suite.common.errors import UserError


def num_runs(benchmark: str, variant: str = '') -> int:
  """Runs one score needs (the package checker's result-file count): the workload class's `num_runs()`; a
  benchmark the registry does not hold (e.g. unet3d) is looked up in mlperf_logging.benchmark_meta directly."""
  if benchmark in registry.WORKLOADS:
    return registry.workload_class(benchmark, variant).num_runs()
  counts = benchmark_meta.get_result_file_counts('training')
  if benchmark not in counts:
    raise UserError(f"unknown benchmark '{benchmark}': no workload of that name and no MLPerf training result-file "
                    'count for it (pass --num_runs)')
  return counts[benchmark]


def max_dropped(benchmark: str = '') -> int:
  """How many runs the olympic average drops at each end (the summarizer's `max_dropped_scores`)."""
  return 4 if benchmark == 'unet3d' else 1


def mlperf_score(times: Sequence[float], converged: Sequence[bool], benchmark: str = '') -> float | None:
  """Olympic average of the converged times, in the unit of `times`; None when the set has no score."""
  if len(times) != len(converged):
    raise ValueError(f'{len(times)} times but {len(converged)} convergence flags')
  keep = max_dropped(benchmark)
  dropped = sum(1 for ok in converged if not ok)
  if dropped > keep:
    return None
  scores = sorted(t for t, ok in zip(times, converged) if ok)
  countable = scores[keep:len(scores) - (keep - dropped)]
  return sum(countable) / len(countable) if countable else None


def describe(times: Sequence[float]) -> dict:
  """Mean, median, min and max of the times (None each for an empty list)."""
  if not times:
    return {'mean': None, 'median': None, 'min': None, 'max': None}
  return {'mean': statistics.fmean(times), 'median': statistics.median(times), 'min': min(times),
          'max': max(times)}


def _percentile(sorted_values: list[float], q: float) -> float:
  """Linear interpolation between closest ranks (numpy's default), without numpy."""
  pos = q * (len(sorted_values) - 1)
  lo = int(pos)
  hi = min(lo + 1, len(sorted_values) - 1)
  return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_interval(times: Sequence[float], converged: Sequence[bool], confidence: float = 0.95,
                       samples: int = 2000, seed: int = 0, benchmark: str = '') -> tuple[float, float] | None:
  """Percentile bootstrap of the score: resample the N runs (time and convergence together) with replacement.

  Resamples whose score is undefined (too many non-converged runs drawn) are skipped; None when all are, or when
  the set itself has no score. Deterministic for a seed.
  """
  runs = list(zip(times, converged))
  if mlperf_score(times, converged, benchmark) is None:
    return None
  rng = random.Random(seed)
  scores = []
  for _ in range(samples):
    draw = [runs[rng.randrange(len(runs))] for _ in runs]
    score = mlperf_score([t for t, _ in draw], [ok for _, ok in draw], benchmark)
    if score is not None:
      scores.append(score)
  if not scores:
    return None
  scores.sort()
  tail = (1.0 - confidence) / 2
  return _percentile(scores, tail), _percentile(scores, 1.0 - tail)
