"""Entry point: `python -m suite.infer --workload=resnet --scenario=Offline` runs an MLPerf LoadGen test of a model.

LoadGen generates the traffic and writes its logs; the suite provides the QSL (the eval split, preprocessed as
training's eval does it) and the SUT (the forward compiled ahead of time for the scenario's batch sizes). The
workload flags (--workload, --scale, --variant, --config, --config.KEY, --platform, --data_dir) are those of every
workload command (suite.common.cli). Exit status: 0 VALID, 1 INVALID, 2 bad input (one `error:` line).
"""

import dataclasses
import json
import os
import shutil
import sys
import time

from absl import flags

from suite.common import cli as cli_lib
from suite.common.errors import UserError
from suite.inference import loadgen as infer_loadgen

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The LoadGen test's flags, beside the workload flags (suite.common.cli); suite.inference.bench uses them too."""
  flags.DEFINE_enum('scenario', None, list(infer_loadgen.SCENARIOS), 'LoadGen scenario.')
  flags.DEFINE_enum('mode', 'performance', list(infer_loadgen.MODES), 'performance: timing and validity; '
                    'accuracy: every sample once, scored against the closed bound.')
  flags.DEFINE_string('checkpoint', None, 'Output dir of a training run (its checkpoints/ are restored). Default '
                      'for --scale=tiny: a tiny model trained once into --cache_dir.')
  flags.DEFINE_string('cache_dir', None, 'Where the default tiny model is trained and kept '
                      '(default: $XDG_CACHE_HOME/mlperf_jax_suite or ~/.cache/mlperf_jax_suite).')
  flags.DEFINE_string('user_conf', None, "LoadGen user.conf layered over the official mlperf.conf (keys use LoadGen's "
                      "model names: resnet50, retinanet).")
  flags.DEFINE_integer('min_duration_ms', None, 'LoadGen minimum test duration (official: 600000).')
  flags.DEFINE_integer('min_query_count', None, 'LoadGen minimum query count.')
  flags.DEFINE_integer('max_query_count', None, 'LoadGen maximum query count (0: none).')
  flags.DEFINE_float('target_qps', None, 'Server: scheduled queries/s; Offline: expected samples/s '
                     '(default: calibrated from measured latency).')
  flags.DEFINE_float('expected_latency_ms', None, 'SingleStream/MultiStream expected latency per query '
                     '(default: calibrated).')
  flags.DEFINE_float('server_target_latency_ms', None, 'Server p99 latency bound (official: 15 for resnet50, '
                     '100 for retinanet).')
  flags.DEFINE_integer('samples_per_query', None, 'MultiStream samples per query (official: 8).')
  flags.DEFINE_integer('performance_sample_count', None, 'Samples LoadGen keeps loaded (default: mlperf.conf, '
                       'capped at the eval split).')
  flags.DEFINE_integer('server_batch_size', 16, 'Server: the largest dynamic batch (suite.infer without it: the '
                       'largest power of two up to 128 that computes within a quarter of the latency bound).')
  flags.DEFINE_float('server_batch_timeout_ms', 2.0, 'Server: the longest a queued sample waits for a fuller batch '
                     '(suite.infer without it: a quarter of the latency bound).')
  flags.DEFINE_bool('find_peak', False, 'Server: search the highest target_qps that ends VALID at the latency bound '
                    '(bisection over short LoadGen runs in OUTPUT_DIR/peak_search), then run the test at it.')
  flags.DEFINE_integer('peak_trials', 8, '--find_peak: the most search runs before the confirmation run.')
  flags.DEFINE_integer('offline_batch_size', 128, 'Offline: the batch size.')
  flags.DEFINE_enum('precision', None, ['f32', 'bf16', 'int8'], "The forward's precision (default: the config's "
                    'model dtype): f32 or bf16 compute, or int8 weights and activations with static scales '
                    '(suite.inference.quantize).')
  flags.DEFINE_string('calibration_list', None, '--precision=int8: the eval images whose activations set the '
                      "int8 scales, one file name (MLPerf's calibration list format) or sample index a line "
                      '(default for --scale=tiny: the first 500 train samples).')


@dataclasses.dataclass(frozen=True)
class InferOptions:
  workload: str
  scenario: str
  mode: str = 'performance'
  scale: str = 'full'
  data_dir: str | None = None
  output_dir: str = ''
  checkpoint: str | None = None
  cache_dir: str | None = None
  user_conf: str | None = None
  platform: str | None = None
  overwrite: bool = False
  overrides: infer_loadgen.Overrides = dataclasses.field(default_factory=infer_loadgen.Overrides)
  server_batch_size: int | None = None  # Server, None: derived from the bound and the measured batch latencies.
  server_batch_timeout_ms: float | None = None  # Server, None: a share of the bound (suite.inference.server_search).
  find_peak: bool = False
  peak_trials: int = 8
  offline_batch_size: int = 128
  precision: str | None = None
  calibration_list: str | None = None


