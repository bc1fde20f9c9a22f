"""Config overrides, fuzzed: every --config.KEY=VALUE is either applied or rejected with a UserError."""

import string

import hypothesis
import pytest
from absl import flags
from hypothesis import strategies as st

from suite.common import config as config_lib
from suite.common.errors import UserError
from suite.workloads import resnet, ssd

KEYS = config_lib.leaf_keys(resnet.get_config('tiny'))
TEXT = st.text(alphabet=string.printable, max_size=20)


def _parse(config, arg):
  flag_values = flags.FlagValues()
  return config_lib.parse_with_overrides(['prog', arg], config, 'test', flag_values), flag_values


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(key=st.one_of(st.sampled_from(KEYS), TEXT, st.sampled_from(['model', 'optimizer', ''])),
                  value=st.one_of(TEXT, st.integers().map(str), st.floats(allow_nan=True).map(str),
                                  st.sampled_from(['True', 'false', '(1,2)', '[]', 'None', '1e400'])))
def test_random_overrides_apply_or_fail_cleanly(key, value):
  config = resnet.get_config('tiny')
  try:
    _, flag_values = _parse(config, f'--config.{key}={value}')
  except UserError as e:
    assert str(e) and '\n' not in str(e).strip()
    return
  assert key in KEYS  # Only real leaf keys can be accepted.
  applied = flag_values['config'].value
  for part in key.split('.'):
    applied = applied[part]
  assert applied is not None or value == 'None'


def test_a_known_override_is_applied_with_its_type():
  config = ssd.get_config('tiny')
  _, flag_values = _parse(config, '--config.optimizer.learning_rate=0.5')
  assert flag_values['config'].value.optimizer.learning_rate == 0.5


def test_group_keys_are_rejected_with_the_members_named():
  with pytest.raises(UserError, match=r"'optimizer' is a group: set one of optimizer\.decay_epochs"):
    _parse(resnet.get_config('tiny'), '--config.optimizer=1')
