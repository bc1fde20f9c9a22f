"""The clock's ordering and compile detection, and XLA's FLOP count, against hand-computed values (the peak table
and the utilisation figures: tests/test_mfu.py)."""

import jax
import jax.numpy as jnp

from suite.common import mlperf_log
from suite.common.mlperf_log import MLPerfLog
from suite.training import mfu
from suite.training.clock import Clock


def _read_log(path):
  return mlperf_log.read_events(path, strict=True)


def test_clock_logs_boundaries_in_order_and_counts_no_compile_for_aot_calls(tmp_path):
  path = str(tmp_path / 'log.txt')
  clock = Clock(MLPerfLog(path))
  x = jnp.ones((4, 4))
  step = jax.jit(lambda a: a @ a).lower(x).compile()
  clock.init_start()
  clock.init_stop(x)
  clock.run_start()
  clock.block_start(1, 2)
  y = step(x)
  clock.block_stop(1, y)
  clock.run_stop('success', y)
  keys = [(r['key'], r['event_type']) for r in _read_log(path)]
  assert keys == [('init_start', 'INTERVAL_START'), ('init_stop', 'INTERVAL_END'), ('run_start', 'INTERVAL_START'),
                  ('block_start', 'INTERVAL_START'), ('block_stop', 'INTERVAL_END'), ('run_stop', 'INTERVAL_END')]
  times = [r['time_ms'] for r in _read_log(path)]
  assert times == sorted(times)
  assert clock.compiles_after_run_start == 0
  assert clock.time_to_train_s >= 0


def test_clock_catches_a_compile_inside_the_timed_region(tmp_path):
  clock = Clock(MLPerfLog(str(tmp_path / 'log.txt')))
  clock.init_start()
  clock.init_stop()
  clock.run_start()
  jax.block_until_ready(jnp.arange(7) * 3 + 1)  # An op-by-op jnp call compiles a fresh executable.
  clock.run_stop('aborted')
  assert clock.compiles_after_run_start >= 1


def test_run_stop_carries_status(tmp_path):
  path = str(tmp_path / 'log.txt')
  clock = Clock(MLPerfLog(path))
  clock.init_start(), clock.init_stop(), clock.run_start()
  clock.run_stop('aborted', reason='divergence')
  assert _read_log(path)[-1]['metadata']['status'] == 'aborted'
  assert _read_log(path)[-1]['metadata']['reason'] == 'divergence'


def test_disabled_log_writes_nothing(tmp_path):
  log = MLPerfLog(str(tmp_path / 'log.txt'), enabled=False)
  log.event('seed', 1)
  assert not (tmp_path / 'log.txt').exists()


def test_compiled_flops_of_a_matmul_is_2mkn():
  a = jax.ShapeDtypeStruct((64, 32), jnp.float32)
  b = jax.ShapeDtypeStruct((32, 16), jnp.float32)
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  assert mfu.compiled_flops(compiled) == 2 * 64 * 32 * 16