def batch_policy(scenario: str, settings, options: InferOptions, by_index: bool = False):
  """How the SUT batches: one query's samples in the stream scenarios, large batches Offline, dynamic Server."""
  from suite.inference.sut import BatchPolicy  # pylint: disable=import-outside-toplevel
  if scenario == 'SingleStream':
    return BatchPolicy(1)
  if scenario == 'MultiStream':
    return BatchPolicy(settings.multi_stream_samples_per_query)
  if scenario == 'Server':
    # The largest batch it may take; suite.inference.server_search sizes both from the bound before the test.
    from suite.inference import server_search  # pylint: disable=import-outside-toplevel
    return BatchPolicy(options.server_batch_size or server_search.MAX_SERVER_BATCH,
                       (options.server_batch_timeout_ms or 2.0) / 1e3)
  return BatchPolicy(options.offline_batch_size, by_index=by_index)


def prepare_output_dir(output_dir: str, overwrite: bool) -> None:
  """Never mixes two tests' LoadGen files; a finished test is replaced only with --overwrite."""
  summary = os.path.join(output_dir, 'summary.json')
  if os.path.exists(summary) and not overwrite:
    raise UserError(f'{output_dir} already holds an inference run: choose a new --output_dir or pass --overwrite')
  os.makedirs(output_dir, exist_ok=True)
  for name in ('summary.json', infer_loadgen.SUMMARY_FILE, infer_loadgen.DETAIL_LOG, infer_loadgen.ACCURACY_LOG):
    if os.path.exists(os.path.join(output_dir, name)):
      os.remove(os.path.join(output_dir, name))
  for name in ('calibration', 'peak_search'):  # The replaced test's probes and Server search runs go with it.
    shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def checkpoint_dir(options: InferOptions, variant: str) -> str:
  """--checkpoint, or for --scale=tiny the cached tiny model of the workload's `variant`."""
  from suite.inference import model as infer_model  # pylint: disable=import-outside-toplevel
  if options.checkpoint:
    return options.checkpoint
  if options.scale != 'tiny':
    raise UserError(f'--scale={options.scale} needs --checkpoint=DIR (the --output_dir of a training run)')
  return infer_model.tiny_checkpoint(options.workload, variant, options.data_dir,
                                     options.cache_dir or infer_model.default_cache_dir(), options.platform)


def build(workload, options: InferOptions, checkpoint: str):
  """(settings, predictor, sample library, policy, finish, compile info): everything a test needs, with the
  compiles done before LoadGen starts its clock."""
  import jax  # pylint: disable=import-outside-toplevel

  from suite.common import sharding  # pylint: disable=import-outside-toplevel
  from suite.inference import model as infer_model  # pylint: disable=import-outside-toplevel
  from suite.inference import quantize  # pylint: disable=import-outside-toplevel
  from suite.inference.qsl import SampleLibrary  # pylint: disable=import-outside-toplevel
  model = infer_model.loadgen_model(workload)
  settings = infer_loadgen.build_settings(model, options.scenario, options.mode, options.user_conf,
                                          options.overrides, workload.num_eval_examples)
  mesh = sharding.make_mesh()
  params, model_state = infer_model.restore_weights(workload, mesh, checkpoint)
  # The forward at the asked precision: the workload's own predict over a model computing in it.
  forward, params, precision = quantize.prepare(workload, options.precision, options.calibration_list, mesh, params,
                                                model_state)
  policy = batch_policy(options.scenario, settings, options, workload.inference_group_by_index)
  sizes = infer_model.batch_sizes_for(options.scenario, settings.multi_stream_samples_per_query, policy.max_batch)
  predictor = infer_model.compile_predictor(forward, mesh, params, model_state, sizes)
  predictor.precision = precision
  library = SampleLibrary.for_workload(workload, settings.performance_sample_count_override)
  finish = lambda out, n: workload.encode_responses(jax.device_get(out), n)  # noqa: E731
  return settings, predictor, library, policy, finish


