"""The translation input pipeline shared by the `transformer` and `gnmt` workloads: TFDS text pairs -> token ids ->
static-shape batches with little padding.

API (stable; the workloads build on it):

- `open_pairs(dataset, split, data_dir, source_lang, target_lang, *, is_eval)` -> `TextPairs`: the split's
  (source text, target text) pairs, read once from the TFDS ArrayRecord files (`wmt17_translate/de-en`,
  `wmt14_translate/de-en`, the generated corpus, ...) through `tfds` data sources; a missing dataset is a UserError
  with the `tfds build` command.
- `Subtokenizer`: the MLPerf Transformer reference's invertible subword tokenizer (mlcommons/training
  translation/tensorflow/transformer/utils/tokenizer.py), reimplemented: text is split at letter/digit vs other
  boundaries, each token escaped and ended by '_', then split greedily into the longest vocabulary subtokens.
  `Subtokenizer.from_file(path)` reads the reference's vocab file (one quoted subtoken a line: `vocab.ende.32768`,
  33,708 subtokens; BUILD.md says how to make it); `Subtokenizer.from_texts(texts)` builds a whole-word
  vocabulary in the same format deterministically from a small corpus (the tiny scale). Ids: PAD_ID 0, EOS_ID 1.
  `encode(text)` -> ids without EOS, `decode(ids)` -> text (stops at nothing: strip EOS and padding first, see
  `strip_eos`).
- `tokenize_pairs(pairs, vocab, max_length)` -> `TokenizedPairs`: source and target ids with EOS appended; pairs
  whose source or target (EOS included) exceeds max_length are discarded (MLPerf's `max_sequence_length` method
  'discard') and counted.
- Training batches, two layouts of the same static shape [rows, max_length] int32:
  * `pack(tokenized, max_length)` -> `Packed`: first-fit-decreasing packing of whole pairs into rows, each pair
    once; rows carry `inputs`, `targets`, `inputs_segmentation`, `targets_segmentation` (1, 2, ... per pair in
    the row, 0 at padding) and `inputs_position`, `targets_position` (0.. within each pair). Padding is a few
    percent. For models that mask attention by segment (the Transformer).
  * `pad_rows(tokenized, max_length)` -> `Packed` with one pair per row (segmentation 1 on tokens, 0 on padding),
    in split order: for models that cannot mask by segment (GNMT's LSTMs).
  `Packed.padding_fraction` is the share of padding tokens over both sides: the number the workloads log.
  * `Buckets(pad_rows(...), bucket_lengths, global_batch_size)`: one pair a row batched by length, each global
    batch one bucket's pairs at that bucket's row length (a few static shapes: `batch_shapes`); every pair once an
    epoch of `steps_per_epoch` batches, each bucket's last batch filled with empty dummy pairs, epoch e a pure
    function of (seed, e); `bucketed_train_batches` streams it from any step, split over processes.
  `train_batches(packed, global_batch_size=, seed=, process_index=, process_count=, num_threads=, start_batch=)`
  is the seeded endless stream of rows (input_pipelines/streams.py: every row once per epoch, same global batches
  on any process count); `num_train_examples` of a packed workload is `len(packed)` rows.
- `eval_batches(tokenized, max_length, global_batch_size=, process_index=, process_count=, num_threads=)`: one
  pass, one sentence a row, {'inputs' [b, max_length], 'index' [b] (the pair's index in the split, -1 on
  padding rows), 'mask' [b]}, sentences ordered by source length so a batch's beam search stops early.
- `strip_eos(ids)`: the tokens before the first EOS (or PAD), as a list.
- The tokenisation cache: `cached_arrays(cache_dir, key, make)` stores `make()`'s dict of arrays as one `.npz`
  named by a hash of `key` and reads it back next time; `dataset_fingerprint` (a split's TFDS files, without
  reading them) and a tokenizer's `fingerprint` (its vocabulary's content) go into the key;
  `tokenized_arrays`/`from_tokenized_arrays` and `Packed.arrays`/`Packed.from_arrays` convert to and from arrays.
"""

import collections
import dataclasses
import functools
import hashlib
import json
import os
import re
import tempfile
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence

