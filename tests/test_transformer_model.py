"""The translation Transformer (models/transformer.py): the reference's parameter count, masks, incremental decoding.

The reference is the MLPerf Training Transformer (ruleset 0.7.0), mlcommons/training
translation/tensorflow/transformer/model/, run with `--params=big` (run_training.sh). Its parameter count is
transcribed below from its own layer code; the model is built abstractly (`jax.eval_shape`), so the 211M-parameter
check costs a trace, not an initialisation.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from models import transformer
from suite.common import sharding

TINY = transformer.TransformerConfig(vocab_size=13, d_model=16, num_heads=2, ffn_size=24, num_encoder_layers=2,
                                     num_decoder_layers=2)


def reference_transformer_parameters(vocab_size=33708, hidden_size=1024, filter_size=4096, num_hidden_layers=6):
  """Trainable parameters of the reference's Transformer (defaults: model_params.TransformerBigParams).

  embedding_layer.py  EmbeddingSharedWeights: one `weights` [vocab_size, hidden_size], used for the source, the
                      target and the pre-softmax linear.
  attention_layer.py  Attention: q, k, v, output_transform = tf.layers.Dense(hidden_size, use_bias=False):
                      4 * hidden^2.
  ffn_layer.py        FeedFowardNetwork: filter_layer Dense(filter_size, use_bias=True) and output_layer
                      Dense(hidden_size, use_bias=True): 2 * hidden * filter + filter + hidden.
  transformer.py      LayerNormalization: layer_norm_scale + layer_norm_bias = 2 * hidden, one per
                      PrePostProcessingWrapper (2 per encoder layer, 3 per decoder layer) and one
                      output_normalization per stack.
  """
  attention = 4 * hidden_size * hidden_size
  ffn = 2 * hidden_size * filter_size + filter_size + hidden_size
  norm = 2 * hidden_size
  encoder_layer = attention + norm + ffn + norm
  decoder_layer = 2 * attention + ffn + 3 * norm
  return vocab_size * hidden_size + num_hidden_layers * (encoder_layer + decoder_layer) + 2 * norm


def count(cfg):
  shapes = jax.eval_shape(lambda rng: transformer.init_variables(transformer.Transformer(cfg), rng),
                          jax.random.key(0))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)['params']))


def test_transformer_big_has_the_reference_parameter_count():
  # 33708 * 1024                         = 34,516,992 shared embedding
  # encoder layer: 4 * 1024^2            =  4,194,304 self-attention
  #                2 * 1024 * 4096 + 4096 + 1024 = 8,393,728 feed-forward
  #                2 * (2 * 1024)        =      4,096 two layer norms          -> 12,592,128, x 6 = 75,552,768
  # decoder layer: 2 * 4,194,304 + 8,393,728 + 3 * 2048                       -> 16,788,480, x 6 = 100,730,880
  # two final layer norms: 2 * 2048      =      4,096
  # total                                = 210,804,736
  assert reference_transformer_parameters() == 210_804_736
  assert count(transformer.TransformerConfig()) == 210_804_736


def test_variants_parameter_counts():
  d, v, f = TINY.d_model, TINY.vocab_size, TINY.ffn_size
  base = reference_transformer_parameters(v, d, f, 2)
  assert count(TINY) == base
  # Post-norm has no final stack norms; unshared embeddings add a target table and an output projection.
  assert count(transformer.TransformerConfig(**{**TINY.__dict__, 'pre_norm': False})) == base - 2 * 2 * d
  assert count(transformer.TransformerConfig(**{**TINY.__dict__, 'shared_embedding': False})) == base + 2 * v * d


def test_config_from_a_workload_config_and_bad_sizes():
  class ModelConfig:
    d_model, num_heads, vocab_size, dtype = 64, 4, 100, 'bfloat16'

  cfg = transformer.config_from(ModelConfig())
  assert (cfg.d_model, cfg.num_heads, cfg.vocab_size, cfg.ffn_size, cfg.dtype) == (64, 4, 100, 4096, jnp.bfloat16)
  with pytest.raises(ValueError, match='divisible'):
    transformer.TransformerConfig(d_model=100, num_heads=16)


def test_parameters_carry_logical_axes_the_mesh_shards():
  model = transformer.Transformer(TINY)
  shapes = jax.eval_shape(lambda rng: transformer.init_variables(model, rng), jax.random.key(0))
  specs = nn.get_partition_spec(shapes)['params']
  assert specs['embedding']['embedding'] == P('vocab', 'embed')
  assert specs['decoder_0']['self_attention']['query']['kernel'] == P('embed', 'heads', 'kv')
  assert specs['encoder_1']['ffn']['filter']['kernel'] == P('embed', 'mlp')
  mesh = sharding.make_mesh(jax.devices()[:8], 'data:2,fsdp:2,tensor:2')
  shardings = sharding.state_shardings(shapes, mesh)['params']
  assert shardings['embedding']['embedding'].spec == P(None, 'fsdp')  # 13 tokens do not split over tensor:2
  assert shardings['decoder_0']['cross_attention']['out']['kernel'].spec == P('tensor', None, 'fsdp')
  assert shardings['encoder_0']['ffn']['output']['kernel'].spec == P('tensor', 'fsdp')


class Tiny:
  """The tiny model with its variables and jitted entry points, built once for the module's tests."""

  def __init__(self):
    self.model = model = transformer.Transformer(TINY)
    # 'rbg' keys: XLA's own bit generator compiles in a fraction of threefry's time on CPU.
    self.variables = jax.jit(lambda rng: transformer.init_variables(model, rng))(jax.random.key(0, impl='rbg'))
    self.apply = jax.jit(model.apply, static_argnames='train')
    self.encode = jax.jit(lambda v, x: model.apply(v, x, method=transformer.Transformer.encode))
    self.cross = jax.jit(lambda v, e: model.apply(v, e, method=transformer.Transformer.cross_attention_kv))
    self.step = jax.jit(lambda v, *args: model.apply(v, *args, method=transformer.Transformer.decode_step))


