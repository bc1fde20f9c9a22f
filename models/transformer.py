"""Encoder-decoder Transformer in Flax: Transformer-big for the MLPerf translation benchmark and small variants.

Transcribes the MLPerf Training reference (mlcommons/training `translation/tensorflow/transformer/model/`, the
TensorFlow official-models Transformer run by ruleset 0.7.0 with `--params=big`):

- one embedding matrix (vocab x d_model, N(0, d_model^-0.5)) shared by the source, the target and the pre-softmax
  projection (`embedding_layer.EmbeddingSharedWeights`); lookups are scaled by sqrt(d_model) and zeroed at the
  padding id 0 (`get_padding`), the output logits are x @ E^T;
- sinusoidal positions, [sin | cos] concatenated (not interleaved), timescales 1..1e4 (`get_position_encoding`),
  added at positions 0.. in both stacks;
- pre-norm residual blocks `x + dropout(sublayer(layer_norm(x)))` (`PrePostProcessingWrapper`) with a final layer
  norm on each stack (`output_normalization`); layer norm epsilon 1e-6;
- attention projections q, k, v, output without bias; queries scaled by head_dim^-0.5; padding keys masked with -1e9;
- feed-forward d_model -> ffn (ReLU) -> d_model, with biases;
- the decoder input is the target embedded and shifted right by one position of zeros (no BOS token: decoding
  starts from id 0, whose embedding is zero);
- dropout 0.1 on the embeddings, on each sublayer's output, on attention weights and after the ReLU;
- dense kernels Glorot-uniform (variance_scaling(1.0, fan_avg, uniform)).

`pre_norm=False` gives the post-norm block `layer_norm(x + dropout(sublayer(x)))` of the original paper and of
fairseq's `transformer_wmt_en_de_big` (no final stack norm); the reference is pre-norm.

Parameters carry logical axis names (`vocab`, `embed`, `heads`, `mlp`; `kv` = head_dim stays whole) that
suite/common/sharding.py maps onto the mesh. Incremental decoding (`decode_step`) uses a static-shape key/value
cache written with `lax.dynamic_update_slice`, and projects the encoder output for cross-attention once
(`cross_attention_kv`) instead of at every step as the reference does.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from models import layers

PAD_ID = 0
EOS_ID = 1
NEG_INF = -1e9  # the reference's _NEG_INF attention bias

EMBED_TABLE = ('vocab', 'embed')
QKV_KERNEL = ('embed', 'heads', 'kv')
OUT_KERNEL = ('heads', 'kv', 'embed')
FFN_IN_KERNEL = ('embed', 'mlp')
FFN_OUT_KERNEL = ('mlp', 'embed')


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Sizes and regularisation. Defaults: Transformer-big as the MLPerf reference builds it (model_params.py,
  TransformerBigParams: vocab_size 33708, hidden_size 1024, num_hidden_layers 6, num_heads 16, filter_size 4096,
  layer_postprocess/attention/relu dropout 0.1)."""
  vocab_size: int = 33708
  d_model: int = 1024
  num_heads: int = 16
  ffn_size: int = 4096
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  dropout: float = 0.1  # on embeddings + positions and on each sublayer's output (layer_postprocess_dropout)
  attention_dropout: float = 0.1
  relu_dropout: float = 0.1
  shared_embedding: bool = True  # one table for source, target and output; False: three separate ones
  pre_norm: bool = True
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32  # compute dtype; parameters stay float32

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise ValueError(f'd_model={self.d_model} is not divisible by num_heads={self.num_heads}')
    if self.d_model % 2:
      raise ValueError(f'd_model={self.d_model} must be even (sinusoidal positions come in sin/cos pairs)')
    if min(self.vocab_size, self.ffn_size, self.num_encoder_layers, self.num_decoder_layers) < 1:
      raise ValueError('vocab_size, ffn_size and the layer counts must be at least 1')

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads


def config_from(model_cfg, **overrides) -> TransformerConfig:
  """A TransformerConfig from a workload's model config (a ConfigDict or anything with these attribute names);
  absent fields keep the reference default, `dtype` may be a name ('bfloat16')."""
  values = {f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(TransformerConfig)
            if hasattr(model_cfg, f.name)}
  values.update(overrides)
  if 'dtype' in values:
    values['dtype'] = jnp.dtype(values['dtype'])
  return TransformerConfig(**values)


def position_encoding(length: int, d_model: int, min_timescale: float = 1.0, max_timescale: float = 1.0e4):
  """[length, d_model] float32 sinusoids: [sin(p * w_i) | cos(p * w_i)], w_i geometric from 1 to 1/max_timescale
  (model_utils.get_position_encoding)."""
  num_timescales = d_model // 2
  log_increment = math.log(max_timescale / min_timescale) / max(num_timescales - 1, 1)
  inv_timescales = min_timescale * np.exp(np.arange(num_timescales, dtype=np.float64) * -log_increment)
  scaled = np.arange(length, dtype=np.float64)[:, None] * inv_timescales[None, :]
  return jnp.asarray(np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1), jnp.float32)


