"""Benchmarks that print figures (JSON), never timed unit tests.

`python -m suite.bench overhead --workload=resnet --scale=tiny`: the suite's training loop (device prefetch,
one-step-late metrics, divergence check, interval logging) against a bare `jax.jit` loop over the same step
and the same host batches, interleaved in one process. Goal: ratio <= 1.05.

`python -m suite.bench scaling --workload=resnet --scale=tiny`: step time on 1, 2, 4, 8 CPU devices for the same
global batch, and 2 processes x 4 devices vs 1 x 8.

`python -m suite.bench memory --workload=llama31_8b --scale=full --mesh=fsdp:256 --devices=256
--set=global_batch_size=256 --set=model.remat_policy=full`: per-device bytes of parameters, optimizer state and
the train step's temporaries on a mesh of fake devices, and the compile time (suite/tools/memory.py).

`python -m suite.bench pipeline --workload=dlrm_dcnv2 --scale=tiny` (or resnet, ssd): the input pipeline's
samples/s alone (host batches, no device), per host core, and the bytes per sample a step ships to the device,
beside the compiled train step's samples/s on batches already on the device; the rate a published MLPerf result
on --system needs, per accelerator and per host core, and this machine's per-core rate as a fraction of it
(suite/tools/needed_rates.py); the data-wait share of the real pipeline feeding a step of known duration
(synthetic compute: a sleep of --compute_ms, default the measured step time) and of a real run (--real_run).
--set=data_workers=N runs the pipeline in N worker processes. For resnet and ssd the data is generated at
realistic sizes by default (REALISTIC_DATA: ImageNet-sized JPEGs cropped to 224x224, COCO-sized JPEGs with boxes
resized to RetinaNet's 800x800), and then the tiny model's step, the synthetic compute (unless --compute_ms) and
the real run are left out: the tiny model at those sizes is no real system's step. --norealistic_data reads the
tiny scale's own small PNGs instead.
"""

import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from absl import flags

