"""The generated translation corpus: deterministic, read like wmt16_translate/de-en, and hard to fake.

"Hard to fake" is measured with sacrebleu, the scorer the translation workloads use: copying the source or mapping it
word by word (a model that learnt the lexicon but not the reordering) scores far below the rule-based translation,
which itself scores below 100 (the reference noise, so that a logged BLEU / 100 stays under 1.0).
"""

import collections
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipelines import generated_translation as gt

SIZES = dict(num_words=64, num_train=48, num_eval=16)
NUM_SAMPLE = 1000  # Sentences drawn for the corpus statistics (generated in memory, ~0.2 s).


@pytest.fixture(scope='module')
def lexicon():
  return gt.make_lexicon(SIZES['num_words'])


@pytest.fixture(scope='module')
def sample(lexicon):
  """NUM_SAMPLE validation examples, made the way the builder makes them."""
  return [gt.example('validation', i, lexicon) for i in range(NUM_SAMPLE)]


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  """The corpus written twice, into two data folders: (name, [data_dir_a, data_dir_b])."""
  dirs = [str(tmp_path_factory.mktemp(f'tfds_{k}')) for k in 'ab']
  names = {gt.ensure_generated_translation(d, **SIZES) for d in dirs}
  assert len(names) == 1
  return names.pop(), dirs


def _records(name, data_dir, split):
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  return [source[i] for i in range(len(source))]


def test_lexicon_is_a_bijection_between_disjoint_word_sets(lexicon):
  source, target = lexicon.source_vocabulary(), lexicon.target_vocabulary()
  assert len(set(source)) == len(source) and len(set(target)) == len(target)  # One form per word: invertible.
  assert set(source) & set(target) == {'.'}  # Only the full stop is spelt the same in both languages.
  assert {pos: len(ws) for pos, ws in lexicon.en.items()} == {pos: len(ws) for pos, ws in lexicon.de.items()}
  assert sum(len(lexicon.en[pos]) for pos in ('noun', 'adj', 'verb', 'adv')) == SIZES['num_words']
  assert gt.make_lexicon(SIZES['num_words']) == lexicon  # Deterministic.


def test_written_like_wmt16_de_en_and_deterministic(written, lexicon):
  name, (dir_a, dir_b) = written
  assert name == 'generated_translation/w64_n48_e16'
  builder = tfds.builder(name, data_dir=dir_a)
  # tfds's wmt.py declares Translation(languages=('de', 'en')) with supervised_keys ('de', 'en') for de-en.
  assert repr(builder.info.features) == repr(tfds.features.Translation(languages=('de', 'en')))
  assert builder.info.supervised_keys == ('de', 'en')
  assert {s: builder.info.splits[s].num_examples for s in ('train', 'validation', 'test')} == {
      'train': 48, 'validation': 16, 'test': 16}
  assert any('.array_record-' in f for f in os.listdir(os.path.join(dir_a, name, '1.1.0')))
  for split in ('train', 'validation', 'test'):
    records_a, records_b = _records(name, dir_a, split), _records(name, dir_b, split)
    assert records_a == records_b  # Two writes, identical records.
    assert set(records_a[0]) == {'de', 'en'} and isinstance(records_a[0]['en'], bytes)
    # The records are the examples the generator makes (in tfds's shuffled order, as WMT's are), so any one can be
    # recomputed.
    def pairs(examples):
      return sorted((e['en'], e['de']) for e in examples)
    assert pairs({k: v.decode() for k, v in r.items()} for r in records_a) == pairs(
        gt.example(split, i, lexicon) for i in range(len(records_a)))
  # Validation and test are different sentences.
  assert _records(name, dir_a, 'validation') != _records(name, dir_a, 'test')
  # Already prepared: a second call writes nothing and gives the same name.
  mtime = os.path.getmtime(os.path.join(dir_a, name, '1.1.0', 'dataset_info.json'))
  assert gt.ensure_generated_translation(dir_a, **SIZES) == name
  assert os.path.getmtime(os.path.join(dir_a, name, '1.1.0', 'dataset_info.json')) == mtime


