"""Beam search in JAX with static shapes: [batch, beam] hypotheses, a fixed maximum length, one `lax.while_loop`.

The algorithm is the MLPerf Transformer reference's (mlcommons/training translation/tensorflow/transformer/model/
beam_search.py, from Tensor2Tensor): each step extends the `beam` alive hypotheses of every example by every token,
keeps the 2 * beam most probable extensions, of which those ending in EOS compete for the `beam` finished slots
(by length-penalised score) and the others for the `beam` alive slots (by log probability). The loop stops at the
maximum length or, for every example, once no alive hypothesis can beat the best finished one: an alive log
probability only falls as it grows and the penalty is largest at the maximum length, so
`alive_log_prob / penalty(max_len)` bounds whatever it can still reach. (The reference compares against the worst
finished hypothesis instead, which keeps the whole finished top-k exact; we only return the best.) An example
with no finished hypothesis at the end returns its best alive one, scored by its raw log probability, as the
reference does.

Length penalties (score = sum of token log probabilities / penalty(length), length counting the EOS):
- 'gnmt': ((5 + length) / 6) ** alpha (Wu et al. 2016, section 7). Both MLPerf translation references use it: the
  Transformer (model_params.py: beam_size 4, alpha 0.6, max length = source length + extra_decode_length 50) and
  GNMT (seq2seq/inference/beam_search.py: beam 5, len_norm_factor 0.6, len_norm_const 5; GNMT adds a coverage
  penalty of factor 0.1 over its attention weights, which this module does not compute).
- 'fairseq': length ** alpha (fairseq's sequence_generator, `lenpen`).

With beam_size 1 this is greedy decoding except that an EOS ranked second at some step still becomes a finished
hypothesis, as the reference keeps EOS from the top 2 * beam: the result is the better of that and the greedy path.

`step_fn(tokens, index, cache) -> (logits, cache)`: tokens [batch * beam] int32 (the last token of each
hypothesis: `bos_id` at index 0), index a scalar int32 (the position being decoded), cache a pytree whose every
leaf has a leading [batch * beam] dimension (per-hypothesis state, e.g. a decoder's key/value cache: the search
reorders it as hypotheses move between beams). State that is the same for all beams of an example (the encoder
output) belongs in the closure, expanded to [batch * beam], not in the cache. Rows are example-major: row
b * beam + k is beam k of example b.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

LENGTH_PENALTIES = ('gnmt', 'fairseq')


class BeamResult(NamedTuple):
  sequences: jax.Array  # [batch, max_len] int32: the best hypothesis, EOS included, padded with pad_id after it
  scores: jax.Array  # [batch] float32: its length-penalised log probability (raw log probability if unfinished)
  finished: jax.Array  # [batch] bool: whether the best hypothesis ended with EOS
  steps: jax.Array  # scalar int32: decoding steps the loop ran (<= max_len)


def length_penalty(length, alpha: float, kind: str = 'gnmt'):
  """The divisor of a hypothesis' log probability; `length` counts its tokens including EOS."""
  length = jnp.asarray(length, jnp.float32)
  if kind == 'gnmt':
    return ((5.0 + length) / 6.0) ** alpha
  if kind == 'fairseq':
    return length**alpha
  raise ValueError(f"length penalty '{kind}' is not one of {LENGTH_PENALTIES}")


def expand_to_beams(tree, beam_size: int):
  """[batch, ...] leaves -> [batch * beam_size, ...], each row repeated beam_size times (example-major)."""
  return jax.tree.map(lambda x: jnp.repeat(x, beam_size, axis=0), tree)


def _gather_beams(tree, indices, batch_size: int, beam_size: int):
  """Leaves [batch * beam, ...] -> [batch * new_beam, ...], new beam j of example b from beam indices[b, j]."""
  rows = (jnp.arange(batch_size)[:, None] * beam_size + indices).reshape(-1)
  return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), tree)


