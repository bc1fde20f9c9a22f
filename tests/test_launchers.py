"""The cluster launchers generate the right gcloud commands, sbatch script and JobSet, without any cluster."""

import json
import os
import shlex
import subprocess
import sys

import pytest
import yaml

from launch import kubernetes, slurm, tpu_vm
from tests.conftest import REPO

SUITE_ARGS = ['--workload=resnet', '--data_dir=/data/tfds', '--config.note=a b; rm -rf ~', '--seed=1']


def _launch(module: str, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
  env = {**os.environ, **({'PATH': path} if path is not None else {})}
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=60, check=False)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  lines = [line for line in result.stderr.strip().splitlines() if line.startswith('error: ')]
  assert len(lines) == 1, result.stderr
  return lines[0]


def _remote_argv(cmd: list[str]) -> list[str]:
  """The argv that the worker's shell runs for a `gcloud ... ssh --command=...`."""
  command = next(a for a in cmd if a.startswith('--command='))[len('--command='):]
  return shlex.split(command.split(' && ')[-1])


# TPU VM


def test_tpu_vm_steps_from_a_git_url():
  steps = tpu_vm.job_steps('my-pod', 'us-central2-b', 'proj', SUITE_ARGS, repo_url='https://example.com/s.git',
                           stamp='20250101-000000')
  assert [name for name, _ in steps] == ['install', 'run', 'collect']
  (_, install), (_, run), (_, collect) = steps
  for cmd in (install, run):
    assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-pod']
    assert '--worker=all' in cmd and '--zone=us-central2-b' in cmd and '--project=proj' in cmd
  assert 'git clone https://example.com/s.git' in ' '.join(install) and "pip install -e '.[tpu]'" in ' '.join(install)
  # Every worker runs the suite with the user's flags verbatim, then the launcher's own.
  assert _remote_argv(run) == ['python3', '-m', 'suite.main', *SUITE_ARGS, '--platform=tpu',
                               '--output_dir=runs/resnet-full-20250101-000000']
  assert collect[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', '--recurse']
  assert '--worker=0' in collect and '--worker=all' not in collect
  assert collect[6:8] == ['my-pod:mlperf-jax-suite/runs/resnet-full-20250101-000000', 'runs']


def test_tpu_vm_copies_a_local_repo_to_every_worker():
  steps = tpu_vm.job_steps('tpu', 'z', None, ['--output_dir=/abs/run'], repo_dir='/src/suite')
  installs = [cmd for name, cmd in steps if name == 'install']
  assert all('--worker=all' in cmd for cmd in installs)
  assert any(cmd[4:7] == ['scp', '--recurse', '/src/suite'] for cmd in installs)
  assert not any(a.startswith('--project') for _, cmd in steps for a in cmd)
  assert steps[-1][1][6] == 'tpu:/abs/run'  # An absolute --output_dir is collected as is.


def test_tpu_vm_without_repo_only_runs_and_collects():
  assert [name for name, _ in tpu_vm.job_steps('tpu', 'z', None, [])] == ['run', 'collect']
  assert [name for name, _ in tpu_vm.job_steps('tpu', 'z', None, ['--output_dir=gs://b/r'])] == ['run']


def test_tpu_vm_dry_run_prints_shell_quoted_commands():
  result = _launch('launch.tpu_vm', '--tpu=my-pod', '--zone=us-central2-b', '--repo_url=https://example.com/s.git',
                   '--dry_run', '--', *SUITE_ARGS)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 3
  run = shlex.split(lines[1])  # Each line is one shell-quoted command.
  assert _remote_argv(run)[3:3 + len(SUITE_ARGS)] == SUITE_ARGS


def test_tpu_vm_errors_are_one_line():
  line = _one_error_line(_launch('launch.tpu_vm', '--tpu=t', '--zone=z', '--dry_run', '--', '--platform=gpu'))
  assert '--platform=gpu' in line
  no_gcloud = _launch('launch.tpu_vm', '--tpu=t', '--zone=z', '--', '--workload=resnet',
                      path=os.path.dirname(sys.executable))
  assert 'gcloud is not on PATH' in _one_error_line(no_gcloud)


# SLURM


@pytest.mark.parametrize('mode, tasks, gpus_line, device_ids', [
    ('gpu', 8, '#SBATCH --gpus-per-task=1', '0'),
    ('node', 1, '#SBATCH --gpus-per-node=8', '0,1,2,3,4,5,6,7'),
])
def test_sbatch_script_for_both_layouts(mode, tasks, gpus_line, device_ids):
  script = slurm.sbatch_script(SUITE_ARGS, nodes=4, gpus_per_node=8, one_process_per=mode, partition='a100',
                               time_limit='02:00:00', account='mlperf')
  lines = script.splitlines()
  assert lines[0] == '#!/bin/bash'
  for expected in ['#SBATCH --nodes=4', f'#SBATCH --ntasks-per-node={tasks}', f'#SBATCH --ntasks={4 * tasks}',
                   gpus_line, '#SBATCH --partition=a100', '#SBATCH --time=02:00:00', '#SBATCH --account=mlperf',
                   f'export JAX_LOCAL_DEVICE_IDS={device_ids}']:
    assert expected in lines, script
  other = '#SBATCH --gpus-per-node=8' if mode == 'gpu' else '#SBATCH --gpus-per-task=1'
  assert other not in lines  # The two layouts ask for GPUs differently.
  srun = shlex.split(next(line for line in lines if line.startswith('srun ')))
  start = srun.index('python')
  assert srun[start:] == ['python', '-m', 'suite.main', *SUITE_ARGS, '--platform=gpu']
  # No rank flags: jax.distributed.initialize() reads SLURM's environment.
  assert not any(a.startswith(('--coordinator_address', '--process_id', '--num_processes')) for a in srun)


def test_sbatch_container_and_cli(tmp_path):
  script = slurm.sbatch_script([], 1, 4, container_image='nvcr.io#nvidia/jax:25.01')
  srun = shlex.split(next(line for line in script.splitlines() if line.startswith('srun ')))
  assert srun[:5] == ['srun', '--kill-on-bad-exit=1', '--container-image=nvcr.io#nvidia/jax:25.01', 'python', '-m']
  out = tmp_path / 'job.sbatch'
  result = _launch('launch.slurm', '--nodes=2', '--gpus_per_node=8', '--one_process_per=node', f'--output={out}',
                   '--', *SUITE_ARGS)
  assert result.returncode == 0, result.stderr
  assert out.read_text() == result.stdout and '#SBATCH --ntasks-per-node=1' in result.stdout
  no_sbatch = _launch('launch.slurm', '--nodes=1', '--gpus_per_node=1', f'--output={out}', '--submit',
                      path=os.path.dirname(sys.executable))
  assert 'sbatch is not on PATH' in _one_error_line(no_sbatch)


# Kubernetes


def _pod_spec(manifest: dict) -> dict:
  return manifest['spec']['replicatedJobs'][0]['template']['spec']['template']['spec']


@pytest.mark.parametrize('tpu_type, hosts, chips, topology', [
    ('v5litepod-16', 4, 4, '4x4'), ('v5litepod-8', 1, 8, '2x4'), ('v4-16', 2, 4, '2x2x2'), ('v5p-8', 1, 4, '2x2x1')])
def test_jobset_for_a_tpu_type(tpu_type, hosts, chips, topology):
  num_slices = 2 if hosts > 1 else 1
  text = kubernetes.to_yaml(kubernetes.jobset('resnet', 'img:1', kubernetes.resolve_slice(tpu_type), SUITE_ARGS,
                                              num_slices=num_slices))
  manifest = yaml.safe_load(text)
  assert manifest['apiVersion'] == 'jobset.x-k8s.io/v1alpha2' and manifest['kind'] == 'JobSet'
  (replicated,) = manifest['spec']['replicatedJobs']
  job = replicated['template']['spec']
  assert replicated['replicas'] == num_slices
  assert job['parallelism'] == job['completions'] == hosts and job['backoffLimit'] == 0
  pod = _pod_spec(manifest)
  assert pod['nodeSelector']['cloud.google.com/gke-tpu-topology'] == topology
  assert pod['nodeSelector']['cloud.google.com/gke-tpu-accelerator'].startswith('tpu-v')
  (container,) = pod['containers']
  assert container['resources']['limits']['google.com/tpu'] == chips
  assert container['command'] == ['python', '-m', 'suite.main', *SUITE_ARGS, '--platform=tpu']


def test_jobset_from_accelerator_and_topology():
  assert kubernetes.resolve_slice(accelerator='tpu-v5-lite-podslice', topology='4x4') == \
      kubernetes.TPU_TYPES['v5litepod-16']
  big = kubernetes.resolve_slice(accelerator='tpu-v5p-slice', topology='4x4x4', chips_per_host=4)
  assert (big.hosts, big.chips_per_host) == (16, 4)
  with pytest.raises(ValueError, match='chips_per_host'):
    kubernetes.resolve_slice(accelerator='tpu-v5p-slice', topology='4x4x4')
  with pytest.raises(ValueError, match='multi-host'):
    kubernetes.jobset('j', 'i', kubernetes.TPU_TYPES['v5litepod-8'], [], num_slices=2)


def test_jobset_without_pyyaml_is_json(monkeypatch):
  monkeypatch.setitem(sys.modules, 'yaml', None)  # Makes `import yaml` fail.
  manifest = kubernetes.jobset('j', 'i', kubernetes.TPU_TYPES['v4-8'], ['--workload=resnet'])
  assert json.loads(kubernetes.to_yaml(manifest)) == manifest


def test_kubernetes_cli(tmp_path):
  out = tmp_path / 'jobset.yaml'
  result = _launch('launch.kubernetes', '--name=resnet', '--image=img:1', '--tpu_type=v5litepod-16',
                   '--num_slices=2', f'--output={out}', '--', *SUITE_ARGS)
  assert result.returncode == 0, result.stderr
  assert yaml.safe_load(out.read_text())['spec']['replicatedJobs'][0]['replicas'] == 2
  line = _one_error_line(_launch('launch.kubernetes', '--name=r', '--image=i', '--tpu_type=v9-8',
                                 f'--output={out}'))
  assert "unknown --tpu_type 'v9-8'" in line and 'v5litepod-16' in line and 'v4-8' in line
