"""A generated parallel corpus with real structure, in TFDS ArrayRecord form laid out like wmt16_translate/de-en.

Two made-up languages share one sentence grammar but differ in word forms and word order, so that a model must
learn both the word map and the reordering rules; copying the source, or mapping it word by word in source order,
scores a low BLEU. `en` is the source side (as in the MLPerf GNMT and Transformer tasks, English to German), `de`
the target:

  en:  [ADV] NP VERB NP [that NP VERB NP] .          NP = DET ADJ{0,2} NOUN
  de:  NP' VERB' NP'          (no adverb)  or  ADV' VERB' NP' NP'   (adverb first: the verb comes second, "V2")
       [ , that' NP' NP' VERB' ]  .                   (subordinate clause: comma, verb last)
       NP' = DET' NOUN' ADJ'...                        (adjectives follow the noun, in source order)

Every word maps one to one onto its translation (a bijective lexicon, drawn from the seed); the two languages'
word forms never coincide, so copying the source matches only the final full stop. `translate` computes the
rule-based translation from the source text alone, `word_by_word` the same words without the reordering (the
baseline a model that learnt only the lexicon would reach).

A few references are wrong on purpose (`REFERENCE_NOISE` of the sentences, in every split, have one noun, adjective
or verb replaced by another of its kind), so that even the rule-based translation scores ~97.5 BLEU, not 100: the
MLPerf compliance rules reject an eval_accuracy (BLEU / 100) of 1.0, and a ceiling keeps the target meaningful (as
generated_images' label noise does).
"""

import dataclasses
import itertools

import numpy as np
import tensorflow_datasets as tfds

from input_pipelines import generated_images

# The generator is seeded per example, so a config name fully determines the bytes written and any one example can
# be recomputed on its own.
_SEED = 20241123
_SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2}
LANGUAGES = ('de', 'en')  # wmt16_translate/de-en's language pair and supervised keys.
SOURCE, TARGET = 'en', 'de'
# Sentence shape: how often each optional part appears.
P_ADVERB = 0.35  # Sentence starts with an adverb (the target inverts subject and verb).
P_SUBORDINATE = 0.5  # A "that" clause follows (the target puts its verb last, after a comma).
P_ADJECTIVES = (0.35, 0.45, 0.2)  # Probability of 0, 1, 2 adjectives in a noun phrase (they follow the noun).
NUM_DETERMINERS = 4
REFERENCE_NOISE = 0.1  # Share of sentences whose reference has one content word replaced (see the docstring).
_NOISY_POS = ('noun', 'adj', 'verb')
# Share of the `num_words` content words per part of speech (determiners and the complementizer come on top).
_SHARES = {'noun': 0.4, 'adj': 0.25, 'verb': 0.25, 'adv': 0.1}
# Syllables of the two languages' word forms: disjoint letter patterns, so no word is spelt the same in both.
_EN_ONSETS = ('b', 'd', 'f', 'g', 'l', 'm', 'n', 'p', 'r', 's', 't', 'v', 'br', 'dr', 'pl', 'st', 'tr')
_EN_VOWELS = ('a', 'e', 'i', 'o', 'u', 'ay', 'ee', 'oo')
_DE_ONSETS = ('k', 'w', 'z', 'h', 'j', 'sch', 'kn', 'pf', 'zw', 'kl', 'gr', 'fl')
_DE_VOWELS = ('ei', 'au', 'ie', 'eu', 'aa', 'ue', 'oe', 'ae')


@dataclasses.dataclass(eq=False)
class GeneratedTranslationConfig(tfds.core.BuilderConfig):
  """The sizes of one generated corpus; the config name encodes them so sizes never share a cache folder."""

  num_words: int = 64
  num_train: int = 4096
  num_eval: int = 256


def config_name(*, num_words: int, num_train: int, num_eval: int) -> str:
  """E.g. 'w64_n4096_e256'."""
  return f'w{num_words}_n{num_train}_e{num_eval}'


def make_config(*, num_words: int, num_train: int, num_eval: int) -> GeneratedTranslationConfig:
  if num_words < 10:
    raise ValueError(f'num_words={num_words}: need at least 10 content words (every part of speech needs one)')
  sizes = dict(num_words=num_words, num_train=num_train, num_eval=num_eval)
  return GeneratedTranslationConfig(name=config_name(**sizes), description=f'Generated language pair, {sizes}.',
                                    **sizes)


@dataclasses.dataclass(frozen=True)
class Lexicon:
  """The words of each part of speech, source side and target side, index-aligned: `en[pos][i]` translates to
  `de[pos][i]`."""

  en: dict
  de: dict

  def source_vocabulary(self) -> list[str]:
    return [w for words in self.en.values() for w in words] + ['.']

  def target_vocabulary(self) -> list[str]:
    return [w for words in self.de.values() for w in words] + [',', '.']

  def joint_vocabulary(self) -> list[str]:
    """Every token of both languages once (for a shared embedding, as GNMT and the Transformer use), one per line
    in the layout of the reference's vocab.bpe.32000 file (no special tokens: the tokenizer adds them)."""
    return self.source_vocabulary()[:-1] + self.target_vocabulary()


