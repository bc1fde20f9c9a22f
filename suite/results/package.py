"""Builds an MLPerf Training submission package from a set of runs and shows the official tools' verdicts.

`python -m suite.package --runs_dir=DIR --org=ORG --system=NAME --out=PKG` writes
  PKG/ORG/systems/NAME.json                                   (the system description, filled from this machine)
  PKG/ORG/results/NAME/<benchmark>/result_<i>.txt             (each run's result_0.txt)
  PKG/ORG/benchmarks/<benchmark>/implementations/<impl>/      (README with the commands, and the suite's source)
then runs, from PKG, `mlperf_logging.package_checker`, `mlperf_logging.rcp_checker` (when the ruleset has
reference points for the benchmark) and `mlperf_logging.result_summarizer`, and writes PKG/package_report.json.

Our score is computed from the packaged result files themselves (first run_start to last run_stop, run_stop's
status), normalised by the RCP factor the package checker writes (scaling.json, closed division), and compared with
the summarizer's. A run resumed from a checkpoint is not one continuous run: refused for the closed division,
flagged for the open one.
"""

import json
import os
import platform
import shutil
import subprocess
import sys

from absl import flags

from suite.common import cli as cli_lib
from suite.common import mlperf_log, outputs, provenance, registry
from suite.common.errors import UserError
from suite.results import runs as runs_lib

# The 33 fields mlperf_logging.system_desc_checker requires (4.1.68). All strings: the checker joins some of
# them with ','.join(...), which raises on a number.
SYSTEM_FIELDS = (
    'submitter', 'division', 'status', 'system_name', 'number_of_nodes', 'host_processors_per_node',
    'host_processor_model_name', 'host_processor_core_count', 'host_processor_vcpu_count', 'host_processor_frequency',
    'host_processor_caches', 'host_processor_interconnect', 'host_memory_capacity', 'host_storage_type',
    'host_storage_capacity', 'host_networking', 'host_networking_topology', 'host_memory_configuration',
    'accelerators_per_node', 'accelerator_model_name', 'accelerator_host_interconnect', 'accelerator_frequency',
    'accelerator_on-chip_memories', 'accelerator_memory_configuration', 'accelerator_memory_capacity',
    'accelerator_interconnect', 'accelerator_interconnect_topology', 'cooling', 'hw_notes', 'framework',
    'other_software_stack', 'operating_system', 'sw_notes')

# The log's submission_status -> the system description's status (the only values the 4.x checker accepts).
STATUS = {'onprem': 'Available on-premise', 'cloud': 'Available cloud', 'preview': 'Preview',
          'research': 'Research, Development, or Internal (RDI)'}

SUCCESS_LINE = 'PACKAGE CHECKER FOUND NO ERRORS, SUCCESS !'
_SOFTWARE = ('flax', 'optax', 'orbax-checkpoint', 'grain', 'tensorflow-datasets', 'numpy', 'mlperf-logging')
_SOURCE_DIRS = ('suite', 'models', 'input_pipelines')
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # suite/results/ -> repo


class PackageError(Exception):
  """Bad input: no runs, runs of different benchmarks or divisions, an unknown system field."""


def find_result_files(runs_dir: str) -> list[str]:
  """The runs' result_0.txt in run order (run_0, run_1, ... numerically; or the folder itself)."""
  files = [os.path.join(d, outputs.RESULT_LOG) for d in outputs.run_dirs(runs_dir, containing=outputs.RESULT_LOG)]
  if not files and os.path.exists(os.path.join(runs_dir, outputs.RESULT_LOG)):
    files = [os.path.join(runs_dir, outputs.RESULT_LOG)]
  if not files:
    raise PackageError(f'no run_*/{outputs.RESULT_LOG} under {runs_dir}: give a suite.results.runs output folder')
  return files


