"""`wmhp <command>`: dispatches to the package that owns the command, importing it only when used."""

from __future__ import annotations

import importlib
import logging
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("bnn.cli", "train one config: wmhp train CONFIG.yaml [--set key=value ...]"),
    "translate": ("bnn.cli", "translate latent SGD/Adam hyperparameters to the gradient filter and back"),
    "ablate": ("pipeline.cli", "run ablation grids on Ray Tune with MLflow tracking"),
    "collect": ("analysis.cli", "MLflow runs -> runs.parquet and curves.parquet"),
    "figures": ("analysis.cli", "parquet -> figures, tables and REPORT.md"),
    "reproduce": ("wmhp.reproduce", "all grids, collect, figures and report in one go"),
}

# Third-party modules of the optional extras (pyproject.toml), by top-level name.
EXTRAS = {name: "pipeline" for name in ("ray", "mlflow", "pandas", "pyarrow", "matplotlib", "optuna", "scipy")}
EXTRAS.update(torchvision="data", sklearn="data")


def usage() -> str:
    lines = ["usage: wmhp <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "wmhp <command> --help for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"wmhp: unknown command {command!r} (allowed: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[command][0])
        return int(getattr(module, command.replace("-", "_") + "_main")(rest) or 0)
    except ModuleNotFoundError as exc:  # an install without an extra: say which one
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"wmhp {command}: needs {exc.name!r}: pip install 'wmhp[{extra}]' (make install: everything)",
              file=sys.stderr)
        return 1


def entry() -> None:
    """The console script: main(), then a prompt exit.

    By the time a command returns, everything it writes is written and closed, and Ray is shut down; the
    interpreter's teardown of Ray's and torch's native libraries would still take seconds more on a small machine,
    which every `wmhp ablate` launch would pay. An exception still ends the normal way, with its traceback.
    """
    if sys.argv[1:2] in (["ablate"], ["reproduce"]):
        from pipeline.isolation import own_process

        own_process()  # a launch process: local Ray may go into a private network namespace
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # 17 s -> 0.7 s from ray.shutdown to exit on 2 loaded cores: make bench (devices) 2026-11-30


if __name__ == "__main__":
    entry()
