"""GNMT's beam search (models/gnmt_beam_search.py) against a plain-Python transcription of the reference loop and
against brute force, on hand-made models with attention.

The "model" is a second-order Markov table of log probabilities, log p(next | position, token before last, last
token), and a table of attention weights over a source of SOURCE_LEN positions indexed the same way, different for
each example (each with its own source length; no weight past it). `step_fn` reads the token before last from its
own cache, so a search that reorders the cache wrongly gets the wrong probabilities.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import gnmt
from models import gnmt_beam_search as gbs

BOS, EOS = 0, 1
SOURCE_LEN = 5


def random_tables(seed, batch, length, vocab, force_eos_at=None):
  """(log probs [batch, length, vocab, vocab, vocab], attention [batch, length, vocab, vocab, SOURCE_LEN]); with
  `force_eos_at`, every hypothesis still alive at that position ends there."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(0.0, 2.0, (batch, length, vocab, vocab, vocab))
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  if force_eos_at is not None:
    log_probs[:, force_eos_at] = -np.inf
    log_probs[:, force_eos_at, ..., EOS] = 0.0
  source_lengths = rng.integers(2, SOURCE_LEN + 1, batch)
  scores = rng.normal(0.0, 1.5, (batch, length, vocab, vocab, SOURCE_LEN))
  scores = np.where(np.arange(SOURCE_LEN) < source_lengths[:, None, None, None, None], scores, -np.inf)
  attention = np.exp(scores - scores.max(-1, keepdims=True))
  return log_probs, attention / attention.sum(-1, keepdims=True)


def markov_step_fn(log_probs, attention):
  log_probs, attention = jnp.asarray(log_probs, jnp.float32), jnp.asarray(attention, jnp.float32)

  def step_fn(tokens, index, cache):
    at = (cache['example'], index, cache['prev'], tokens)
    return log_probs[at], attention[at], {'example': cache['example'], 'prev': tokens}

  return step_fn


@functools.partial(jax.jit, static_argnames=('beam', 'max_len', 'cov', 'reorder'))
def search(log_probs, attention, beam, max_len, cov=0.1, reorder=True):
  batch = log_probs.shape[0]
  cache = gbs.expand_to_beams({'example': jnp.arange(batch, dtype=jnp.int32),
                               'prev': jnp.full(batch, BOS, jnp.int32)}, beam)
  return gbs.beam_search(markov_step_fn(log_probs, attention), cache, batch_size=batch, beam_size=beam,
                         max_len=max_len, source_len=SOURCE_LEN, eos_id=EOS, bos_id=BOS, cov_penalty_factor=cov,
                         reorder_coverage=reorder)


def normalised(log_prob, length, accumulated, cov):
  """The reference's final score; `length` counts BOS and EOS."""
  a = np.clip(accumulated, 0.0, 1.0)
  coverage = np.sum(np.log(a[a > 0]))
  return log_prob / ((5.0 + length) / 6.0)**0.6 + cov * coverage


def reference_search(log_probs, attention, beam, max_len, cov, reorder):
  """SequenceGenerator.beam_search of the reference for one sentence, statement for statement in plain Python
  (`reorder=False`: its per-slot attention buffer; True: reordered with the hypotheses). Returns (tokens after BOS
  up to the first EOS, score)."""
  translation = [[] for _ in range(beam)]
  prev, words = [BOS] * beam, [BOS] * beam
  lengths, scores = [1] * beam, [0.0] * beam
  accumulated = np.zeros((beam, SOURCE_LEN))
  for idx in range(1, max_len + 1):
    eos = [w == EOS for w in words]
    terminating = all(eos)
    candidates = []  # (score, slot, word)
    for j in range(beam):
      if eos[j]:
        candidates.append((scores[j], j, EOS))
        continue
      lengths[j] += 1
      accumulated[j] += attention[idx - 1, prev[j], words[j]]
      if idx == 1 and j > 0:
        continue
      row = log_probs[idx - 1, prev[j], words[j]]
      for w in np.argsort(-row)[:beam]:
        candidates.append((scores[j] + row[w], j, int(w)))
    candidates.sort(key=lambda c: -c[0])
    chosen = candidates[:beam]
    source = [c[1] for c in chosen]
    translation = [translation[s] + [c[2]] for s, c in zip(source, chosen)]
    lengths = [lengths[s] for s in source]
    prev = [words[s] for s in source]
    words = [c[2] for c in chosen]
    scores = [c[0] for c in chosen]
    if reorder:
      accumulated = accumulated[source]
    if terminating:
      scores = [normalised(scores[j], lengths[j], accumulated[j], cov) for j in range(beam)]
      break
  best = int(np.argmax(scores))
  tokens = translation[best]
  return tokens[:tokens.index(EOS) + 1] if EOS in tokens else tokens, scores[best]