def logged_fields(result_files: list[str]) -> dict:
  """benchmark, division and status the runs logged; they must agree, as one package folder holds one of each."""
  fields = {}
  for key in ('submission_benchmark', 'submission_division', 'submission_status'):
    seen = {mlperf_log.first_values(mlperf_log.read_events(p)).get(key) for p in result_files}
    if len(seen) != 1:
      raise PackageError(f'the runs disagree on {key}: {sorted(map(str, seen))}')
    fields[key] = seen.pop()
  return fields


def default_ruleset(benchmark: str, result_file: str) -> str:
  """The checker ruleset of the workload class that wrote the run (its variant from the run's config.json); ''
  for a benchmark the registry does not hold."""
  config_path = os.path.join(os.path.dirname(result_file), outputs.CONFIG)
  variant = ''
  if os.path.exists(config_path):
    with open(config_path, encoding='utf-8') as f:
      variant = json.load(f).get('variant') or ''
  for name in (variant, ''):
    try:
      return registry.workload_class(benchmark, name).ruleset
    except UserError:
      continue
  return ''


def _run_name(result_file: str) -> str:
  return os.path.basename(os.path.dirname(os.path.abspath(result_file)))


def resumed_runs(result_files: list[str], spans: list[mlperf_log.RunSpan]) -> list[dict]:
  """The runs whose logs hold a `resumed` event, with the wall time they are scored on."""
  return [{'run': _run_name(path), 'file': path, 'resumed_from_steps': list(span.resumed_from_steps),
           'time_to_train_s': span.time_to_train_s} for path, span in zip(result_files, spans) if span.resumed]


def score_from_logs(spans: list[mlperf_log.RunSpan], benchmark: str) -> dict:
  """Our score of exactly the files the summarizer reads: log times (first run_start to last run_stop) and the last
  run_stop's status."""
  records = [{'seed': span.seed, 'status': span.status or 'crashed', 'epochs': span.epochs,
              'time_to_train_s': span.time_to_train_s, 'resumed_from_step': (span.resumed_from_steps or (None,))[-1]}
             for span in spans]
  return runs_lib.summarize(records, benchmark)


def _cpuinfo() -> dict:
  """The first processor's /proc/cpuinfo fields, plus the number of sockets (distinct physical ids)."""
  info: dict = {}
  sockets = set()
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        key, _, value = line.partition(':')
        key, value = key.strip(), value.strip()
        if key == 'physical id':
          sockets.add(value)
        info.setdefault(key, value)
  except OSError:
    pass
  info['sockets'] = max(len(sockets), 1)
  return info


def _meminfo_gb() -> str:
  try:
    with open('/proc/meminfo', encoding='utf-8') as f:
      kb = int(next(line for line in f if line.startswith('MemTotal')).split()[1])
    return f'{kb / 2**20:.0f} GB'
  except (OSError, StopIteration):
    return ''


def _os_name() -> str:
  try:
    with open('/etc/os-release', encoding='utf-8') as f:
      pretty = dict(line.rstrip('\n').split('=', 1) for line in f if '=' in line).get('PRETTY_NAME', '')
    return f'{pretty.strip(chr(34))} (kernel {platform.release()})'
  except OSError:
    return platform.platform()


def _software_fields(versions: dict, runtime: dict | None, backend: str | None) -> dict:
  """framework and other_software_stack from versions as suite.common.provenance records them."""
  stack = [f"Python {versions.get('python')}",
           *(f'{name} {versions[name]}' for name in _SOFTWARE if versions.get(name)),
           *(f'{name} {value}' for name, value in (runtime or {}).items())]
  return {'framework': f"JAX {versions.get('jax')} (jaxlib {versions.get('jaxlib')}, {backend} backend)",
          'other_software_stack': ', '.join(stack)}


def _machine_software() -> dict:
  import jax  # pylint: disable=import-outside-toplevel  # Only here: the rest of the packager needs no backend.
  return _software_fields(provenance.software(), provenance.accelerator_runtime(), jax.devices()[0].platform)