import grain
import jax
import numpy as np
from absl import logging

from input_pipelines import checked_source, generated_translation, sources, streams
from suite.common.errors import UserError, first_line

PAD_ID = 0
EOS_ID = 1
PAD, EOS = '<pad>_', '<EOS>_'
RESERVED_TOKENS = (PAD, EOS)
_ESCAPE_CHARS = set('\\_u;0123456789')  # Always in the alphabet, so every escaped token can be encoded.
_UNESCAPE = re.compile(r'\\u|\\\\|\\([0-9]+);')
_UNDEFINED = '\u3013'


@functools.lru_cache(maxsize=65536)
def _is_alnum(c: str) -> bool:
  """A letter or a number in Unicode's categories (L*, N*), as the reference's _ALPHANUMERIC_CHAR_SET."""
  return unicodedata.category(c)[0] in ('L', 'N')


# --- the reference's subword tokenizer ---
def split_to_tokens(text: str) -> list[str]:
  """Tokens at each change between letter/digit and other characters; single spaces between words are dropped."""
  if not text:
    return []
  tokens, start = [], 0
  alnum = [_is_alnum(c) for c in text]
  for pos in range(1, len(text)):
    if alnum[pos] != alnum[pos - 1]:
      token = text[start:pos]
      if token != ' ' or start == 0:
        tokens.append(token)
      start = pos
  tokens.append(text[start:])
  return tokens


def join_tokens(tokens: Sequence[str]) -> str:
  """Inverse of `split_to_tokens`: a space between two letter/digit tokens."""
  out = []
  for i, token in enumerate(tokens):
    if i and _is_alnum(tokens[i - 1][0]) and _is_alnum(token[0]):
      out.append(' ')
    out.append(token)
  return ''.join(out)


def _escape(token: str, alphabet: set) -> str:
  token = token.replace('\\', '\\\\').replace('_', '\\u')
  return ''.join(c if c in alphabet and c != '\n' else f'\\{ord(c)};' for c in token) + '_'


def _unescape(token: str) -> str:
  def sub(m):
    if m.group(1) is None:
      return '_' if m.group(0) == '\\u' else '\\'
    try:
      return chr(int(m.group(1)))
    except (ValueError, OverflowError):
      return _UNDEFINED
  return _UNESCAPE.sub(sub, token)


