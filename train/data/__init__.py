"""Data sources: every task's examples as uniform records with fixed train/validation/test splits.

The API that the batching stage builds on:

```python
from train import data

source = data.get_source("cifar10")                 # or "wordnet_topics", "tfds:glue/sst2", ...
source.kind                                          # "image" or "text"
source.label_names                                   # class names; id = position (sorted)
source.train, source.validation, source.test         # Split: len(), [i], [i:j], __getitems__
source.train[0]        # {"image": uint8 [H, W, C], "label": int}   (kind "image")
                       # {"text": str, "label": int} (+ "text_b")    (kind "text")
source.image_shape, source.hflip                     # images only: (H, W, C), natural images?

stats = data.normalization_stats(source)             # per-channel mean/std of the train split
x = data.augment_batch(images, seed=s, epoch=e, indices=idx, hflip=source.hflip)
x = data.normalize(x, stats)                         # float32, for the model's "image" input
data.save_label_names(run_dir / "labels.json", source.label_names, source=source.name)
```

The batching stage on top of it (see `pipeline` for the full example):

```python
inputs = data.prepare_inputs(source, data.InputOptions("bert", vocab_file=...), cache_dir=...)
inputs.keys                                          # ("input_ids", ..., "label"): model inputs
pipe = data.Pipeline(inputs, global_batch_size=32, seed=0)
it = pipe.train_iterator(state, place=data.mesh_placement(mesh))  # or data.pmap_placement()
batch = next(it); it.get_state()                     # resumable, JSON-able
for batch in pipe.eval_iterator("validation"): ...   # whole split, padded, with "mask"
```

- `sources`: the registry and `get_source` (names; `--data-dir`, else GRADVAR_DATA_DIR, else the project's data/).
- `examples`: the record kinds, `Split`, `Source`, and the checks that name the bad record.
- `splits`: the fixed validation carve (10% of train, by index; sizes listed there).
- `labels`: label maps (sorted class names), saved with a run.
- `images`: normalisation statistics and the crop/flip augmentation.
- `tfds_source`, `local`, `text_files`, `idx`: the readers behind the sources.
- `tokenize`: WordPiece (a checkpoint's vocab.txt, or trained) and the word vocabulary.
- `cache`: the on-disk cache of tokens and vocabularies, keyed by what they derive from.
- `inputs`: records to model inputs (`InputOptions`, `prepare_inputs`), per split and position.
- `pipeline`: shuffled, sharded, resumable training batches and masked evaluation batches (grain).
- `placement`: batches on devices, for `pmap` (leading device axis) or a mesh (global arrays).

Importing this package does not import tensorflow_datasets; only TFDS sources do. It imports jax
and grain (for the batching stage).
"""

from train.data._files import clear_cache  # forgets parsed local files (a cold read again)
from train.data.cache import Cache
from train.data.images import augment
from train.data.images import augment_batch
from train.data.images import ChannelStats
from train.data.images import compute_channel_stats
from train.data.images import normalization_stats
from train.data.images import normalize
from train.data.inputs import InputOptions
from train.data.inputs import Inputs
from train.data.inputs import prepare_inputs
from train.data.labels import check_label_names
from train.data.labels import load_label_names
from train.data.labels import save_label_names
from train.data.labels import sort_label_names
from train.data.pipeline import BatchIterator
from train.data.pipeline import epoch_order
from train.data.pipeline import Pipeline
from train.data.placement import data_mesh
from train.data.placement import mesh_placement
from train.data.placement import pmap_placement
from train.data.examples import Record
from train.data.examples import Source
from train.data.examples import Split
from train.data.sources import DATA_DIR_ENV
from train.data.sources import get_source
from train.data.sources import known_sources
from train.data.splits import carve_validation
from train.data.splits import validation_size
from train.data.tokenize import build_word_vocab
from train.data.tokenize import TextTokenizer
from train.data.tokenize import train_wordpiece
from train.data.tokenize import wordpiece_from_vocab

__all__ = [
    "augment", "augment_batch", "ChannelStats", "compute_channel_stats", "normalization_stats",
    "normalize", "check_label_names", "load_label_names", "save_label_names", "sort_label_names",
    "Record", "Source", "Split", "DATA_DIR_ENV", "get_source", "known_sources",
    "carve_validation", "validation_size", "clear_cache",
    # The batching stage.
    "Cache", "InputOptions", "Inputs", "prepare_inputs", "BatchIterator",
    "epoch_order", "Pipeline", "data_mesh", "mesh_placement", "pmap_placement",
    "build_word_vocab", "TextTokenizer", "train_wordpiece", "wordpiece_from_vocab",
]