def software_description(result_files: list[str]) -> dict:
  """framework and other_software_stack as the runs recorded them in provenance.json (what trained them), not as
  this machine has them. Runs (or a resumed run's segments) trained with different software are refused, saying
  which; runs without a record are named in a warning and the others' versions (else this machine's) are used."""
  missing, stacks, recorded = [], [], []
  for path in result_files:
    run = _run_name(path)
    record = provenance.read(os.path.join(os.path.dirname(path), outputs.PROVENANCE))
    if record is None:
      missing.append(run)
      continue
    for segment in [*record.get('earlier_segments', []), record]:
      stack = (segment.get('software') or {}, segment.get('accelerator_runtime'),
               (segment.get('devices') or {}).get('platform'))
      stacks.append(stack)
      recorded.append((run, {**stack[0], **(stack[1] or {}), 'backend': stack[2]}))
  seen: dict[str, dict[str, list[str]]] = {}  # Each item -> its value -> the runs that recorded it.
  for run, items in recorded:
    for item in dict.fromkeys(name for _, each in recorded for name in each):  # A runtime one run lacks: none.
      runs = seen.setdefault(item, {}).setdefault(str(items.get(item) or 'none'), [])
      if run not in runs:
        runs.append(run)
  differ = [item + ' ' + ' vs '.join(f'{value} ({", ".join(runs)})' for value, runs in values.items())
            for item, values in seen.items() if len(values) > 1]
  if differ:
    raise PackageError(f'the runs were trained with different software ({"; ".join(differ)}): one system '
                       'description covers every run of a package; package runs of one software stack (each '
                       f"run's {outputs.PROVENANCE} says what trained it)")
  if missing:
    fallback = 'the versions the other runs recorded' if stacks else "this machine's versions"
    print(f'warning: {", ".join(missing)} have no {outputs.PROVENANCE} (trained before runs recorded what produced '
          f'them): the system description lists {fallback}', file=sys.stderr)
  return _software_fields(*stacks[-1]) if stacks else _machine_software()


def _device_memory(device) -> str:
  try:
    limit = (device.memory_stats() or {}).get('bytes_limit')
  except Exception:  # pylint: disable=broad-except  # Backends without memory stats (CPU) raise or return None.
    limit = None
  return f'{limit / 2**30:.0f} GB' if limit else ''


def host_description() -> dict:
  """Host fields from this machine (run the packager on the system that ran the runs)."""
  cpu = _cpuinfo()
  vcpus = os.cpu_count() or 1
  mhz = cpu.get('cpu MHz')
  return {
      'host_processors_per_node': str(cpu['sockets']),
      'host_processor_model_name': cpu.get('model name') or platform.processor() or platform.machine(),
      'host_processor_core_count': str(cpu.get('cpu cores') or vcpus),
      'host_processor_vcpu_count': str(vcpus),
      'host_processor_frequency': f'{float(mhz):.0f} MHz' if mhz else '',
      'host_processor_caches': cpu.get('cache size', ''),
      'host_memory_capacity': _meminfo_gb(),
      'host_storage_capacity': f'{shutil.disk_usage("/").total / 1e9:.0f} GB',
      'operating_system': _os_name(),
  }


def accelerator_description(summary: dict) -> dict:
  """Accelerator fields: counts and kind from the runs' summary.json, memory from this machine's jax.devices()."""
  import jax  # pylint: disable=import-outside-toplevel  # Only here: the rest of the packager needs no backend.
  devices = jax.devices()
  kind = summary.get('device_kind') or devices[0].device_kind
  processes = summary.get('num_processes') or 1
  same_kind = devices[0].device_kind == kind
  per_node = (summary.get('num_devices') or len(devices)) // processes
  on_cpu = kind.lower() == 'cpu'  # MLPerf CPU-only systems list no accelerators.
  return {
      'number_of_nodes': str(processes),
      'accelerators_per_node': '0' if on_cpu else str(per_node),
      'accelerator_model_name': 'N/A' if on_cpu else kind,
      'hw_notes': f'trained on {per_node} JAX CPU device(s) per node' if on_cpu else '',
      'accelerator_memory_capacity': _device_memory(devices[0]) if same_kind else '',
  }