class Subtokenizer:
  """Text <-> subtoken ids, as the MLPerf Transformer reference encodes (see the module docstring)."""

  def __init__(self, subtokens: Sequence[str]):
    body = [s for s in subtokens if s not in RESERVED_TOKENS]
    self.subtokens = list(RESERVED_TOKENS) + body
    self.alphabet = {c for s in self.subtokens for c in s} | _ESCAPE_CHARS
    self._ids = {s: i for i, s in enumerate(self.subtokens)}
    self._max_len = max(len(s) for s in self.subtokens)
    self._cache: dict[str, list[int]] = {}

  @classmethod
  def from_file(cls, path: str) -> 'Subtokenizer':
    """The reference's vocab file: one subtoken a line in single quotes (vocab.ende.32768)."""
    try:
      with open(path, encoding='utf-8', newline='\n') as f:
        subtokens = [line.strip()[1:-1] for line in f if line.strip()]
    except OSError as e:
      raise UserError(f'cannot read the vocabulary file {path} ({first_line(e)}): set --config.vocab_file to the '
                      "reference's vocab.ende.32768 (BUILD.md: preparing WMT)") from None
    if not subtokens:
      raise UserError(f'the vocabulary file {path} is empty: set --config.vocab_file to vocab.ende.32768')
    return cls(subtokens)

  @classmethod
  def from_texts(cls, texts: Iterable[str]) -> 'Subtokenizer':
    """A whole-word vocabulary in the reference's format, deterministic in the set of texts: every token of the
    texts (escaped, ending in '_'), then every single character they use, so unseen words still encode."""
    tokens, chars = set(), set()
    for text in texts:
      for token in split_to_tokens(text):
        tokens.add(token)
        chars.update(token)
    alphabet = chars | _ESCAPE_CHARS
    return cls(sorted(_escape(t, alphabet) for t in tokens) + sorted(alphabet | {'_'}))

  def save(self, path: str) -> None:
    with open(path, 'w', encoding='utf-8', newline='\n') as f:
      f.writelines(f"'{s}'\n" for s in self.subtokens)

  @property
  def vocab_size(self) -> int:
    return len(self.subtokens)

  @functools.cached_property
  def fingerprint(self) -> str:
    """A hash of the vocabulary: the tokenisation cache's key."""
    return hashlib.sha256('\n'.join(['subtokenizer'] + self.subtokens).encode()).hexdigest()

  def encode(self, text: str, lang: str | None = None) -> list[int]:
    """Subtoken ids of `text`, without EOS (the same for every language: `lang` is unused)."""
    del lang
    ids: list[int] = []
    for token in split_to_tokens(text):
      cached = self._cache.get(token)
      if cached is None:
        cached = self._cache[token] = self._split(_escape(token, self.alphabet))
      ids.extend(cached)
    return ids

  def _split(self, escaped: str) -> list[int]:
    """Greedy longest-match split of an escaped token into vocabulary subtokens."""
    out, start = [], 0
    while start < len(escaped):
      for end in range(min(len(escaped), start + self._max_len), start, -1):
        sub = escaped[start:end]
        if sub in self._ids:
          out.append(self._ids[sub])
          start = end
          break
      else:
        raise ValueError(f'cannot split {escaped!r} into subtokens of the vocabulary')
    return out

  def decode(self, ids: Iterable[int]) -> str:
    """Text of subtoken ids (ids past the vocabulary are dropped, as the reference does)."""
    joined = ''.join(self.subtokens[i] for i in ids if 0 <= i < len(self.subtokens))
    return join_tokens([_unescape(t) for t in joined.split('_') if t])


def strip_eos(ids: Iterable[int]) -> list[int]:
  """The ids before the first EOS or PAD."""
  out = []
  for i in ids:
    i = int(i)
    if i in (EOS_ID, PAD_ID):
      break
    out.append(i)
  return out


# --- reading the text pairs ---
@dataclasses.dataclass
class TextPairs:
  sources: list[str]
  targets: list[str]
  source_lang: str | None = None  # the languages, for a tokenizer that depends on them (BPETokenizer's Moses)
  target_lang: str | None = None

  def __len__(self) -> int:
    return len(self.sources)


def open_pairs(dataset: str, split: str, data_dir: str | None, source_lang: str, target_lang: str, *,
               is_eval: bool = False) -> TextPairs:
  """All (source, target) texts of one split of a TFDS translation dataset (read whole: text is small)."""
  builder = sources.prepared_builder(dataset, data_dir, split)
  try:
    source = builder.as_data_source(split=split)
  except Exception as e:  # Unknown split, TFRecord-only files, ...
    raise UserError(f'dataset {dataset!r} (split {split!r}) cannot be read ({first_line(e)}): prepare it with '
                    f'`tfds build {dataset} --file_format=array_record` (see BUILD.md)') from None
  source = checked_source.CheckedSource(source, dataset, split, data_dir, is_eval=is_eval)
  src, tgt = [], []
  for i in range(len(source)):
    record = source[i]
    try:
      src.append(_text(record[source_lang]))
      tgt.append(_text(record[target_lang]))
    except KeyError as e:
      raise UserError(f'dataset {dataset!r} has no language {e.args[0]!r} (it has {", ".join(record)})') from None
  return TextPairs(src, tgt, source_lang, target_lang)


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


# --- tokenising ---
@dataclasses.dataclass
class TokenizedPairs:
  """Token ids (EOS appended) of the kept pairs; `index` maps each back to its position in the split."""
  sources: list[np.ndarray]
  targets: list[np.ndarray]
  index: np.ndarray
  discarded: int  # pairs longer than max_length on either side

  def __len__(self) -> int:
    return len(self.sources)