def _take_along_beams(x, indices):
  """x [batch, beam, ...], indices [batch, k] -> [batch, k, ...]."""
  return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(step_fn: Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]], cache: Any, *,
                batch_size: int, beam_size: int, max_len: int, eos_id: int, alpha: float = 0.6,
                length_penalty_kind: str = 'gnmt', bos_id: int = 0, pad_id: int = 0) -> BeamResult:
  """Finds each example's highest-scoring sequence of at most max_len tokens (see the module docstring).

  cache: the initial per-hypothesis state, leaves [batch * beam_size, ...] (see `expand_to_beams`).
  All sizes are static; jit the caller and the search compiles once per shape.
  """
  if beam_size < 1 or max_len < 1:
    raise ValueError(f'beam_size={beam_size} and max_len={max_len} must be at least 1')
  if alpha < 0:
    raise ValueError(f'alpha={alpha}: the early stop needs a penalty that grows with length (alpha >= 0)')
  length_penalty(1, alpha, length_penalty_kind)  # validates the kind
  neg_inf = jnp.float32(-jnp.inf)
  b, k = batch_size, beam_size
  max_penalty = length_penalty(max_len, alpha, length_penalty_kind)

  def cond(state):
    i, _, alive_lp, _, _, fin_scores, fin_flags = state
    best_finished = jnp.max(jnp.where(fin_flags, fin_scores, neg_inf), axis=1)
    best_alive_bound = alive_lp[:, 0] / max_penalty  # alive log probs are kept sorted, best first
    can_improve = jnp.any(best_alive_bound > best_finished)
    return (i < max_len) & can_improve

  def body(state):
    i, alive_seq, alive_lp, alive_cache, fin_seq, fin_scores, fin_flags = state
    last = jnp.where(i == 0, bos_id, lax.dynamic_index_in_dim(alive_seq, jnp.maximum(i - 1, 0), axis=2,
                                                              keepdims=False))
    logits, new_cache = step_fn(last.reshape(-1).astype(jnp.int32), i, alive_cache)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, vocab)
    candidates = (alive_lp[:, :, None] + log_probs).reshape(b, k * vocab)
    top_lp, top_idx = lax.top_k(candidates, 2 * k)  # [b, 2k]
    top_beam, top_token = top_idx // vocab, top_idx % vocab
    top_seq = lax.dynamic_update_slice_in_dim(_take_along_beams(alive_seq, top_beam), top_token[:, :, None], i,
                                              axis=2)
    ends = (top_token == eos_id) & jnp.isfinite(top_lp)

    # Alive: the k best extensions that did not end; the cache is gathered once, straight from the parent beams.
    alive_lp2, alive_pick = lax.top_k(jnp.where(ends, neg_inf, top_lp), k)
    alive_seq = _take_along_beams(top_seq, alive_pick)
    alive_cache = _gather_beams(new_cache, jnp.take_along_axis(top_beam, alive_pick, axis=1), b, k)

    # Finished: the k best by score among the old finished and the extensions that just ended.
    scores = jnp.where(ends, top_lp / length_penalty(i + 1, alpha, length_penalty_kind), neg_inf)
    all_seq = jnp.concatenate([fin_seq, top_seq], axis=1)
    all_scores = jnp.concatenate([jnp.where(fin_flags, fin_scores, neg_inf), scores], axis=1)
    all_flags = jnp.concatenate([fin_flags, ends], axis=1)
    fin_scores, fin_pick = lax.top_k(all_scores, k)
    fin_seq = _take_along_beams(all_seq, fin_pick)
    fin_flags = jnp.take_along_axis(all_flags, fin_pick, axis=1)
    return i + 1, alive_seq, alive_lp2, alive_cache, fin_seq, fin_scores, fin_flags

  seq0 = jnp.full((b, k, max_len), pad_id, jnp.int32)
  # Only beam 0 starts alive, so the first step does not pick the same extension k times.
  alive_lp0 = jnp.tile(jnp.asarray([0.0] + [-jnp.inf] * (k - 1), jnp.float32), (b, 1))
  state = (jnp.int32(0), seq0, alive_lp0, cache, seq0, jnp.full((b, k), -jnp.inf, jnp.float32),
           jnp.zeros((b, k), bool))
  steps, alive_seq, alive_lp, _, fin_seq, fin_scores, fin_flags = lax.while_loop(cond, body, state)
  any_finished = jnp.any(fin_flags, axis=1)
  best = jnp.argmax(jnp.where(fin_flags, fin_scores, -jnp.inf), axis=1)
  sequences = jnp.where(any_finished[:, None], _take_along_beams(fin_seq, best[:, None])[:, 0], alive_seq[:, 0])
  scores = jnp.where(any_finished, jnp.take_along_axis(fin_scores, best[:, None], axis=1)[:, 0], alive_lp[:, 0])
  return BeamResult(sequences, scores, any_finished, steps)
