"""Score arithmetic (olympic average as mlperf_logging's result_summarizer computes it), bootstrap, seeds."""

import pytest

from suite import runs as runs_lib
from suite import score as score_lib
from suite import sweep as sweep_lib


def test_olympic_average_drops_fastest_and_slowest():
  # Sorted: 1 2 3 4 5 -> drop 1 and 5 -> mean(2, 3, 4).
  assert score_lib.mlperf_score([5.0, 1.0, 3.0, 4.0, 2.0], [True] * 5) == pytest.approx(3.0)
  # Sorted: 10 11 12 13 100 -> the outlier at 100 is dropped, not averaged.
  assert score_lib.mlperf_score([100.0, 12.0, 10.0, 13.0, 11.0], [True] * 5) == pytest.approx(12.0)


def test_a_non_converged_run_takes_the_place_of_the_slowest():
  # Converged sorted: 1 2 6 10; the failed run (50) stands in for the dropped slowest, so only 1 is dropped:
  # mean(2, 6, 10) = 6, not mean(2, 6) = 4.
  assert score_lib.mlperf_score([50.0, 1.0, 2.0, 6.0, 10.0], [False, True, True, True, True]) == pytest.approx(6.0)
  # The failed run's time never counts, however fast it was.
  assert score_lib.mlperf_score([0.1, 1.0, 2.0, 6.0, 10.0], [False, True, True, True, True]) == pytest.approx(6.0)


def test_two_non_converged_runs_leave_no_score():
  assert score_lib.mlperf_score([1.0, 2.0, 3.0, 4.0, 5.0], [False, False, True, True, True]) is None


def test_unet3d_drops_four_at_each_end():
  times = [float(t) for t in range(1, 41)]
  assert score_lib.mlperf_score(times, [True] * 40, 'unet3d') == pytest.approx(sum(range(5, 37)) / 32)
  # Four failures are allowed; a fifth leaves no score.
  flags = [False] * 4 + [True] * 36
  assert score_lib.mlperf_score(times, flags, 'unet3d') == pytest.approx(sum(range(9, 41)) / 32)
  assert score_lib.mlperf_score(times, [False] * 5 + [True] * 35, 'unet3d') is None


def test_small_sets():
  assert score_lib.mlperf_score([3.0, 1.0, 2.0], [True] * 3) == pytest.approx(2.0)
  assert score_lib.mlperf_score([1.0, 2.0], [True, True]) is None  # Nothing left after dropping both ends.
  assert score_lib.mlperf_score([], []) is None
  with pytest.raises(ValueError):
    score_lib.mlperf_score([1.0, 2.0], [True])


def test_default_num_runs_match_mlperf_logging():
  from mlperf_logging.benchmark_meta import get_result_file_counts  # pylint: disable=import-outside-toplevel
  official = get_result_file_counts('training')
  for benchmark, count in score_lib.DEFAULT_NUM_RUNS.items():
    assert official[benchmark] == count, benchmark


def test_describe():
  assert score_lib.describe([4.0, 1.0, 2.0, 3.0]) == {'mean': 2.5, 'median': 2.5, 'min': 1.0, 'max': 4.0}
  assert score_lib.describe([])['mean'] is None


def test_bootstrap_contains_the_score_and_is_deterministic():
  times = [101.0, 97.5, 99.0, 104.2, 98.1, 100.3, 102.7]
  converged = [True] * 6 + [False]
  score = score_lib.mlperf_score(times, converged)
  low, high = score_lib.bootstrap_interval(times, converged, seed=3)
  assert low <= score <= high
  assert low < high
  assert score_lib.bootstrap_interval(times, converged, seed=3) == (low, high)
  assert score_lib.bootstrap_interval(times, converged, seed=4) != (low, high)
  # A narrower confidence gives a narrower interval.
  low50, high50 = score_lib.bootstrap_interval(times, converged, confidence=0.5, seed=3)
  assert low <= low50 <= high50 <= high


def test_bootstrap_without_a_score_is_none():
  assert score_lib.bootstrap_interval([1.0, 2.0, 3.0], [False, False, True]) is None


def test_seeds_are_distinct():
  assert runs_lib.make_seeds(5, 7) == [7, 8, 9, 10, 11]
  for _ in range(20):
    seeds = runs_lib.make_seeds(40, None)
    assert len(set(seeds)) == 40 and all(0 <= s < 2**31 for s in seeds)
  specs = runs_lib.plan('/tmp/x', 3, 0)
  assert [s.output_dir for s in specs] == ['/tmp/x/run_0', '/tmp/x/run_1', '/tmp/x/run_2']


def test_summarize_scores_only_successes():
  runs = [{'seed': i, 'status': s, 'epochs': e, 'time_to_train_s': t}
          for i, (s, e, t) in enumerate([('success', 3, 30.0), ('success', 4, 40.0), ('aborted', 10, 5.0),
                                         ('success', 3, 20.0), ('success', 5, 50.0)])]
  result = runs_lib.summarize(runs, 'resnet')
  assert result['score_s'] == pytest.approx(40.0)  # Converged sorted 20 30 40 50: drop 20, mean(30, 40, 50).
  assert result['converged_runs'] == 4
  assert result['epochs_to_target'] == [3, 4, None, 3, 5]
  assert result['converged_stats_s'] == {'mean': 35.0, 'median': 35.0, 'min': 20.0, 'max': 50.0}


def test_passthrough_flags_and_reserved_ones():
  args, extra = runs_lib.parse_args(['--workload=ssd', '--num_runs=2', '--output_dir=/tmp/o', '--',
                                     '--config.max_epochs=1', '--data_dir=/d'])
  assert (args.workload, args.num_runs, args.base_seed) == ('ssd', 2, None)
  assert extra == ['--config.max_epochs=1', '--data_dir=/d']
  with pytest.raises(SystemExit):
    runs_lib.parse_args(['--output_dir=/tmp/o', '--seed=3'])


def test_sweep_grid_is_the_cartesian_product():
  points = sweep_lib.grid([sweep_lib.parse_axis('config.optimizer.learning_rate=0.1,0.2'),
                           sweep_lib.parse_axis('config.optimizer.name=sgd,lars')])
  assert [p.name for p in points] == ['learning_rate=0.1,name=sgd', 'learning_rate=0.1,name=lars',
                                      'learning_rate=0.2,name=sgd', 'learning_rate=0.2,name=lars']
  assert points[1].flags == ['--config.optimizer.learning_rate=0.1', '--config.optimizer.name=lars']
  with pytest.raises(ValueError):
    sweep_lib.parse_axis('config.optimizer.learning_rate')