def tokenize_pairs(pairs: TextPairs, vocab: Subtokenizer, max_length: int, *, keep_all: bool = False
                   ) -> TokenizedPairs:
  """Ids with EOS; pairs over max_length are discarded (keep_all: truncated instead, for eval sets)."""
  src_out, tgt_out, index, discarded = [], [], [], 0
  for i, (s, t) in enumerate(zip(pairs.sources, pairs.targets)):
    src = np.asarray(vocab.encode(s, pairs.source_lang) + [EOS_ID], np.int32)
    tgt = np.asarray(vocab.encode(t, pairs.target_lang) + [EOS_ID], np.int32)
    if max(len(src), len(tgt)) > max_length:
      if not keep_all:
        discarded += 1
        continue
      src, tgt = src[:max_length], tgt[:max_length]
    src_out.append(src)
    tgt_out.append(tgt)
    index.append(i)
  return TokenizedPairs(src_out, tgt_out, np.asarray(index, np.int64), discarded)


# --- the tokenisation cache ---
def dataset_fingerprint(dataset: str, split: str, data_dir: str | None) -> str:
  """What identifies a prepared split without reading it: the TFDS name, version and the split's files (names and
  sizes) and example count."""
  builder = sources.prepared_builder(dataset, data_dir, split)
  files = sorted((f.name, f.stat().length) for f in builder.data_path.iterdir() if f.name.startswith(
      f'{builder.name}-{split}.'))
  return json.dumps([dataset, str(builder.version), split, builder.info.splits[split].num_examples, files])


def _flatten(seqs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  offsets = np.zeros(len(seqs) + 1, np.int64)
  offsets[1:] = np.cumsum([len(x) for x in seqs])
  return (np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, np.int32)), offsets


def tokenized_arrays(tokenized: TokenizedPairs) -> dict:
  """A TokenizedPairs as flat arrays (`from_tokenized_arrays` inverts it): what the cache stores."""
  src, src_offsets = _flatten(tokenized.sources)
  tgt, tgt_offsets = _flatten(tokenized.targets)
  return {'sources': src, 'source_offsets': src_offsets, 'targets': tgt, 'target_offsets': tgt_offsets,
          'index': np.asarray(tokenized.index, np.int64), 'discarded': np.int64(tokenized.discarded)}


def from_tokenized_arrays(arrays: dict) -> TokenizedPairs:
  def split(flat, offsets):
    return np.split(flat, offsets[1:-1]) if len(offsets) > 1 else []
  return TokenizedPairs(split(arrays['sources'], arrays['source_offsets']),
                        split(arrays['targets'], arrays['target_offsets']), arrays['index'],
                        int(arrays['discarded']))


def cached_arrays(cache_dir: str | None, key: dict, make: Callable[[], dict]) -> tuple[dict, bool]:
  """`make()`'s dict of arrays, stored once in `cache_dir` under a hash of `key` (a JSON-able description of
  everything the arrays depend on: dataset files, vocabulary fingerprint, lengths) and read from there next time:
  -> (arrays, whether they came from the cache). `cache_dir` None: no cache. A cache that cannot be written (a
  read-only data folder) is a warning; the run goes on without it."""
  if not cache_dir:
    return make(), False
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
  path = os.path.join(cache_dir, f'{digest}.npz')
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        return {k: f[k] for k in f.files}, True
    except (OSError, ValueError, zipfile.BadZipFile) as e:  # A torn or corrupt file: make it again.
      logging.warning('tokenisation cache %s unreadable (%s): tokenising again', path, first_line(e))
  arrays = make()
  try:
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix='.npz.tmp', delete=False) as f:
      np.savez(f, **arrays)
    os.replace(f.name, path)
    with open(os.path.join(cache_dir, f'{digest}.json'), 'w', encoding='utf-8') as f:
      json.dump(key, f, indent=1, sort_keys=True)  # What the file holds, for a person looking at the folder.
  except OSError as e:
    logging.warning('cannot write the tokenisation cache in %s (%s): the next run tokenises again', cache_dir,
                    first_line(e))
  return arrays, False


# --- training rows ---
FIELDS = ('inputs', 'targets', 'inputs_segmentation', 'targets_segmentation', 'inputs_position',
          'targets_position')


