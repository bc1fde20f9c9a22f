"""Lazy workload registry: a name maps to a module path, imported only when that workload is chosen."""

import importlib

from suite.errors import UserError

WORKLOADS = {
    'resnet': 'suite.workloads.resnet',
}


def get_workload(name: str):
  """Returns the workload module for `name` (it defines `get_config(scale)` and `Workload`)."""
  if name not in WORKLOADS:
    raise UserError(f"unknown workload '{name}': choose one of {', '.join(sorted(WORKLOADS))} (--workload=NAME)")
  return importlib.import_module(WORKLOADS[name])
