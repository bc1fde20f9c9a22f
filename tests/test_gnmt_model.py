"""GNMT v2 (models/gnmt.py): the reference's parameter count, its masking of padding, and incremental decoding.

The full model is only built abstractly (`jax.eval_shape`: shapes, no 160M-parameter initialisation); the numeric
tests use a tiny config, initialised once per module.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from models import gnmt


def lstm_params(input_size, hidden):
  """PyTorch nn.LSTM, one layer, one direction: weight_ih (4H x in), weight_hh (4H x H), bias_ih and bias_hh (4H)."""
  return 4 * hidden * input_size + 4 * hidden * hidden + 2 * 4 * hidden


def reference_gnmt_params(vocab, hidden=1024, num_layers=4):
  """Parameters of mlcommons/training rnn_translator/pytorch/seq2seq/models/gnmt.py `GNMT(vocab_size, hidden_size,
  num_layers, share_embedding=True)`, module by module:
  - one nn.Embedding(vocab, hidden), shared by encoder and decoder: vocab * hidden;
  - encoder.py: rnn_layers[0] nn.LSTM(H, H, bidirectional=True) = 2 directions; rnn_layers[1] nn.LSTM(2H, H);
    num_layers - 2 more nn.LSTM(H, H);
  - decoder.py: att_rnn.rnn nn.LSTM(H, H); att_rnn.attn = attention.py BahdanauAttention(H, H, H, normalize=True):
    linear_q and linear_k nn.Linear(H, H, bias=False), linear_att (H), normalize_scalar (1), normalize_bias (H);
    num_layers - 1 nn.LSTM(2H, H); classifier nn.Linear(H, vocab) with bias."""
  H = hidden
  embedding = vocab * H
  encoder = 2 * lstm_params(H, H) + lstm_params(2 * H, H) + (num_layers - 2) * lstm_params(H, H)
  attention = 2 * H * H + H + 1 + H
  decoder = lstm_params(H, H) + attention + (num_layers - 1) * lstm_params(2 * H, H) + H * vocab + vocab
  return embedding + encoder + decoder


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_params(model, batch=2, src_len=5, tgt_len=4):
  src = jnp.zeros((batch, src_len), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), src, jnp.full((batch,), src_len), src[:, :tgt_len]))
  return variables['params']


def test_full_model_has_the_reference_parameter_count():
  # Closed form of reference_gnmt_params at H = 1024, 4 layers: 90 H^2 + 74 H + 1 + 2 H V + V, i.e.
  # encoder 44 H^2 + 40 H = 46,178,304; decoder LSTMs 44 H^2 + 32 H = 46,170,112; attention 2 H^2 + 2 H + 1 =
  # 2,099,201; embedding + classifier 2 H V + V = 2049 * 32,320 = 66,223,680; total 160,671,297.
  H, V = 1024, gnmt.REFERENCE_VOCAB_SIZE
  assert V == 32320
  expected = reference_gnmt_params(V)
  assert expected == 90 * H * H + 74 * H + 1 + 2 * H * V + V == 160_671_297
  # Cross-check with a measured figure: NVIDIA's MLPerf v0.7 GNMT result logs (DGX-1, this reference's code in fp16,
  # vocabulary padded to 32,320) report `_net_total_param_size=160671360`: their optimizer packs the parameters
  # into 64-element pages, and 160,671,297 rounded up to a multiple of 64 is exactly that.
  assert -(-expected // 64) * 64 == 160_671_360
  params = abstract_params(gnmt.GNMT())
  assert count(params) == expected
  # Module by module, as the docstring of reference_gnmt_params lists them.
  assert count(params['embed']) == V * H
  assert count(params['encoder']) == 2 * lstm_params(H, H) + lstm_params(2 * H, H) + 2 * lstm_params(H, H)
  assert count(params['attention']) == 2 * H * H + 2 * H + 1
  assert count(params['classifier']) == H * V + V
  assert sum(count(params[f'decoder_lstm_{i}']) for i in range(4)) == lstm_params(H, H) + 3 * lstm_params(2 * H, H)
  # The unpadded fp32 vocabulary (BPE lines + 4 special tokens) changes only the two vocab-sized tables.
  assert count(abstract_params(gnmt.GNMT(vocab_size=32317))) == reference_gnmt_params(32317) == 160_665_150


def test_parameters_carry_logical_axes_for_sharding():
  specs = nn.get_partition_spec(abstract_params(gnmt.GNMT(vocab_size=40, hidden=8)))
  assert specs['embed']['embedding'] == P('vocab', 'embed')
  assert specs['classifier']['kernel'] == P('embed', 'vocab') and specs['classifier']['bias'] == P('vocab')
  assert specs['encoder']['lstm_1']['kernel_ih'] == P('embed', 'mlp')
  assert specs['decoder_lstm_3']['kernel_hh'] == P('embed', 'mlp')
  assert specs['attention']['linear_q']['kernel'] == P('embed', 'mlp')
  unnamed = [path for path, spec in jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, P))
             if spec == P() and 'normalize_scalar' not in jax.tree_util.keystr(path)]
  assert unnamed == []  # Everything but the attention's scalar gain has named axes.


def test_reverse_within_length_keeps_padding_in_place():
  x = jnp.array([[1, 2, 3, 0], [4, 5, 0, 0]])
  assert gnmt.reverse_within_length(x, jnp.array([3, 2])).tolist() == [[3, 2, 1, 0], [5, 4, 0, 0]]


TINY = dict(vocab_size=37, hidden=16, num_layers=3, dropout=0.2)  # 3 layers: residuals from the third on.
B, S, T = 3, 9, 6


@pytest.fixture(scope='module')
def tiny():
  """(model, variables, source, lengths, target input, jitted apply) of a tiny GNMT, initialised once; `variables`
  are the initial ones, `scaled` the same times 5 (at hidden 16 the reference's uniform(-0.1, 0.1) leaves every
  signal tiny, so the forward tests use the larger weights)."""
  model = gnmt.GNMT(**TINY)
  rng = np.random.default_rng(0)
  lengths = np.array([9, 5, 2])
  source = rng.integers(4, TINY['vocab_size'], (B, S))
  source[np.arange(S)[None, :] >= lengths[:, None]] = gnmt.PAD
  target = rng.integers(4, TINY['vocab_size'], (B, T))
  target[:, 0] = gnmt.BOS
  variables = jax.jit(model.init)(jax.random.key(0), source, lengths, target)
  apply = jax.jit(model.apply, static_argnames='train')
  return model, variables, source, lengths, target, apply


@pytest.fixture(scope='module')
def scaled(tiny):
  model, variables, *rest = tiny
  return (model, jax.tree.map(lambda x: 5 * x, variables), *rest)


def test_init_follows_the_reference(tiny):
  _, variables, *_ = tiny
  params = nn.unbox(variables['params'])
  H = TINY['hidden']
  assert params['attention']['normalize_scalar'] == pytest.approx(1 / np.sqrt(H))  # stdv = 1 / sqrt(num_units).
  assert not np.any(params['attention']['normalize_bias'])
  decoder_lstms = [params[f'decoder_lstm_{i}'] for i in range(TINY['num_layers'])]
  for lstm in [params['encoder'][k] for k in params['encoder']] + decoder_lstms:
    assert not np.any(lstm['bias_hh'])  # init_lstm_: hidden-hidden bias zero, the rest uniform(-0.1, 0.1).
  uniform = [params['embed']['embedding'], params['classifier']['kernel'], params['classifier']['bias'],
             params['encoder']['lstm_0_bwd']['kernel_ih'], params['decoder_lstm_2']['bias_ih']]
  for x in uniform:
    assert np.abs(x).max() <= gnmt.INIT_RANGE and np.abs(x).max() > 0.8 * gnmt.INIT_RANGE


def test_tiny_forward_shapes_and_padding_mask(scaled):
  _, variables, source, lengths, target, apply = scaled
  logits = apply(variables, source, lengths, target)
  assert logits.shape == (B, T, TINY['vocab_size']) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  # Tokens after a sentence's length are invisible (packed bidirectional layer, masked attention) ...
  noisy = source.copy()
  noisy[np.arange(S)[None, :] >= lengths[:, None]] = 7
  np.testing.assert_allclose(apply(variables, noisy, lengths, target), logits, rtol=0, atol=1e-7)
  # ... and real tokens are not, not even the first one of the longest sentence.
  changed = source.copy()
  changed[0, 0] += 1
  assert np.abs(apply(variables, changed, lengths, target)[0] - logits[0]).max() > 1e-3
  # bfloat16 compute still returns float32 logits (shapes only).
  bf16 = gnmt.GNMT(**TINY, dtype=jnp.bfloat16)
  out = jax.eval_shape(bf16.apply, variables, source, lengths, target)
  assert out.shape == logits.shape and out.dtype == jnp.float32


def test_dropout_only_in_training(scaled):
  _, variables, source, lengths, target, apply = scaled
  eval_logits = apply(variables, source, lengths, target)
  train = [apply(variables, source, lengths, target, train=True, rngs={'dropout': jax.random.key(k)})
           for k in (1, 1, 2)]
  np.testing.assert_array_equal(train[0], train[1])  # Same key, same mask.
  assert np.abs(train[0] - eval_logits).max() > 1e-3 and np.abs(train[0] - train[2]).max() > 1e-3


def test_step_by_step_decoding_matches_teacher_forcing(scaled):
  model, variables, source, lengths, target, apply = scaled
  teacher_forced = apply(variables, source, lengths, target)
  memory = jax.jit(lambda source, lengths: model.apply(variables, source, lengths, method=model.encode))(
      source, lengths)
  carry = model.apply(variables, memory, method=model.init_decode_state)
  # Every leaf of the carry is batch-major, so beam search can tile and reorder it along axis 0.
  assert [x.shape for x in jax.tree.leaves(carry)] == [(B, TINY['hidden'])] * 2 * TINY['num_layers']
  step = jax.jit(gnmt.step_fn(model, variables, memory))  # models/beam_search.py's step_fn(tokens, index, cache).
  stepped = []
  for t in range(T):
    logits, carry = step(jnp.asarray(target[:, t]), jnp.int32(t), carry)
    stepped.append(logits)
  np.testing.assert_allclose(np.stack(stepped, axis=1), teacher_forced, atol=1e-5)
