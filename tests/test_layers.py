"""The layers hold: launchers sit on top of the suite and never the other way round, each launcher stands alone on
launch/common.py, the shared layer (suite.common) needs nothing above it, and importing a module has no global side
effect such as switching matplotlib's backend."""

import ast
import glob
import os
import subprocess
import sys

from tests.conftest import REPO

LIBRARIES = ('suite', 'models', 'input_pipelines')  # What `python -m suite.<command>` runs.


def _modules(package: str) -> list[str]:
  return sorted(glob.glob(os.path.join(REPO, package, '**', '*.py'), recursive=True))


def _imports(path: str) -> set[str]:
  """Every module a file imports, at its top or inside a function (absolute names; `from a import b` gives a.b)."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read(), path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module)
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def _in(name: str, package: str) -> bool:
  return name == package or name.startswith(package + '.')


def _module_strings(path: str) -> set[str]:
  """String constants that name a launch module (as `python -m launch.local` would be given to a subprocess)."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read(), path)
  return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
          and node.value.startswith('launch.') and node.value.replace('.', '').replace('_', '').isalnum()}


def test_the_suite_neither_imports_nor_runs_a_launcher():
  offenders = {os.path.relpath(path, REPO): sorted(n for n in _imports(path) if _in(n, 'launch'))
               for package in LIBRARIES for path in _modules(package)}
  assert {path: names for path, names in offenders.items() if names} == {}
  run = {os.path.relpath(path, REPO): sorted(_module_strings(path)) for path in _modules('suite')}
  assert {path: names for path, names in run.items() if names} == {}


def test_launchers_share_only_launch_common():
  launchers = [p for p in _modules('launch') if os.path.basename(p) != '__init__.py']
  assert os.path.join(REPO, 'launch', 'common.py') in launchers
  siblings = {}
  for path in launchers:
    names = {n for n in _imports(path) if _in(n, 'launch')} - {'launch', 'launch.common'}
    names = {n for n in names if not n.startswith('launch.common.')}
    if names:
      siblings[os.path.relpath(path, REPO)] = sorted(names)
  assert siblings == {}
  assert not {n for n in _imports(os.path.join(REPO, 'launch', 'common.py')) if _in(n, 'launch')}


def test_the_shared_layer_imports_nothing_above_it():
  above = ('suite.training', 'suite.inference', 'suite.results', 'suite.tools', 'suite.workloads', 'suite.main')
  offenders = {os.path.relpath(path, REPO): sorted(n for n in _imports(path) if any(_in(n, a) for a in above))
               for path in _modules(os.path.join('suite', 'common'))}
  assert {path: names for path, names in offenders.items() if names} == {}


def test_importing_the_result_tools_keeps_the_matplotlib_backend():
  """A program that chose its own backend (here svg, as MPLBACKEND would) still has it after the import."""
  code = ('import matplotlib; before = matplotlib.get_backend(); import suite.results.report, suite.results.sweep; '
          'print(before, matplotlib.get_backend())')
  env = {**os.environ, 'MPLBACKEND': 'svg'}
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ['svg', 'svg']