def system_description(org: str, system: str, division: str, status: str, summary: dict,
                       overrides: dict[str, str], software: dict | None = None) -> dict:
  """All 33 fields: measured where the machine tells, '' or 'N/A' where only the submitter knows; `software`: the
  runs' framework and other_software_stack (software_description), else this machine's."""
  unknown = sorted(set(overrides) - set(SYSTEM_FIELDS))
  if unknown:
    raise PackageError(f'unknown system field(s) {", ".join(unknown)}: known fields are {", ".join(SYSTEM_FIELDS)}')
  desc = {field: '' for field in SYSTEM_FIELDS}
  desc.update({'submitter': org, 'division': division, 'status': status, 'system_name': system,
               'host_storage_type': 'N/A', 'host_networking': 'N/A', 'host_networking_topology': 'N/A',
               'cooling': 'N/A', 'hw_notes': '', 'sw_notes': 'mlperf-jax-suite (suite.results.package)'})
  desc.update(host_description())
  desc.update(accelerator_description(summary))
  desc.update(software if software is not None else _machine_software())
  desc.update(overrides)
  return desc


def implementation_readme(benchmark: str, commands: list[str], score: dict | None) -> str:
  lines = [f'# {benchmark}: mlperf-jax-suite implementation', '',
           'Trained with `python -m suite.main` (JAX); one command per result file, in order:', '', '```']
  lines += commands + ['```', '']
  if score and score.get('score_s') is not None:
    lines += [f"Score of this set (olympic average of the converged runs): {score['score_s']:.2f} s "
              f"({score['score_min']:.4f} min); {score['converged_runs']}/{score['num_runs']} runs reached the "
              'target.', '']
  return '\n'.join(lines)


def _run_commands(result_files: list[str], set_record: dict | None) -> list[str]:
  if set_record:  # suite.results.runs' score.json knows each run's command.
    return ['python ' + ' '.join(r['command']) for r in set_record['runs']]
  return [f'python -m suite.main ... (see {os.path.dirname(p)})' for p in result_files]


def copy_sources(dest: str) -> None:
  """The suite's Python sources, so the implementation folder holds the code that produced the results."""
  for name in _SOURCE_DIRS:
    src = os.path.join(REPO, name)
    if os.path.isdir(src):
      shutil.copytree(src, os.path.join(dest, name), dirs_exist_ok=True,
                      ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))