@dataclasses.dataclass
class Packed:
  """Rows of one static length; `rows[field]` is [num_rows, max_length] int32 (see FIELDS)."""
  rows: dict
  pairs_per_row: np.ndarray

  def __len__(self) -> int:
    return len(self.pairs_per_row)

  def __getitem__(self, i: int) -> dict:
    return {k: v[i] for k, v in self.rows.items()}

  def arrays(self) -> dict:
    """The rows as a dict of arrays (`Packed.from_arrays` inverts it): what the cache stores."""
    return {**self.rows, 'pairs_per_row': self.pairs_per_row}

  @classmethod
  def from_arrays(cls, arrays: dict) -> 'Packed':
    return cls({k: arrays[k] for k in FIELDS}, arrays['pairs_per_row'])

  @property
  def padding_fraction(self) -> float:
    """Padding tokens / all token slots, over sources and targets."""
    slots = 2 * self.rows['inputs'].size
    tokens = np.count_nonzero(self.rows['inputs_segmentation']) + np.count_nonzero(self.rows['targets_segmentation'])
    return 1.0 - tokens / slots if slots else 0.0


def _empty_rows(n: int, max_length: int) -> dict:
  return {k: np.zeros((n, max_length), np.int32) for k in FIELDS}


def _place(rows: dict, row: int, offsets: list, seg: int, src: np.ndarray, tgt: np.ndarray) -> None:
  for side, ids in (('inputs', src), ('targets', tgt)):
    at = offsets[0 if side == 'inputs' else 1]
    rows[side][row, at:at + len(ids)] = ids
    rows[f'{side}_segmentation'][row, at:at + len(ids)] = seg
    rows[f'{side}_position'][row, at:at + len(ids)] = np.arange(len(ids))
  offsets[0] += len(src)
  offsets[1] += len(tgt)


def pack(tokenized: TokenizedPairs, max_length: int) -> Packed:
  """First-fit-decreasing packing (by the longer side) of whole pairs into rows of max_length; deterministic."""
  sizes = np.asarray([max(len(s), len(t)) for s, t in zip(tokenized.sources, tokenized.targets)], np.int64)
  order = np.argsort(-sizes, kind='stable')
  # open_rows[c]: rows whose free space (by the longer side) is c, best fit = the smallest c >= size.
  open_rows: dict[int, list[int]] = collections.defaultdict(list)
  free_count = np.zeros(max_length + 1, np.int64)
  members: list[list[int]] = []
  free: list[int] = []
  for i in order:
    size = int(sizes[i])
    hits = np.flatnonzero(free_count[size:])
    if hits.size:
      cap = size + int(hits[0])
      row = open_rows[cap].pop()
      free_count[cap] -= 1
    else:
      row, cap = len(members), max_length
      members.append([])
      free.append(max_length)
    members[row].append(int(i))
    cap -= size
    free[row] = cap
    if cap > 0:
      open_rows[cap].append(row)
      free_count[cap] += 1
  rows = _empty_rows(len(members), max_length)
  for row, pair_ids in enumerate(members):
    offsets = [0, 0]
    for seg, i in enumerate(pair_ids, start=1):
      _place(rows, row, offsets, seg, tokenized.sources[i], tokenized.targets[i])
  return Packed(rows, np.asarray([len(m) for m in members], np.int32))


def pad_rows(tokenized: TokenizedPairs, max_length: int) -> Packed:
  """One pair a row, padded to max_length (segmentation 1 on tokens), rows in split order."""
  rows = _empty_rows(len(tokenized), max_length)
  for row, (src, tgt) in enumerate(zip(tokenized.sources, tokenized.targets)):
    _place(rows, row, [0, 0], 1, src, tgt)
  return Packed(rows, np.ones(len(tokenized), np.int32))


def train_batches(packed: Packed, *, global_batch_size: int, seed: int, process_index: int, process_count: int,
                  num_threads: int = 4, start_batch: int = 0, num_workers: int = 0) -> Iterator[dict]:
  """The seeded endless stream of this process's share of each global batch of rows (streams.py)."""
  return streams.global_train_stream(packed, lambda row, rng: row, global_batch_size=global_batch_size, seed=seed,
                                     process_index=process_index, process_count=process_count,
                                     num_threads=num_threads, start_batch=start_batch, num_workers=num_workers)


