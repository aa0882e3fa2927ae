"""Command line: `python -m train --task NAME --strategy NAME --workdir DIR [...]`.

or `python -m train --config FILE [...]`, from a config file such as a run's `config.json`. The
flags of the config fields are built from `train.config.Config`. Run from the repository root; see
`python -m train --help`. Exit status: 0 when the run finished; 2 for a bad config or a refused
start or resume; 3 when a non-finite loss stopped the run (the last good checkpoint is kept); 75
(EX_TEMPFAIL) when SIGTERM/SIGINT stopped it after saving a checkpoint, which `--resume` continues.
"""

import argparse
import dataclasses
import json
import sys

import models
from train import config as config_lib
from train import distributed
from train import strategies
from train import tasks


def _add_field_flags(p: argparse.ArgumentParser) -> None:
  """One flag per config field, from its type and metadata; only flags given land in the args."""
  for name, field in config_lib.FIELDS.items():
    flag = config_lib.flag(name)
    if flag is None:
      continue
    text = field.metadata["help"]
    # None and False defaults mean "off"; the help says what that is.
    if "(default" not in text and all(field.default is not v
                                      for v in (dataclasses.MISSING, None, False)):
      text += f" (default: {field.default})"
    # Unset flags stay out of the namespace, so that they do not override --config FILE.
    kwargs = {"dest": name, "default": argparse.SUPPRESS, "help": text.replace("%", "%%")}
    kind = config_lib.scalar_type(name)
    if kind is bool:
      kwargs["action"] = argparse.BooleanOptionalAction
    else:
      kwargs.update(type=kind, choices=field.metadata.get("choices"),
                    metavar=field.metadata.get("metavar"))
    p.add_argument(flag, **kwargs)


def parser() -> argparse.ArgumentParser:
  task_lines = "\n".join(f"  {t}: {tasks.get(t).description}" for t in tasks.names())
  p = argparse.ArgumentParser(
      prog="python -m train",
      description="Train one model with one LR strategy; the defaults are the seed's "
                  "(batch 32, LR 1e-3, 20 epochs, Adam). --task and --workdir are required "
                  "unless --config FILE gives them.",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=f"tasks:\n{task_lines}\n\nstrategies: {', '.join(strategies.names())}\n\n"
             "--set takes any config field (e.g. log_every=1, train_examples=2000), and\n"
             "model.<field> / data.<field> options, e.g. model.checkpoint=PATH (pretrained BERT),\n"
             "model.depth=18, model.hidden_dropout=0.2, data.max_len=64.\n"
             "The config is the defaults, then --config FILE, then the flags, then --set.\n\n"
             "Your own data: --task local:DIR --model NAME trains family NAME\n"
             f"({', '.join(models.names())}) on DIR: train.jsonl + test.jsonl, train.csv +\n"
             "test.csv, or the IDX files of Fashion-MNIST's layout.")
  p.add_argument("--config", metavar="FILE",
                 help="start from this config file (the config.json of a run); flags and --set "
                      "given too override it")
  _add_field_flags(p)
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field; repeatable")
  p.add_argument("--resume", nargs="?", const="latest", choices=("latest", "allow-fresh"),
                 help="continue the run in --workdir from its latest good checkpoint; "
                      "=allow-fresh starts over when there is none")
  distributed.add_flags(p)
  return p


def config_from_args(args) -> config_lib.Config:
  """The run's config from parsed flags (or an argv list, parsed here), validated.

  The config is the defaults, then the fields of `--config FILE`, then the flags given, then
  `--set`.
  """
  if not isinstance(args, argparse.Namespace):
    args = parser().parse_args(args)
  values = config_lib.read(args.config) if args.config else {}
  values.update({name: getattr(args, name) for name in config_lib.FIELDS if hasattr(args, name)})
  for name in ("task", "workdir"):
    if name not in values:
      raise ValueError(f"config.{name}: is required (--{name}, or a --config FILE with it)")
  config = config_lib.apply_overrides(config_lib.Config(**values), args.set)
  config_lib.validate(config)
  return config


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  try:
    config = config_from_args(args)
    multihost = distributed.options_from_args(args)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if multihost is not None:
    try:  # Before anything touches a device.
      distributed.initialize(multihost)
    except (ValueError, RuntimeError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  from train import checkpoint
  from train import loop  # jax and data only when training
  try:
    result = loop.train(config, resume=args.resume or False)
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
