"""Train one workload to its target under the MLPerf clock, and write the run's files.

init_start -> open data, build and AOT-compile the steps, init the sharded state (no data read) -> init_stop
-> run_start -> [block of epochs -> eval]* -> run_stop (success at target; aborted at max epochs or divergence).
"""

import contextlib
import dataclasses
import math
import os
import signal
import statistics
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from suite.common import console, distributed, mlperf_log, outputs, provenance, sharding
from suite.common.mlperf_log import KEYS, MLPerfLog
from suite.training import cache_clear, checkpoint, metrics_writer
from suite.training import mfu as mfu_lib
from suite.training.clock import Clock
from suite.training.steps import CompiledSteps, accumulation_steps, compile_steps
from suite.workloads.base import TrainState, Workload


@dataclasses.dataclass(frozen=True)
class RunOptions:
  output_dir: str
  data_dir: str | None = None
  seed: int = 0
  division: str = 'closed'
  submission_org: str = 'jax-suite'
  submission_platform: str = ''  # Default: '<n>x<device kind>'.
  submission_status: str = 'onprem'
  peak_flops: float | None = None  # Per device; default: the kind's data-sheet peak, or measured on CPU.
  overwrite: bool = False
  mesh: str = sharding.DEFAULT_MESH
  dcn_mesh: str = ''
  save_final_checkpoint: bool = True  # The trained state, for inference (suite.inference.run --checkpoint=output_dir).
  profile_steps: tuple[int, int] | None = None  # Capture a jax.profiler trace of these steps into output_dir.
  checkpoint_every_steps: int = 0
  checkpoint_every_s: float = 0.0
  keep_checkpoints: int = 3
  resume: bool = False  # Continue from the latest valid checkpoint in output_dir.
  cache_clear_cmd: str = ''  # Clears the page cache before the run; default: sync + /proc/sys/vm/drop_caches.


