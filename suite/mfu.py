"""Model FLOPs utilisation: FLOPs from XLA's cost analysis of the compiled step, over time, over peak."""

import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets. Matched by substring of `device_kind`,
# most specific first.
PEAK_FLOPS_BY_KIND = (
    ('TPU v6 lite', 918e12),
    ('TPU v5 lite', 197e12),
    ('TPU v5p', 459e12),
    ('TPU v5', 459e12),
    ('TPU v4', 275e12),
    ('TPU v3', 123e12),
    ('H200', 989e12),
    ('H100', 989e12),
    ('A100', 312e12),
    ('L4', 121e12),
)


def peak_flops_per_device(device: jax.Device) -> float | None:
  """The table's peak for this device kind, or None if the kind is not listed."""
  for kind, peak in PEAK_FLOPS_BY_KIND:
    if kind in device.device_kind:
      return peak
  return None


def measure_peak_flops(size: int = 1024, repeats: int = 10) -> float:
  """Best observed f32 matmul FLOP/s on the default device: the CPU's practical peak (run at init, untimed)."""
  x = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda a: a @ a).lower(x).compile()
  jax.block_until_ready(matmul(x))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(x))
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def compiled_flops(compiled) -> float:
  """FLOPs of one call of a compiled executable, per device (what XLA's cost analysis reports)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older jax returned one dict per partition.
    analysis = analysis[0]
  return float(analysis.get('flops', 0.0)) if analysis else 0.0


def mfu(flops_per_step_per_device: float, step_time_s: float, peak_flops_per_device: float) -> float:
  if step_time_s <= 0 or peak_flops_per_device <= 0:
    return 0.0
  return flops_per_step_per_device / step_time_s / peak_flops_per_device
