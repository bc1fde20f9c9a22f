"""Runs the suite on every worker of a Cloud TPU VM (single host or pod slice) with the ordinary `gcloud` commands.

`python -m launch.tpu_vm --tpu=NAME --zone=ZONE [--project=P] [--repo_url=URL | --repo_dir=PATH] [--dry_run]
-- <suite.main flags>` builds three steps and runs them in order, stopping at the first failure:

1. install, on all workers: clone `--repo_url` (or copy the local `--repo_dir`) into `--remote_dir` and
   `pip install -e ".[tpu]"`; skipped when neither is given (the suite is already there);
2. run, on all workers at once with the same flags: `python3 -m suite.main ... --platform=tpu`. Nothing tells a
   worker its rank: on a TPU VM `jax.distributed.initialize()` reads the pod's layout from the TPU metadata;
3. collect: copy `--output_dir` from worker 0 (the only process that writes the log) into `--collect_dir`.

With --dry_run the commands are printed (shell-quoted) and nothing runs. The launcher is only a command builder:
the functions below return argument lists, and the cluster work is gcloud's.
"""

import os
import shlex
import shutil
import subprocess
import sys
import time

from absl import app, flags

from launch.common import with_platform
from suite.common.cli import flag_value

_UPLOAD_DIR = '.mlperf-jax-suite-upload'  # Staging copy on each worker; see install_commands.


def _gcloud(verb: str, tpu_args: list[str], zone: str, project: str | None, worker: str) -> list[str]:
  cmd = ['gcloud', 'compute', 'tpus', 'tpu-vm', verb, *tpu_args, f'--zone={zone}', f'--worker={worker}']
  return cmd + ([f'--project={project}'] if project else [])


def ssh_command(tpu: str, zone: str, project: str | None, remote_shell: str, worker: str = 'all') -> list[str]:
  """`gcloud ... ssh` running one shell command line on `worker` (`all`: every worker, in parallel)."""
  return _gcloud('ssh', [tpu, f'--command={remote_shell}'], zone, project, worker)


def scp_command(tpu: str, zone: str, project: str | None, src: str, dst: str, worker: str) -> list[str]:
  return _gcloud('scp', ['--recurse', src, dst], zone, project, worker)


def with_output_dir(suite_args: list[str], stamp: str) -> tuple[list[str], str]:
  """Every worker must be given the same --output_dir (the suite's default has each worker's own clock in it)
  and the collect step must know it, so the launcher picks one when the user did not."""
  output_dir = flag_value(suite_args, 'output_dir')
  if output_dir:
    return list(suite_args), output_dir
  workload = flag_value(suite_args, 'workload') or 'resnet'
  scale = flag_value(suite_args, 'scale') or 'full'
  output_dir = f'runs/{workload}-{scale}-{stamp}'
  return [*suite_args, f'--output_dir={output_dir}'], output_dir


def install_commands(tpu: str, zone: str, project: str | None, remote_dir: str, python: str,
                     repo_url: str | None = None, repo_dir: str | None = None) -> list[list[str]]:
  """Puts the suite at `remote_dir` (relative to the home directory) on every worker and installs it."""
  pip = f'cd {shlex.quote(remote_dir)} && {python} -m pip install -e {shlex.quote(".[tpu]")}'
  if repo_url:
    fetch = (f'if [ -d {shlex.quote(remote_dir)}/.git ]; then git -C {shlex.quote(remote_dir)} pull --ff-only; '
             f'else git clone {shlex.quote(repo_url)} {shlex.quote(remote_dir)}; fi')
    return [ssh_command(tpu, zone, project, f'{fetch} && {pip}')]
  if repo_dir:
    # scp into an existing folder nests the copy inside it, so copy to a fresh staging folder and merge it in:
    # a re-install keeps the runs already on the worker.
    return [
        ssh_command(tpu, zone, project, f'rm -rf {_UPLOAD_DIR}'),
        scp_command(tpu, zone, project, repo_dir, f'{tpu}:{_UPLOAD_DIR}', worker='all'),
        ssh_command(tpu, zone, project, f'mkdir -p {shlex.quote(remote_dir)} && cp -a {_UPLOAD_DIR}/. '
                    f'{shlex.quote(remote_dir)}/ && rm -rf {_UPLOAD_DIR} && {pip}'),
    ]
  return []