def execute(settings, library, predictor, finish, policy, output_dir: str, audit_config: str = 'audit.config') -> dict:
  """One LoadGen test of a SUT over `predictor`; the SUT's counts (errors, samples, batches) and wall time.
  `audit_config`: the compliance test settings file LoadGen applies if it exists (suite.inference.audit)."""
  import mlperf_loadgen as lg  # pylint: disable=import-outside-toplevel

  from suite.inference.sut import SUT  # pylint: disable=import-outside-toplevel
  sut = SUT(library.gather, predictor, finish, policy)
  sut_handle, qsl_handle = sut.construct(), library.construct()
  start = time.perf_counter()
  try:
    infer_loadgen.run_test(sut_handle, qsl_handle, settings, output_dir, audit_config)
  finally:
    test_s = time.perf_counter() - start
    sut.stop()
    lg.DestroyQSL(qsl_handle)
    lg.DestroySUT(sut_handle)
  return {'errors': sut.errors, 'error_messages': sut.error_messages, 'samples_answered': sut.samples,
          'batches': sut.batches, 'test_s': test_s}


def probe_rate(settings, scenario: str, library, predictor, finish, policy, folder: str,
               rate: float, audit_config: str = 'audit.config') -> float | None:
  """The rate (infer_loadgen.expected_rate's units) a short LoadGen test of the SUT sustains when told to expect
  `rate`: the test's own settings for infer_loadgen.probe_duration_ms and no minimum query count, its logs in
  `folder`. The samples it loads stay loaded for the test. `audit_config`: as for execute."""
  from suite.inference.qsl import PinnedLibrary  # pylint: disable=import-outside-toplevel
  saved = (settings.min_duration_ms, settings.min_query_count, settings.max_query_count,
           infer_loadgen.expected_rate(settings, scenario))
  try:
    settings.min_duration_ms = infer_loadgen.probe_duration_ms(settings.min_duration_ms)
    settings.min_query_count, settings.max_query_count = 1, 0
    infer_loadgen.set_expected_rate(settings, scenario, rate)
    stats = execute(settings, PinnedLibrary(library), predictor, finish, policy, folder, audit_config)
  finally:
    settings.min_duration_ms, settings.min_query_count, settings.max_query_count = saved[:3]
    infer_loadgen.set_expected_rate(settings, scenario, saved[3])
  return None if stats['errors'] else infer_loadgen.measured_rate(folder, scenario)


def find_server_peak(settings, library, predictor, finish, policy, options: InferOptions,
                     latencies: dict[int, float]) -> tuple[dict, dict]:
  """(stats of the test, the search's report): suite.inference.server_search's bisection over short Server runs
  (the test's settings, at most server_search.TRIAL_MS and TRIAL_QUERIES each), then the test at the peak in
  OUTPUT_DIR."""
  from suite.inference import server_search  # pylint: disable=import-outside-toplevel
  from suite.inference.qsl import PinnedLibrary  # pylint: disable=import-outside-toplevel
  full = (settings.min_duration_ms, settings.min_query_count)
  short = (min(full[0], server_search.TRIAL_MS), min(full[1], server_search.TRIAL_QUERIES))
  stats = {}

  def run_at(qps: float, folder: str, trial: bool) -> server_search.Trial:
    settings.server_target_qps = qps
    settings.min_duration_ms, settings.min_query_count = short if trial else full
    stats[folder] = execute(settings, PinnedLibrary(library), predictor, finish, policy, folder)
    result = infer_loadgen.read_result(folder, 'Server')
    invalid = infer_loadgen.judge(result, 'performance', stats[folder]['errors'], stats[folder]['error_messages'])
    return server_search.Trial(qps, not invalid, result.get('p99_latency_ms'), result.get('samples_per_s'),
                               '; '.join(invalid) or None, os.path.abspath(folder))

  low, high = server_search.bracket(latencies, policy.max_batch)
  report = server_search.search(run_at, options.output_dir, low, high, options.peak_trials)
  report['latency_bound_ms'] = settings.server_target_latency_ns / 1e6
  return stats[options.output_dir], report


