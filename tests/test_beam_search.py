"""Beam search (models/beam_search.py) against brute-force enumeration and greedy decoding on hand-made models.

The "model" is a second-order Markov table of log probabilities, log p(next | position, token before last, last
token), different for each example of the batch. `step_fn` reads the last token from its argument and the one
before it from its own cache, so a search that reorders the cache wrongly gets the wrong probabilities.
"""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import beam_search as bs
from models import transformer

EOS = 1
BOS = 0


def random_tables(seed, batch, length, vocab):
  """[batch, length, vocab (token before last), vocab (last), vocab (next)] log probabilities, no ties."""
  logits = np.random.default_rng(seed).normal(0.0, 2.0, (batch, length, vocab, vocab, vocab))
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def markov_step_fn(tables):
  """A step_fn over `tables`; its cache is {'example': [n], 'prev': [n]} (prev: the token before the last)."""
  tables = jnp.asarray(tables, jnp.float32)

  def step_fn(tokens, index, cache):
    logits = tables[cache['example'], index, cache['prev'], tokens]
    return logits, {'example': cache['example'], 'prev': tokens}

  return step_fn


def markov_cache(batch, beam):
  return bs.expand_to_beams({'example': jnp.arange(batch, dtype=jnp.int32), 'prev': jnp.full(batch, BOS, jnp.int32)},
                            beam)


@functools.partial(jax.jit, static_argnames=('beam', 'alpha', 'kind', 'max_len'))
def search(tables, beam, alpha=0.6, kind='gnmt', max_len=None):
  batch, length = tables.shape[:2]
  return bs.beam_search(markov_step_fn(tables), markov_cache(batch, beam), batch_size=batch, beam_size=beam,
                        max_len=max_len or length, eos_id=EOS, alpha=alpha, length_penalty_kind=kind, bos_id=BOS)


def penalty(length, alpha, kind):
  return ((5.0 + length) / 6.0)**alpha if kind == 'gnmt' else float(length)**alpha


def brute_force(table, alpha, kind):
  """Best (sequence, score) over every sequence that ends with its first EOS within the table's length."""
  length, vocab = table.shape[0], table.shape[-1]
  best = (None, -np.inf)
  for n in range(1, length + 1):
    for prefix in itertools.product([t for t in range(vocab) if t != EOS], repeat=n - 1):
      seq = (*prefix, EOS)
      prev, last, log_prob = BOS, BOS, 0.0
      for i, token in enumerate(seq):
        log_prob += table[i, prev, last, token]
        prev, last = last, token
      score = log_prob / penalty(n, alpha, kind)
      if score > best[1]:
        best = (seq, score)
  return best


def greedy(table):
  """Argmax token at each step until EOS: (sequence, raw log probability)."""
  prev, last, seq, log_prob = BOS, BOS, [], 0.0
  for i in range(table.shape[0]):
    token = int(np.argmax(table[i, prev, last]))
    log_prob += table[i, prev, last, token]
    seq.append(token)
    prev, last = last, token
    if token == EOS:
      break
  return tuple(seq), log_prob


def as_tuple(sequence):
  """The tokens up to and including the first EOS (all of them if none)."""
  sequence = [int(t) for t in sequence]
  return tuple(sequence[:sequence.index(EOS) + 1]) if EOS in sequence else tuple(sequence)


@pytest.mark.parametrize('kind,alpha', [('gnmt', 0.6), ('fairseq', 1.0), ('gnmt', 0.0)])
def test_exhaustive_beam_equals_brute_force(kind, alpha):
  # vocab 4, length 4: at most 3^3 alive prefixes, 4 * 27 = 108 extensions, so with beam 54 the 2 * beam kept
  # extensions are all of them and the search is exhaustive: it must find the optimum of the enumeration.
  tables = random_tables(seed=1, batch=3, length=4, vocab=4)
  result = search(tables, beam=54, alpha=alpha, kind=kind)
  for b in range(3):
    sequence, score = brute_force(tables[b], alpha, kind)
    assert as_tuple(result.sequences[b]) == sequence
    np.testing.assert_allclose(float(result.scores[b]), score, rtol=1e-5)
    assert bool(result.finished[b])
  # Examples differ (the search is not returning one example's answer for all).
  assert len({as_tuple(s) for s in result.sequences}) > 1


