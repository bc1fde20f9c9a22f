"""GNMT's beam search in JAX with static shapes: the MLPerf rnn_translator reference's SequenceGenerator.beam_search.

Transcribes mlcommons/training rnn_translator/pytorch/seq2seq/inference/beam_search.py (beam 5, len_norm_factor
0.6, len_norm_const 5, cov_penalty_factor 0.1; Wu et al. 2016, section 7) as one `lax.while_loop` over
[batch, beam] slots. It differs from models/beam_search.py (the Transformer reference's) in how hypotheses finish:

- Finished beams keep their slots. Each step every slot proposes extensions: an alive hypothesis all its tokens, a
  finished one (last token EOS) only itself, EOS again at log probability 0. The `beam` best candidates of each
  sentence by raw summed log probability take the slots, so a finished hypothesis can be pushed out by better
  alive ones; at the first step only slot 0 proposes.
- A sentence stops once all its slots hold finished hypotheses; only then are its scores normalised, each
  log probability divided by ((C + length) / (C + 1)) ** alpha (length counts BOS and EOS, C = len_norm_const)
  plus the coverage penalty beta * sum over source positions of log(min(accumulated attention, 1)), positions
  never attended (padding) counting 0. A sentence still running at the maximum length keeps raw log probabilities.
- The answer is the slot with the best score.

One deliberate difference, `reorder_coverage`: the reference accumulates each step's attention weights into a
per-slot buffer that is not reordered when hypotheses move between slots, so a hypothesis' coverage penalty mixes
in the attention of whichever hypotheses held its slot before (the accumulation of the DeepLearningExamples
successor is the same). The default (True) reorders it with the hypotheses, the coverage penalty of the GNMT paper
and of the reference's own docstring; False reproduces the reference exactly. Both are tested against a plain-Python
transcription of the reference loop (tests/test_gnmt_beam_search.py).

`max_len` counts generated tokens (EOS included); the reference's `max_seq_len` counts BOS too, so its
max_length_test 150 is max_len=149 here.

`step_fn(tokens, index, cache) -> (logits, attention, cache)`: tokens [batch * beam] int32 (the last token of each
slot: `bos_id` at index 0), index a scalar int32 (the 0-based position being decoded), attention [batch * beam,
source_len] float32 (this step's attention weights over the source), cache a pytree with leading [batch * beam]
rows (example-major: row b * beam + k is slot k of example b), reordered with the hypotheses.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from models import gnmt as gnmt_lib
from models.beam_search import BeamResult, expand_to_beams

__all__ = ['BeamResult', 'beam_search', 'coverage_penalty', 'expand_to_beams', 'length_normalisation', 'step_fn']


def length_normalisation(length, factor: float = 0.6, const: float = 5.0):
  """The reference's divisor: ((const + length) / (const + 1)) ** factor, length counting BOS and EOS."""
  return ((const + jnp.asarray(length, jnp.float32)) / (const + 1.0))**factor


def coverage_penalty(accumulated_attention, factor: float = 0.1):
  """factor * sum over source positions of log(min(attention, 1)), positions with no attention counting 0."""
  a = jnp.clip(accumulated_attention, 0.0, 1.0)
  return factor * jnp.sum(jnp.where(a > 0, jnp.log(jnp.where(a > 0, a, 1.0)), 0.0), axis=-1)


