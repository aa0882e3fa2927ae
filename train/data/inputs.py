"""Model inputs: records become the arrays that each model takes, by position in a split.

`InputOptions` says which model family the inputs are for and how text is tokenised;
`prepare_inputs` turns a `Source` into `Inputs`, whose `split(name).gather(positions, ...)` returns
one batch as NumPy arrays with exactly the model's input names plus `label` (int32). The family
(`models.family`) says what those inputs are; for the suite's three:

| model | keys | from |
|---|---|---|
| `bert` | `input_ids`, `attention_mask`, `token_type_ids`: int32 [B, L] | WordPiece, [CLS]/[SEP] |
| `lstm_attention` | `token_ids`: int32 [B, L], `lengths`: int32 [B] | words, or bare WordPiece |
| `resnet` | `image`: float32 [B, H, W, C], normalised, augmented in training | `images` |

(L is `max_len`.)

**Text is tokenised once per split**, in one batched call into `tokenizers`, and cached (see
`cache`) under a key made of the data's identity (the source's fingerprint, the split's name and
indices, and for local files the file's path, size and modification time), the tokenizer's digest
(its vocabulary and every setting) and `max_len`. Within a process the arrays are also kept in
`source.memo`, so that later epochs and later pipelines on the same source only index arrays.
Vocabularies learnt from the data (a word vocabulary, or WordPiece when no checkpoint vocabulary is
given) are computed from the *training* split only and cached the same way. `tokenizers`' WordPiece
trainer breaks ties between equally frequent merges in hash order, so two trainings can differ in a
few rare tokens: train it once, and keep the cached file (or `save_vocab`'s vocab.txt) with the runs
that must share it.

Images are read per batch (TFDS decodes them then); augmentation is a pure function of
(seed, epoch, index in the split), see `images`.
"""

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

import models
from train.data import _files
from train.data import cache as cache_lib
from train.data import images as images_lib
from train.data import examples
from train.data import tokenize

DEFAULT_VOCAB_SIZE = {"wordpiece": 30522, "words": 20_000}
_TOKENS_TITLE = {"wordpiece": "WordPiece", "words": "word"}


@dataclasses.dataclass(frozen=True)
class InputOptions:
  """Which model family the inputs are for, and how text becomes ids. Defaults are filled in.

  The defaults and limits are the family's (`models.family(model).text`).

  Attributes:
    model: a model family's name (`models.names()`: "bert", "lstm_attention", "resnet", ...).
    max_len: tokens per example after truncation and padding (bert 128, lstm_attention 256).
    tokens: "wordpiece" or "words" (bert: wordpiece only; lstm_attention: words by default).
    vocab_file: a WordPiece vocab.txt (a checkpoint's); None learns a vocabulary from train.
    vocab_size: size of a vocabulary learnt from train (WordPiece 30522, words 20,000).
    min_count: words seen fewer times in train become `<unk>` (word vocabulary only).
    lowercase: lowercase the text (and, for WordPiece, strip accents): uncased models.
    augment: random crop and flip of training images (image families).
  """

  model: str
  max_len: int | None = None
  tokens: str | None = None
  vocab_file: str | None = None
  vocab_size: int | None = None
  min_count: int = 1
  lowercase: bool = True
  augment: bool = True

  def __post_init__(self):
    if self.model not in models.names():
      raise ValueError(f"model must be one of {sorted(models.names())}, got {self.model!r}.")
    for flag in ("lowercase", "augment"):
      if not isinstance(getattr(self, flag), bool):
        raise ValueError(f"{flag} must be true or false, got {getattr(self, flag)!r}.")
    family = self.family
    if family.text is None:
      given = [f for f in ("max_len", "tokens", "vocab_file", "vocab_size")
               if getattr(self, f) is not None]
      if given:
        raise ValueError(f"{given} apply to text inputs, not to model {self.model!r}.")
      return
    text = family.text
    tokens = self.tokens or text.tokens[0]
    if tokens not in tokenize.KINDS:
      raise ValueError(f"tokens must be one of {tokenize.KINDS}, got {tokens!r}.")
    if tokens not in text.tokens:
      kinds = " or ".join(_TOKENS_TITLE[t] for t in text.tokens)
      raise ValueError(f"tokens={tokens!r}: {family.title} inputs are {kinds} ids.")
    if self.vocab_file is not None and tokens != "wordpiece":
      raise ValueError("vocab_file is a WordPiece vocab.txt; it needs tokens='wordpiece'.")
    if tokens == "words" and not self.lowercase:
      raise ValueError("lowercase=False: the word vocabulary is lowercased; use WordPiece "
                       "(tokens='wordpiece') for cased text.")
    max_len = text.max_len if self.max_len is None else self.max_len
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
      raise ValueError(f"max_len must be an int >= 2, got {max_len!r}.")
    if text.longest is not None and max_len > text.longest:
      raise ValueError(f"max_len={max_len} exceeds {family.title}'s {text.longest} positions.")
    min_count = self.min_count
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
      raise ValueError(f"min_count must be an int >= 1, got {self.min_count!r}.")
    object.__setattr__(self, "tokens", tokens)
    object.__setattr__(self, "max_len", max_len)
    if self.vocab_file is not None:
      object.__setattr__(self, "vocab_file", os.fspath(self.vocab_file))
    elif self.vocab_size is None:
      object.__setattr__(self, "vocab_size", DEFAULT_VOCAB_SIZE[tokens])

  @property
  def family(self) -> models.Family:
    return models.family(self.model)