class StopTraining(Exception):
  """Ends the step loop early (divergence, preemption). `state`/`step` are the newest (older states were donated)."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason
    self.state = None
    self.step = 0


class TrainMonitor:
  """Receives each step's metrics (one step late), stops on divergence, and records interval timings (with their
  MFU when the FLOPs and the peak are known) to the metrics writer and the progress bar, if any."""

  def __init__(self, clock: Clock, writer: metrics_writer.MetricsWriter,
               log_every_steps: int, steps_per_epoch: float, global_batch_size: int,
               profile_steps: tuple[int, int] | None = None, profile_dir: str = '', stop_flag: dict | None = None,
               flops_per_step_per_device: float | None = None, peak_flops_per_device: float | None = None,
               bar=None):
    self._stop_flag = stop_flag if stop_flag is not None else {'stop': False}
    self._profile_start, self._profile_stop = profile_steps or (-1, -1)
    self._tracing = False
    self._profile_dir = profile_dir
    self._clock = clock
    self._writer = writer
    self._log_every = log_every_steps
    self._steps_per_epoch = steps_per_epoch
    self._global_batch_size = global_batch_size
    self._interval_start = (0, 0.0)
    self.flops_per_step_per_device = flops_per_step_per_device  # Analytic (model) FLOPs: the MFU convention.
    self._peak_flops = peak_flops_per_device
    self._bar = bar
    self.step_times: list[float] = []
    self.last_step = 0

  def start_interval(self, step: int) -> None:
    """Called when stepping resumes (run start, after an eval) so eval time never counts as step time."""
    self._interval_start = (step, self._clock.now())

  def before_step(self, step: int) -> None:
    """Called before step `step` is dispatched: a trace starts there, so the first profiled step is whole."""
    if step == self._profile_start:
      jax.profiler.start_trace(self._profile_dir)
      self._tracing = True

  def stop_profile(self) -> None:
    """Ends a trace (also when the run ends before the last profiled step)."""
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False
      logging.info('profile from step %d written to %s', self._profile_start, self._profile_dir)

  def __call__(self, step: int, metrics: dict) -> None:
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      raise StopTraining(f'divergence: training loss is {loss} at step {step}')
    self.last_step = step
    if self._stop_flag['stop'] or distributed.preempted(step):  # This process's SIGTERM, or any's in a job.
      raise StopTraining('preempted')
    if step == self._profile_stop:  # Its metrics are here, so the device has finished it: the trace holds it all.
      self.stop_profile()
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
    if step % self._log_every:
      return
    start_step, start_time = self._interval_start
    now = self._clock.now()  # Metrics of `step` are on the host, so the device has finished it.
    step_time = (now - start_time) / max(step - start_step, 1)
    self.step_times.append(step_time)
    self._interval_start = (step, now)
    record = {'kind': 'train', 'step': step, 'epoch': step / self._steps_per_epoch,
              **{k: float(v) for k, v in metrics.items()}, 'step_time_s': step_time,
              'samples_per_s': self._global_batch_size / step_time}
    mfu = mfu_lib.utilization(self.flops_per_step_per_device, step_time, self._peak_flops)
    if mfu is not None:
      record['model_flops_utilization'] = mfu
    self._writer.write(record)
    logging.info('step %d (epoch %.2f): loss %.4f, lr %.4g, %.1f ms/step, %.0f samples/s%s', step,
                 record['epoch'], loss, record['learning_rate'], step_time * 1e3, record['samples_per_s'],
                 '' if mfu is None else f', MFU {mfu:.3f}')
    if self._bar is not None:
      self._bar.set_postfix_str(f'epoch {record["epoch"]:.2f}, loss {loss:.4f}, {record["samples_per_s"]:.0f} '
                                'samples/s', refresh=False)


def train_steps(train_step, state: TrainState, batches: Iterator[dict], num_steps: int, first_step: int,
                on_metrics: Callable[[int, dict], None],
                on_state: Callable[[int, TrainState], None] | None = None,
                before_step: Callable[[int], None] | None = None) -> TrainState:
  """The hot loop: dispatch step i, then fetch step i-1's metrics while step i runs. `on_state(i, state)` sees
  every new state (periodic checkpoints); `before_step(i)` runs before step i is dispatched (profiler start).
  Each iteration is a profiler step ('train', step_num=i): a trace shows where each step's time went."""
  pending = None
  step = first_step
  try:
    for step in range(first_step + 1, first_step + num_steps + 1):
      if before_step is not None:
        before_step(step)
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = train_step(state, next(batches))
        if pending is not None:
          on_metrics(step - 1, jax.device_get(pending))
        if on_state is not None:
          on_state(step, state)
      pending = metrics
    if pending is not None:
      on_metrics(first_step + num_steps, jax.device_get(pending))
  except StopTraining as e:
    e.state, e.step = state, step
    raise
  return state


def evaluate(workload: Workload, compiled: CompiledSteps, state: TrainState) -> float:
  """One pass over the eval split on all processes; every process gets the same metric."""
  batches = sharding.prefetch_to_devices(workload.eval_batches(jax.process_index(), jax.process_count()),
                                         compiled.eval_batch_sharding)
  device_outputs = [compiled.eval(state, batch) for batch in batches]
  return workload.eval_metric(jax.device_get(device_outputs))


SKIPPED_TRAIN_RECORDS = 'skipped_train_records'  # Our mllog key: corrupt training records replaced by good ones.


def skipped_train_records(workload: Workload) -> int:
  """Distinct corrupt training records the job replaced (--config.skip_bad_records), over all its processes.

  A union, not a sum: over the epochs every process meets every bad record in its share of some epoch.
  """
  local = np.asarray(workload.skipped_train_records(), np.int32)
  if jax.process_count() == 1:
    return len(set(local.tolist()))
  longest = int(multihost_utils.process_allgather(np.int32(local.size)).max())  # Every process gets here.
  padded = np.full(max(longest, 1), -1, np.int32)
  padded[:local.size] = local
  everyone = multihost_utils.process_allgather(padded)
  return len(set(everyone[everyone >= 0].tolist()))