def padding_bias(tokens):
  """[batch, 1, 1, length] additive attention bias: NEG_INF at padding keys (model_utils.get_padding_bias)."""
  return jnp.where(tokens == PAD_ID, NEG_INF, 0.0)[:, None, None, :].astype(jnp.float32)


def segment_bias(query_segmentation, key_segmentation):
  """[batch, 1, q_len, k_len]: NEG_INF unless query and key belong to the same packed pair (segment ids 1, 2, ...;
  0 marks padding, which no query sees)."""
  same = (query_segmentation[:, :, None] == key_segmentation[:, None, :]) & (key_segmentation[:, None, :] > 0)
  return jnp.where(same, 0.0, NEG_INF)[:, None].astype(jnp.float32)


def _positions(positions, length: int, d_model: int):
  """Sinusoids at positions 0..length-1, or at each token's own position in its packed pair ([batch, length])."""
  table = position_encoding(length, d_model)
  return table if positions is None else jnp.take(table, positions, axis=0)


def causal_bias(length: int):
  """[1, 1, length, length]: query i may see keys 0..i (model_utils.get_decoder_self_attention_bias)."""
  return jnp.where(jnp.tril(jnp.ones((length, length), bool)), 0.0, NEG_INF)[None, None].astype(jnp.float32)


def _dense_init():
  return nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')


class Attention(nn.Module):
  """Multi-head attention without projection biases (attention_layer.Attention)."""
  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    proj = lambda name: nn.DenseGeneral((cfg.num_heads, cfg.head_dim), use_bias=False, dtype=cfg.dtype,  # noqa: E731
                                        kernel_init=layers.named(_dense_init(), QKV_KERNEL), name=name)
    self.query, self.key, self.value = proj('query'), proj('key'), proj('value')
    self.out = nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=False, dtype=cfg.dtype,
                               kernel_init=layers.named(_dense_init(), OUT_KERNEL), name='out')
    self.weights_dropout = nn.Dropout(cfg.attention_dropout)

  def kv(self, memory):
    """Keys and values [batch, length, heads, head_dim] of `memory` [batch, length, d_model]."""
    return self.key(memory), self.value(memory)

  def attend(self, x, k, v, bias, deterministic: bool):
    """Queries from x [batch, q_len, d_model] over k, v; bias broadcasts to [batch, heads, q_len, k_len]."""
    q = self.query(x) * jnp.asarray(self.cfg.head_dim**-0.5, self.cfg.dtype)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) + bias
    weights = jax.nn.softmax(logits, axis=-1)
    weights = self.weights_dropout(weights, deterministic=deterministic).astype(self.cfg.dtype)
    return self.out(jnp.einsum('bhqk,bkhd->bqhd', weights, v))

  def __call__(self, x, memory, bias, deterministic: bool):
    k, v = self.kv(memory)
    return self.attend(x, k, v, bias, deterministic)


class FeedForward(nn.Module):
  """d_model -> ffn_size (ReLU, dropout) -> d_model, with biases (ffn_layer.FeedFowardNetwork)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):
    cfg = self.cfg
    h = nn.Dense(cfg.ffn_size, dtype=cfg.dtype, kernel_init=layers.named(_dense_init(), FFN_IN_KERNEL),
                 bias_init=layers.named(nn.initializers.zeros, ('mlp',)), name='filter')(x)
    h = nn.Dropout(cfg.relu_dropout)(nn.relu(h), deterministic=deterministic)
    return nn.Dense(cfg.d_model, dtype=cfg.dtype, kernel_init=layers.named(_dense_init(), FFN_OUT_KERNEL),
                    bias_init=layers.named(nn.initializers.zeros, ('embed',)), name='output')(h)


def _layer_norm(cfg: TransformerConfig, name: str):
  return nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype, name=name,
                      scale_init=layers.named(nn.initializers.ones, ('embed',)),
                      bias_init=layers.named(nn.initializers.zeros, ('embed',)))


class Residual(nn.Module):
  """One sublayer with its layer norm, dropout and residual connection, pre- or post-norm
  (PrePostProcessingWrapper). `sublayer(normed_x)` computes the sublayer's output."""
  cfg: TransformerConfig

  def setup(self):
    self.norm = _layer_norm(self.cfg, 'norm')
    self.drop = nn.Dropout(self.cfg.dropout)

  def __call__(self, x, sublayer, deterministic: bool):
    if self.cfg.pre_norm:
      return x + self.drop(sublayer(self.norm(x)), deterministic=deterministic)
    return self.norm(x + self.drop(sublayer(x), deterministic=deterministic))


