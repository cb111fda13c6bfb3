"""The Tune trainable (one cell = one trial) and the checkpoints it leaves in Tune storage.

A trial trains in a local working directory that holds bnn.train's CHECKPOINT_FILE plus HISTORY_FILE (every
epoch's metrics so far, and the size of the state file it belongs with). After each epoch the directory is
reported as a ``tune.Checkpoint``, which Tune copies to ``<storage>/<launch>/cell-<config_hash>/``. A retried
trial restarts from ``tune.get_checkpoint()``; a cell whose driver was killed restarts, in the next launch, from
the newest complete checkpoint any earlier launch left for its hash (``find_resumable``).

Test-only fault hook: the driver reads ``WMHP_FAULT_ONCE=<marker dir>:<epoch>`` and every trial then raises once
(per config hash, remembered by a marker file) right after reporting that epoch's checkpoint; with
``WMHP_FAULT_KILL=1`` its worker process SIGKILLs itself there instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from wmhp.contract import CHECKPOINT_FILE, HISTORY_FILE

CELL_DIR_PREFIX = "cell-"
FAULT_ENV = "WMHP_FAULT_ONCE"
FAULT_KILL_ENV = "WMHP_FAULT_KILL"
RESTORED_KEY = "wmhp_restored"  # first report of a trial: JSON history of the checkpoint it resumed from
log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised by the WMHP_FAULT_ONCE test hook."""


# --- storage ---------------------------------------------------------------------------------------------
def storage_filesystem(storage: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path on it) for a local directory or a URI such as ``s3://bucket/prefix``."""
    import pyarrow.fs

    if "://" in storage:
        return pyarrow.fs.FileSystem.from_uri(storage)
    return pyarrow.fs.LocalFileSystem(), str(Path(storage).resolve())


@dataclass(frozen=True)
class Resumable:
    """The newest complete checkpoint an earlier launch left for one cell."""

    storage: str
    path: str  # on storage_filesystem(storage)
    history: list[dict[str, float]]
    older: tuple[str, ...] = ()  # the cell's other complete checkpoints, most epochs first: fallbacks

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def checkpoint(self) -> StoredCheckpoint:
        return stored_checkpoint(self.storage, self.path, self.older)


# The trial payload is plain data on purpose: Tune swaps every non-primitive value of a param_space (a dataclass,
# say) for a placeholder tuple that it resolves only once the trial is queued, after trial_name_creator and
# trial_dirname_creator have read the config. TypedDicts keep it checkable and still plain dicts at run time.
class StoredCheckpoint(TypedDict):
    """A checkpoint directory on Tune storage: where a trial resumes (with fallbacks) or starts step 2 from."""

    storage: str
    path: str  # on storage_filesystem(storage)
    older: list[str]  # fallbacks, most epochs first


class TrialCell(TypedDict):
    """The payload of one trial: which cell it trains and where it starts from."""

    hash: str
    grids: list[str]  # the grids whose runs it is logged to (several when grids of one launch share it)
    config: dict[str, Any]  # bnn.config.to_dict of the resolved config: the worker re-resolves and checks the hash
    resume: StoredCheckpoint | None  # the newest checkpoint an earlier launch left for this hash
    init: StoredCheckpoint | None  # stage step2: the finished step-1 run's checkpoint


class TrialOptions(TypedDict):
    """Per-launch settings every trial gets."""

    threads: int  # torch threads: the trial's CPUs
    fault_once: str | None  # test hook, see the module docstring
    fault_kill: bool


def cell_payload(digest: str, grids: list[str], config: dict[str, Any], resume: StoredCheckpoint | None = None,
               init: StoredCheckpoint | None = None) -> TrialCell:
    return {"hash": digest, "grids": grids, "config": config, "resume": resume, "init": init}


def stored_checkpoint(storage: str, path: str, older: tuple[str, ...] | list[str] = ()) -> StoredCheckpoint:
    return {"storage": storage, "path": path, "older": list(older)}