def log_submission(log: MLPerfLog, workload: Workload, options: RunOptions, platform: str,
                   cache_cleared: bool = False) -> None:
  """The submission keys; `cache_clear` is whether this run's page cache really was cleared
  (suite.training.cache_clear)."""
  log.event(KEYS.SUBMISSION_ORG, options.submission_org)
  log.event(KEYS.SUBMISSION_PLATFORM, platform)
  log.event(KEYS.SUBMISSION_DIVISION, options.division)
  log.event(KEYS.SUBMISSION_STATUS, options.submission_status)
  log.event(KEYS.SUBMISSION_BENCHMARK, workload.benchmark)
  log.event(KEYS.CACHE_CLEAR, cache_cleared)


def run_disclosure(workload: Workload, mesh) -> dict:
  """The run-configuration keys every benchmark of rulesets 6.1.0 on must log once (common.yaml: "mandatory
  precision, parallelism, and run-config disclosure"), the parallelism read from the mesh; none before 6.1.0. The
  precision keys are the workload's own (`hyperparameters`)."""
  if tuple(int(x) for x in workload.ruleset.split('.')) < (6, 1, 0):
    return {}
  batch_shards = math.prod(mesh.shape.get(axis, 1) for axis in sharding.BATCH_AXES)
  return {'tensor_parallelism': mesh.shape.get('tensor', 1), 'pipeline_parallelism': 1, 'context_parallelism': 1,
          'expert_parallelism': 1,
          # Rows one device computes at a time: the global batch over the accumulation steps and the batch shards.
          'micro_batch_size': max(1, workload.global_batch_size // accumulation_steps(workload) // batch_shards),
          'config_filename': outputs.CONFIG}


def log_hyperparameters(log: MLPerfLog, workload: Workload, seed: int, params=None, mesh=None) -> None:
  steps_per_epoch = workload.steps_per_epoch
  log.event(KEYS.SEED, seed)
  log.event(KEYS.GLOBAL_BATCH_SIZE, workload.global_batch_size)
  log.event(KEYS.GRADIENT_ACCUMULATION_STEPS, accumulation_steps(workload))
  log.event(KEYS.TRAIN_SAMPLES, workload.num_train_examples)
  log.event(KEYS.EVAL_SAMPLES, workload.num_eval_examples)
  for key, value in workload.hyperparameters(steps_per_epoch).items():
    log.event(key, value)
  for key, value in (run_disclosure(workload, mesh) if mesh is not None else {}).items():
    log.event(key, value)
  if params is not None:
    for key, value, metadata in workload.init_log_events(params):
      log.event(key, value, metadata=metadata)


def _peak_flops(options: RunOptions) -> mfu_lib.Peak:
  """--peak_flops, else the device kind's data-sheet peak, else (CPU only) the host's measured peak shared by its
  devices; an accelerator missing from the table gets none (utilisation null), never a measured figure."""
  return mfu_lib.resolve_peak(jax.local_devices(), options.peak_flops)


class PeriodicCheckpointer:
  """Saves the state every N steps and/or S seconds (Orbax, asynchronous: only the device->host copy blocks)."""

  def __init__(self, manager, clock: Clock, every_steps: int, every_s: float, meta_fn: Callable[[int], dict]):
    self._manager = manager
    self._clock = clock
    self._every_steps = every_steps
    self._every_s = every_s
    self._meta_fn = meta_fn
    self._last_save = clock.now()
    self.seconds = 0.0

  def __call__(self, step: int, state: TrainState) -> None:
    due = (self._every_steps and step % self._every_steps == 0) or (
        self._every_s and self._clock.now() - self._last_save >= self._every_s)
    if due:
      self.save(step, state)

  def save(self, step: int, state: TrainState) -> None:
    start = self._clock.now()
    with outputs.on_disk_full(str(self._manager.directory)):
      checkpoint.save(self._manager, step, state, self._meta_fn(step))
    self._last_save = self._clock.now()
    self.seconds += self._last_save - start


def _stop_on_sigterm(flag: dict):
  """SIGTERM (what a preemption sends) asks the loop to stop at the next step; returns the previous handler.
  In a multi-process job SIGTERM stays with JAX's preemption service, which stops every process at one step."""
  if distributed.preemption_service_running():
    return None
  def handler(signum, frame):
    del signum, frame
    flag['stop'] = True
  try:
    return signal.signal(signal.SIGTERM, handler)
  except ValueError:  # Not the main thread (e.g. a test calling run() from a worker): no handler.
    return None


def run(workload: Workload, options: RunOptions) -> dict:
  """Trains to the target (or gives up) and returns the summary it also writes to summary.json."""
  console.quiet_third_party_logs()  # Before the data and checkpoint libraries start talking.
  is_main = jax.process_index() == 0
  cache = cache_clear.clear(options.cache_clear_cmd)  # Every process: each host has its own page cache.
  # Bad input fails before anything is written: a missing dataset or an impossible mesh must not cost a file.
  workload.open_data(options.data_dir)
  devices = jax.devices()
  mesh = sharding.make_mesh(devices, options.mesh, options.dcn_mesh)
  resumable = options.resume and checkpoint.has_checkpoints(options.output_dir)
  if is_main:
    outputs.prepare_output_dir(options.output_dir, options.overwrite, options.resume, resumable)
  path = lambda name: os.path.join(options.output_dir, name) if is_main else None  # noqa: E731
  if is_main:
    outputs.write_json(path(outputs.CONFIG), {'workload': workload.benchmark, 'variant': workload.variant,
                                              'scale': workload.scale, 'division': options.division,
                                              'seed': options.seed, 'config': workload.config.to_dict()})
    provenance.record_start(path(outputs.PROVENANCE), provenance.gather(mesh))  # Peak memory added at the end.
  log = MLPerfLog(path(outputs.RESULT_LOG), enabled=is_main)
  writer = metrics_writer.MetricsWriter(options.output_dir if is_main else None, fresh=not resumable)
  clock = Clock(log)
  platform = options.submission_platform or f'{len(devices)}x{devices[0].device_kind}'
  peak = _peak_flops(options)  # Measuring it on CPU runs a matmul: keep it out of init.

  # A resumed run's log already holds its submission, init and run_start lines: "exactly once" keys stay once.
  init_log = MLPerfLog(None, enabled=False) if resumable else log
  clock.logging_enabled = not resumable
  log_submission(init_log, workload, options, platform, cache.cleared)
  clock.init_start()
  steps_per_epoch = workload.steps_per_epoch
  schedule = workload.learning_rate_schedule(steps_per_epoch)
  compiled = compile_steps(workload, mesh, workload.optimizer(schedule), schedule, clock.now)
  state = compiled.init(jax.random.PRNGKey(options.seed))
  step, resumed_from = 0, None
  if resumable:
    state, meta = checkpoint.restore_latest_valid(options.output_dir, compiled.state_specs)
    step, resumed_from = meta['step'], meta
  else:
    params, model_state = workload.load_pretrained(state.params, state.model_state)
    state = state._replace(params=params, model_state=model_state)
  log_hyperparameters(init_log, workload, options.seed, state.params, mesh)
  # Made in init: over several processes, opening it is a collective that compiles, never inside the clock.
  manager = checkpoint.manager(options.output_dir, max_to_keep=options.keep_checkpoints)
  clock.init_stop(state)
  clock.run_start(already_elapsed_s=resumed_from['run_elapsed_s'] if resumed_from else 0.0,
                  eval_s=resumed_from['eval_s'] if resumed_from else 0.0)
  clock.logging_enabled = True
  if resumed_from:
    log.event(mlperf_log.RESUMED, step, metadata={'from_step': step, 'epoch': step / steps_per_epoch,
                                         'note': 'resumed run: not valid for closed-division scoring'})
    logging.info('resumed from the checkpoint of step %d (epoch %.2f)', step, step / steps_per_epoch)

  stop_flag = {'stop': False}
  previous_handler = _stop_on_sigterm(stop_flag)
  # On a terminal (process 0's), a bar over the run's steps; in a log file, the plain step and eval lines only.
  bar = console.progress_bar(workload.epoch_end_step(workload.max_epochs), 'step', enabled=is_main, initial=step,
                             desc='train')
  above_bar = contextlib.ExitStack()
  above_bar.enter_context(console.logs_above_bars())
  monitor = TrainMonitor(clock, writer, workload.config.log_every_steps, steps_per_epoch,
                         workload.global_batch_size, options.profile_steps,
                         os.path.join(options.output_dir, 'profile'), stop_flag,
                         mfu_lib.model_flops_per_step_per_device(workload.model_flops_per_example(),
                                                                 workload.global_batch_size, len(devices)),
                         peak.flops_per_device, bar)
  meta_fn = lambda k: {'step': k, 'seed': options.seed, 'run_elapsed_s': clock.since('run_start'),  # noqa: E731
                       'eval_s': clock.eval_s}
  checkpointer = PeriodicCheckpointer(manager, clock, options.checkpoint_every_steps, options.checkpoint_every_s,
                                      meta_fn)
  periodic = checkpointer if (options.checkpoint_every_steps or options.checkpoint_every_s) else None
  train_batches = sharding.prefetch_to_devices(
      workload.train_batches(options.seed, jax.process_index(), jax.process_count(), start_step=step),
      compiled.train_batch_sharding)
  # Synthetic data evaluates on the batch it trained on: such a run measures throughput, never quality.
  status, reason, metric = 'aborted', 'max_epochs' if workload.measures_quality else 'synthetic_data', None
  epoch = workload.epochs_done(step)
  # A run resumed from a checkpoint taken at a block's last step may have died before that block's eval.
  eval_due = bool(resumed_from) and step == workload.epoch_end_step(epoch) > 0 and (
      epoch % workload.eval_every_epochs == 0 or epoch >= workload.max_epochs)
  try:
    while epoch < workload.max_epochs or eval_due:
      if not eval_due:
        # Blocks end on the eval cadence; a run resumed mid-block first finishes its block.
        block_end = min((epoch // workload.eval_every_epochs + 1) * workload.eval_every_epochs,
                        workload.max_epochs)
        first_epoch = epoch + 1
        clock.block_start(first_epoch, block_end - epoch)
        monitor.start_interval(step)
        num_steps = workload.epoch_end_step(block_end) - step
        state = train_steps(compiled.train, state, train_batches, num_steps, step, monitor, periodic,
                            monitor.before_step)
        step, epoch = step + num_steps, block_end
        clock.block_stop(first_epoch, state)
      eval_due = False
      position = workload.eval_metadata(epoch, step)
      clock.eval_start(position)
      metric = evaluate(workload, compiled, state)
      clock.eval_stop(position)
      log.event(KEYS.EVAL_ACCURACY, metric, metadata=position)
      writer.write({'kind': 'eval', 'epoch': epoch, 'step': step, workload.metric_name: metric,
                    'elapsed_s': clock.since('run_start')})
      logging.info('eval at epoch %d: %s %.4f (target %.4f)', epoch, workload.metric_name, metric,
                   workload.target)
      if workload.measures_quality and workload.reached_target(metric):
        status, reason = 'success', 'target_reached'
        break
  except StopTraining as e:
    state, step, reason = e.state, e.step, e.reason
    logging.error('stopping at step %d: %s', step, reason)
    if reason == 'preempted':  # Keep the work: a restart with --resume continues from here.
      checkpointer.save(step, state)
  finally:
    train_batches.close()
    monitor.stop_profile()
    bar.close()
    above_bar.close()
    with outputs.on_disk_full(str(manager.directory)):
      manager.wait_until_finished()
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)
  metadata = {} if status == 'success' else {'reason': reason}
  clock.run_stop(status, state, **metadata)
  train_batches.release()  # Stops the input worker processes, if any, outside the timed region.
  # After run_stop, the train stream closed: over several processes the count is a collective that compiles, and
  # neither belongs in the time to train. Logged in every run, 0 included.
  skipped = skipped_train_records(workload)
  log.event(SKIPPED_TRAIN_RECORDS, skipped)
  log.close()
  writer.close()
  if options.save_final_checkpoint and reason != 'preempted':  # After run_stop: never inside the timed region.
    with outputs.on_disk_full(str(manager.directory)):
      checkpoint.save(manager, step, state, meta_fn(step) | {'final': True})
      manager.wait_until_finished()
  if clock.compiles_after_run_start:
    logging.warning('%d XLA compilation(s) happened inside the timed region: the time to train includes them',
                    clock.compiles_after_run_start)

  summary = _summary(workload, options, clock, compiled, monitor, train_batches.wait_s, checkpointer.seconds,
                     mesh, devices, platform, peak, status, reason, epoch, step, metric)
  summary['resumed_from_step'] = resumed_from['step'] if resumed_from else None
  # What the rules and every result tool count: the log's first run_start to its last run_stop, downtime included.
  summary['wall_time_to_train_s'] = mlperf_log.run_span_s(path(outputs.RESULT_LOG)) if is_main else None
  summary['cache_clear'] = cache.as_dict()
  summary['skipped_train_records'] = skipped
  if is_main:
    outputs.write_json(path(outputs.SUMMARY), summary)
    provenance.record_peak_memory(path(outputs.PROVENANCE))
  return summary


def _summary(workload, options, clock, compiled, monitor, data_wait_s, checkpoint_s, mesh, devices, platform,
             peak, status, reason, epoch, step, metric) -> dict:
  train_s = clock.time_to_train_s - clock.eval_s
  productive_s = train_s - data_wait_s - checkpoint_s
  goodput = {  # Where the wall time from init_start to run_stop went; only 'train_s' moves the model forward.
      'init_s': clock.init_s, 'compile_s': compiled.compile_s, 'eval_s': clock.eval_s,
      'data_wait_s': data_wait_s, 'checkpoint_s': checkpoint_s, 'train_s': productive_s,
      'goodput': productive_s / (clock.init_s + clock.time_to_train_s)}
  step_time = statistics.median(monitor.step_times) if monitor.step_times else train_s / max(step, 1)
  xla_flops = mfu_lib.compiled_flops(compiled.train)
  model_flops = monitor.flops_per_step_per_device
  return {
      'workload': workload.benchmark, 'scale': workload.scale, 'division': options.division,
      'status': status, 'reason': reason, 'seed': options.seed,
      'target_metric': workload.metric_name, 'target': workload.target, 'final_metric': metric,
      'time_to_train_s': clock.time_to_train_s, 'init_s': clock.init_s, 'compile_s': compiled.compile_s,
      'eval_s': clock.eval_s, 'epochs': epoch, 'train_steps': step,
      'train_samples': step * workload.global_batch_size,
      'samples_per_s': step * workload.global_batch_size / train_s if train_s > 0 else 0.0,
      'step_time_s': step_time, 'peak_flops_per_device': peak.flops_per_device, 'peak_flops_source': peak.source,
      'xla_flops_per_step_per_device': xla_flops, 'model_flops_per_step_per_device': model_flops,
      'xla_flops_utilization': mfu_lib.utilization(xla_flops, step_time, peak.flops_per_device),
      'model_flops_utilization': mfu_lib.utilization(model_flops, step_time, peak.flops_per_device),
      'compiles_after_run_start': clock.compiles_after_run_start,
      'global_batch_size': workload.global_batch_size, 'num_devices': len(devices),
      'mesh': dict(mesh.shape), 'goodput': goodput,
      'num_processes': jax.process_count(), 'device_kind': devices[0].device_kind, 'platform': platform,
      'output_dir': os.path.abspath(options.output_dir),
  }