@pytest.fixture(scope='module')
def tiny():
  return Tiny()


def tokens(seed, shape, low=2):
  return jnp.asarray(np.random.default_rng(seed).integers(low, TINY.vocab_size, shape), jnp.int32)


# One source/target shape for all tests, so each jitted function compiles once.
SRC, TGT = (2, 5), (2, 6)


def test_forward_shapes_and_dropout(tiny):
  inputs, targets = tokens(0, SRC), tokens(1, TGT)
  logits = tiny.apply(tiny.variables, inputs, targets)
  assert logits.shape == (*TGT, TINY.vocab_size) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(logits)))
  dropped = tiny.apply(tiny.variables, inputs, targets, train=True, rngs={'dropout': jax.random.key(1, impl='rbg')})
  assert not np.allclose(np.asarray(dropped), np.asarray(logits))


def test_decoder_is_causal(tiny):
  # logits[t] predicts targets[t] from targets[:t]: changing targets[3] leaves logits[:4] as they were.
  inputs, targets = tokens(2, SRC), tokens(3, TGT)
  changed = targets.at[:, 3].set(jnp.where(targets[:, 3] == 5, 6, 5))
  before = np.asarray(tiny.apply(tiny.variables, inputs, targets))
  after = np.asarray(tiny.apply(tiny.variables, inputs, changed))
  np.testing.assert_allclose(after[:, :4], before[:, :4], rtol=1e-5, atol=1e-5)
  assert np.abs(after[:, 4:] - before[:, 4:]).max() > 1e-3


def test_source_padding_is_masked(tiny):
  # Padding (id 0) after the sentence changes nothing; a different source token does.
  inputs, targets = tokens(4, SRC), tokens(5, TGT)
  sentence = inputs.at[:, 3:].set(transformer.PAD_ID)
  shorter = sentence.at[:, 2].set(transformer.PAD_ID)
  other = sentence.at[:, 0].set(2 + (sentence[:, 0] - 1) % 11)
  apply = lambda x: np.asarray(tiny.apply(tiny.variables, x, targets))  # noqa: E731
  padded = np.asarray(tiny.apply(tiny.variables, jnp.pad(sentence, ((0, 0), (0, 3))), targets))
  np.testing.assert_allclose(padded, apply(sentence), rtol=1e-5, atol=1e-5)
  assert np.abs(apply(shorter) - apply(sentence)).max() > 1e-3
  assert np.abs(apply(other) - apply(sentence)).max() > 1e-3


def test_position_encoding_is_the_references():
  # get_position_encoding: [sin(p * w) | cos(p * w)], w_i = exp(-i * ln(1e4) / (d/2 - 1)).
  enc = np.asarray(transformer.position_encoding(5, 8))
  w = np.exp(-np.arange(4) * np.log(1e4) / 3)
  np.testing.assert_allclose(enc[3], np.concatenate([np.sin(3 * w), np.cos(3 * w)]), rtol=1e-6, atol=1e-7)


def test_incremental_decoding_matches_teacher_forcing(tiny):
  # Feeding the targets one at a time through decode_step (cache of 9 > 6 positions, so stale slots are masked)
  # gives the teacher-forced logits at every position; the second source is padded.
  inputs, targets = tokens(6, SRC).at[1, 3:].set(transformer.PAD_ID), tokens(7, TGT)
  full = np.asarray(tiny.apply(tiny.variables, inputs, targets))
  cross = tiny.cross(tiny.variables, tiny.encode(tiny.variables, inputs))
  cache = transformer.init_cache(TINY, 2, 9)
  previous = jnp.full((2,), transformer.PAD_ID, jnp.int32)
  for i in range(targets.shape[1]):
    logits, cache = tiny.step(tiny.variables, previous, jnp.int32(i), cache, cross, inputs)
    np.testing.assert_allclose(np.asarray(logits), full[:, i], rtol=1e-4, atol=1e-5)
    previous = targets[:, i]