def find_resumable(storage: str, hashes: set[str]) -> dict[str, Resumable]:
    """For each hash in ``hashes``, the checkpoint with the most epochs under ``<storage>/*/cell-<hash>/``."""
    import pyarrow.fs

    fs, root = storage_filesystem(storage)
    complete: dict[str, list[tuple[int, str, list[dict[str, float]]]]] = {}
    if not hashes:
        return {}

    def listing(path: str) -> list[Any]:
        try:
            return fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
        except OSError:
            return []

    for launch in listing(root):
        if launch.type != pyarrow.fs.FileType.Directory:
            continue
        for cell_dir in listing(launch.path):
            digest = cell_dir.base_name[len(CELL_DIR_PREFIX) :]
            if not cell_dir.base_name.startswith(CELL_DIR_PREFIX) or digest not in hashes:
                continue
            for checkpoint in listing(cell_dir.path):
                if not checkpoint.base_name.startswith("checkpoint_"):
                    continue
                history = _complete_history(fs, checkpoint.path)
                if history:
                    complete.setdefault(digest, []).append((len(history), checkpoint.path, history))
    found: dict[str, Resumable] = {}
    for digest, candidates in complete.items():
        candidates.sort(key=lambda c: -c[0])
        _, path, history = candidates[0]
        found[digest] = Resumable(storage, path, history, tuple(c[1] for c in candidates[1:]))
    return found


def _complete_history(fs: Any, path: str) -> list[dict[str, float]] | None:
    """The history of a checkpoint directory, or None when it is incomplete (a copy cut short by a kill)."""
    import pyarrow.fs

    try:
        with fs.open_input_stream(f"{path}/{HISTORY_FILE}") as handle:
            record = json.loads(handle.readall().decode())
        state = fs.get_file_info(f"{path}/{CHECKPOINT_FILE}")
    except (OSError, ValueError):
        return None
    if state.type != pyarrow.fs.FileType.File or state.size != record.get("state_bytes"):
        return None
    history = record.get("history")
    epochs = [int(row["epoch"]) for row in history or []]
    return history if epochs and epochs == list(range(1, len(epochs) + 1)) else None


def copy_checkpoint(source: StoredCheckpoint, destination: Path) -> None:
    import pyarrow.fs

    fs, _ = storage_filesystem(source["storage"])
    pyarrow.fs.copy_files(source["path"], str(destination), source_filesystem=fs,
                          destination_filesystem=pyarrow.fs.LocalFileSystem())


def restore_checkpoint(cell: TrialCell, work: Path) -> None:
    """Fill ``work`` with the newest checkpoint of this cell that loads safely, or leave it empty (a fresh start).

    Tried in order: the checkpoint Tune hands a retried trial, then the earlier launches' checkpoints from
    ``cell["resume"]`` (newest first). One that bnn.train cannot load with weights_only (truncated, garbage, or a
    planted pickle) is named in a warning and renamed on storage to ``state.pt.corrupt-<time>``, so that no later
    launch picks it again.
    """
    from ray import tune

    from bnn.train import UnreadableCheckpoint, load_state

    sources: list[tuple[Any, str]] = []  # (pyarrow filesystem, checkpoint directory on it)
    restored = tune.get_checkpoint()
    if restored is not None:
        sources.append((restored.filesystem, restored.path))
    resume = cell["resume"]
    if resume is not None:
        fs, _ = storage_filesystem(resume["storage"])
        sources += [(fs, path) for path in [resume["path"], *resume["older"]]]
    for fs, path in sources:
        _empty(work)
        try:
            import pyarrow.fs

            pyarrow.fs.copy_files(path, str(work), source_filesystem=fs,
                                  destination_filesystem=pyarrow.fs.LocalFileSystem())
            if (work / CHECKPOINT_FILE).exists():
                load_state(work / CHECKPOINT_FILE)
                return
        except UnreadableCheckpoint as exc:
            reason = str(exc).split(": ", 1)[-1]
            aside = f"{path}/{CHECKPOINT_FILE}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            try:
                fs.move(f"{path}/{CHECKPOINT_FILE}", aside)
            except OSError:
                aside = "(could not be moved aside)"
            log.warning("warning: %s/%s: %s; moved to %s, trying an older checkpoint or a fresh start",
                        path, CHECKPOINT_FILE, reason, aside)
        except OSError as exc:
            log.warning("warning: checkpoint %s cannot be copied (%s); trying an older one or a fresh start",
                        path, exc)
    _empty(work)


