"""Command line: `python -m train --task NAME --strategy NAME --workdir DIR [...]`.

Run from the repository root. See `python -m train --help`. Exit status: 0 when the run finished;
2 for a bad config or a refused start or resume; 3 when a non-finite loss stopped the run (the last
good checkpoint is kept); 75 (EX_TEMPFAIL) when SIGTERM/SIGINT stopped it after saving a
checkpoint, which `--resume` continues.
"""

import argparse
import json
import sys

from train import config as config_lib
from train import distributed
from train import strategies
from train import tasks


def parser() -> argparse.ArgumentParser:
  task_lines = "\n".join(f"  {t}: {tasks.get(t).description}" for t in tasks.names())
  p = argparse.ArgumentParser(
      prog="python -m train",
      description="Train one model with one LR strategy; the defaults are the seed's "
                  "(batch 32, LR 1e-3, 20 epochs, Adam).",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=f"tasks:\n{task_lines}\n\nstrategies: {', '.join(strategies.names())}\n\n"
             "--set takes any config field (e.g. log_every=1, train_examples=2000), and\n"
             "model.<field> / data.<field> options, e.g. model.checkpoint=PATH (pretrained BERT),\n"
             "model.depth=18, model.hidden_dropout=0.2, data.max_len=64.")
  p.add_argument("--task", required=True, help="what to train on (see below)")
  p.add_argument("--strategy", default="fixed", help="LR strategy (default: fixed)")
  p.add_argument("--model-size", default="full", choices=config_lib.SIZES,
                 help="full: the seed's size; small: CPU size; tiny: tests (default: full)")
  p.add_argument("--epochs", type=int, default=20)
  p.add_argument("--batch-size", type=int, default=32, help="global batch over all devices")
  p.add_argument("--lr", type=float, default=1e-3, help="base learning rate")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", required=True, help="where records and the final params go")
  p.add_argument("--parallel", default="pmap", choices=config_lib.PARALLEL,
                 help="launcher of the data-parallel step (default: pmap)")
  p.add_argument("--dtype", default="float32", choices=config_lib.DTYPES,
                 help="compute dtype; params and optimizer state stay float32")
  p.add_argument("--data-dir", help="folder of the offline stand-ins (default: $GRADVAR_DATA_DIR)")
  p.add_argument("--tfds-data-dir", help="TFDS data folder (default: TFDS's own)")
  p.add_argument("--num-devices", type=int, help="use the first N local devices (default: all)")
  p.add_argument("--quiet", action="store_true", help="no progress bars (for CI)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field; repeatable")
  p.add_argument("--resume", nargs="?", const="latest", choices=("latest", "allow-fresh"),
                 help="continue the run in --workdir from its latest good checkpoint; "
                      "=allow-fresh starts over when there is none")
  p.add_argument("--checkpoint-every", type=int, metavar="K",
                 help="also checkpoint every K steps (default: after every epoch only)")
  p.add_argument("--keep-checkpoints", type=int, default=3, metavar="N",
                 help="checkpoints to keep (default: 3)")
  p.add_argument("--skip-nonfinite", action="store_true",
                 help="skip steps with a non-finite gradient (optax.apply_if_finite) and count "
                      "them, instead of stopping")
  distributed.add_flags(p)
  return p


def config_from_args(argv=None) -> config_lib.Config:
  args = parser().parse_args(argv)
  config = config_lib.Config(
      task=args.task, workdir=args.workdir, strategy=args.strategy, model_size=args.model_size,
      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
      parallel=args.parallel, dtype=args.dtype, data_dir=args.data_dir,
      tfds_data_dir=args.tfds_data_dir, num_devices=args.num_devices, quiet=args.quiet,
      checkpoint_every_steps=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
      skip_nonfinite=args.skip_nonfinite)
  config = config_lib.apply_overrides(config, args.set)
  config_lib.validate(config)
  return config


def main(argv=None) -> int:
  try:
    config = config_from_args(argv)
    multihost = distributed.options_from_args(parser().parse_args(argv))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if multihost is not None:
    try:  # Before anything touches a device.
      distributed.initialize(multihost)
    except (ValueError, RuntimeError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  from train import loop  # pylint: disable=g-import-not-at-top  # jax and data only when training
  from train import checkpoint  # pylint: disable=g-import-not-at-top
  try:
    result = loop.train(config, resume=parser().parse_args(argv).resume or False)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except loop.NonFiniteError as e:
    print(f"error: {e}; the last good checkpoint is kept in {config.workdir}/checkpoints",
          file=sys.stderr)
    return 3
  except checkpoint.Preempted as e:
    print(f"stopped: {e}", file=sys.stderr)
    return 75
  print(json.dumps({k: result[k] for k in ("epoch", "val_loss", "val_accuracy",
                                           "test_loss", "test_accuracy")}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