def test_small_beam_finds_what_greedy_misses():
  # Step 0: token 2 (p=.6) or 3 (p=.4). After 2 everything is spread out (best .25); after 3, EOS is certain.
  # Greedy takes 2 and ends with .6 * .25 = .15; beam 2 keeps 3 alive and finds 3, EOS at .4.
  vocab, length = 5, 3
  probs = np.full((1, length, vocab, vocab, vocab), 1e-6)
  probs[0, 0, BOS, BOS] = [1e-6, 1e-6, 0.6, 0.4, 1e-6]
  probs[0, 1, BOS, 2] = [0.25, 0.25, 0.25, 0.25, 1e-6]
  probs[0, 1, BOS, 3] = [1e-6, 1.0, 1e-6, 1e-6, 1e-6]
  probs[0, 2] = [1e-6, 1.0, 1e-6, 1e-6, 1e-6]  # EOS at the last step from anywhere
  tables = np.log(probs / probs.sum(-1, keepdims=True))
  alpha = 0.0
  greedy_seq, greedy_lp = greedy(tables[0])
  assert greedy_seq[0] == 2 and greedy_lp < np.log(0.2)
  result = search(tables, beam=2, alpha=alpha)
  sequence, score = brute_force(tables[0], alpha, 'gnmt')
  assert sequence == (3, EOS)
  assert as_tuple(result.sequences[0]) == sequence
  np.testing.assert_allclose(float(result.scores[0]), score, rtol=1e-5)


def test_beam_one_is_greedy():
  # With EOS never the runner-up, beam 1 keeps exactly the argmax path (see the module docstring for the case
  # where EOS is second): random tables with EOS either the most likely token or very unlikely.
  tables = random_tables(seed=2, batch=4, length=6, vocab=6)
  tables[..., EOS] = np.where(np.argmax(tables, -1) == EOS, tables[..., EOS], -30.0)
  tables = tables - np.log(np.exp(tables).sum(-1, keepdims=True))
  result = search(tables, beam=1, alpha=0.0, max_len=6)
  for b in range(4):
    sequence, log_prob = greedy(tables[b])
    assert as_tuple(result.sequences[b]) == sequence
    if sequence[-1] == EOS:
      np.testing.assert_allclose(float(result.scores[b]), log_prob, rtol=1e-5)
  assert any(as_tuple(s)[-1] == EOS for s in result.sequences)


def test_beam_one_keeps_an_eos_runner_up_as_the_reference_does():
  # Step 0: token 2 (p=.55) beats EOS (p=.45); after 2 the best continuation has p=.5: greedy gets .275, but the
  # reference's rule keeps [EOS] as a finished hypothesis (it is in the top 2 * beam) and returns it.
  vocab = 4
  probs = np.full((1, 2, vocab, vocab, vocab), 1e-6)
  probs[0, 0, BOS, BOS] = [1e-6, 0.45, 0.55, 1e-6]
  probs[0, 1] = [1e-6, 0.5, 0.25, 0.25]
  tables = np.log(probs / probs.sum(-1, keepdims=True))
  result = search(tables, beam=1, alpha=0.0)
  assert greedy(tables[0])[0] == (2, EOS)
  assert as_tuple(result.sequences[0]) == (EOS,)
  np.testing.assert_allclose(float(result.scores[0]), np.log(0.45), rtol=1e-4)


def test_unfinished_example_returns_best_alive_with_raw_log_prob():
  vocab, length = 4, 3
  probs = np.full((2, length, vocab, vocab, vocab), 0.3)
  probs[0, ..., 2] = 0.4
  probs[1, 0, BOS, BOS] = [0.05, 0.9, 0.05, 0.05]  # example 1 ends at once
  tables = np.log(probs / probs.sum(-1, keepdims=True))
  tables[0, ..., EOS] = -np.inf  # example 0 cannot end
  result = search(tables, beam=2, alpha=0.6)
  assert not bool(result.finished[0]) and bool(result.finished[1])
  assert list(np.asarray(result.sequences[0])) == [2, 2, 2]
  # Without EOS each row is (.3, .4, .3) over tokens 0, 2, 3: the best path is 2, 2, 2.
  np.testing.assert_allclose(float(result.scores[0]), 3 * np.log(0.4), rtol=1e-5)
  assert as_tuple(result.sequences[1]) == (EOS,)
  assert list(np.asarray(result.sequences[1])) == [EOS, 0, 0]  # padded after EOS