def _word_forms(rng: np.random.Generator, onsets, vowels, count: int, taken: set) -> list[str]:
  """`count` distinct pronounceable words of 1-3 syllables not in `taken` (which grows)."""
  words: list[str] = []
  while len(words) < count:
    syllables = rng.integers(1, 4)
    word = ''.join(onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))] for _ in range(syllables))
    if word not in taken:
      taken.add(word)
      words.append(word)
  return words


def make_lexicon(num_words: int) -> Lexicon:
  """The bijective lexicon of a corpus with `num_words` content words: nouns, adjectives, verbs and adverbs in the
  shares of `_SHARES`, plus determiners and the complementizer ('that'). Deterministic in `num_words`."""
  counts = {pos: max(1, int(share * num_words)) for pos, share in _SHARES.items()}
  counts['noun'] += num_words - sum(counts.values())
  counts.update(det=NUM_DETERMINERS, that=1)
  rng = np.random.default_rng([_SEED, num_words])
  taken: set = set()
  en = {pos: _word_forms(rng, _EN_ONSETS, _EN_VOWELS, n, taken) for pos, n in counts.items()}
  de = {pos: _word_forms(rng, _DE_ONSETS, _DE_VOWELS, n, taken) for pos, n in counts.items()}
  return Lexicon(en=en, de=de)


def sample_sentence(rng: np.random.Generator, lexicon: Lexicon) -> dict:
  """A source sentence as a tree of word indices: {'adv': i or None, 'main': clause, 'sub': clause or None}, a
  clause = {'subj': np, 'verb': i, 'obj': np}, an np = {'det': i, 'adjs': [i, ...], 'noun': i}."""
  sizes = {pos: len(words) for pos, words in lexicon.en.items()}

  def noun_phrase():
    num_adjs = int(rng.choice(len(P_ADJECTIVES), p=P_ADJECTIVES))
    return {'det': int(rng.integers(sizes['det'])), 'adjs': [int(i) for i in rng.integers(sizes['adj'], size=num_adjs)],
            'noun': int(rng.integers(sizes['noun']))}

  def clause():
    return {'subj': noun_phrase(), 'verb': int(rng.integers(sizes['verb'])), 'obj': noun_phrase()}

  adverb = int(rng.integers(sizes['adv'])) if rng.random() < P_ADVERB else None
  main = clause()
  sub = clause() if rng.random() < P_SUBORDINATE else None
  return {'adv': adverb, 'main': main, 'sub': sub}


def render(tree: dict, lexicon: Lexicon, language: str, reorder: bool = True) -> str:
  """The sentence in `language` ('en' source order; 'de' with the target's rules unless `reorder` is False, which
  gives the target words in source order: the word-by-word baseline)."""
  words = lexicon.en if language == SOURCE else lexicon.de
  target_order = language == TARGET and reorder

  def np_words(np_):
    adjs = [words['adj'][i] for i in np_['adjs']]
    noun = words['noun'][np_['noun']]
    return [words['det'][np_['det']]] + ([noun] + adjs if target_order else adjs + [noun])

  out: list[str] = []
  main = tree['main']
  subj, verb, obj = np_words(main['subj']), words['verb'][main['verb']], np_words(main['obj'])
  if tree['adv'] is not None:
    adverb = words['adv'][tree['adv']]
    out += [adverb, verb] + subj + obj if target_order else [adverb] + subj + [verb] + obj
  else:
    out += subj + [verb] + obj
  if tree['sub'] is not None:
    sub = tree['sub']
    s_subj, s_verb, s_obj = np_words(sub['subj']), words['verb'][sub['verb']], np_words(sub['obj'])
    if target_order:
      out += [',', words['that'][0]] + s_subj + s_obj + [s_verb]
    else:
      out += [words['that'][0]] + s_subj + [s_verb] + s_obj
  return detokenize(out + ['.'])


def detokenize(tokens: list[str]) -> str:
  """Words joined by spaces, punctuation attached to the word before it ('a b , c .' -> 'a b, c.')."""
  return ''.join(t if t in (',', '.') or i == 0 else ' ' + t for i, t in enumerate(tokens))


def tokenize(text: str) -> list[str]:
  """The inverse of `detokenize`: words and punctuation marks as separate tokens."""
  return text.replace(',', ' ,').replace('.', ' .').split()