def _split_identity(source: examples.Source, split: examples.Split) -> dict[str, Any]:
  """What a split's content depends on: enough that edited data never hits a stale cache entry."""
  identity = {"source": source.fingerprint, "split": split.name, "reader_len": len(split.reader),
              "indices": cache_lib.array_digest(split.indices)}
  table = getattr(split.reader, "table", None)  # Local text files: the file itself.
  if table is not None and getattr(table, "path", None) is not None:
    identity["file"] = list(_files.file_id(table.path))
  return identity


def _read_texts(split: examples.Split) -> tuple[list[str], list[str] | None, np.ndarray]:
  """(texts, texts_b or None, int32 labels) of a whole split, in order."""
  rows = split.__getitems__(range(len(split)))
  texts_b = [r["text_b"] for r in rows] if rows and "text_b" in rows[0] else None
  labels = np.array([r["label"] for r in rows], dtype=np.int32)
  return [r["text"] for r in rows], texts_b, labels


class SplitInputs:
  """One split's model inputs, by position in the split (0 .. len - 1)."""

  def __init__(self, inputs: "Inputs", split: examples.Split, arrays: dict[str, np.ndarray] | None):
    self.inputs = inputs
    self.split = split
    self.name = split.name
    self.arrays = arrays  # Text: ids, lengths, labels (+ segment_b); None for images.

  def __len__(self) -> int:
    return len(self.split)

  def labels(self, positions: np.ndarray) -> np.ndarray:
    """int32 labels at `positions` (without reading images when the reader holds them)."""
    if self.arrays is not None:
      return self.arrays["labels"][positions].astype(np.int32)
    reader_labels = getattr(self.split.reader, "label_ids", None)
    if reader_labels is not None:
      return np.asarray(reader_labels[self.split.indices[positions]], dtype=np.int32)
    return np.array([r["label"] for r in self.split.__getitems__(positions)], dtype=np.int32)

  def gather(self, positions: np.ndarray, *, seed: int = 0, epoch: int = 0,
             train: bool = False) -> dict[str, np.ndarray]:
    """The batch of the examples at `positions`: the model's input keys and "label".

    Args:
      positions: [B] positions in this split.
      seed, epoch: fix the augmentation of training images (ignored for text).
      train: augment images (if the options ask for it).
    """
    positions = np.asarray(positions, dtype=np.int64)
    family = self.inputs.family
    if family.text is None:
      return self._gather_images(positions, seed=seed, epoch=epoch, train=train)
    a = self.arrays
    ids = a["ids"][positions].astype(np.int32)
    segment_b = a["segment_b"][positions] if "segment_b" in a else None
    inputs = family.text.to_inputs(ids, a["lengths"][positions], segment_b)
    return {**inputs, "label": a["labels"][positions]}

  def _gather_images(self, positions, *, seed, epoch, train):
    reader_images = getattr(self.split.reader, "images", None)
    if reader_images is not None:  # Local arrays: slice, no records built.
      images = reader_images[self.split.indices[positions]]
      label = self.labels(positions)
    else:
      rows = self.split.__getitems__(positions)
      images = np.stack([r["image"] for r in rows]) if rows else np.zeros(
          (0, *self.inputs.source.image_shape), np.uint8)
      label = np.array([r["label"] for r in rows], dtype=np.int32)
    if train and self.inputs.options.augment:
      images = images_lib.augment_batch(images, seed=seed, epoch=epoch, indices=positions,
                                        hflip=self.inputs.source.hflip)
    name, = self.inputs.family.input_names  # An image family's one input.
    return {name: images_lib.normalize(images, self.inputs.stats), "label": label}