def beam_search(step_fn: Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, jax.Array, Any]], cache: Any, *,
                batch_size: int, beam_size: int, max_len: int, source_len: int, eos_id: int, bos_id: int,
                len_norm_factor: float = 0.6, len_norm_const: float = 5.0, cov_penalty_factor: float = 0.1,
                reorder_coverage: bool = True, pad_id: int = 0) -> BeamResult:
  """Each example's best hypothesis under the reference's search (see the module docstring).

  cache: the initial per-slot state, leaves [batch * beam_size, ...] (see `expand_to_beams`). All sizes are static;
  jit the caller and the search compiles once per shape. Returns sequences [batch, max_len] (EOS included, pad_id
  after it), their scores (normalised and coverage-penalised when the sentence finished, else raw log
  probabilities), whether the sentence finished, and the loop's step count.
  """
  if beam_size < 1 or max_len < 1:
    raise ValueError(f'beam_size={beam_size} and max_len={max_len} must be at least 1')
  b, k = batch_size, beam_size
  neg_inf = jnp.float32(-jnp.inf)

  def cond(state):
    idx, active = state[0], state[-1]
    return (idx <= max_len) & jnp.any(active)

  def body(state):
    idx, seq, words, lengths, scores, accu, cache, active = state
    eos_mask = words == eos_id  # [b, k]: finished slots
    terminating = jnp.all(eos_mask, axis=1) & active
    lengths = lengths + (~eos_mask & active[:, None]).astype(jnp.int32)
    logits, attn, new_cache = step_fn(words.reshape(-1), idx - 1, cache)
    attn = jnp.where(eos_mask[:, :, None], 0.0, attn.astype(jnp.float32).reshape(b, k, -1))
    accu = accu + jnp.where(active[:, None, None], attn, 0.0)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, vocab)
    eos_only = jnp.where(jnp.arange(vocab) == eos_id, 0.0, neg_inf)
    log_probs = jnp.where(eos_mask[:, :, None], eos_only, log_probs)
    candidates = scores[:, :, None] + log_probs
    candidates = jnp.where((idx == 1) & (jnp.arange(k) > 0)[None, :, None], neg_inf, candidates)
    top_scores, top_idx = lax.top_k(candidates.reshape(b, k * vocab), k)
    source_beam, new_words = top_idx // vocab, top_idx % vocab
    # A slot left with no finite candidate (only when beam > the candidates, e.g. a tiny vocabulary) is dead: it
    # counts as finished, so it never holds a sentence open.
    new_words = jnp.where(jnp.isfinite(top_scores), new_words, eos_id).astype(jnp.int32)

    def take(x):  # [b, k, ...] rows from their source slots
      return jnp.take_along_axis(x, source_beam.reshape(source_beam.shape + (1,) * (x.ndim - 2)), axis=1)

    seq = lax.dynamic_update_slice_in_dim(take(seq), new_words[:, :, None], idx - 1, axis=2)
    lengths = take(lengths)
    if reorder_coverage:
      accu = take(accu)
    rows = (jnp.arange(b)[:, None] * k + source_beam).reshape(-1)
    cache = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), new_cache)
    # Sentences whose slots had all finished: normalise once, after this step's (order-only) reshuffle, as the
    # reference does, and stop them.
    final = top_scores / length_normalisation(lengths, len_norm_factor, len_norm_const) + coverage_penalty(
        accu, cov_penalty_factor)
    scores = jnp.where(terminating[:, None], final, top_scores)
    return idx + 1, seq, new_words, lengths, scores, accu, cache, active & ~terminating

  state = (jnp.int32(1), jnp.full((b, k, max_len), pad_id, jnp.int32), jnp.full((b, k), bos_id, jnp.int32),
           jnp.ones((b, k), jnp.int32), jnp.zeros((b, k), jnp.float32), jnp.zeros((b, k, source_len), jnp.float32),
           cache, jnp.ones((b,), bool))
  idx, seq, _, _, scores, _, _, active = lax.while_loop(cond, body, state)
  best = jnp.argmax(scores, axis=1)
  sequences = jnp.take_along_axis(seq, best[:, None, None], axis=1)[:, 0]
  # Finished slots keep appending EOS; the result is padded after its first EOS instead.
  after_eos = jnp.cumsum(sequences == eos_id, axis=1) - (sequences == eos_id) > 0
  sequences = jnp.where(after_eos, pad_id, sequences)
  best_scores = jnp.take_along_axis(scores, best[:, None], axis=1)[:, 0]
  return BeamResult(sequences, best_scores, ~active, idx - 1)


def step_fn(model: gnmt_lib.GNMT, variables, memory):
  """`step(tokens, index, carry) -> (logits, attention, carry)` for `beam_search` from a GNMT: `memory` (from
  `GNMT.encode`, expanded to the beams) stays in the closure, the decoder carry is what the search reorders."""
  def step(tokens_B, index, carry):
    del index  # An LSTM keeps its position in its state.
    return model.apply(variables, tokens_B, carry, memory, method=gnmt_lib.GNMT.decode_step_with_attention)
  return step