def _empty(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def fetch_file(storage: Any, directory: str, name: str, scratch: Path) -> Path | None:
    """``directory/name`` on a storage URI/path (or a pyarrow filesystem) copied into ``scratch``; None if absent."""
    import pyarrow.fs

    fs = storage if isinstance(storage, pyarrow.fs.FileSystem) else storage_filesystem(storage)[0]
    source = f"{directory}/{name}"
    if fs.get_file_info(source).type != pyarrow.fs.FileType.File:
        return None
    pyarrow.fs.copy_files(source, str(scratch / name), source_filesystem=fs,
                          destination_filesystem=pyarrow.fs.LocalFileSystem())
    return scratch / name


def read_history(directory: Path) -> list[dict[str, float]]:
    path = directory / HISTORY_FILE
    return json.loads(path.read_text())["history"] if path.exists() else []


def write_history(directory: Path, history: list[dict[str, float]]) -> None:
    """Atomically, after state.pt: the recorded state size lets a reader reject a half-copied checkpoint."""
    record = {"state_bytes": (directory / CHECKPOINT_FILE).stat().st_size, "history": history}
    tmp = directory / f".{HISTORY_FILE}.tmp"
    tmp.write_text(json.dumps(record, allow_nan=True))
    os.replace(tmp, directory / HISTORY_FILE)


# --- fault hook (tests) ----------------------------------------------------------------------------------
def parse_fault_spec(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    directory, _, epoch = text.rpartition(":")
    if not directory or not epoch.isdigit() or int(epoch) < 1:
        raise ValueError(f"{FAULT_ENV}: expected <marker dir>:<epoch >= 1>, got {text!r}")
    return directory, int(epoch)


def maybe_fault(spec: tuple[str, int] | None, digest: str, epoch: int, kill: bool = False) -> None:
    if spec is None or epoch != spec[1]:
        return
    marker = Path(spec[0]) / f"{digest}.fault"
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    if kill:  # the worker process dies as on an OOM kill or a lost node, not with a Python exception
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"{FAULT_ENV}: injected failure after epoch {epoch} of cell {digest}")


# --- the trainable ---------------------------------------------------------------------------------------
def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable. ``config``: {"cell": TrialCell, "options": TrialOptions}."""
    import torch
    from ray import tune

    from bnn.config import config_hash, from_dict, resolve
    from bnn.train import train

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one INFO line per checkpoint otherwise
    cell: TrialCell = config["cell"]
    options: TrialOptions = config["options"]
    torch.set_num_threads(options["threads"])
    train_config = resolve(from_dict(cell["config"]))
    if config_hash(train_config) != cell["hash"]:
        raise RuntimeError(
            f"cell {cell['hash']}: this worker resolves the config to {config_hash(train_config)}; "
            "the driver and the workers run different wmhp versions"
        )
    fault = parse_fault_spec(options["fault_once"])
    work = Path(tempfile.mkdtemp(prefix=f"wmhp-{cell['hash']}-"))
    try:
        restore_checkpoint(cell, work)
        history = read_history(work)
        restored = {RESTORED_KEY: json.dumps(history)}  # the driver backfills the run from what was loaded
        init_from = None
        if cell["init"] is not None and not (work / CHECKPOINT_FILE).exists():
            step1 = Path(tempfile.mkdtemp(prefix=f"wmhp-{cell['hash']}-step1-", dir=work.parent))
            copy_checkpoint(cell["init"], step1)
            init_from = step1 / CHECKPOINT_FILE

        def report(metrics: dict[str, float]) -> None:
            history.append(metrics)
            write_history(work, history)
            result = {"wmhp": metrics, **restored}
            restored.clear()
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(work)))
            maybe_fault(fault, cell["hash"], int(metrics["epoch"]), kill=options["fault_kill"])

        train(train_config, report=report, checkpoint_dir=work, init_from=init_from)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if init_from is not None:
            shutil.rmtree(init_from.parent, ignore_errors=True)