def train_batch_shapes(global_batch_size: int, max_length: int) -> dict:
  return {k: jax.ShapeDtypeStruct((global_batch_size, max_length), np.int32) for k in FIELDS}


# --- length buckets (one pair a row) ---
def pair_lengths(rows: Packed) -> np.ndarray:
  """Each one-pair row's length: its longer side, EOS included (the tokens sit at the row's start)."""
  return np.maximum(np.count_nonzero(rows.rows['inputs_segmentation'], axis=1),
                    np.count_nonzero(rows.rows['targets_segmentation'], axis=1))


def check_bucket_lengths(bucket_lengths: Sequence[int], max_length: int) -> tuple[int, ...]:
  """The bucket row lengths, increasing, the last one max_length (so every kept pair has a bucket)."""
  lengths = tuple(int(x) for x in bucket_lengths)
  if not lengths or list(lengths) != sorted(set(lengths)) or lengths[0] < 1 or lengths[-1] != max_length:
    raise UserError(f'--config.train_bucket_lengths={lengths}: give increasing row lengths ending at '
                    f'--config.max_length={max_length}, e.g. (16, 24, 32, {max_length}), or () for no buckets')
  return lengths


class Buckets:
  """One pair a row, batched by length: a global batch is `global_batch_size` pairs of one bucket, cut to that
  bucket's row length (the smallest of `bucket_lengths` that holds the pair's longer side).

  Epoch e (0, 1, ...) is a pure function of (seed, e): each bucket's pairs in a fresh seeded order, cut into
  ceil(n_b / global_batch_size) batches, the last one filled up with dummy pairs (all zeros: no tokens, so no loss
  and no gradient), and all buckets' batches in one seeded order. So every pair is trained exactly once an epoch,
  an epoch is `steps_per_epoch` = sum over buckets of ceil(n_b / global_batch_size) steps (the same every epoch),
  and global step k is epoch k // steps_per_epoch, batch k % steps_per_epoch of it: resuming at any step reads
  nothing before it.
  """

  def __init__(self, rows: Packed, bucket_lengths: Sequence[int], global_batch_size: int):
    self.rows = rows
    self.lengths = check_bucket_lengths(bucket_lengths, rows.rows['inputs'].shape[1])
    self.global_batch_size = global_batch_size
    bucket = np.searchsorted(np.asarray(self.lengths), pair_lengths(rows))  # smallest length >= the pair's
    self.members = [np.flatnonzero(bucket == b) for b in range(len(self.lengths))]
    self.batches_per_bucket = [-(-len(m) // global_batch_size) for m in self.members]
    self.steps_per_epoch = sum(self.batches_per_bucket)
    self._epoch_cache: tuple[tuple[int, int], tuple] | None = None

  @property
  def padding_fraction(self) -> float:
    """Padding tokens / token slots of an epoch's batches (both sides, the dummy pairs' slots included)."""
    tokens = (np.count_nonzero(self.rows.rows['inputs_segmentation'])
              + np.count_nonzero(self.rows.rows['targets_segmentation']))
    slots = 2 * self.global_batch_size * sum(n * length for n, length in zip(self.batches_per_bucket, self.lengths))
    return 1.0 - tokens / slots if slots else 0.0

  def epoch(self, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket of each batch [steps_per_epoch], row ids of each batch [steps_per_epoch, global_batch_size], -1 =
    a dummy pair) of one epoch, in training order."""
    if self._epoch_cache is not None and self._epoch_cache[0] == (seed, epoch):
      return self._epoch_cache[1]
    rng = np.random.default_rng([seed, epoch])
    g = self.global_batch_size
    buckets, rows = [], []
    for b, members in enumerate(self.members):
      order = np.full(self.batches_per_bucket[b] * g, -1, np.int64)
      order[:len(members)] = rng.permutation(members)
      rows.append(order.reshape(-1, g))
      buckets.append(np.full(self.batches_per_bucket[b], b, np.int64))
    shuffle = rng.permutation(self.steps_per_epoch)
    result = np.concatenate(buckets)[shuffle], np.concatenate(rows)[shuffle]
    self._epoch_cache = ((seed, epoch), result)
    return result

  def global_batch_rows(self, seed: int, step: int) -> tuple[int, np.ndarray]:
    """(bucket, row ids [global_batch_size], -1 = dummy) of global batch `step`."""
    buckets, rows = self.epoch(seed, step // self.steps_per_epoch)
    return int(buckets[step % self.steps_per_epoch]), rows[step % self.steps_per_epoch]

  def batch(self, seed: int, step: int, process_index: int = 0, process_count: int = 1) -> dict:
    """This process's share of global batch `step`: its rows process_index, process_index + process_count, ...
    (as streams.global_train_stream deals rows), each field [rows, the bucket's length] int32."""
    bucket, ids = self.global_batch_rows(seed, step)
    ids = ids[process_index::process_count]
    length, real = self.lengths[bucket], ids >= 0
    out = {}
    for k in FIELDS:
      x = np.zeros((len(ids), length), np.int32)
      x[real] = self.rows.rows[k][ids[real], :length]
      out[k] = x
    return out

  def batch_shapes(self, global_batch_size: int) -> list[dict]:
    """The shapes of the buckets that hold pairs (an empty bucket never makes a batch: nothing to compile)."""
    return [train_batch_shapes(global_batch_size, length) for length, n in zip(self.lengths, self.batches_per_bucket)
            if n]


def bucketed_train_batches(buckets: Buckets, *, seed: int, process_index: int, process_count: int,
                           start_batch: int = 0, prefetch: int = 2) -> Iterator[dict]:
  """The endless stream of this process's share of each bucketed global batch from `start_batch` on, made `prefetch`
  batches ahead on a background thread."""
  streams.local_batch_size(buckets.global_batch_size, process_count)  # raises if the processes do not divide it
  if buckets.steps_per_epoch == 0:
    raise UserError('no training pair to batch')
  ds = grain.MapDataset.range(start_batch, 2**62).map(
      lambda step: buckets.batch(seed, step, process_index, process_count))
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)))


