"""Workload configs on the command line: `--config.KEY=VALUE` overrides of a locked ml_collections config."""

from absl import flags
from ml_collections import config_flags

from suite.errors import UserError


def leaf_keys(config, prefix: str = '') -> list[str]:
  """Dotted names of the fields that hold values (not groups), e.g. 'optimizer.learning_rate'."""
  keys = []
  for key, value in config.items():
    keys += leaf_keys(value, f'{prefix}{key}.') if hasattr(value, 'items') else [prefix + key]
  return keys


def check_overrides(argv: list[str], config, where: str) -> None:
  """Rejects an unknown or non-leaf --config.KEY in one line, before absl would raise a traceback."""
  known = leaf_keys(config)
  for arg in argv[1:]:
    if arg.startswith('--config.'):
      key = arg[len('--config.'):].split('=', 1)[0]
      if key not in known:
        group = [k for k in known if k.startswith(key + '.')]
        hint = (f"'{key}' is a group: set one of {', '.join(group)}" if group
                else f"known keys are {', '.join(known)}")
        raise UserError(_one_line(f"unknown config key '{key}' for {where}: {hint}"))


def parse_with_overrides(argv: list[str], config, where: str, flag_values=flags.FLAGS) -> list[str]:
  """Defines --config on `config` (locked: no new keys) and parses argv; any bad override becomes a UserError."""
  check_overrides(argv, config, where)
  config_flags.DEFINE_config_dict('config', config, 'Workload config; override fields with --config.KEY=VALUE.',
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  try:
    return flag_values(argv)
  except flags.Error as e:
    raise UserError(_one_line(f'{e} (see --helpfull)')) from None
  except (TypeError, ValueError, AttributeError, KeyError) as e:
    raise UserError(_one_line(f'bad --config override for {where}: {e}')) from None


def _one_line(message: str) -> str:
  """User text (a key, a value) may hold newlines; the error must stay one line."""
  return ' '.join(message.split('\n'))
