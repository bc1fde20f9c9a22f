"""What every launcher shares: reading and completing the suite flags it passes through to `suite.main`.

Launchers import this module and nothing else of launch/ (tests/test_layers.py checks it), and nothing of suite/
imports launch/.
"""

from suite.common.cli import flag_value


def with_platform(suite_args: list[str], platform: str) -> list[str]:
  """The suite flags verbatim, plus --platform=PLATFORM unless the user already chose it; another platform is
  an error rather than a silent override (absl would take the last one)."""
  value = flag_value(suite_args, 'platform')
  if value is None:
    return [*suite_args, f'--platform={platform}']
  if value != platform:
    raise ValueError(f'--platform={value} in the suite flags, but this launcher runs on {platform}')
  return list(suite_args)

