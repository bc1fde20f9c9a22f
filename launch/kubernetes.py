"""Writes a JobSet manifest that runs the suite on one or more GKE TPU slices (apply it with kubectl).

`python -m launch.kubernetes --name=JOB --image=IMAGE (--tpu_type=v5litepod-16 | --accelerator=A --topology=T)
[--num_slices=1] [--output=jobset.yaml] -- <suite.main flags>`

One replicatedJob with a replica per slice; each replica is an Indexed Job with one pod per TPU host of the slice
(parallelism = completions = hosts), each pod asking for all of its host's chips (`google.com/tpu`). Every pod
runs the same `python -m suite.main ... --platform=tpu`: GKE gives each pod its TPU worker id and hostnames
(and the MEGASCALE_* variables across slices), from which `jax.distributed.initialize()` forms the job.
`backoffLimit: 0` and `maxRestarts: 0`: a failed benchmark run is a result, not something to retry.

The manifest is YAML from PyYAML (installed with flax, ml-collections and mlperf-logging, all in setup.cfg);
without PyYAML it is written as JSON, which is valid YAML and which kubectl reads as well.
The run's files stay in the pod unless --output_dir points at storage mounted into the image (e.g. gcsfuse).
"""

import json
import math
import sys
from typing import NamedTuple

from absl import app, flags

from launch.common import with_platform


class TpuSlice(NamedTuple):
  accelerator: str  # GKE node label cloud.google.com/gke-tpu-accelerator.
  topology: str  # GKE node label cloud.google.com/gke-tpu-topology.
  hosts: int  # TPU VMs (pods) in the slice.
  chips_per_host: int  # google.com/tpu per pod.


# Source: GKE "Plan TPUs in GKE" topology tables (cloud.google.com/kubernetes-engine/docs/concepts/plan-tpus),
# cross-checked with xpk's SystemCharacteristics. In vN-K names K counts TensorCores for v4/v5p (2 per chip) and
# chips for v5e/v6e. Multi-host v5e/v6e node pools use 4-chip machines (ct5lp-hightpu-4t, ct6e-standard-4t), so a
# v5litepod-16 is 4 pods of 4 chips on GKE (a TPU VM v5litepod-16 is 2 hosts of 8). Add rows as needed, or use
# --accelerator/--topology/--chips_per_host.
TPU_TYPES = {
    'v4-8': TpuSlice('tpu-v4-podslice', '2x2x1', 1, 4),
    'v4-16': TpuSlice('tpu-v4-podslice', '2x2x2', 2, 4),
    'v4-32': TpuSlice('tpu-v4-podslice', '2x2x4', 4, 4),
    'v5litepod-4': TpuSlice('tpu-v5-lite-podslice', '2x2', 1, 4),
    'v5litepod-8': TpuSlice('tpu-v5-lite-podslice', '2x4', 1, 8),
    'v5litepod-16': TpuSlice('tpu-v5-lite-podslice', '4x4', 4, 4),
    'v5litepod-32': TpuSlice('tpu-v5-lite-podslice', '4x8', 8, 4),
    'v5p-8': TpuSlice('tpu-v5p-slice', '2x2x1', 1, 4),
    'v5p-16': TpuSlice('tpu-v5p-slice', '2x2x2', 2, 4),
    'v5p-32': TpuSlice('tpu-v5p-slice', '2x2x4', 4, 4),
    'v6e-8': TpuSlice('tpu-v6e-slice', '2x4', 1, 8),
    'v6e-16': TpuSlice('tpu-v6e-slice', '4x4', 4, 4),
}


