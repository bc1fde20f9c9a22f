"""What every launcher shares: reading and completing the suite flags it passes through to `suite.main`.

Launchers import this module and nothing else of launch/ (tests/test_layers.py checks it), and nothing of suite/
imports launch/.
"""


def with_platform(suite_args: list[str], platform: str) -> list[str]:
  """The suite flags verbatim, plus --platform=PLATFORM unless the user already chose it; another platform is
  an error rather than a silent override (absl would take the last one)."""
  for i, arg in enumerate(suite_args):
    value = arg.split('=', 1)[1] if arg.startswith('--platform=') else None
    if arg == '--platform' and i + 1 < len(suite_args):
      value = suite_args[i + 1]
    if value is not None:
      if value != platform:
        raise ValueError(f'--platform={value} in the suite flags, but this launcher runs on {platform}')
      return list(suite_args)
  return [*suite_args, f'--platform={platform}']


def flag_value(suite_args: list[str], name: str) -> str | None:
  """The value of --NAME=VALUE (or --NAME VALUE) among the suite flags; the last one wins, as in absl."""
  value = None
  for i, arg in enumerate(suite_args):
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(suite_args):
      value = suite_args[i + 1]
  return value