def build(runs_dir: str, org: str, system: str, out: str, division: str | None = None, status: str | None = None,
          impl: str = 'jax', overrides: dict[str, str] | None = None) -> dict:
  """Writes the package and returns what it holds: paths, benchmark, division, ruleset."""
  result_files = find_result_files(runs_dir)
  logged = logged_fields(result_files)
  benchmark = logged['submission_benchmark']
  if division and division != logged['submission_division']:
    raise PackageError(f"--division={division} but the runs logged division '{logged['submission_division']}': "
                       'a package must describe the division its logs claim')
  division = logged['submission_division']
  spans = [mlperf_log.run_span(p) for p in result_files]
  resumed = resumed_runs(result_files, spans)
  if resumed and division == 'closed':
    which = ', '.join(f"{r['run']} (from step {', '.join(map(str, r['resumed_from_steps']))})" for r in resumed)
    raise PackageError(f'{which} resumed from a checkpoint: the closed division takes only runs that ran in one '
                       'piece (the MLPerf rules do not let the clock pause); rerun them without --resume')
  status = STATUS.get(status or logged['submission_status'], status or '')
  if status not in STATUS.values():
    raise PackageError(f'unknown status {status!r}: one of {", ".join(STATUS)}')
  score_path = os.path.join(runs_dir, runs_lib.SCORE_FILE)
  set_record = None
  if os.path.exists(score_path):
    with open(score_path, encoding='utf-8') as f:
      set_record = json.load(f)
  score = score_from_logs(spans, benchmark)
  with open(os.path.join(os.path.dirname(result_files[0]), outputs.SUMMARY), encoding='utf-8') as f:
    summary = json.load(f)

  software = software_description(result_files)  # Refuses runs of different software before anything is written.
  org_dir = os.path.join(out, org)
  results_dir = os.path.join(org_dir, 'results', system, benchmark)
  impl_dir = os.path.join(org_dir, 'benchmarks', benchmark, 'implementations', impl)
  if os.path.exists(results_dir):  # Stale result files from an earlier build would be counted as runs.
    shutil.rmtree(results_dir)
  for folder in (os.path.join(org_dir, 'systems'), results_dir, impl_dir):
    os.makedirs(folder, exist_ok=True)
  desc = system_description(org, system, division, status, summary, overrides or {}, software)
  outputs.write_json(os.path.join(org_dir, 'systems', f'{system}.json'), desc, sort_keys=False)
  for i, path in enumerate(result_files):
    shutil.copyfile(path, os.path.join(results_dir, f'result_{i}.txt'))
  with open(os.path.join(impl_dir, 'README.md'), 'w', encoding='utf-8') as f:
    f.write(implementation_readme(benchmark, _run_commands(result_files, set_record), score))
  copy_sources(impl_dir)
  return {'out': os.path.abspath(out), 'org': org, 'system': system, 'benchmark': benchmark, 'division': division,
          'ruleset': default_ruleset(benchmark, result_files[0]), 'results_dir': os.path.abspath(results_dir),
          'num_results': len(result_files), 'score': score, 'resumed_runs': resumed}