def test_stops_early_once_nothing_alive_can_win():
  # EOS is almost certain at step 0: after one step no alive hypothesis can reach [EOS]'s score.
  vocab, length = 4, 20
  probs = np.full((2, length, vocab, vocab, vocab), 1e-3)
  probs[..., EOS] = 1.0
  tables = np.log(probs / probs.sum(-1, keepdims=True))
  result = search(tables, beam=3, alpha=0.6)
  assert int(result.steps) == 1
  assert all(as_tuple(s) == (EOS,) for s in result.sequences)
  # Without a finished winner it runs to the end.
  tables[..., EOS] = -1e9
  assert int(search(tables, beam=3, alpha=0.6).steps) == length


def test_length_penalties():
  np.testing.assert_allclose(float(bs.length_penalty(7, 0.6, 'gnmt')), (12 / 6)**0.6, rtol=1e-6)
  np.testing.assert_allclose(float(bs.length_penalty(7, 1.0, 'fairseq')), 7.0, rtol=1e-6)
  with pytest.raises(ValueError, match='length penalty'):
    bs.length_penalty(3, 0.6, 'average')
  with pytest.raises(ValueError, match='alpha'):
    search(random_tables(0, 1, 2, 3), beam=2, alpha=-1.0)


def test_transformer_decode_compiles_once_for_new_inputs_of_the_same_shape():
  # The workload's eval: encode, expand to beams, beam search over the incremental decoder, all in one jit.
  cfg = transformer.TransformerConfig(vocab_size=11, d_model=16, num_heads=2, ffn_size=32, num_encoder_layers=1,
                                      num_decoder_layers=1)
  model = transformer.Transformer(cfg)
  init = jax.jit(lambda rng: transformer.init_variables(model, rng))
  params = nn.unbox(init(jax.random.key(0, impl='rbg'))['params'])
  batch, beam, max_len = 2, 3, 7

  @jax.jit
  def translate(params, inputs):
    variables = {'params': params}
    encoded = model.apply(variables, inputs, method=transformer.Transformer.encode)
    cross = bs.expand_to_beams(model.apply(variables, encoded, method=transformer.Transformer.cross_attention_kv),
                               beam)
    rows = bs.expand_to_beams(inputs, beam)

    def step_fn(tokens, index, cache):
      return model.apply(variables, tokens, index, cache, cross, rows, method=transformer.Transformer.decode_step)

    return bs.beam_search(step_fn, transformer.init_cache(cfg, batch * beam, max_len), batch_size=batch,
                          beam_size=beam, max_len=max_len, eos_id=transformer.EOS_ID, alpha=0.6)

  # Random weights favour EOS at once; a smaller EOS embedding row (the output projection is tied) lets the
  # hypotheses grow for a few steps first.
  params['embedding']['embedding'] = params['embedding']['embedding'].at[transformer.EOS_ID].multiply(0.3)
  forward = jax.jit(model.apply)
  lengths = set()
  for inputs in ([[5, 6, 7, 1, 0], [3, 1, 0, 0, 0]], [[9, 9, 8, 2, 1], [4, 4, 4, 4, 1]]):
    inputs = jnp.asarray(inputs, jnp.int32)
    result = translate(params, inputs)
    assert result.sequences.shape == (batch, max_len)
    # Each returned score is the teacher-forced model's log probability of the returned sequence, penalised if
    # it ended.
    log_probs = jax.nn.log_softmax(forward({'params': params}, inputs, result.sequences), axis=-1)
    for b in range(batch):
      n = len(as_tuple(result.sequences[b])) if result.finished[b] else max_len
      total = sum(float(log_probs[b, t, result.sequences[b, t]]) for t in range(n))
      divisor = bs.length_penalty(n, 0.6) if result.finished[b] else 1.0
      np.testing.assert_allclose(float(result.scores[b]), total / divisor, rtol=1e-4)
      lengths.add(n)
  assert translate._cache_size() == 1
  assert len(lengths) > 1, lengths
