"""Lazy workload registry: a name maps to a module path, imported only when that workload is chosen.

A workload module defines `VARIANTS`, a dict of variant name -> `Workload` subclass, the default variant first.
Adding a workload is one line here (see BUILD.md, "Adding a workload").
"""

import importlib

from suite.common.errors import UserError

WORKLOADS = {
    'dlrm_dcnv2': 'suite.workloads.dlrm',
    'gnmt': 'suite.workloads.translation.gnmt',
    'llama31_8b': 'suite.workloads.llama',
    'mobilenet': 'suite.workloads.mobilenet',
    'ncf': 'suite.workloads.ncf',
    'resnet': 'suite.workloads.resnet',
    'ssd': 'suite.workloads.ssd',
    'transformer': 'suite.workloads.translation.transformer',
}


def get_workload(name: str):
  """The workload module for `name` (it defines `VARIANTS`)."""
  if name not in WORKLOADS:
    raise UserError(f"unknown workload '{name}': choose one of {', '.join(sorted(WORKLOADS))} (--workload=NAME)")
  return importlib.import_module(WORKLOADS[name])


def variants(name: str) -> dict:
  """Variant name -> Workload class, the default first."""
  return get_workload(name).VARIANTS


def workload_class(name: str, variant: str = ''):
  """The Workload class of a workload's variant ('' = the default variant)."""
  classes = variants(name)
  if not variant:
    return next(iter(classes.values()))
  if variant not in classes:
    raise UserError(f"unknown variant '{variant}' for workload {name}: known variants are {', '.join(classes)} "
                    '(--variant=NAME)')
  return classes[variant]


def get_config(name: str, scale: str, variant: str = ''):
  """The config of a workload's variant at a scale; it records the variant (`config.variant`)."""
  cls = workload_class(name, variant)
  try:
    config = cls.get_config(scale)
  except ValueError as e:
    raise UserError(f'{name}: {e}') from None
  with config.unlocked():
    config.variant = cls.variant
  return config


def make_workload(name: str, config, scale: str):
  """The workload object for a (possibly overridden) config of `get_config`."""
  try:
    return workload_class(name, config.get('variant', ''))(config, scale)
  except ValueError as e:  # A config the model cannot be built from, e.g. --config.model.depth=7.
    raise UserError(f'{name}: {e}') from None