def _tool(args: list[str], cwd: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', *args], cwd=cwd, capture_output=True, text=True, check=False)


def has_rcps(benchmark: str, ruleset: str) -> bool:
  import mlperf_logging  # pylint: disable=import-outside-toplevel
  return os.path.exists(os.path.join(os.path.dirname(mlperf_logging.__file__), 'rcp_checker',
                                     f'training_{ruleset}', f'rcps_{benchmark}.json'))


def summarizer_score(csv_path: str, benchmark: str) -> float | None:
  """The benchmark's cell (minutes) in the summarizer's CSV; None when empty or absent."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  if not os.path.exists(csv_path):
    return None
  table = pd.read_csv(csv_path)
  if benchmark not in table or table[benchmark].isna().all():
    return None
  return float(table[benchmark].dropna().iloc[0])


def check(package: dict, ruleset: str) -> dict:
  """Runs the official tools from the folder that holds <org> (as reviewers do) and collects their verdicts."""
  out, org, benchmark = package['out'], package['org'], package['benchmark']
  logs = os.path.join(out, 'checker_logs')
  os.makedirs(logs, exist_ok=True)
  pc = _tool(['mlperf_logging.package_checker', org, 'training', ruleset,
              '--log_output', os.path.join(logs, 'package_checker.log')], out)
  pc_text = pc.stdout + pc.stderr
  verdicts = {'ruleset': ruleset, 'package_checker': {
      'passed': SUCCESS_LINE in pc_text,  # Not its exit status: it exits 0 on errors too.
      'errors': [line for line in pc_text.splitlines() if line.startswith(('ERROR', 'CRITICAL'))]}}
  if has_rcps(benchmark, ruleset):
    rel = os.path.relpath(package['results_dir'], out)
    rcp = _tool(['mlperf_logging.rcp_checker', '--rcp_usage', 'training', '--rcp_version', ruleset, rel,
                 '--log_output', os.path.join(logs, 'rcp_checker.log')], out)
    lines = [line for line in (rcp.stdout + rcp.stderr).splitlines() if 'RCP test' in line]
    verdicts['rcp_checker'] = {'passed': rcp.returncode == 0, 'verdict': lines[-1] if lines else rcp.stderr[-300:]}
  else:
    verdicts['rcp_checker'] = {'passed': None, 'verdict': f'no reference points for {benchmark} in {ruleset}'}
  csv = os.path.join(out, 'summary.csv')
  if os.path.exists(csv):
    os.remove(csv)
  # The package checker's RCP check (closed division) writes scaling.json when the set converged in fewer epochs
  # than the reference; the summarizer multiplies its olympic average by that factor, and so do we.
  factor = rcp_scaling_factor(package['results_dir'])
  rs = _tool(['mlperf_logging.result_summarizer', org, 'training', ruleset, '--csv', 'summary.csv'], out)
  score_min = summarizer_score(csv, benchmark)
  verdicts['result_summarizer'] = {'score_min': score_min, 'csv': csv,
                                   'returncode': rs.returncode, 'notes': [
                                       line for line in (rs.stdout + rs.stderr).splitlines()
                                       if any(w in line for w in ('ERROR', 'NOTICE', 'Traceback', 'failed'))]}
  unscaled = package['score']['score_min']
  ours = None if unscaled is None else unscaled * factor
  verdicts.update(our_unscaled_score_min=unscaled, rcp_scaling_factor=factor, our_score_min=ours)
  # Both without a score (e.g. too many runs missed the target) is agreement too.
  verdicts['scores_agree'] = (ours is None and score_min is None) or (
      ours is not None and score_min is not None and abs(ours - score_min) <= 1e-6 * max(1.0, abs(ours)))
  spans = [mlperf_log.run_span(os.path.join(package['results_dir'], f'result_{i}.txt'))
           for i in range(package['num_results'])]
  aborted = [i for i, span in enumerate(spans) if span.status != 'success']
  notes = []
  if aborted and package['division'] == 'open':
    # Open rules accept any eval_accuracy < 1.0, so the summarizer scores these runs' times; we leave them out.
    notes.append(f'result files {aborted} did not reach the target: the summarizer counts their times in the open '
                 'division (their logs pass its compliance check), our score does not')
  if package.get('resumed_runs'):
    notes.append('a resumed run is scored here on its wall time, first run_start to last run_stop; the summarizer '
                 'takes its first run_stop, or drops its log when that holds two run_stops (a preempted run)')
  if notes:
    verdicts['note'] = '; '.join(notes)
  return verdicts


def rcp_scaling_factor(results_dir: str) -> float:
  """The RCP normalisation factor the official checkers left in results_dir/scaling.json (1.0 when none)."""
  path = os.path.join(results_dir, 'scaling.json')
  if not os.path.exists(path):
    return 1.0
  with open(path, encoding='utf-8') as f:
    return float(json.load(f)['scaling_factor'])


def resumed_lines(package: dict) -> list[str]:
  return [f"  resumed: {r['run']} resumed from a checkpoint (step {', '.join(map(str, r['resumed_from_steps']))}): "
          f"timed on the wall clock, first run_start to last run_stop, {r['time_to_train_s']:.1f} s with the time it "
          'was down; not a valid closed-division result' for r in package.get('resumed_runs', [])]


def format_verdicts(package: dict, verdicts: dict) -> str:
  pc, rcp, rs = verdicts['package_checker'], verdicts['rcp_checker'], verdicts['result_summarizer']
  lines = [f"package {package['out']}/{package['org']} ({package['benchmark']}, {package['division']} division, "
           f"{package['num_results']} result files, ruleset {verdicts['ruleset']})",
           f"  package_checker: {'PASS' if pc['passed'] else 'FAIL'}" + ''.join(f'\n    {e}' for e in pc['errors']),
           f"  rcp_checker: {'n/a' if rcp['passed'] is None else 'PASS' if rcp['passed'] else 'FAIL'}: "
           f"{rcp['verdict']}",
           f"  result_summarizer: score {rs['score_min']} min; ours {verdicts['our_score_min']} min"
           + (f" (x RCP scaling factor {verdicts['rcp_scaling_factor']:.6f})" if verdicts['rcp_scaling_factor'] != 1.0
              else '')]
  lines += resumed_lines(package)
  if verdicts.get('note'):
    lines.append(f"  note: {verdicts['note']}")
  return '\n'.join(lines)


def parse_overrides(items: list[str]) -> dict[str, str]:
  pairs = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep:
      raise PackageError(f'--set {item!r}: expected FIELD=VALUE')
    pairs[key] = value
  return pairs


FLAGS = flags.FLAGS
_REQUIRED = {'runs_dir': 'a suite.runs output folder', 'org': 'the submitter', 'system': 'the system name',
             'out': 'the folder that will hold <org>/'}


def define_flags() -> None:
  flags.DEFINE_string('runs_dir', None, 'A suite.runs output folder (run_<k>/result_0.txt); required.')
  flags.DEFINE_string('org', None, 'Submitter (folder name and the system description); required.')
  flags.DEFINE_string('system', None, 'System name (systems/<system>.json, results/<system>/); required.')
  flags.DEFINE_string('out', None, 'Folder that will hold <org>/; required.')
  flags.DEFINE_enum('division', None, ['open', 'closed'], 'Must match the logs (default: theirs).')
  flags.DEFINE_enum('status', None, sorted(STATUS), 'Availability (default: the logged status).')
  flags.DEFINE_string('impl', 'jax', 'Implementation folder name.')
  flags.DEFINE_string('ruleset', None, "Checker ruleset (default: the benchmark's, e.g. resnet 4.0.0).")
  flags.DEFINE_multi_string('set', [], 'FIELD=VALUE: set a system-description field, e.g. --set cooling=air')
  flags.DEFINE_bool('no_check', False, 'Build only; do not run the official tools.')


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing (bad or unknown flag: one `error:` line, exit 2), then the required flags."""
  rest = cli_lib.parse_flags(argv)
  missing = [f'--{name}=... ({what})' for name, what in _REQUIRED.items() if FLAGS[name].value is None]
  if missing:
    cli_lib.fail(f"pass {', '.join(missing)}")
  if len(rest) > 1:
    cli_lib.fail(f"unexpected argument(s) {' '.join(rest[1:])}: every input is a --flag (see --help)")
  return rest


def main(argv: list[str]) -> int:
  del argv
  args = FLAGS
  try:
    package = build(args.runs_dir, args.org, args.system, args.out, args.division, args.status, args.impl,
                    parse_overrides(args.set))
    ruleset = args.ruleset or package['ruleset']
    if not ruleset:
      raise PackageError(f"no default ruleset for benchmark {package['benchmark']}: pass --ruleset")
  except PackageError as e:
    cli_lib.print_error(str(e))
    return cli_lib.EXIT_BAD_INPUT
  if args.no_check:
    print('\n'.join([f"package written to {package['out']}/{package['org']}", *resumed_lines(package)]))
    return cli_lib.EXIT_OK
  verdicts = check(package, ruleset)
  outputs.write_json(os.path.join(package['out'], 'package_report.json'), {**package, 'verdicts': verdicts},
                     sort_keys=False)
  print(format_verdicts(package, verdicts))
  return cli_lib.EXIT_OK if verdicts['package_checker']['passed'] else cli_lib.EXIT_ABORTED


def cli() -> None:
  """The `python -m suite.package` command."""
  define_flags()
  cli_lib.run(main, __doc__, flags_parser=parse_flags)


if __name__ == '__main__':
  cli()
