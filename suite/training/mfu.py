"""FLOPs utilisation, two figures named apart, over a peak that cannot be inflated.

- `xla_flops_utilization`: the FLOPs XLA's cost analysis counts in the compiled train step (everything it
  executes: normalisation, optimizer, any recomputation), per device, over step time, over the peak.
- `model_flops_utilization` (MFU, the MLPerf / MaxText convention): the workload's analytic training FLOPs
  (3 x the forward's 2 x MACs of its convolutions and dense layers; models/flops.py) x global batch / devices,
  over step time, over the peak.

The peak is per JAX device: the `--peak_flops` flag, else the data sheet's dense bf16 figure for the device kind,
else on CPU a measured matmul (the host's peak, shared by its possibly fake devices). An accelerator kind missing
from the table gets no peak (utilisation null, with a warning): a measured single-device matmul is no peak, and
dividing a host figure by a device count would overstate utilisation by that count or more.
"""

import dataclasses
import re
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from absl import logging

# Dense (no sparsity) bf16 peak FLOP/s per JAX device, from the vendors' data sheets, by `device_kind` (the whole
# first line must match). On TPU v2 and v3 each JAX device is one of the chip's two TensorCores, so the per-chip
# figure is halved; v4 and v5p present a chip's two cores as one device ("megacore"); v5e and v6e have one core.
PEAK_FLOPS_BY_KIND: tuple[tuple[str, float], ...] = (
    (r'TPU v2', 45e12 / 2),
    (r'TPU v3', 123e12 / 2),
    (r'TPU v4', 275e12),
    (r'TPU v5 ?lite|TPU v5e', 197e12),
    (r'TPU v5p?', 459e12),
    (r'TPU v6 ?lite|TPU v6e', 918e12),
    (r'NVIDIA H100 PCIe', 756e12),
    (r'NVIDIA H100 NVL', 835e12),
    (r'NVIDIA H100 80GB HBM3|NVIDIA H100 SXM.*', 989e12),
    (r'NVIDIA H200 NVL', 835e12),
    (r'NVIDIA H200', 989e12),
    (r'NVIDIA GH200.*', 989e12),
    (r'NVIDIA A100[- ].*', 312e12),  # SXM4 and PCIe, 40 and 80 GB: the same tensor cores and clocks.
    (r'NVIDIA L4', 121e12),
)

DATASHEET, FLAG, MEASURED_CPU = 'datasheet', 'flag', 'measured_cpu'


@dataclasses.dataclass(frozen=True)
class Peak:
  flops_per_device: float | None  # None: unknown, so no utilisation is reported.
  source: str | None  # DATASHEET, FLAG, MEASURED_CPU, or None.


def peak_flops_per_device(device) -> float | None:
  """The data sheet's peak for this device kind, or None if the kind is not in the table."""
  kind = device.device_kind.split('\n', 1)[0].strip()
  for pattern, peak in PEAK_FLOPS_BY_KIND:
    if re.fullmatch(pattern, kind):
      return peak
  return None


def resolve_peak(local_devices: Sequence, flag: float | None = None,
                 measure: Callable[[], float] | None = None) -> Peak:
  """The peak per device this run's utilisation is computed against (see the module docstring for the order)."""
  if flag:
    return Peak(float(flag), FLAG)
  device = local_devices[0]
  table = peak_flops_per_device(device)
  if table:
    return Peak(table, DATASHEET)
  if device.platform == 'cpu':
    # One host's cores run all its CPU devices (several only when faked with
    # --xla_force_host_platform_device_count): they share its measured peak.
    cpu_devices = sum(d.platform == 'cpu' for d in local_devices)
    return Peak((measure or measure_peak_flops)() / cpu_devices, MEASURED_CPU)
  logging.warning('No peak FLOP/s is known for device kind %r: FLOPs utilisation is not reported (pass '
                  '--peak_flops=F, the dense bf16 peak of one device from its data sheet)', device.device_kind)
  return Peak(None, None)


def measure_peak_flops(size: int = 1024, repeats: int = 10) -> float:
  """Best observed f32 matmul FLOP/s on the default device: the CPU's practical peak (run before init, untimed)."""
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


def model_flops_per_step_per_device(flops_per_example: float | None, global_batch_size: int,
                                    num_devices: int) -> float | None:
  """The analytic training FLOPs of one step that fall on each device (the batch is split evenly)."""
  if flops_per_example is None:
    return None
  return flops_per_example * global_batch_size / num_devices


def utilization(flops_per_step_per_device: float | None, step_time_s: float,
                peak_flops_per_device: float | None) -> float | None:
  """Achieved FLOP/s per device over the peak; None when either count or the peak is unknown."""
  if not flops_per_step_per_device or not peak_flops_per_device or step_time_s <= 0:
    return None
  return flops_per_step_per_device / step_time_s / peak_flops_per_device
