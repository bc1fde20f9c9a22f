"""ResNet as a config file: `python -m suite.main --config=suite/configs/resnet.py:tiny` (or `:full`).

A config file's `get_config(arg)` returns the workload's config (an ml_collections ConfigDict) with two more
fields: `workload` (its name in the registry) and `scale` (`full` or `tiny`: the scale it builds on, which decides
the data and the default division). It must hold exactly that workload config's fields: start from
`registry.get_config` and change what you need, as below. `--config.KEY=VALUE` overrides any field on top;
`--print_config` shows the result. A closed-division run (the default at `full`) refuses a field the rules fix.
"""

from suite.common import registry


def get_config(arg: str = 'tiny'):
  """arg: the scale, `tiny` (default) or `full`."""
  config = registry.get_config('resnet', arg)
  with config.unlocked():
    config.workload = 'resnet'
    config.scale = arg
  # Change fields here, e.g. a longer tiny run (open division only when it differs from the reference):
  # config.max_epochs = 20
  return config