class EncoderLayer(nn.Module):
  cfg: TransformerConfig

  def setup(self):
    self.self_attention = Attention(self.cfg)
    self.ffn = FeedForward(self.cfg)
    self.attention_residual = Residual(self.cfg)
    self.ffn_residual = Residual(self.cfg)

  def __call__(self, x, bias, deterministic: bool):
    x = self.attention_residual(x, lambda y: self.self_attention(y, y, bias, deterministic), deterministic)
    return self.ffn_residual(x, lambda y: self.ffn(y, deterministic), deterministic)


class DecoderLayer(nn.Module):
  cfg: TransformerConfig

  def setup(self):
    self.self_attention = Attention(self.cfg)
    self.cross_attention = Attention(self.cfg)
    self.ffn = FeedForward(self.cfg)
    self.self_residual = Residual(self.cfg)
    self.cross_residual = Residual(self.cfg)
    self.ffn_residual = Residual(self.cfg)

  def __call__(self, x, self_attend, cross_k, cross_v, cross_bias, deterministic: bool):
    """`self_attend(normed_x, attention)` runs the self-attention: over the whole target with a causal bias when
    teacher-forced, over the cache when decoding step by step."""
    x = self.self_residual(x, lambda y: self_attend(y, self.self_attention), deterministic)
    x = self.cross_residual(x, lambda y: self.cross_attention.attend(y, cross_k, cross_v, cross_bias, deterministic),
                            deterministic)
    return self.ffn_residual(x, lambda y: self.ffn(y, deterministic), deterministic)

  def cross_kv(self, encoded):
    return self.cross_attention.kv(encoded)


