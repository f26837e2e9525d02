"""Command line: parses arguments and calls the library. User errors become one line, exit 2."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from raygan.errors import ConfigError, RayganError


def _finetune(args: argparse.Namespace) -> int:
    from raygan.config import FinetuneConfig, load_config
    from raygan.finetune import finetune

    cfg = load_config(FinetuneConfig, args.config, args.set)
    result = finetune(cfg, resume_from=args.resume)
    print(
        f"{result.status} at step {result.step}" + (f": {result.reason}" if result.reason else "")
    )
    if result.best:
        print(
            f"best fid {result.best['fid']:.3f} at step {result.best['step']}: "
            f"{result.best_checkpoint}"
        )
    return 0 if result.status == "completed" else 1


def _inspect(args: argparse.Namespace) -> int:
    from raygan.config import FinetuneConfig, load_config
    from raygan.models.describe import describe
    from raygan.models.pretrained import load_base_and_data

    cfg = load_config(FinetuneConfig, args.config, args.set)
    base, _ = load_base_and_data(cfg.model, cfg.base, cfg.data, cfg.skip_corrupt)
    print(describe(base))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from raygan.config import PretrainConfig, load_config
    from raygan.pretrain import pretrain

    cfg = load_config(PretrainConfig, args.config, args.set)
    out = pretrain(cfg, export_to=args.export, resume_from=args.resume)
    print(f"base model: {out}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from raygan.data import prepare

    rows = prepare(args.src, args.out, skip_corrupt=args.skip_corrupt)
    print(f"wrote {rows} images to {args.out}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from raygan.config import SearchConfig, load_config, validate
    from raygan.search import run_search

    if args.resume:
        check_resume_args(args.resume, args.name, args.storage)
    cfg = load_config(SearchConfig, args.search, args.set)
    if args.name:  # checked as the file's `name` is: it becomes a directory
        cfg = validate(SearchConfig, {**cfg.model_dump(), "name": args.name}, "--name")
    outcome = run_search(cfg, address=args.address, storage=args.storage, resume=args.resume)
    print(outcome.summary)
    print(f"TensorBoard: tensorboard --logdir {outcome.experiment}/tensorboard")
    return 0


def check_resume_args(resume: str, name: str | None, storage: str | None) -> None:
    """--resume names the experiment. The docs resubmit the same command with it added, so a
    --storage that holds it is fine; any other would be silently ignored."""
    if name:
        raise ConfigError("--resume continues the experiment where it is: drop --name")
    if storage and not holds(storage, resume):
        raise ConfigError(f"--resume {resume} is not under --storage {storage}")


def holds(storage: str, experiment: str) -> bool:
    if "://" in storage:  # object storage: compare the URIs
        return experiment.rstrip("/").startswith(storage.rstrip("/") + "/")
    return Path(experiment).resolve().is_relative_to(Path(storage).resolve())


def _export(args: argparse.Namespace) -> int:
    from raygan.export import export_best

    out = export_best(args.experiment, args.out, min_class_accuracy=args.min_class_accuracy)
    print(f"exported to {out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from raygan.export import sample_to_file

    print(f"wrote {sample_to_file(args.export, args.class_name, args.n, args.output, args.seed)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raygan",
        description="Search hyperparameters for fine-tuning a pretrained conditional GAN "
        "(Ray Tune + Optuna), then export the best model. Start with: raygan tune "
        "search_spaces/demo.yaml",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("finetune", help="fine-tune a pretrained GAN once, locally (no Ray)")
    p.add_argument("config", nargs="?", help="YAML file of FinetuneConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", type=Path, help="checkpoint of this run to continue from")
    p.set_defaults(run=_finetune)

    p = sub.add_parser(
        "inspect", help="show a model as raygan sees it (freeze groups, classes) and test it"
    )
    p.add_argument("config", nargs="?", help="YAML with model, base and data (as for finetune)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(run=_inspect)

    p = sub.add_parser("pretrain", help="train a base model from scratch (no freezing)")
    p.add_argument("config", nargs="?", help="YAML file of PretrainConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--export", type=Path, help="also copy the best checkpoint (by objective) here")
    p.add_argument("--resume", type=Path, help="checkpoint of this run to continue from")
    p.set_defaults(run=_pretrain)

    p = sub.add_parser("tune", help="run a hyperparameter search (the main job)")
    p.add_argument("search", help="search space YAML, e.g. search_spaces/demo.yaml")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. num_trials=4 or trial.steps=200",
    )
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local one)")
    p.add_argument("--storage", help="experiments root: a path, shared mount or s3://... URI")
    p.add_argument("--name", help="experiment name (default: the file's `name`)")
    p.add_argument("--resume", help="experiment directory of an interrupted search to continue")
    p.set_defaults(run=_tune)

    p = sub.add_parser("export", help="export the best checkpoint of an experiment")
    p.add_argument("experiment", type=Path, help="experiment directory, e.g. runs/demo")
    p.add_argument("out", type=Path, help="directory to write the exported model to")
    p.add_argument(
        "--min-class-accuracy",
        type=float,
        metavar="X",
        help="export only checkpoints whose class accuracy reaches X (default: the search's "
        "min_class_accuracy)",
    )
    p.set_defaults(run=_export)

    p = sub.add_parser("sample", help="generate images of one class from an export")
    p.add_argument("export", type=Path, help="an exported model, e.g. runs/demo/export")
    p.add_argument("--class", dest="class_name", required=True, help="class name to draw")
    p.add_argument("-n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("-o", "--output", type=Path, default=Path("samples.png"), help="image grid")
    p.add_argument("--seed", type=int, default=0, help="noise seed: same seed, same images")
    p.set_defaults(run=_sample)

    p = sub.add_parser("prepare", help="convert an image folder or .zip into Parquet")
    p.add_argument("src", type=Path, help="ImageFolder directory (ROOT/<class>/<image>) or .zip")
    p.add_argument("out", type=Path, help="the .parquet file to write")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable files (counted)")
    p.set_defaults(run=_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        return args.run(args)
    except RayganError as e:
        print(f"raygan: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raygan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