class Inputs:
  """A source's model inputs under one `InputOptions` (build with `prepare_inputs`).

  Attributes:
    source, options: what they were built from.
    family: the model family (`models.family(options.model)`).
    keys: the batch keys: the model's inputs, then "label".
    tokenizer: the `tokenize.TextTokenizer` (text), else None.
    stats: the channel statistics that `normalize` uses (images), else None.
    vocab_size, pad_id, unk_id: of the tokenizer (text), else None: model options such as the
      LSTM's `vocab_size` and `unk_id` follow from them (`models.DataFacts`).
    cache: the `cache.Cache` (its `hits`/`misses` say whether tokenisation ran).
  """

  def __init__(self, source: examples.Source, options: InputOptions,
               cache_dir: str | os.PathLike[str] | None = None):
    family = options.family
    if source.kind != family.kind:
      raise ValueError(f"model {options.model!r} takes {family.kind} inputs, but source "
                       f"{source.name!r} holds {source.kind}.")
    self.source = source
    self.options = options
    self.family = family
    self.keys = (*family.input_names, "label")
    # A source without a fingerprint cannot be told apart from an edited one: no files then.
    self.cache = cache_lib.Cache(cache_dir if source.fingerprint else None)
    self._splits: dict[str, SplitInputs] = {}
    self.tokenizer = self.stats = None
    self.vocab_size = self.pad_id = self.unk_id = None
    if family.text is None:
      self.stats = images_lib.normalization_stats(source, cache_dir=self.cache.directory)
      return
    self.tokenizer = self._make_tokenizer()
    self.vocab_size = self.tokenizer.vocab_size
    self.pad_id, self.unk_id = self.tokenizer.pad_id, self.tokenizer.unk_id

  def _memo(self, key: dict[str, Any], compute):
    memo_key = ("train.data.inputs", cache_lib.key_digest(key))
    if memo_key not in self.source.memo:
      self.source.memo[memo_key] = compute()
    return self.source.memo[memo_key]

  def _make_tokenizer(self) -> tokenize.TextTokenizer:
    options = self.options
    specials = self.family.text.special_tokens
    if options.vocab_file is not None:
      return tokenize.wordpiece_from_vocab(options.vocab_file, lowercase=options.lowercase,
                                           add_special_tokens=specials)
    key = {"kind": f"vocab-{options.tokens}", **_split_identity(self.source, self.source.train),
           "vocab_size": options.vocab_size, "lowercase": options.lowercase,
           **({"min_count": options.min_count} if options.tokens == "words" else {})}

    def learn() -> str:
      texts, _, _ = _read_texts(self.source.train)
      if options.tokens == "words":
        return tokenize.build_word_vocab(texts, size=options.vocab_size,
                                         min_count=options.min_count).to_str()
      return tokenize.train_wordpiece(texts, vocab_size=options.vocab_size,
                                      lowercase=options.lowercase).to_str()

    json_str = self._memo(key, lambda: self.cache.text(f"vocab-{options.tokens}", key, learn))
    return tokenize.TextTokenizer.from_str(json_str, kind=options.tokens,
                                           add_special_tokens=specials)

  def split(self, name: str) -> SplitInputs:
    """The inputs of split `name` ("train", "validation" or "test"); text is tokenised once."""
    if name not in self._splits:
      split = self.source.split(name)
      arrays = None if self.tokenizer is None else self._token_arrays(split)
      self._splits[name] = SplitInputs(self, split, arrays)
    return self._splits[name]

  def _token_arrays(self, split: examples.Split) -> dict[str, np.ndarray]:
    key = {"kind": "tokens", **_split_identity(self.source, split),
           "tokenizer": self.tokenizer.digest, "max_len": self.options.max_len}

    def compute() -> dict[str, np.ndarray]:
      texts, texts_b, labels = _read_texts(split)
      if texts_b is not None and not self.family.text.pairs:
        raise ValueError(f"source {self.source.name!r} pairs two texts per example; the "
                         f"{self.family.title} reads one.")
      encoded = self.tokenizer.encode(texts, texts_b, max_len=self.options.max_len)
      # uint16 halves the cache and memory whenever the ids fit (every vocabulary here does).
      ids_dtype = np.uint16 if self.tokenizer.vocab_size <= 1 << 16 else np.int32
      arrays = {"ids": encoded.ids.astype(ids_dtype), "lengths": encoded.lengths,
                "labels": labels}
      if encoded.segment_b is not None:
        arrays["segment_b"] = encoded.segment_b
      return arrays

    return self._memo(key, lambda: self.cache.arrays("tokens", key, compute))

  def save_vocab(self, path: str | os.PathLike[str]) -> pathlib.Path:
    """Writes the vocabulary, one token per line in id order (a vocab.txt), to keep with a run."""
    if self.tokenizer is None:
      raise ValueError(f"model {self.options.model!r} has no vocabulary.")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{t}\n" for t in self.tokenizer.vocab()), encoding="utf-8")
    return path


def prepare_inputs(source: examples.Source, options: InputOptions | str, *,
                   cache_dir: str | os.PathLike[str] | None = None) -> Inputs:
  """`source`'s inputs for the model family of `options` (an `InputOptions`, or just its name).

  Args:
    source: from `get_source`.
    options: the `InputOptions`, or a family's name ("bert", "lstm_attention", "resnet", ...) for
      its defaults.
    cache_dir: where tokens, vocabularies and image statistics are cached; None keeps them in
      memory only (computed once per process and source).
  """
  if isinstance(options, str):
    options = InputOptions(options)
  return Inputs(source, options, cache_dir)