def test_target_is_the_rule_translation_but_for_the_reference_noise(sample, lexicon):
  noisy = 0
  for e in sample:
    rule, reference = gt.tokenize(gt.translate(e['en'], lexicon)), gt.tokenize(e['de'])
    assert len(rule) == len(reference)
    wrong = [(a, b) for a, b in zip(rule, reference) if a != b]
    assert len(wrong) <= 1  # At most one word replaced, by another of the same part of speech.
    if wrong:
      noisy += 1
      (a, b), = wrong
      assert any(a in lexicon.de[pos] and b in lexicon.de[pos] for pos in ('noun', 'adj', 'verb'))
  assert 0.07 < noisy / NUM_SAMPLE < 0.13  # REFERENCE_NOISE = 0.1.
  assert gt.parse(sample[0]['en'], lexicon)['main']['verb'] >= 0
  with pytest.raises(ValueError, match='unknown word'):
    gt.parse('hello world.', lexicon)
  with pytest.raises(ValueError, match='final full stop'):
    gt.parse(sample[0]['en'].rstrip('.'), lexicon)


def test_every_reordering_rule_occurs_often(sample, lexicon):
  counts = collections.Counter()
  for e in sample:
    counts.update({rule: int(n > 0) for rule, n in gt.reorder_counts(e['en'], lexicon).items()})
  share = {rule: n / NUM_SAMPLE for rule, n in counts.items()}
  # Expected shares: adjective groups in 1 - 0.35^k of sentences (k = 2 or 4 noun phrases) ~ 0.9; verb_second 0.35;
  # verb_final 0.5.
  assert 0.8 < share['adjective_after_noun'] < 0.97
  assert 0.3 < share['verb_second'] < 0.4
  assert 0.45 < share['verb_final'] < 0.55
  reordered = sum(gt.tokenize(e['de']) != gt.tokenize(gt.word_by_word(e['en'], lexicon)) for e in sample)
  assert reordered / NUM_SAMPLE > 0.9  # Under one sentence in 10 keeps the source order.


def test_vocabulary_covers_every_token(sample, lexicon):
  joint = lexicon.joint_vocabulary()
  assert len(joint) == len(set(joint)) == SIZES['num_words'] + gt.NUM_DETERMINERS + 1 + SIZES['num_words'] + \
      gt.NUM_DETERMINERS + 1 + 2  # Content words, determiners and 'that' on each side, then ',' and '.'.
  for lang, vocab in (('en', lexicon.source_vocabulary()), ('de', lexicon.target_vocabulary())):
    assert {t for e in sample for t in gt.tokenize(e[lang])} == set(vocab)  # No unknown token, none unused.


def test_sentence_lengths(sample):
  lengths = {lang: np.array([len(gt.tokenize(e[lang])) for e in sample]) for lang in ('en', 'de')}
  # 6 tokens minimum (DET NOUN VERB DET NOUN .), 22 at most (adverb, two clauses of 2-adjective noun phrases, comma).
  assert lengths['en'].min() >= 6 and lengths['en'].max() <= 21
  assert lengths['de'].min() >= 6 and lengths['de'].max() <= 22
  assert 10 < lengths['en'].mean() < 14
  # Target = source length, plus a comma before each subordinate clause.
  assert np.array_equal(lengths['de'] - lengths['en'], [int(', ' in e['de']) for e in sample])


def test_copying_or_word_by_word_scores_far_below_the_translation(sample, lexicon):
  sacrebleu = pytest.importorskip('sacrebleu', reason='sacrebleu (the BLEU the translation workloads report) is not '
                                  'installed: pip install sacrebleu')
  references = [[e['de'] for e in sample]]

  def bleu(hypotheses):
    return sacrebleu.corpus_bleu(hypotheses, references).score

  assert bleu([e['de'] for e in sample]) == pytest.approx(100.0)
  rules = bleu([gt.translate(e['en'], lexicon) for e in sample])
  assert 95.0 < rules < 99.5  # The best a model can do (the noise is unpredictable): measured 97.7.
  assert bleu([e['en'] for e in sample]) < 1.0  # Copying: only full stops match.
  word_by_word = bleu([gt.word_by_word(e['en'], lexicon) for e in sample])
  assert 10.0 < word_by_word < 30.0  # Right words, wrong order: measured 18.1.