def run_command(tpu: str, zone: str, project: str | None, remote_dir: str, python: str,
                suite_args: list[str]) -> list[str]:
  """The same `python -m suite.main` on every worker at once; jax.distributed finds the pod by itself."""
  suite = shlex.join([python, '-m', 'suite.main', *suite_args])
  return ssh_command(tpu, zone, project, f'cd {shlex.quote(remote_dir)} && {suite}')


def collect_command(tpu: str, zone: str, project: str | None, remote_dir: str, output_dir: str,
                    collect_dir: str) -> list[str]:
  """Copies the run's folder from worker 0, the only process that writes the MLPerf log and summary."""
  remote = output_dir if os.path.isabs(output_dir) else f'{remote_dir}/{output_dir}'
  return scp_command(tpu, zone, project, f'{tpu}:{remote}', collect_dir, worker='0')


def job_steps(tpu: str, zone: str, project: str | None, suite_args: list[str], *, repo_url: str | None = None,
              repo_dir: str | None = None, remote_dir: str = 'mlperf-jax-suite', python: str = 'python3',
              collect_dir: str = 'runs', stamp: str | None = None) -> list[tuple[str, list[str]]]:
  """(step name, command) for install, run and collect, in order."""
  if repo_url and repo_dir:
    raise ValueError('give --repo_url or --repo_dir, not both')
  args, output_dir = with_output_dir(with_platform(suite_args, 'tpu'), stamp or time.strftime('%Y%m%d-%H%M%S'))
  steps = [('install', cmd) for cmd in install_commands(tpu, zone, project, remote_dir, python, repo_url, repo_dir)]
  steps.append(('run', run_command(tpu, zone, project, remote_dir, python, args)))
  if not output_dir.startswith('gs://'):  # A bucket needs no collecting: it is already off the workers.
    steps.append(('collect', collect_command(tpu, zone, project, remote_dir, output_dir, collect_dir)))
  return steps


def run_steps(steps: list[tuple[str, list[str]]], collect_dir: str) -> int:
  if shutil.which(steps[0][1][0]) is None:
    print('error: gcloud is not on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) '
          'or pass --dry_run to print the commands', file=sys.stderr)
    return 2
  for name, cmd in steps:
    if name == 'collect':  # scp copies into the folder only if it exists (otherwise it becomes the copy).
      os.makedirs(collect_dir, exist_ok=True)
    print(f'==> {name}: {shlex.join(cmd)}', file=sys.stderr, flush=True)
    status = subprocess.run(cmd, check=False).returncode
    if status != 0:
      print(f'error: step {name!r} failed with exit status {status}: {shlex.join(cmd)}', file=sys.stderr)
      return status
  return 0


def _define_flags() -> None:
  # Defined only when run as a program, so that tests can import the builders without registering flags.
  flags.DEFINE_string('tpu', None, 'TPU VM (or pod slice) name.', required=True)
  flags.DEFINE_string('zone', None, 'Its zone, e.g. us-central2-b.', required=True)
  flags.DEFINE_string('project', None, 'Google Cloud project (default: gcloud\'s configured one).')
  flags.DEFINE_string('repo_url', None, 'git URL of the suite to clone on every worker.')
  flags.DEFINE_string('repo_dir', None, 'Local folder of the suite to copy to every worker.')
  flags.DEFINE_string('remote_dir', 'mlperf-jax-suite', 'Where the suite lives on each worker (relative: to $HOME).')
  flags.DEFINE_string('python', 'python3', 'Python on the workers (TPU VM images have python3, not always python).')
  flags.DEFINE_string('collect_dir', 'runs', 'Local folder the run\'s output folder is copied into.')
  flags.DEFINE_bool('dry_run', False, 'Print the commands and exit.')


def main(argv: list[str]) -> int:
  f = flags.FLAGS
  try:
    steps = job_steps(f.tpu, f.zone, f.project, argv[1:], repo_url=f.repo_url, repo_dir=f.repo_dir,
                      remote_dir=f.remote_dir, python=f.python, collect_dir=f.collect_dir)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if f.dry_run:
    for _, cmd in steps:
      print(shlex.join(cmd))
    return 0
  return run_steps(steps, f.collect_dir)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
