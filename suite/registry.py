"""Lazy workload registry: a name maps to a module path, imported only when that workload is chosen."""

import importlib

from suite.errors import UserError

WORKLOADS = {
    'resnet': 'suite.workloads.resnet',
    'ssd': 'suite.workloads.ssd',
}


def get_workload(name: str):
  """Returns the workload module for `name` (it defines `get_config(scale, variant)` and `Workload`)."""
  if name not in WORKLOADS:
    raise UserError(f"unknown workload '{name}': choose one of {', '.join(sorted(WORKLOADS))} (--workload=NAME)")
  return importlib.import_module(WORKLOADS[name])


def get_config(name: str, scale: str, variant: str = ''):
  """The workload's config for a scale and a named variant ('' = the workload's default)."""
  module = get_workload(name)
  variants = getattr(module, 'VARIANTS', ())
  if variant and variant not in variants:
    known = ', '.join(variants) if variants else 'none'
    raise UserError(f"unknown variant '{variant}' for workload {name}: known variants are {known} (--variant=NAME)")
  try:
    return module.get_config(scale, variant)
  except ValueError as e:
    raise UserError(f'{name}: {e}') from None


def make_workload(name: str, config, scale: str):
  """The workload object for a (possibly overridden) config."""
  return get_workload(name).Workload(config, scale)
