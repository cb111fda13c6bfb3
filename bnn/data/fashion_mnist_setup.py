"""`python -m bnn.data.fashion_mnist_setup [--root DIR]`: make sure Fashion-MNIST is on this machine.

Found (data root, Debian package, wmhp cache): say where, exit 0, in well under a second (no torch import).
Otherwise, as root on Debian: apt-get install the package `dataset-fashion-mnist` (apt-get update and retry if the
first install fails). Otherwise: torchvision download into the wmhp cache. Exit 1 with one clear message if all
fail.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bnn.data import fashion_mnist as fm
from bnn.data.errors import DatasetError


def _apt_install(log) -> bool:  # type: ignore[no-untyped-def]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
    for attempt in ("install", "update then install"):
        if attempt != "install":
            log("apt-get install failed; running apt-get update and trying again")
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=False)
        done = subprocess.run(install, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode == 0:
            return True
        last_error = done.stderr.strip().splitlines()[-1:] or ["(no message)"]
    log(f"apt-get install failed: {last_error[0]}")
    return False


def ensure(root: Path | None = None, log=print) -> Path:  # type: ignore[no-untyped-def]
    """The directory holding the IDX files, installing or downloading them if needed; DatasetError if all fail."""
    found = fm.locate(root)
    if found is not None:
        return found["train_images"].parent
    can_apt = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None
    if can_apt:
        log(f"Fashion-MNIST not found; installing the Debian package: {fm.APT_COMMAND}")
        if _apt_install(log):
            found = fm.locate(root)
            if found is not None:
                return found["train_images"].parent
            log(f"the package installed but {fm.DEBIAN_DIR} holds no IDX files")
    else:
        log("Fashion-MNIST not found, and apt-get is not usable here (needs root on Debian)")
    target = fm.cache_dir()
    log(f"downloading Fashion-MNIST with torchvision into {target}")
    try:
        return fm.download(target)["train_images"].parent
    except DatasetError as exc:
        raise DatasetError(f"{fm.not_found_message(root)} Tried: apt-get ({'yes' if can_apt else 'not usable'}), "
                           f"torchvision download ({exc}).") from None  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnn.data.fashion_mnist_setup", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="a data directory to look in first")
    args = parser.parse_args(argv)
    try:
        where = ensure(args.root, log=lambda m: print(m, flush=True))
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Fashion-MNIST: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