# --- eval ---
def eval_order(tokenized: TokenizedPairs) -> np.ndarray:
  """Positions of the eval pairs by source length (longest first), so each batch's lengths are alike."""
  return np.argsort(-np.asarray([len(s) for s in tokenized.sources]), kind='stable')


def eval_batches(tokenized: TokenizedPairs, max_length: int, *, global_batch_size: int, process_index: int,
                 process_count: int, num_threads: int = 4) -> Iterator[dict]:
  """One pass over the eval pairs, one source sentence a row, padded to whole global batches (mask 0)."""
  order = eval_order(tokenized)

  def example_at(position: int) -> dict:
    inputs = np.zeros(max_length, np.int32)
    if position >= len(order):
      return {'inputs': inputs, 'index': np.int32(-1), 'mask': np.float32(0.0)}
    k = int(order[position])
    src = tokenized.sources[k][:max_length]
    inputs[:len(src)] = src
    return {'inputs': inputs, 'index': np.int32(tokenized.index[k]), 'mask': np.float32(1.0)}

  return streams.global_eval_stream(example_at, len(order), global_batch_size=global_batch_size,
                                    process_index=process_index, process_count=process_count,
                                    num_threads=num_threads)


def eval_batch_shapes(global_batch_size: int, max_length: int) -> dict:
  return {'inputs': jax.ShapeDtypeStruct((global_batch_size, max_length), np.int32),
          'index': jax.ShapeDtypeStruct((global_batch_size,), np.int32),
          'mask': jax.ShapeDtypeStruct((global_batch_size,), np.float32)}


def open_generated(data_dir: str, *, num_words: int, num_train: int, num_eval: int) -> str:
  """Writes the generated corpus (input_pipelines/generated_translation.py) unless present; its TFDS name."""
  return generated_translation.ensure_generated_translation(data_dir, num_words=num_words, num_train=num_train,
                                                            num_eval=num_eval)