class Transformer(nn.Module):
  """Encoder-decoder Transformer over int token ids (PAD_ID = 0 pads); returns float32 logits.

  `__call__(inputs, targets)` is the teacher-forced training forward pass; `encode`, `cross_attention_kv`,
  `init_cache` and `decode_step` are the pieces of incremental decoding (call them with `method=`).
  """
  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    embed = lambda name: nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, name=name,  # noqa: E731
                                  embedding_init=layers.named(nn.initializers.normal(cfg.d_model**-0.5), EMBED_TABLE))
    if cfg.shared_embedding:
      self.source_embed = self.target_embed = embed('embedding')
    else:
      self.source_embed, self.target_embed = embed('source_embedding'), embed('target_embedding')
      self.logits_dense = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.dtype, name='logits',
                                   kernel_init=layers.named(_dense_init(), layers.CLASSIFIER_KERNEL))
    self.encoder_layers = [EncoderLayer(cfg, name=f'encoder_{i}') for i in range(cfg.num_encoder_layers)]
    self.decoder_layers = [DecoderLayer(cfg, name=f'decoder_{i}') for i in range(cfg.num_decoder_layers)]
    if cfg.pre_norm:
      self.encoder_norm = _layer_norm(cfg, 'encoder_norm')
      self.decoder_norm = _layer_norm(cfg, 'decoder_norm')
    self.embed_dropout = nn.Dropout(cfg.dropout)

  def _embed(self, table, tokens):
    """Scaled by sqrt(d_model), zero at padding (EmbeddingSharedWeights.call)."""
    x = table(tokens) * jnp.asarray(self.cfg.d_model**0.5, self.cfg.dtype)
    return jnp.where((tokens == PAD_ID)[..., None], jnp.zeros((), x.dtype), x)

  def _logits(self, x):
    if self.cfg.shared_embedding:
      logits = self.target_embed.attend(x)
    else:
      logits = self.logits_dense(x)
    return logits.astype(jnp.float32)

  def encode(self, inputs, deterministic: bool = True, segmentation=None, positions=None):
    """inputs [batch, src_len] -> encoder output [batch, src_len, d_model]. Packed rows (several pairs a row) pass
    `segmentation` (1, 2, ... per pair, 0 at padding) and `positions` (0.. within each pair)."""
    x = self._embed(self.source_embed, inputs) + _positions(positions, inputs.shape[1], self.cfg.d_model)
    x = self.embed_dropout(x.astype(self.cfg.dtype), deterministic=deterministic)
    bias = padding_bias(inputs) if segmentation is None else segment_bias(segmentation, segmentation)
    for layer in self.encoder_layers:
      x = layer(x, bias, deterministic)
    return self.encoder_norm(x) if self.cfg.pre_norm else x

  def decode(self, encoded, inputs, targets, deterministic: bool = True, inputs_segmentation=None,
             targets_segmentation=None, targets_positions=None):
    """Teacher-forced logits [batch, tgt_len, vocab]: position t sees targets[:, :t] (shifted right by a zero
    vector) and the whole source. Packed rows pass both segmentations and the target positions: each pair's
    first target position gets the zero vector, and attention stays within the pair."""
    length = targets.shape[1]
    x = self._embed(self.target_embed, targets)
    x = jnp.pad(x, ((0, 0), (1, 0), (0, 0)))[:, :-1]
    if targets_positions is not None:
      x = jnp.where((targets_positions == 0)[..., None], jnp.zeros((), x.dtype), x)
    x = x + _positions(targets_positions, length, self.cfg.d_model)
    x = self.embed_dropout(x.astype(self.cfg.dtype), deterministic=deterministic)
    if targets_segmentation is None:
      self_bias, cross_bias = causal_bias(length), padding_bias(inputs)
    else:
      self_bias = causal_bias(length) + segment_bias(targets_segmentation, targets_segmentation)
      cross_bias = segment_bias(targets_segmentation, inputs_segmentation)
    for layer in self.decoder_layers:
      k, v = layer.cross_kv(encoded)
      x = layer(x, lambda y, attn: attn(y, y, self_bias, deterministic), k, v, cross_bias, deterministic)
    return self._logits(self.decoder_norm(x) if self.cfg.pre_norm else x)

  def __call__(self, inputs, targets, train: bool = False, *, inputs_segmentation=None, targets_segmentation=None,
               inputs_position=None, targets_position=None):
    """Training forward pass: logits [batch, tgt_len, vocab] for `targets` given `inputs` (dropout when train).
    Packed rows (input_pipelines/translation.py `pack`) pass the four segmentation/position arrays."""
    deterministic = not train
    encoded = self.encode(inputs, deterministic, inputs_segmentation, inputs_position)
    return self.decode(encoded, inputs, targets, deterministic, inputs_segmentation, targets_segmentation,
                       targets_position)

  def cross_attention_kv(self, encoded):
    """Per decoder layer, the cross-attention keys and values of the encoder output (constant while decoding)."""
    return [dict(zip(('k', 'v'), layer.cross_kv(encoded))) for layer in self.decoder_layers]

  def decode_step(self, tokens, index, cache, cross_kv, inputs):
    """One incremental decoding step (inference only, no dropout).

    tokens: [n] the token at position `index` of each sequence's decoder input (PAD_ID at index 0);
    index: scalar int, the position being decoded, the same for all n;
    cache: `init_cache`'s structure, keys/values of positions < index;
    cross_kv: `cross_attention_kv` of the encoder output of each of the n rows;
    inputs: [n, src_len] the source tokens of each row (for the padding mask).
    Returns (logits [n, vocab] float32 for position index, the cache with position index written).
    """
    cfg = self.cfg
    max_len = cache[0]['k'].shape[1]
    x = self._embed(self.target_embed, tokens[:, None])
    x = x + lax.dynamic_slice_in_dim(position_encoding(max_len, cfg.d_model), index, 1)[None]
    x = x.astype(cfg.dtype)
    # Keys at positions > index are stale (zeros or an earlier beam's); mask them.
    self_bias = jnp.where(jnp.arange(max_len) <= index, 0.0, NEG_INF)[None, None, None, :].astype(jnp.float32)
    cross_bias = padding_bias(inputs)
    new_cache = []
    for layer, layer_cache, layer_cross in zip(self.decoder_layers, cache, cross_kv):
      written = {}

      def self_attend(y, attn, layer_cache=layer_cache, written=written):
        k, v = attn.kv(y)
        written['k'] = lax.dynamic_update_slice_in_dim(layer_cache['k'], k.astype(layer_cache['k'].dtype), index, 1)
        written['v'] = lax.dynamic_update_slice_in_dim(layer_cache['v'], v.astype(layer_cache['v'].dtype), index, 1)
        return attn.attend(y, written['k'], written['v'], self_bias, True)

      x = layer(x, self_attend, layer_cross['k'], layer_cross['v'], cross_bias, True)
      new_cache.append(written)
    logits = self._logits(self.decoder_norm(x) if cfg.pre_norm else x)
    return logits[:, 0], new_cache


def init_cache(cfg: TransformerConfig, n: int, max_len: int, dtype=None):
  """Zero key/value cache for n sequences of up to max_len decoder positions: per decoder layer
  {'k', 'v'} of [n, max_len, heads, head_dim]."""
  shape = (n, max_len, cfg.num_heads, cfg.head_dim)
  dtype = cfg.dtype if dtype is None else dtype
  return [{'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)} for _ in range(cfg.num_decoder_layers)]


def init_variables(model: Transformer, rng, src_len: int = 8, tgt_len: int = 8):
  """The model's (boxed, logically named) variables, from dummy token batches."""
  tokens = jnp.ones((1, src_len), jnp.int32)
  return model.init({'params': rng}, tokens, jnp.ones((1, tgt_len), jnp.int32))
