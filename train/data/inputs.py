"""Model inputs: records become the arrays that each model takes, by position in a split.

`InputSpec` says which model the inputs are for and how text is tokenised; `prepare_inputs` turns a
`Source` into `Inputs`, whose `split(name).gather(positions, ...)` returns one batch as NumPy arrays
with exactly the model's input names plus `label` (int32):

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

from train.data import _files
from train.data import cache as cache_lib
from train.data import images as images_lib
from train.data import records
from train.data import tokenize

MODEL_INPUTS: dict[str, tuple[str, ...]] = {
    "bert": ("input_ids", "attention_mask", "token_type_ids"),
    "lstm_attention": ("token_ids", "lengths"),
    "resnet": ("image",),
}
DEFAULT_MAX_LEN = {"bert": 128, "lstm_attention": 256}
DEFAULT_TOKENS = {"bert": "wordpiece", "lstm_attention": "words"}
DEFAULT_VOCAB_SIZE = {"wordpiece": 30522, "words": 20_000}
# BERT's position table (and the MiniLM checkpoint's) has 512 entries.
BERT_MAX_LEN = 512


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """Which model the inputs are for, and how text becomes ids. Defaults are filled in.

  Attributes:
    model: "bert", "lstm_attention" or "resnet": the model registry's names (`models.get`).
    max_len: tokens per example after truncation and padding (bert 128, lstm_attention 256).
    tokens: "wordpiece" or "words" (bert: wordpiece only; lstm_attention: words by default).
    vocab_file: a WordPiece vocab.txt (a checkpoint's); None learns a vocabulary from train.
    vocab_size: size of a vocabulary learnt from train (WordPiece 30522, words 20,000).
    min_count: words seen fewer times in train become `<unk>` (word vocabulary only).
    lowercase: lowercase the text (and, for WordPiece, strip accents): uncased models.
    augment: random crop and flip of training images (resnet).
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
    if self.model not in MODEL_INPUTS:
      raise ValueError(f"model must be one of {sorted(MODEL_INPUTS)}, got {self.model!r}.")
    if self.model == "resnet":
      given = [f for f in ("max_len", "tokens", "vocab_file", "vocab_size")
               if getattr(self, f) is not None]
      if given:
        raise ValueError(f"{given} apply to text inputs, not to model 'resnet'.")
      return
    tokens = self.tokens or DEFAULT_TOKENS[self.model]
    if tokens not in tokenize.KINDS:
      raise ValueError(f"tokens must be one of {tokenize.KINDS}, got {tokens!r}.")
    if self.model == "bert" and tokens != "wordpiece":
      raise ValueError(f"tokens={tokens!r}: BERT inputs are WordPiece ids.")
    if self.vocab_file is not None and tokens != "wordpiece":
      raise ValueError("vocab_file is a WordPiece vocab.txt; it needs tokens='wordpiece'.")
    if tokens == "words" and not self.lowercase:
      raise ValueError("lowercase=False: the word vocabulary is lowercased; use WordPiece "
                       "(tokens='wordpiece') for cased text.")
    max_len = DEFAULT_MAX_LEN[self.model] if self.max_len is None else self.max_len
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
      raise ValueError(f"max_len must be an int >= 2, got {max_len!r}.")
    if self.model == "bert" and max_len > BERT_MAX_LEN:
      raise ValueError(f"max_len={max_len} exceeds BERT's {BERT_MAX_LEN} positions.")
    min_count = self.min_count
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
      raise ValueError(f"min_count must be an int >= 1, got {self.min_count!r}.")
    object.__setattr__(self, "tokens", tokens)
    object.__setattr__(self, "max_len", max_len)
    if self.vocab_file is not None:
      object.__setattr__(self, "vocab_file", os.fspath(self.vocab_file))
    elif self.vocab_size is None:
      object.__setattr__(self, "vocab_size", DEFAULT_VOCAB_SIZE[tokens])


def _split_identity(source: records.Source, split: records.Split) -> dict[str, Any]:
  """What a split's content depends on: enough that edited data never hits a stale cache entry."""
  identity = {"source": source.fingerprint, "split": split.name, "reader_len": len(split.reader),
              "indices": cache_lib.array_digest(split.indices)}
  table = getattr(split.reader, "table", None)  # Local text files: the file itself.
  if table is not None and getattr(table, "path", None) is not None:
    identity["file"] = list(_files.file_id(table.path))
  return identity


def _read_texts(split: records.Split) -> tuple[list[str], list[str] | None, np.ndarray]:
  """(texts, texts_b or None, int32 labels) of a whole split, in order."""
  rows = split.__getitems__(range(len(split)))
  texts_b = [r["text_b"] for r in rows] if rows and "text_b" in rows[0] else None
  labels = np.array([r["label"] for r in rows], dtype=np.int32)
  return [r["text"] for r in rows], texts_b, labels


class SplitInputs:
  """One split's model inputs, by position in the split (0 .. len - 1)."""

  def __init__(self, inputs: "Inputs", split: records.Split, arrays: dict[str, np.ndarray] | None):
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
      train: augment images (if the spec asks for it).
    """
    positions = np.asarray(positions, dtype=np.int64)
    model = self.inputs.spec.model
    if model == "resnet":
      return self._gather_images(positions, seed=seed, epoch=epoch, train=train)
    a = self.arrays
    ids = a["ids"][positions].astype(np.int32)
    lengths = a["lengths"][positions]
    label = a["labels"][positions]
    if model == "lstm_attention":
      return {"token_ids": ids, "lengths": lengths, "label": label}
    steps = np.arange(ids.shape[1], dtype=np.int32)[None, :]
    attention_mask = (steps < lengths[:, None]).astype(np.int32)
    if "segment_b" in a:
      token_type_ids = ((steps >= a["segment_b"][positions][:, None]) & (attention_mask == 1))
    else:
      token_type_ids = np.zeros_like(ids, dtype=bool)
    return {"input_ids": ids, "attention_mask": attention_mask,
            "token_type_ids": token_type_ids.astype(np.int32), "label": label}

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
    if train and self.inputs.spec.augment:
      images = images_lib.augment_batch(images, seed=seed, epoch=epoch, indices=positions,
                                        hflip=self.inputs.source.hflip)
    return {"image": images_lib.normalize(images, self.inputs.stats), "label": label}


class Inputs:
  """A source's model inputs under one `InputSpec` (build with `prepare_inputs`).

  Attributes:
    source, spec: what they were built from.
    keys: the batch keys: the model's inputs, then "label".
    tokenizer: the `tokenize.TextTokenizer` (text), else None.
    stats: the channel statistics that `normalize` uses (images), else None.
    vocab_size, pad_id, unk_id: of the tokenizer (text), else None: the LSTM's `vocab_size` and
      `unk_id` come from here.
    cache: the `cache.Cache` (its `hits`/`misses` say whether tokenisation ran).
  """

  def __init__(self, source: records.Source, spec: InputSpec,
               cache_dir: str | os.PathLike[str] | None = None):
    wants = "image" if spec.model == "resnet" else "text"
    if source.kind != wants:
      raise ValueError(f"model {spec.model!r} takes {wants} inputs, but source {source.name!r} "
                       f"holds {source.kind}.")
    self.source = source
    self.spec = spec
    self.keys = (*MODEL_INPUTS[spec.model], "label")
    # A source without a fingerprint cannot be told apart from an edited one: no files then.
    self.cache = cache_lib.Cache(cache_dir if source.fingerprint else None)
    self._splits: dict[str, SplitInputs] = {}
    self.tokenizer = self.stats = None
    self.vocab_size = self.pad_id = self.unk_id = None
    if spec.model == "resnet":
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
    spec = self.spec
    specials = spec.model == "bert"
    if spec.vocab_file is not None:
      return tokenize.wordpiece_from_vocab(spec.vocab_file, lowercase=spec.lowercase,
                                           add_special_tokens=specials)
    key = {"kind": f"vocab-{spec.tokens}", **_split_identity(self.source, self.source.train),
           "vocab_size": spec.vocab_size, "lowercase": spec.lowercase,
           **({"min_count": spec.min_count} if spec.tokens == "words" else {})}

    def learn() -> str:
      texts, _, _ = _read_texts(self.source.train)
      if spec.tokens == "words":
        return tokenize.build_word_vocab(texts, size=spec.vocab_size,
                                         min_count=spec.min_count).to_str()
      return tokenize.train_wordpiece(texts, vocab_size=spec.vocab_size,
                                      lowercase=spec.lowercase).to_str()

    json_str = self._memo(key, lambda: self.cache.text(f"vocab-{spec.tokens}", key, learn))
    return tokenize.TextTokenizer.from_str(json_str, kind=spec.tokens, add_special_tokens=specials)

  def split(self, name: str) -> SplitInputs:
    """The inputs of split `name` ("train", "validation" or "test"); text is tokenised once."""
    if name not in self._splits:
      split = self.source.split(name)
      arrays = None if self.tokenizer is None else self._token_arrays(split)
      self._splits[name] = SplitInputs(self, split, arrays)
    return self._splits[name]

  def _token_arrays(self, split: records.Split) -> dict[str, np.ndarray]:
    key = {"kind": "tokens", **_split_identity(self.source, split),
           "tokenizer": self.tokenizer.digest, "max_len": self.spec.max_len}

    def compute() -> dict[str, np.ndarray]:
      texts, texts_b, labels = _read_texts(split)
      if texts_b is not None and self.spec.model == "lstm_attention":
        raise ValueError(f"source {self.source.name!r} pairs two texts per example; the LSTM "
                         "reads one.")
      encoded = self.tokenizer.encode(texts, texts_b, max_len=self.spec.max_len)
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
      raise ValueError(f"model {self.spec.model!r} has no vocabulary.")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{t}\n" for t in self.tokenizer.vocab()), encoding="utf-8")
    return path


def prepare_inputs(source: records.Source, spec: InputSpec | str, *,
                   cache_dir: str | os.PathLike[str] | None = None) -> Inputs:
  """`source`'s inputs for the model of `spec` (an `InputSpec`, or just the model name).

  Args:
    source: from `get_source`.
    spec: the `InputSpec`, or "bert" / "lstm_attention" / "resnet" for its defaults.
    cache_dir: where tokens, vocabularies and image statistics are cached; None keeps them in
      memory only (computed once per process and source).
  """
  if isinstance(spec, str):
    spec = InputSpec(spec)
  return Inputs(source, spec, cache_dir)