def run(workload, options: InferOptions) -> dict:
  """One LoadGen test; returns the summary it also writes to summary.json."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from suite.common import outputs  # pylint: disable=import-outside-toplevel
  from suite.inference import accuracy as infer_accuracy  # pylint: disable=import-outside-toplevel
  from suite.inference import model as infer_model  # pylint: disable=import-outside-toplevel
  from suite.inference import quantize  # pylint: disable=import-outside-toplevel
  infer_model.loadgen_model(workload)  # A variant without a LoadGen benchmark fails before any work.
  quantize.check_options(options.precision, options.calibration_list, options.scale)
  workload.open_data(options.data_dir)
  checkpoint = checkpoint_dir(options, workload.variant)
  settings, predictor, library, policy, finish = build(workload, options, checkpoint)
  prepare_output_dir(options.output_dir, options.overwrite)

  sample = workload.batch_shapes(1, train=False)[workload.inference_input_key]
  make_batch = lambda b: np.zeros((b, *sample.shape[1:]), sample.dtype)  # noqa: E731
  run_batch = lambda images: finish(predictor(images), images.shape[0])  # noqa: E731
  latencies: dict[int, float] = {}  # Each batch size measured once, for the batcher and the calibration.
  measure = lambda b: latencies.get(b) or latencies.setdefault(  # noqa: E731
      b, infer_loadgen.measure_latency(run_batch, make_batch, b))
  batching = search = None
  if options.scenario == 'Server':
    from suite.inference import server_search  # pylint: disable=import-outside-toplevel
    policy, batching = server_search.adapt_policy(policy, settings.server_target_latency_ns / 1e9, measure,
                                                  options.server_batch_size, options.server_batch_timeout_ms)
  measured, probes = {}, iter(range(infer_loadgen.PROBES))
  if options.mode == 'performance':
    keep = infer_loadgen.user_conf_keys(options.user_conf, infer_model.loadgen_model(workload),
                                        options.scenario)
    measured = infer_loadgen.calibrate(
        settings, options.scenario, measure, policy.max_batch, keep, options.overrides,
        probe=lambda rate: probe_rate(settings, options.scenario, library, predictor, finish, policy,
                                      os.path.join(options.output_dir, 'calibration', f'probe_{next(probes)}'),
                                      rate))

  if options.find_peak:
    stats, search = find_server_peak(settings, library, predictor, finish, policy, options, batching['latency_s'])
  else:
    stats = execute(settings, library, predictor, finish, policy, options.output_dir)
  result = infer_loadgen.read_result(options.output_dir, options.scenario)
  if measured:
    # What LoadGen planned from against what the test sustained (within 10% is the calibration's goal).
    measured['expected_qps'] = infer_loadgen.expected_rate(settings, options.scenario)
    measured['measured_qps'] = infer_loadgen.measured_rate(options.output_dir, options.scenario)
    measured['expected_over_measured'] = (measured['expected_qps'] / measured['measured_qps']
                                          if measured['measured_qps'] else None)
  # Any failed sample, LoadGen error or LoadGen INVALID makes the run INVALID, whatever LoadGen's own verdict.
  invalid = infer_loadgen.judge(result, options.mode, stats['errors'], stats['error_messages'])
  accuracy = None
  if options.mode == 'accuracy':
    log = infer_accuracy.read_accuracy_log(os.path.join(options.output_dir, infer_loadgen.ACCURACY_LOG))
    accuracy = infer_accuracy.score(workload, log)
  summary = {
      'workload': options.workload, 'model': infer_model.loadgen_model(workload), 'scale': options.scale,
      'scenario': options.scenario, 'mode': options.mode,
      'result': 'INVALID' if invalid else 'VALID', 'valid': not invalid, 'reason': '; '.join(invalid) or None,
      'loadgen_result': result['result'],
      'headline': result.get('headline'), 'headline_value': result.get(result.get('headline')),
      'accuracy': accuracy, **stats, 'batch_sizes': sorted(predictor.executables),
      'policy': dataclasses.asdict(policy), 'compile_s': predictor.compile_s, 'server_batching': batching,
      'server_search': search,
      'calibration': measured, **predictor.precision,
      'settings': {'min_duration_ms': settings.min_duration_ms, 'min_query_count': settings.min_query_count,
                   'server_target_qps': settings.server_target_qps,
                   'server_target_latency_ms': settings.server_target_latency_ns / 1e6,
                   'server_target_latency_percentile': settings.server_target_latency_percentile,
                   'offline_expected_qps': settings.offline_expected_qps,
                   'single_stream_expected_latency_ms': settings.single_stream_expected_latency_ns / 1e6,
                   'multi_stream_expected_latency_ms': settings.multi_stream_expected_latency_ns / 1e6,
                   'multi_stream_samples_per_query': settings.multi_stream_samples_per_query,
                   'performance_sample_count': settings.performance_sample_count_override},
      'checkpoint': os.path.abspath(checkpoint), 'user_conf': options.user_conf,
      'device_kind': jax.devices()[0].device_kind, 'num_devices': jax.device_count(),
      'output_dir': os.path.abspath(options.output_dir),
  }
  outputs.write_json(os.path.join(options.output_dir, 'summary.json'), summary)
  return summary


def human_line(s: dict) -> str:
  if s['mode'] == 'accuracy':
    a = s['accuracy']
    verdict = 'meets' if a['meets_closed_bound'] else 'below'
    bound = ('open division (no closed bound)' if a['closed_bound'] is None
             else f"{verdict} the closed bound {a['closed_bound']:.4f}")
    figure = f"{a['metric']} {a['accuracy']:.4f} over {a['samples_scored']}/{a['eval_samples']} samples, {bound}"
  else:
    value = s['headline_value']
    figure = f"{s['result']}, {s['headline']} {'n/a' if value is None else f'{value:.4g}'}"
  if not s['valid']:
    figure = f"{figure}; INVALID: {s['reason']}" if s['mode'] == 'accuracy' else f"{figure} ({s['reason']})"
  return (f"{s['model']} ({s['scale']}) {s['scenario']} {s['mode']}: {figure}; errors {s['errors']}; "
          f"files in {s['output_dir']}")


def options_from_flags() -> InferOptions:
  if not FLAGS.scenario:
    raise UserError(f"pass --scenario: one of {', '.join(infer_loadgen.SCENARIOS)}")
  if FLAGS.find_peak and (FLAGS.scenario != 'Server' or FLAGS.mode != 'performance'):
    raise UserError('--find_peak searches the Server rate: pass --scenario=Server --mode=performance with it')
  if FLAGS.find_peak and FLAGS.target_qps is not None:
    raise UserError('--find_peak searches target_qps itself: drop --target_qps (or drop --find_peak to run at it)')
  output_dir = FLAGS.output_dir or os.path.join(
      'runs', f'infer-{FLAGS.workload}-{FLAGS.scale}-{FLAGS.scenario}-{FLAGS.mode}-{time.strftime("%Y%m%d-%H%M%S")}')
  overrides = infer_loadgen.Overrides(
      min_duration_ms=FLAGS.min_duration_ms, min_query_count=FLAGS.min_query_count,
      max_query_count=FLAGS.max_query_count, target_qps=FLAGS.target_qps,
      expected_latency_ms=FLAGS.expected_latency_ms, server_target_latency_ms=FLAGS.server_target_latency_ms,
      samples_per_query=FLAGS.samples_per_query, performance_sample_count=FLAGS.performance_sample_count)
  return InferOptions(
      workload=FLAGS.workload, scenario=FLAGS.scenario, mode=FLAGS.mode, scale=FLAGS.scale,
      data_dir=FLAGS.data_dir, output_dir=output_dir, checkpoint=FLAGS.checkpoint, cache_dir=FLAGS.cache_dir,
      user_conf=FLAGS.user_conf, platform=FLAGS.platform, overwrite=FLAGS.overwrite, overrides=overrides,
      # Unset, the Server batcher is sized from the latency bound (suite.inference.server_search).
      server_batch_size=FLAGS.server_batch_size if FLAGS['server_batch_size'].present else None,
      server_batch_timeout_ms=FLAGS.server_batch_timeout_ms if FLAGS['server_batch_timeout_ms'].present else None,
      find_peak=FLAGS.find_peak, peak_trials=FLAGS.peak_trials,
      offline_batch_size=FLAGS.offline_batch_size, precision=FLAGS.precision,
      calibration_list=FLAGS.calibration_list)


def main(argv) -> int:
  del argv
  from suite.common import registry  # pylint: disable=import-outside-toplevel
  try:
    options = options_from_flags()
    if options.checkpoint and not os.path.isdir(options.checkpoint):
      raise UserError(f'--checkpoint={options.checkpoint} does not exist: pass the --output_dir of a training run')
    cli_lib.select_platform(options.platform)
    # LoadGen's threads, the batcher and the completer hand the GIL to each other per query: the default 5 ms
    # switch interval would add up to that much to every latency.
    sys.setswitchinterval(1e-4)
    summary = run(registry.make_workload(options.workload, cli_lib.workload_config(), options.scale), options)
  except UserError as e:
    cli_lib.print_error(str(e))
    return cli_lib.EXIT_BAD_INPUT
  print(human_line(summary), flush=True)
  print(json.dumps({k: summary[k] for k in ('scenario', 'mode', 'result', 'headline', 'headline_value',
                                            'errors', 'reason')}), flush=True)
  return cli_lib.EXIT_OK if summary['valid'] else cli_lib.EXIT_ABORTED


def define_all_flags() -> None:
  cli_lib.define_workload_flags()
  cli_lib.define_output_flags('runs/infer-<workload>-<scale>-<scenario>-<mode>-<time>')
  define_flags()


def cli() -> None:
  """The `python -m suite.infer` command."""
  define_all_flags()
  cli_lib.run(main, __doc__, flags_parser=cli_lib.parse_workload_flags, extra_help=cli_lib.CONFIG_HELP)


if __name__ == '__main__':
  cli()
