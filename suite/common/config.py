"""Workload configs on the command line: `--config.KEY=VALUE` overrides of a locked ml_collections config."""

from absl import flags
from ml_collections import config_flags

from suite.common.errors import UserError


def leaf_keys(config, prefix: str = '') -> list[str]:
  """Dotted names of the fields that hold values (not groups), e.g. 'optimizer.learning_rate'."""
  keys = []
  for key, value in config.items():
    keys += leaf_keys(value, f'{prefix}{key}.') if hasattr(value, 'items') else [prefix + key]
  return keys


def check_overrides(argv: list[str], config, where: str, reserved: dict[str, str] | None = None) -> None:
  """Rejects an unknown or non-leaf --config.KEY in one line, before absl would raise a traceback. `reserved` keys
  (with why) cannot be overridden; `variant` never can: --variant chooses it."""
  known = leaf_keys(config)
  reserved = {'variant': f'the variant of {where} is chosen with --variant=NAME, not --config.variant',
              **(reserved or {})}
  for arg in argv[1:]:
    if arg == '--':
      break
    if arg.startswith('--config.'):
      key = arg[len('--config.'):].split('=', 1)[0]
      if key in reserved:
        raise UserError(_one_line(f'--config.{key}: {reserved[key]}'))
      if key not in known:
        group = [k for k in known if k.startswith(key + '.')]
        hint = (f"'{key}' is a group: set one of {', '.join(group)}" if group
                else f"known keys are {', '.join(k for k in known if k not in reserved)}")
        raise UserError(_one_line(f"unknown config key '{key}' for {where}: {hint}"))


def parse_with_overrides(argv: list[str], config, where: str, flag_values=flags.FLAGS,
                         config_file: bool = False, reserved: dict[str, str] | None = None) -> list[str]:
  """Defines --config on `config`, or with config_file as the flag of a config file (`--config=path.py[:ARG]`,
  `config` being what the file returned), locked (no new keys), and parses argv; a bad override is a UserError."""
  check_overrides(argv, config, where, reserved)
  if config_file:
    config_flags.DEFINE_config_file('config', None, 'Config file path/to/config.py[:ARG]; override fields with '
                                    '--config.KEY=VALUE.', flag_values=flag_values, lock_config=True, sys_argv=argv)
  else:
    config_flags.DEFINE_config_dict('config', config, 'Workload config; override fields with --config.KEY=VALUE.',
                                    flag_values=flag_values, lock_config=True, sys_argv=argv)
  try:
    return flag_values(argv)
  except flags.Error as e:
    raise UserError(_one_line(f'{e} (see --help)')) from None
  except (TypeError, ValueError, AttributeError, KeyError) as e:
    raise UserError(_one_line(f'bad --config override for {where}: {e}')) from None


def _one_line(message: str) -> str:
  """User text (a key, a value) may hold newlines; the error must stay one line."""
  return ' '.join(message.split('\n'))


def changed_keys(reference, config) -> list[str]:
  """Leaf keys whose value in `config` differs from `reference` (same structure)."""
  def value(c, key):
    for part in key.split('.'):
      c = c[part]
    return tuple(c) if isinstance(c, (list, tuple)) else c
  return [key for key in leaf_keys(reference) if value(reference, key) != value(config, key)]


def check_closed(workload_cls, reference, config, where: str) -> None:
  """The closed division: a field the rules fix keeps the reference config's value, and the free fields keep
  within the rules' constraints; otherwise one UserError line naming the field and what closed runs may change."""
  fixed = set(workload_cls.closed_fixed_fields(reference))
  rules = f'the {workload_cls.benchmark} {workload_cls.ruleset} closed rules'
  broken = [key for key in changed_keys(reference, config) if key in fixed]
  if broken:
    free = ', '.join(workload_cls.closed_free_fields) or 'nothing'
    raise UserError(f"--division=closed: {rules} fix {', '.join(broken)}; a closed run may change only {free} "
                    '(or run with --division=open)')
  violations = workload_cls.closed_violations(config)
  if violations:
    raise UserError(f"--division=closed: {'; '.join(violations)}, which {rules} do not allow "
                    '(or run with --division=open)')