def brute_force(log_probs, attention, max_len, cov):
  """Best (tokens, score) over every sequence ending with its first EOS within max_len tokens."""
  vocab = log_probs.shape[-1]
  best = (None, -np.inf)
  for n in range(1, max_len + 1):
    for prefix in itertools.product([t for t in range(vocab) if t != EOS], repeat=n - 1):
      seq = (*prefix, EOS)
      prev, last, log_prob, accumulated = BOS, BOS, 0.0, np.zeros(SOURCE_LEN)
      for i, token in enumerate(seq):
        log_prob += log_probs[i, prev, last, token]
        accumulated += attention[i, prev, last]
        prev, last = last, token
      if np.isfinite(log_prob):
        score = normalised(log_prob, n + 1, accumulated, cov)
        if score > best[1]:
          best = (list(seq), score)
  return best


@pytest.mark.parametrize('reorder', [True, False])
def test_matches_the_reference_loop(reorder):
  # Vocabulary larger than the beam, as in the reference; long enough that some sentences run out of length.
  batch, beam, max_len, vocab = 12, 3, 6, 6
  log_probs, attention = random_tables(0, batch, max_len, vocab)
  result = search(log_probs, attention, beam=beam, max_len=max_len, cov=0.3, reorder=reorder)
  finished = 0
  for b in range(batch):
    tokens, score = reference_search(log_probs[b], attention[b], beam, max_len, 0.3, reorder)
    got = list(np.asarray(result.sequences[b]))
    assert got[:len(tokens)] == tokens, b
    assert all(t == 0 for t in got[len(tokens):]), b
    np.testing.assert_allclose(float(result.scores[b]), score, rtol=1e-5, err_msg=str(b))
    finished += bool(result.finished[b])
  assert 0 < finished < batch  # Both endings occur: normalised scores and raw ones at the length limit.


def test_reordering_the_coverage_changes_some_results():
  log_probs, attention = random_tables(0, 12, 6, 6)
  a = search(log_probs, attention, beam=3, max_len=6, cov=0.3, reorder=True)
  b = search(log_probs, attention, beam=3, max_len=6, cov=0.3, reorder=False)
  assert not np.allclose(np.asarray(a.scores), np.asarray(b.scores))


@pytest.mark.parametrize('cov', [0.0, 0.1, 1.0])
def test_a_beam_wide_enough_finds_the_brute_force_optimum(cov):
  # Every hypothesis ends by its third token; 16 slots hold them all, so the search is exhaustive.
  batch, vocab, max_len = 8, 4, 4
  log_probs, attention = random_tables(1, batch, max_len, vocab, force_eos_at=2)
  result = search(log_probs, attention, beam=16, max_len=max_len, cov=cov)
  assert bool(jnp.all(result.finished))
  for b in range(batch):
    tokens, score = brute_force(log_probs[b], attention[b], max_len, cov)
    got = list(np.asarray(result.sequences[b]))
    assert got[:len(tokens)] == tokens and all(t == 0 for t in got[len(tokens):]), b
    np.testing.assert_allclose(float(result.scores[b]), score, rtol=1e-5)


def test_the_coverage_penalty_changes_the_optimum():
  log_probs, attention = random_tables(1, 8, 4, 4, force_eos_at=2)
  plain = search(log_probs, attention, beam=16, max_len=4, cov=0.0)
  covered = search(log_probs, attention, beam=16, max_len=4, cov=1.0)
  assert np.any(np.asarray(plain.sequences) != np.asarray(covered.sequences))


def test_beam_one_is_greedy():
  batch, max_len, vocab = 10, 6, 5
  log_probs, attention = random_tables(2, batch, max_len, vocab)
  result = search(log_probs, attention, beam=1, max_len=max_len)
  for b in range(batch):
    prev, last, seq = BOS, BOS, []
    for i in range(max_len):
      token = int(np.argmax(log_probs[b, i, prev, last]))
      seq.append(token)
      prev, last = last, token
      if token == EOS:
        break
    assert list(np.asarray(result.sequences[b]))[:len(seq)] == seq


def test_gnmt_step_gives_the_attention_of_the_teacher_forced_decoder():
  model = gnmt.GNMT(vocab_size=11, hidden=8, num_layers=2, dropout=0.0)
  source = jnp.array([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]], jnp.int32)
  lengths = jnp.array([5, 3], jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), source, lengths, source[:, :2])
  memory = model.apply(variables, source, lengths, method=gnmt.GNMT.encode)
  carry = model.apply(variables, memory, method=gnmt.GNMT.init_decode_state)
  step = gbs.step_fn(model, variables, memory)
  logits, attention, _ = step(jnp.array([2, 2], jnp.int32), 0, carry)
  expected, _ = model.apply(variables, jnp.array([2, 2], jnp.int32), carry, memory, method=gnmt.GNMT.decode_step)
  np.testing.assert_allclose(logits, expected, rtol=1e-6)
  np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)
  assert float(attention[1, 3:].sum()) == 0.0  # Nothing past the source length.
  # The search runs on the real model: sequences of the static shape, one per example.
  beams = gbs.expand_to_beams(memory, 5)
  cache = gbs.expand_to_beams(carry, 5)
  result = jax.jit(lambda c: gbs.beam_search(gbs.step_fn(model, variables, beams), c, batch_size=2, beam_size=5,
                                             max_len=7, source_len=5, eos_id=3, bos_id=2))(cache)
  assert result.sequences.shape == (2, 7)
