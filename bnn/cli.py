"""`wmhp train` and `wmhp translate`: the bnn package on its own, no Ray, no MLflow."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bnn.config import ConfigError, TrainConfig, config_hash, from_flat, load_yaml, parse_override, resolve, to_dict

# (column, width, format) of the per-epoch table; widths fixed so logs line up (airbench style).
_TABLE = (
    ("epoch", 5, "{:5.0f}"), ("train_loss", 10, "{:10.4f}"), ("train_acc", 9, "{:9.4f}"),
    ("test_loss", 9, "{:9.4f}"), ("test_acc", 8, "{:8.4f}"), ("flip_ratio", 10, "{:10.2e}"),
    ("sign_agreement_init", 10, "{:10.4f}"), ("lr", 9, "{:9.2e}"), ("alpha", 9, "{:9.2e}"),
    ("epoch_s", 7, "{:7.2f}"),
)  # fmt: skip
_HEADERS = {"sign_agreement_init": "agree_init", "epoch_s": "sec"}


def table_header() -> str:
    return " ".join(f"{_HEADERS.get(name, name):>{width}}" for name, width, _ in _TABLE)


def table_row(metrics: dict[str, float]) -> str:
    return " ".join(fmt.format(metrics[name]) for name, _, fmt in _TABLE)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def train_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="wmhp train", description="Train one config, printing a table row per epoch."
    )
    parser.add_argument("config", nargs="?", help="YAML config (nested TrainConfig fields); omitted: defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, dotted for nesting, e.g. --set binary_opt.alpha=1e-3")  # fmt: skip
    parser.add_argument("--checkpoint-dir", type=Path, help="write state.pt here each epoch; resume from it")
    parser.add_argument("--stop-after", type=int, metavar="EPOCHS",
                        help="stop once this many epochs are done; resume later with --checkpoint-dir")  # fmt: skip
    parser.add_argument("--metrics-out", type=Path, help="write every epoch's metrics here as JSON lines")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--deterministic", action="store_true",
                        help="same as --set deterministic=true: deterministic CUDA kernels (no-op on the CPU)")
    parser.add_argument("--init-from", type=Path, metavar="STATE_PT",
                        help="stage step2: the step-1 run's state.pt (its --checkpoint-dir) to start from")
    args = parser.parse_args(argv)
    if args.stop_after is not None and args.stop_after < 1:
        return _fail(f"--stop-after: expected an int >= 1 (epochs to train before stopping), got {args.stop_after}")
    try:
        overrides = dict(parse_override(text) for text in args.overrides)
        if args.deterministic:
            overrides["deterministic"] = True
        config = load_yaml(args.config, overrides) if args.config else from_flat(overrides, TrainConfig())
        config = resolve(config)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0

    from bnn.data import DatasetError  # torch and the data stack load only when training
    from bnn.train import train

    print(f"config {config_hash(config)}: {config.model.name} on {config.data.name}, "
          f"binary optimizer {config.binary_opt.name}, {config.epochs} epochs")  # fmt: skip
    print(table_header(), flush=True)
    metrics_file = args.metrics_out.open("a") if args.metrics_out else None

    def report(metrics: dict[str, float]) -> None:
        print(table_row(metrics), flush=True)
        if metrics_file:
            metrics_file.write(json.dumps(metrics) + "\n")
            metrics_file.flush()

    try:
        train(config, report, args.checkpoint_dir, args.stop_after, init_from=args.init_from)
    except (ConfigError, DatasetError) as exc:
        return _fail(str(exc))
    finally:
        if metrics_file:
            metrics_file.close()
    return 0


def _translation_rows(args: argparse.Namespace) -> list[tuple[str, Any, Any]]:
    from bnn import mapping

    if args.alpha is not None:
        weight_decay, momentum = mapping.filter_to_latent(args.alpha, args.gamma, args.lr)
        approx_wd, approx_mu = mapping.approx_filter_to_latent(args.alpha, args.gamma, args.lr)
        return [("weight_decay", weight_decay, approx_wd), ("momentum", momentum, approx_mu)]
    if args.beta1 is not None:
        gamma = mapping.adam_beta1_to_gamma(args.beta1)
        return [("gamma", gamma, gamma)]
    alpha, gamma = mapping.latent_to_filter(args.lr, args.weight_decay, args.momentum)
    approx_alpha, approx_gamma = mapping.approx_latent_to_filter(args.lr, args.weight_decay, args.momentum)
    return [("alpha", alpha, approx_alpha), ("gamma", gamma, approx_gamma)]


def translate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="wmhp translate",
        description="Latent SGD (lr, weight decay, momentum) <-> gradient filter (alpha, gamma), exact and "
        "approximate. Examples: wmhp translate --lr 0.1 --weight-decay 5e-4 --momentum 0.9; "
        "wmhp translate --alpha 5e-4 --gamma 0.1 --lr 0.1; wmhp translate --beta1 0.9",
    )
    parser.add_argument("--lr", type=float, default=0.1, help="latent learning rate eta (default 0.1)")
    parser.add_argument("--weight-decay", type=float, help="latent L2 weight decay lambda")
    parser.add_argument("--momentum", type=float, default=0.0, help="latent SGD momentum mu (default 0)")
    parser.add_argument("--alpha", type=float, help="filter rate alpha: translate filter -> latent")
    parser.add_argument("--gamma", type=float, default=1.0, help="filter rate gamma (default 1)")
    parser.add_argument("--beta1", type=float, help="Adam beta1: its gamma reading")
    args = parser.parse_args(argv)
    if args.alpha is None and args.beta1 is None and args.weight_decay is None:
        return _fail("give --weight-decay (latent -> filter), --alpha (filter -> latent) or --beta1 (Adam)")
    try:
        rows = _translation_rows(args)
    except ValueError as exc:
        return _fail(str(exc))
    print(f"{'':14}{'exact':>14}{'approx':>14}")
    for name, exact, approx in rows:
        print(f"{name:14}{exact:14.6g}{approx:14.6g}")
    return 0