def resolve_slice(tpu_type: str | None = None, accelerator: str | None = None, topology: str | None = None,
                  chips_per_host: int | None = None) -> TpuSlice:
  """A slice from a known TPU type, or from a GKE accelerator label and topology (and chips per host when the
  pair is not in the table)."""
  if tpu_type:
    if accelerator or topology:
      raise ValueError('give --tpu_type or --accelerator/--topology, not both')
    if tpu_type not in TPU_TYPES:
      raise ValueError(f"unknown --tpu_type '{tpu_type}': known types are {', '.join(TPU_TYPES)} "
                       '(or give --accelerator, --topology and --chips_per_host)')
    return TPU_TYPES[tpu_type]
  if not (accelerator and topology):
    raise ValueError('give --tpu_type, or both --accelerator and --topology')
  known = next((s for s in TPU_TYPES.values() if (s.accelerator, s.topology) == (accelerator, topology)), None)
  if known and chips_per_host in (None, known.chips_per_host):
    return known
  if not chips_per_host:
    raise ValueError(f'--accelerator={accelerator} --topology={topology} is not in the table: give --chips_per_host')
  try:
    chips = math.prod(int(d) for d in topology.split('x'))
  except ValueError:
    raise ValueError(f"--topology={topology}: expected a shape like 4x4 or 2x2x2") from None
  if chips % chips_per_host:
    raise ValueError(f'--topology={topology} has {chips} chips, not a multiple of --chips_per_host={chips_per_host}')
  return TpuSlice(accelerator, topology, chips // chips_per_host, chips_per_host)


def jobset(name: str, image: str, tpu: TpuSlice, suite_args: list[str], num_slices: int = 1,
           python: str = 'python') -> dict:
  """The JobSet as a plain dict."""
  if num_slices < 1:
    raise ValueError('--num_slices must be at least 1')
  if num_slices > 1 and tpu.hosts == 1:
    raise ValueError(f'--num_slices={num_slices} needs a multi-host slice type: GKE Multislice does not support '
                     f'single-host node pools ({tpu.accelerator} {tpu.topology} is one host)')
  container = {
      'name': 'suite',
      'image': image,
      'command': [python, '-m', 'suite.main', *with_platform(suite_args, 'tpu')],
      # 8471: the TPU runtime between the hosts of a slice; 8080: Multislice traffic between slices.
      'ports': [{'containerPort': 8471}, {'containerPort': 8080}],
      # Needed for TPU device access on GKE versions before 1.28.
      'securityContext': {'privileged': True},
      'resources': {'limits': {'google.com/tpu': tpu.chips_per_host}},
  }
  pod_spec = {
      'restartPolicy': 'Never',
      'nodeSelector': {'cloud.google.com/gke-tpu-accelerator': tpu.accelerator,
                       'cloud.google.com/gke-tpu-topology': tpu.topology},
      'containers': [container],
  }
  return {
      'apiVersion': 'jobset.x-k8s.io/v1alpha2',
      'kind': 'JobSet',
      'metadata': {
          'name': name,
          # One slice per node pool: a slice's pods must share the ICI of one node pool.
          'annotations': {'alpha.jobset.sigs.k8s.io/exclusive-topology': 'cloud.google.com/gke-nodepool'},
      },
      'spec': {
          'failurePolicy': {'maxRestarts': 0},
          'replicatedJobs': [{
              'name': 'slice',
              'replicas': num_slices,
              'template': {'spec': {
                  'parallelism': tpu.hosts,
                  'completions': tpu.hosts,
                  'completionMode': 'Indexed',  # The completion index is the pod's TPU worker id.
                  'backoffLimit': 0,
                  'template': {'spec': pod_spec},
              }},
          }],
      },
  }


def to_yaml(manifest: dict) -> str:
  try:
    import yaml  # pylint: disable=import-outside-toplevel
  except ImportError:
    return json.dumps(manifest, indent=2) + '\n'  # JSON is YAML.
  return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)


def _define_flags() -> None:
  # Defined only when run as a program, so that tests can import the builders without registering flags.
  flags.DEFINE_string('name', None, 'JobSet name (a DNS label: lower case, digits, -).', required=True)
  flags.DEFINE_string('image', None, 'Container image with the suite installed (its WORKDIR the repo).',
                      required=True)
  flags.DEFINE_string('tpu_type', None, f'TPU slice type: one of {", ".join(TPU_TYPES)}.')
  flags.DEFINE_string('accelerator', None, 'Instead of --tpu_type: GKE TPU accelerator, e.g. tpu-v5-lite-podslice.')
  flags.DEFINE_string('topology', None, 'With --accelerator: slice topology, e.g. 4x4.')
  flags.DEFINE_integer('chips_per_host', None, 'With --accelerator/--topology outside the table: chips per host.')
  flags.DEFINE_integer('num_slices', 1, 'Slices (JobSet replicas); more than 1 is TPU Multislice.')
  flags.DEFINE_string('python', 'python', 'Python in the image.')
  flags.DEFINE_string('output', 'jobset.yaml', 'Where to write the manifest.')


def main(argv: list[str]) -> int:
  f = flags.FLAGS
  try:
    tpu = resolve_slice(f.tpu_type, f.accelerator, f.topology, f.chips_per_host)
    text = to_yaml(jobset(f.name, f.image, tpu, argv[1:], f.num_slices, f.python))
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  with open(f.output, 'w') as file:
    file.write(text)
  print(text, end='')
  print(f'wrote {f.output}: kubectl apply -f {f.output}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  _define_flags()
  app.run(main)