from suite.common import cli as cli_lib
from suite.common import local_job, outputs, registry, sharding
from suite.common.errors import UserError
from suite.common.mlperf_log import MLPerfLog
from suite.tools import memory, needed_rates
from suite.training import metrics_writer, runner
from suite.training.clock import Clock
from suite.training.steps import compile_steps, make_train_step

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined by `cli()` only: importing this module beside suite.main (tests) defines no flags."""
  cli_lib.define_workload_and_scale(scale_default='tiny')
  flags.DEFINE_string('data_dir', None, 'TFDS data folder.')
  flags.DEFINE_integer('steps', 40, 'Steps per timed repetition.')
  flags.DEFINE_integer('repeats', 3, 'Interleaved repetitions of each loop; the median is reported.')
  flags.DEFINE_integer('host_batches', 8, 'Distinct host batches cycled through by both loops.')
  flags.DEFINE_string('mesh', 'fsdp:-1', 'memory: the mesh to lay the train state out on (e.g. fsdp:64,tensor:4).')
  flags.DEFINE_integer('devices', 256, 'memory: how many (fake) devices to compile for.')
  flags.DEFINE_multi_string('set', [], 'memory, pipeline: KEY=VALUE config overrides (e.g. '
                            'model.remat_policy=full, image_size=224, data_workers=2).')
  flags.DEFINE_string('system', needed_rates.DEFAULT_SYSTEM, 'pipeline: the published system whose input rate to '
                      f'compare with ({", ".join(needed_rates.RESULTS)}).')
  flags.DEFINE_float('compute_ms', 0.0, 'pipeline: the synthetic step\'s duration in ms (0: the measured step time).')
  flags.DEFINE_bool('realistic_data', True, 'pipeline: for resnet and ssd, generate and read data at realistic '
                    'sizes (ImageNet- and COCO-sized JPEGs, full-size outputs) instead of the tiny scale\'s own.')
  flags.DEFINE_bool('real_run', True, 'pipeline: also run the workload (suite.main, one seed) and report its '
                    'data-wait share.')


def _suite_loop(compiled, state, host_batches, num_steps, monitor):
  batches = sharding.prefetch_to_devices(itertools.cycle(host_batches), compiled.train_batch_sharding)
  start = time.perf_counter()
  state = runner.train_steps(compiled.train, state, batches, num_steps, 0, monitor)
  jax.block_until_ready(state)
  elapsed = time.perf_counter() - start
  batches.close()
  return state, elapsed / num_steps


def _raw_loop(step, batch_sharding, state, host_batches, num_steps):
  batches = itertools.cycle(host_batches)
  start = time.perf_counter()
  for _ in range(num_steps):
    state, _ = step(state, jax.device_put(next(batches), batch_sharding))
  jax.block_until_ready(state)
  return state, (time.perf_counter() - start) / num_steps


def overhead(workload_name: str, scale: str, data_dir: str | None, num_steps: int, repeats: int,
             num_host_batches: int) -> dict:
  workload = registry.make_workload(workload_name, registry.get_config(workload_name, scale), scale)
  workload.open_data(data_dir)
  mesh = sharding.make_mesh()
  schedule = workload.learning_rate_schedule(workload.num_train_examples / workload.global_batch_size)
  tx = workload.optimizer(schedule)
  clock = Clock(MLPerfLog(None, enabled=False))
  compiled = compile_steps(workload, mesh, tx, schedule, clock.now)
  state = compiled.init(jax.random.PRNGKey(0))
  host_batches = list(itertools.islice(workload.train_batches(0, 0, 1), num_host_batches))
  steps_per_epoch = max(int(workload.steps_per_epoch), 1)
  monitor = runner.TrainMonitor(clock, metrics_writer.MetricsWriter(None), workload.config.log_every_steps,
                                steps_per_epoch, workload.global_batch_size)
  replicated = sharding.replicated(mesh)
  step_fn = workload.make_train_step(tx, schedule) or make_train_step(workload, tx, schedule)  # The runner's choice.
  raw_step = jax.jit(step_fn, in_shardings=(replicated, compiled.train_batch_sharding),
                     out_shardings=(replicated, replicated), donate_argnums=0)
  # Warm both paths (the bare jit compiles on first call, once per batch shape: length buckets) before timing.
  warm_steps = max(2, len(host_batches))
  state, _ = _suite_loop(compiled, state, host_batches, warm_steps, monitor)
  state, _ = _raw_loop(raw_step, compiled.train_batch_sharding, state, host_batches, warm_steps)
  suite_times, raw_times = [], []
  for _ in range(repeats):
    monitor.start_interval(0)
    state, t = _suite_loop(compiled, state, host_batches, num_steps, monitor)
    suite_times.append(t)
    state, t = _raw_loop(raw_step, compiled.train_batch_sharding, state, host_batches, num_steps)
    raw_times.append(t)
  suite_s, raw_s = statistics.median(suite_times), statistics.median(raw_times)
  return {'benchmark': 'overhead', 'workload': workload_name, 'scale': scale, 'steps': num_steps,
          'repeats': repeats, 'devices': len(jax.devices()), 'suite_step_s': suite_s, 'raw_step_s': raw_s,
          'ratio': suite_s / raw_s, 'suite_step_s_all': suite_times, 'raw_step_s_all': raw_times}


def _read_summary(output_dir: str, what: str) -> dict:
  path = os.path.join(output_dir, outputs.SUMMARY)
  if not os.path.exists(path):
    raise UserError(f'scaling run failed: {what} left no {path}')
  with open(path) as f:
    return json.load(f)


def _summary_of(cmd: list[str], env: dict, output_dir: str) -> dict:
  subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  return _read_summary(output_dir, " ".join(cmd))


def scaling(workload_name: str, scale: str, data_dir: str | None, device_counts=(1, 2, 4, 8)) -> dict:
  """Step time for 1..8 (fake CPU) devices at the same global batch, and 2 processes x 4 vs 1 x 8.

  Each configuration is a real `suite.main` run of one epoch in its own process (XLA fixes the device count at
  start-up). On one CPU the devices share the same cores: these figures track regressions, not speed-ups.
  """
  workdir = tempfile.mkdtemp(prefix='scaling-')
  base = ['--workload=' + workload_name, '--scale=' + scale, '--seed=0', '--config.max_epochs=1']
  if data_dir:
    base.append('--data_dir=' + data_dir)
  step_s = {}
  for n in device_counts:
    out = os.path.join(workdir, f'devices_{n}')
    env = local_job.process_env(n)
    step_s[n] = _summary_of([sys.executable, '-m', 'suite.main', *base, '--output_dir=' + out], env, out)['step_time_s']
  out = os.path.join(workdir, 'processes_2x4')
  local_job.run_job([*base, '--output_dir=' + out], num_processes=2, devices_per_process=4, output=subprocess.DEVNULL)
  two = _read_summary(out, 'the 2-process job')['step_time_s']
  one = step_s.get(8)
  return {'benchmark': 'scaling', 'workload': workload_name, 'scale': scale,
          'note': 'fake CPU devices share 2 cores: for regressions only, not a speed-up measure',
          'step_time_s_by_devices': step_s,
          'ratio_to_1_device': {n: t / step_s[device_counts[0]] for n, t in step_s.items()},
          'two_processes_x4_step_s': two, 'one_process_x8_step_s': one,
          'two_vs_one_process_ratio': two / one if one else None}


def synthetic_compute_wait(workload, batch_sharding, compute_s: float, num_steps: int, warm_steps: int = 2) -> dict:
  """The real pipeline (through the runner's device prefetcher) feeding a "step" that sleeps compute_s, as an
  accelerator's step leaves the host cores to the pipeline: the share of the loop's time spent waiting for data
  (the runner's data_wait_s over its train time), after `warm_steps` untimed steps."""
  batches = sharding.prefetch_to_devices(workload.train_batches(1, 0, 1), batch_sharding)
  for _ in range(warm_steps):
    next(batches)
    time.sleep(compute_s)
  wait_before, start = batches.wait_s, time.perf_counter()
  for _ in range(num_steps):
    next(batches)
    time.sleep(compute_s)
  elapsed = time.perf_counter() - start
  batches.release()
  wait = batches.wait_s - wait_before
  return {'compute_s_per_step': compute_s, 'steps': num_steps, 'data_wait_s': wait, 'loop_s': elapsed,
          'data_wait_share': wait / elapsed}


def real_run_wait(workload_name: str, scale: str, data_dir: str | None, overrides: tuple[str, ...]) -> dict:
  """One seeded `suite.main` run of the workload (its own process, this environment's devices): the data-wait
  share of its training time, from its summary's goodput (data_wait_s over data wait + checkpoint + productive)."""
  out = tempfile.mkdtemp(prefix='pipeline-run-')
  cmd = [sys.executable, '-m', 'suite.main', '--workload=' + workload_name, '--scale=' + scale, '--seed=0',
         '--output_dir=' + out, *(['--data_dir=' + data_dir] if data_dir else []),
         *('--config.' + item for item in overrides)]
  summary = _summary_of(cmd, dict(os.environ), out)
  goodput = summary['goodput']
  train_s = goodput['train_s'] + goodput['data_wait_s'] + goodput['checkpoint_s']
  return {'status': summary['status'], 'train_steps': summary['train_steps'], 'train_s': train_s,
          'data_wait_s': goodput['data_wait_s'], 'data_wait_share': goodput['data_wait_s'] / train_s,
          'samples_per_s': summary['samples_per_s'], 'output_dir': out}


# The config overrides of `pipeline(realistic_data=True)`: generated data in the real layout at the real sizes,
# a few hundred images (a rate needs no more; generation takes well under a minute on 2 cores).
# ImageNet: 500x375 is its most common training size and ~110 kB its mean JPEG (138 GB / 1.28M images); the
# MLPerf ResNet-50 reference crops to 224x224 (mlcommons/training image_classification). COCO 2017: most images
# are 640x480 (or 480x640); RetinaNet resizes to 800x800 (mlcommons/training single_stage_detector, ssd/
# presets: `--image-size 800 800`).
REALISTIC_DATA = {
    'resnet': ('image_size=224', 'generated.source_size=500', 'generated.encoding=jpeg', 'generated.num_train=384',
               'generated.num_eval=128'),
    'ssd': ('image_size=800', 'generated.source_size=640', 'generated.encoding=jpeg', 'generated.num_train=192',
            'generated.num_eval=32'),
}


def mean_record_bytes(workload, limit: int = 64) -> float | None:
  """Mean size of the encoded images of the first `limit` training records (what is read from disk per sample)."""
  source = getattr(workload, '_train_source', None)
  if source is None:
    return None
  n = min(limit, len(source))
  return sum(len(source[i]['image']) for i in range(n)) / n


def pipeline(workload_name: str, scale: str, data_dir: str | None, num_steps: int, repeats: int,
             overrides: tuple[str, ...] = (), system: str = needed_rates.DEFAULT_SYSTEM, compute_ms: float = 0.0,
             real_run: bool = False, realistic_data: bool = False) -> dict:
  """Samples/s of `workload.train_batches` alone and of the compiled train step alone (medians of `repeats`); the
  pipeline keeps the step fed when its figure is the larger (it runs on a thread beside the step in a run).
  `overrides` (--set KEY=VALUE) change config fields, e.g. image_size=224 for ImageNet-sized outputs. Beside them:
  the rate `system`'s published result needs (needed_rates), and the data-wait shares (synthetic_compute_wait,
  and real_run_wait when `real_run`). `realistic_data` (resnet, ssd): REALISTIC_DATA's overrides come first, and
  only the pipeline (and the synthetic compute of compute_ms when given) is measured."""
  needed = needed_rates.needed(workload_name, system)  # Checks --system before the long part.
  realistic = REALISTIC_DATA.get(workload_name, ()) if realistic_data else ()
  config = memory.apply_overrides(registry.get_config(workload_name, scale), [*realistic, *overrides])
  workload = registry.make_workload(workload_name, config, scale)
  with contextlib.redirect_stdout(sys.stderr):  # tfds reports a dataset's generation on stdout; ours is the JSON.
    workload.open_data(data_dir)
  batches = workload.train_batches(0, 0, 1)
  first = next(batches)  # Opens the files.
  # What one step ships host -> device, per sample (the image dtype decides most of it: uint8 or float32).
  bytes_per_sample = sum(np.asarray(v).nbytes for v in jax.tree.leaves(first)) / workload.global_batch_size
  pipeline_s = []
  cpu_start = time.process_time()  # This process's CPU time (all its threads; not worker processes').
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(num_steps):
      next(batches)
    pipeline_s.append((time.perf_counter() - start) / num_steps)
  cpu_s = time.process_time() - cpu_start
  if realistic:
    result = _realistic_result(workload, workload_name, scale, realistic, overrides, num_steps, repeats, system,
                               needed, statistics.median(pipeline_s), first, bytes_per_sample, batches, compute_ms)
    # Samples per CPU-second: the per-core rate on a core of its own, which a busy shared machine's wall-clock
    # figure understates (prefetched batches make it a slight overestimate).
    result['pipeline_samples_per_cpu_s'] = repeats * num_steps * workload.global_batch_size / cpu_s
    return result
  mesh = sharding.make_mesh()
  schedule = workload.learning_rate_schedule(workload.num_train_examples / workload.global_batch_size)
  compiled = compile_steps(workload, mesh, workload.optimizer(schedule), schedule, time.perf_counter)
  state = compiled.init(jax.random.PRNGKey(0))
  on_device = [sharding.to_global(b, compiled.train_batch_sharding) for b in itertools.islice(batches, 4)]
  state, _ = compiled.train(state, on_device[0])
  jax.block_until_ready(state)
  step_s = []
  for _ in range(repeats):
    start = time.perf_counter()
    for i in range(num_steps):
      state, _ = compiled.train(state, on_device[i % len(on_device)])
    jax.block_until_ready(state)
    step_s.append((time.perf_counter() - start) / num_steps)
  if hasattr(batches, 'close'):
    batches.close()  # Frees the cores of its worker processes (data_workers > 0) for what follows.
  batch = workload.global_batch_size
  pipe, step = statistics.median(pipeline_s), statistics.median(step_s)
  cores = len(os.sched_getaffinity(0))
  per_core = batch / pipe / cores
  result = {'benchmark': 'pipeline', 'workload': workload_name, 'scale': scale, 'overrides': list(overrides),
            'global_batch_size': batch, 'data_workers': config.get('data_workers', 0),
            'steps': num_steps, 'repeats': repeats, 'devices': len(jax.devices()), 'host_cores': cores,
            'pipeline_samples_per_s': batch / pipe, 'pipeline_samples_per_s_per_core': per_core,
            'bytes_per_sample_to_device': bytes_per_sample,
            'batch_dtypes': {k: str(np.asarray(v).dtype) for k, v in first.items()},
            'step_samples_per_s': batch / step, 'pipeline_to_step_ratio': step / pipe,
            'system': system, 'needed': needed,
            'needed_samples_per_s_per_accelerator': needed and needed['samples_per_s_per_accelerator'],
            'needed_samples_per_s_per_host_core': needed and needed['samples_per_s_per_host_core'],
            'per_core_ratio_to_needed': needed and per_core / needed['samples_per_s_per_host_core']}
  compute_s = compute_ms / 1000 if compute_ms > 0 else step
  result['synthetic_compute'] = synthetic_compute_wait(workload, compiled.train_batch_sharding, compute_s, num_steps)
  if real_run:
    result['real_run'] = real_run_wait(workload_name, scale, data_dir, overrides)
  return result


def _realistic_result(workload, workload_name, scale, realistic, overrides, num_steps, repeats, system, needed,
                      pipe, first, bytes_per_sample, batches, compute_ms) -> dict:
  """`pipeline`'s figures on realistic data: the pipeline's rate against the needed one (no train step)."""
  if hasattr(batches, 'close'):
    batches.close()
  batch = workload.global_batch_size
  cores = len(os.sched_getaffinity(0))
  per_core = batch / pipe / cores
  c = workload.config
  result = {'benchmark': 'pipeline', 'workload': workload_name, 'scale': scale, 'data': 'realistic',
            'realistic_overrides': list(realistic), 'overrides': list(overrides),
            'source_size': [c.generated.source_size, round(c.generated.source_size * 3 / 4)],
            'encoding': c.generated.encoding, 'output_size': c.image_size,
            'mean_encoded_bytes_per_sample': mean_record_bytes(workload),
            'global_batch_size': batch, 'data_threads': c.get('data_threads'), 'data_workers': c.get('data_workers', 0),
            'steps': num_steps, 'repeats': repeats, 'host_cores': cores,
            'pipeline_samples_per_s': batch / pipe, 'pipeline_samples_per_s_per_core': per_core,
            'bytes_per_sample_to_device': bytes_per_sample,
            'batch_dtypes': {k: str(np.asarray(v).dtype) for k, v in first.items()},
            'system': system, 'needed': needed,
            'needed_samples_per_s_per_accelerator': needed and needed['samples_per_s_per_accelerator'],
            'needed_samples_per_s_per_host_core': needed and needed['samples_per_s_per_host_core'],
            'per_core_ratio_to_needed': needed and per_core / needed['samples_per_s_per_host_core']}
  if compute_ms > 0:
    batch_sharding = sharding.batch_sharding(sharding.make_mesh())
    result['synthetic_compute'] = synthetic_compute_wait(workload, batch_sharding, compute_ms / 1000, num_steps)
  return result


BENCHMARKS = ('overhead', 'scaling', 'memory', 'pipeline')


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHMARKS:
    cli_lib.print_error(f'name one benchmark: python -m suite.bench {{{"|".join(BENCHMARKS)}}} [--workload=...] '
                        '[--scale=...]')
    return cli_lib.EXIT_BAD_INPUT
  try:
    if argv[1] == 'scaling':
      result = scaling(FLAGS.workload, FLAGS.scale, FLAGS.data_dir)
    elif argv[1] == 'pipeline':
      result = pipeline(FLAGS.workload, FLAGS.scale, FLAGS.data_dir, FLAGS.steps, FLAGS.repeats, FLAGS.set,
                        FLAGS.system, FLAGS.compute_ms, FLAGS.real_run, FLAGS.realistic_data)
    elif argv[1] == 'memory':
      result = memory.memory(FLAGS.workload, FLAGS.scale, FLAGS.mesh, FLAGS.devices, FLAGS.set)
    else:
      result = overhead(FLAGS.workload, FLAGS.scale, FLAGS.data_dir, FLAGS.steps, FLAGS.repeats,
                        FLAGS.host_batches)
  except UserError as e:
    cli_lib.print_error(str(e))
    return cli_lib.EXIT_BAD_INPUT
  print(json.dumps(result, indent=2))
  return cli_lib.EXIT_OK


def cli() -> None:
  """The `python -m suite.bench` command."""
  define_flags()
  cli_lib.run(main, __doc__)


if __name__ == '__main__':
  cli()