def parse(source: str, lexicon: Lexicon) -> dict:
  """The tree of a source sentence (inverse of `render(tree, lexicon, 'en')`); raises ValueError if it is not one."""
  index = {w: (pos, i) for pos, ws in lexicon.en.items() for i, w in enumerate(ws)}
  tokens = tokenize(source)
  if not tokens or tokens[-1] != '.':
    raise ValueError(f'not a sentence of the generated language (no final full stop): {source!r}')
  try:
    tagged = [index[t] for t in tokens[:-1]]
  except KeyError as e:
    raise ValueError(f'unknown word {e.args[0]!r} in {source!r}') from None
  pos = 0

  def take(kind):
    nonlocal pos
    if pos >= len(tagged) or tagged[pos][0] != kind:
      raise ValueError(f'expected a {kind} at word {pos} of {source!r}')
    pos += 1
    return tagged[pos - 1][1]

  def noun_phrase():
    det = take('det')
    adjs = []
    while pos < len(tagged) and tagged[pos][0] == 'adj':
      adjs.append(take('adj'))
    return {'det': det, 'adjs': adjs, 'noun': take('noun')}

  def clause():
    return {'subj': noun_phrase(), 'verb': take('verb'), 'obj': noun_phrase()}

  adverb = take('adv') if tagged and tagged[0][0] == 'adv' else None
  main = clause()
  sub = None
  if pos < len(tagged):
    take('that')
    sub = clause()
  if pos != len(tagged):
    raise ValueError(f'trailing words in {source!r}')
  return {'adv': adverb, 'main': main, 'sub': sub}


def translate(source: str, lexicon: Lexicon) -> str:
  """The reference translation of a source sentence, from its text alone."""
  return render(parse(source, lexicon), lexicon, TARGET)


def word_by_word(source: str, lexicon: Lexicon) -> str:
  """Each source word replaced by its translation, in source order (no comma inserted, nothing moved)."""
  return render(parse(source, lexicon), lexicon, TARGET, reorder=False)


def example(split: str, index: int, lexicon: Lexicon) -> dict:
  """Example `index` of `split`: {'de': reference text, 'en': source text}."""
  rng = np.random.default_rng([_SEED, _SPLIT_IDS[split], index])
  tree = sample_sentence(rng, lexicon)
  target = render(tree, lexicon, TARGET)
  if rng.random() < REFERENCE_NOISE:
    target = _replace_one_word(rng, target, lexicon)
  return {SOURCE: render(tree, lexicon, SOURCE), TARGET: target}


def _replace_one_word(rng: np.random.Generator, target: str, lexicon: Lexicon) -> str:
  """`target` with one of its nouns, adjectives or verbs replaced by a different word of the same kind."""
  kinds = {w: pos for pos in _NOISY_POS for w in lexicon.de[pos]}
  tokens = tokenize(target)
  position = int(rng.choice([i for i, t in enumerate(tokens) if t in kinds]))
  choices = [w for w in lexicon.de[kinds[tokens[position]]] if w != tokens[position]]
  tokens[position] = choices[int(rng.integers(len(choices)))]
  return detokenize(tokens)


class GeneratedTranslation(tfds.core.GeneratorBasedBuilder):
  """A made-up language pair (word map + reordering rules); features, keys and splits like wmt16_translate/de-en."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'First version.', '1.1.0': f'{REFERENCE_NOISE:.0%} of references have one word replaced.'}
  # As in generated_images: every config comes from `make_config`, readers find it from its files, and nothing is
  # downloaded so there is no checksums file to look up.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    # `dataset_info_from_configs` needs the builder to live inside the tfds package; build the info directly.
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=tfds.features.Translation(languages=LANGUAGES), supervised_keys=LANGUAGES)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    lexicon = make_lexicon(c.num_words)
    return {'train': self._generate_examples('train', c.num_train, lexicon),
            'validation': self._generate_examples('validation', c.num_eval, lexicon),
            'test': self._generate_examples('test', c.num_eval, lexicon)}

  def _generate_examples(self, split: str, num_examples: int, lexicon: Lexicon):
    for i in range(num_examples):
      yield i, example(split, i, lexicon)


def ensure_generated_translation(data_dir: str, *, num_words: int, num_train: int, num_eval: int) -> str:
  """Writes the corpus into data_dir unless it is already there; returns the name for `tfds.data_source`
  (e.g. 'generated_translation/w64_n4096_e256'). Safe when several processes share data_dir (see
  generated_images.ensure_generated_images)."""
  config = make_config(num_words=num_words, num_train=num_train, num_eval=num_eval)
  return generated_images.prepare_once(GeneratedTranslation, config, data_dir)


def reorder_counts(source: str, lexicon: Lexicon) -> dict[str, int]:
  """How many times each reordering rule applies to one source sentence: adjective groups moved after their noun,
  adverb-initial main clauses inverted, subordinate clauses made verb-final."""
  tree = parse(source, lexicon)
  clauses = [c for c in (tree['main'], tree['sub']) if c is not None]
  nps = itertools.chain.from_iterable((c['subj'], c['obj']) for c in clauses)
  return {'adjective_after_noun': sum(1 for np_ in nps if np_['adjs']),
          'verb_second': int(tree['adv'] is not None), 'verb_final': int(tree['sub'] is not None)}
