"""The one training loop. Knows nothing of Ray or MLflow: callers pass a ``report`` callback and a checkpoint
directory.

Determinism: model init from ``seed``, batch order and augmentation from (seed, epoch) inside bnn.data, so a run
resumed after epoch k replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnn.config import ConfigError, TrainConfig, canonical_json, resolve, step1_config
from bnn.binarize import binarize_
from bnn.data import load_data
from bnn.flips import FlipTracker
from bnn.layers import binary_layers, init_binary_weights, split_parameters
from bnn.mapping import filter_reading
from bnn.models import build_model
from bnn.models.distill import build_teacher, distillation_loss
from bnn.optim import build_binary_optimizer, build_real_optimizer, weight_mode_for
from bnn.outputs import CHECKPOINT_FILE, METRIC_NAMES  # noqa: F401 - METRIC_NAMES: part of this module's API
from bnn.schedules import RateSchedule, multiplier, scheduled_rate

Metrics = dict[str, float]
ReportFn = Callable[[Metrics], None]
log = logging.getLogger(__name__)


class UnreadableCheckpoint(Exception):
    """A checkpoint file that cannot be loaded without running code: truncated, garbage, or a pickle that would
    construct objects other than tensors and plain containers (a planted payload). The message names the file."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(name)


def sign_hash(weights: list[torch.Tensor]) -> float:
    """A 48-bit digest of every binary sign, as an exactly representable float (a metric MLflow can store)."""
    digest = hashlib.sha256()
    for w in weights:
        digest.update(np.packbits((w.detach() >= 0).flatten().cpu().numpy()).tobytes())
    return float(int.from_bytes(digest.digest()[:6], "big"))


CUBLAS_WORKSPACE = ":4096:8"


def configure_determinism(enabled: bool, device: torch.device) -> None:
    """TrainConfig.deterministic on CUDA: deterministic algorithms, a fixed cuBLAS workspace, no cuDNN benchmark.

    A no-op on the CPU. Process-wide state, so it is set (or cleared) for every CUDA run: a Ray worker reused for
    another trial must not keep the previous trial's setting. CUBLAS_WORKSPACE_CONFIG is only read at the first
    cuBLAS call of a process: pipeline.runner puts it in the environment before Ray starts its workers, and here it
    is set for a process that has not used cuBLAS yet. Ops without a deterministic CUDA kernel warn instead of
    failing (AdaptiveAvgPool2d's backward in ResNet-20 / ReActNet-A: with output size 1 every input receives a
    single addition, so it is deterministic in fact).
    """
    if device.type != "cuda":
        return
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = enabled


def initial_filter_state(config: TrainConfig, binary: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """binary_opt.state_init "latent": (m0, x0) = -(alpha*gamma/lr) w0 per weight, the state latent SGD at
    (lr, weight_decay = alpha*gamma/lr, momentum) is in after init w0 with a zero velocity (bnn.mapping)."""
    opt = config.binary_opt
    decay = opt.alpha * opt.gamma / opt.lr  # type: ignore[operator]  # resolved: alpha and gamma are set
    return [(w.detach() * -decay, w.detach() * -decay) for w in binary]


class Run:
    """Everything a run holds between epochs; its state_dict is the checkpoint."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.device = pick_device(config.device)
        configure_determinism(config.deterministic, self.device)
        self.dtype = torch.float64 if config.dtype == "float64" else torch.float32
        torch.manual_seed(config.seed)
        self.data = load_data(config.data, self.device, self.dtype, config.seed)
        # Step 1 of two-step training: the binary layers use their real weights (binary activations only).
        weight_mode = "real" if config.stage == "step1" else weight_mode_for(config.binary_opt.name)
        self.model: nn.Module = build_model(config.model, weight_mode, self.data.num_classes, self.data.input_shape)
        self.model.to(device=self.device, dtype=self.dtype)
        self.teacher = build_teacher(config.model, self.data.num_classes)
        if self.teacher is not None:
            self.teacher.to(device=self.device, dtype=self.dtype)
        binary, real = split_parameters(self.model)
        init_binary_weights(
            binary, config.init.distribution, config.init.scale, torch.Generator().manual_seed(config.seed)
        )
        self.binary_weights = binary
        state = initial_filter_state(config, binary) if config.binary_opt.state_init == "latent" else None
        if weight_mode == "binary":  # the filter, Bop and Frozen train sign(init), from the state of init
            binarize_(binary)
        self.binary_opt = build_binary_optimizer(config.binary_opt, binary, initial_state=state)
        self.real_opt = build_real_optimizer(config.real_opt, real) if real else None
        schedule = multiplier(config.schedule, config.epochs)
        self.schedulers = [RateSchedule(opt, schedule) for opt in (self.binary_opt, self.real_opt)
                           if opt is not None and scheduled_rate(opt) is not None]
        self.flips = FlipTracker([(name, layer.weight) for name, layer in binary_layers(self.model)])
        self.epoch = 0
        self.history: list[Metrics] = []

    def start_from(self, step1_state: dict[str, Any]) -> None:
        """Step 2: every model weight from step 1's finished checkpoint; optimizers start fresh (official code)."""
        expected = canonical_json(step1_config(self.config))
        if step1_state.get("config") != expected:
            raise ConfigError("init_from: the checkpoint is not of this config's step-1 run (same config, stage "
                              "step1)")  # fmt: skip
        if step1_state["epoch"] != self.config.epochs:
            raise ConfigError(f"init_from: step 1 stopped after {step1_state['epoch']} of {self.config.epochs} "
                              "epochs; finish it first")  # fmt: skip
        self.model.load_state_dict(step1_state["model"])
        # Flip statistics count from the weights step 2 starts with.
        self.flips = FlipTracker([(name, layer.weight) for name, layer in binary_layers(self.model)])

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": canonical_json(self.config),
            "epoch": self.epoch,
            "history": self.history,
            "model": self.model.state_dict(),
            "binary_opt": self.binary_opt.state_dict(),
            "real_opt": self.real_opt.state_dict() if self.real_opt else None,
            "schedulers": [s.state_dict() for s in self.schedulers],
            "flips": self.flips.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != canonical_json(self.config):
            raise ConfigError("checkpoint_dir: holds a checkpoint of a different config; use an empty directory")
        self.epoch = state["epoch"]
        self.history = state["history"]
        self.model.load_state_dict(state["model"])
        self.binary_opt.load_state_dict(state["binary_opt"])
        if self.real_opt:
            self.real_opt.load_state_dict(state["real_opt"])
        for scheduler, scheduler_state in zip(self.schedulers, state["schedulers"]):
            scheduler.load_state_dict(scheduler_state)
        self.flips.load_state_dict(state["flips"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def loss(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return F.cross_entropy(logits, y)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return distillation_loss(logits, teacher_logits)

    def train_epoch(self) -> Metrics:
        self.model.train()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        for x, y in self.data.train_batches(self.epoch + 1, self.config.batch_size):
            logits = self.model(x)
            loss = self.loss(x, logits, y)
            self.binary_opt.zero_grad(set_to_none=True)
            if self.real_opt:
                self.real_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.flips.before_step()
            self.binary_opt.step()
            if self.real_opt:
                self.real_opt.step()
            self.flips.after_step()
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        return {"train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen}

    @torch.no_grad()
    def evaluate(self, split: str) -> Metrics:
        """``{split}_loss`` and ``{split}_acc`` on the test set or the validation split (NaN when it is empty)."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        batches = self.data.test_batches if split == "test" else self.data.val_batches
        for x, y in batches(self.config.eval_batch_size):
            logits = self.model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        if seen == 0:
            return {f"{split}_loss": math.nan, f"{split}_acc": math.nan}
        return {f"{split}_loss": loss_sum.item() / seen, f"{split}_acc": correct.item() / seen}

    def run_epoch(self) -> Metrics:
        start = time.perf_counter()
        rate_key = scheduled_rate(self.binary_opt)
        lr = self.binary_opt.param_groups[0][rate_key] if rate_key else math.nan
        alpha, gamma = filter_reading(self.config.binary_opt, rate=lr)
        real_lr = self.real_opt.param_groups[0]["lr"] if self.real_opt else math.nan
        metrics: Metrics = {"epoch": float(self.epoch + 1)}
        metrics.update(self.train_epoch())
        metrics.update(self.evaluate("val"))
        metrics.update(self.evaluate("test"))
        for scheduler in self.schedulers:
            scheduler.step()
        flips = self.flips.epoch_summary()
        metrics.update(
            lr=lr,
            alpha=alpha,
            gamma=gamma,
            real_lr=real_lr,
            sign_hash=sign_hash(self.binary_weights),
            epoch_s=time.perf_counter() - start,
        )
        metrics.update({k: float(v) for k, v in flips.items()})
        self.epoch += 1
        self.history.append(metrics)
        return metrics


def _save_atomically(state: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, directory / CHECKPOINT_FILE)


def load_state(path: Path, map_location: Any = None) -> dict[str, Any]:
    """A checkpoint's state, loaded with ``weights_only=True``: tensors, numbers, strings and containers only.

    A checkpoint can come from shared storage that other machines write, so nothing in it may run code; every
    value Run.state_dict writes is on torch's weights-only allowlist.
    """
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing a foreign pickle
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # a disallowed global, or bytes that are no pickle at all
        raise UnreadableCheckpoint(f"{path}: refused, not a plain tensor checkpoint ({_unpickler_reason(exc)})") \
            from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:  # truncated or corrupt
        reason = str(exc).split(". ")[0][:200]
        raise UnreadableCheckpoint(f"{path}: unreadable checkpoint ({reason})") from None
    if not isinstance(state, dict) or not {"config", "epoch", "history", "model"} <= state.keys():
        raise UnreadableCheckpoint(f"{path}: not a wmhp training state")
    return state


def _unpickler_reason(exc: Exception) -> str:
    """The one informative line of torch's multi-paragraph weights-only refusal."""
    text = str(exc)
    _, marker, detail = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (detail if marker else text).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def set_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint to ``<name>.corrupt-<UTC time>``: kept for inspection, never loaded again."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    os.replace(path, target)
    return target


def _resume(run: Run, config: TrainConfig, path: Path) -> Run:
    """``run`` with the state at ``path`` loaded; a fresh Run when that file cannot be used (it is set aside)."""
    try:
        state = load_state(path, run.device)
        if state["config"] != canonical_json(run.config):
            raise ConfigError(f"checkpoint_dir: {path.parent} holds a checkpoint of a different config; "
                              "use an empty directory")
        try:
            run.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise UnreadableCheckpoint(f"{path}: not a state of this run ({str(exc)[:200]})") from None
        return run
    except UnreadableCheckpoint as exc:
        moved = set_aside(path)
        log.warning("warning: %s; moved to %s, training starts from epoch 0", exc, moved.name)
        return Run(config)


def train(
    config: TrainConfig,
    report: ReportFn | None = None,
    checkpoint_dir: str | Path | None = None,
    stop_after: int | None = None,
    init_from: str | Path | None = None,
) -> Metrics:
    """Train ``config`` for its epochs; return the last epoch's metrics.

    With ``checkpoint_dir``: resume from its ``state.pt`` when present (one that cannot be loaded safely is renamed
    ``state.pt.corrupt-<time>`` with a warning, and training starts afresh), and after every epoch write the full state
    there atomically *before* calling ``report(metrics)``, so a reported epoch is always recoverable.
    ``stop_after``: stop once this many epochs are done (the schedule still spans ``config.epochs``), to be
    resumed later from ``checkpoint_dir``.
    ``init_from``: stage step2 only, the ``state.pt`` of its finished step-1 run (ignored when resuming).
    """
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"stop_after: expected an int >= 1 (epochs to train before stopping), got {stop_after}")
    config = resolve(config)
    run = Run(config)
    if init_from is not None and run.config.stage != "step2":
        raise ConfigError(f"init_from: only a stage step2 run starts from a step-1 checkpoint (stage "
                          f"{run.config.stage!r})")  # fmt: skip
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if directory is not None and (directory / CHECKPOINT_FILE).exists():
        run = _resume(run, config, directory / CHECKPOINT_FILE)
    if run.epoch == 0 and run.config.stage == "step2":
        if init_from is None:
            raise ConfigError("init_from: stage step2 starts from its finished step-1 run's state.pt (wmhp train "
                              "--init-from DIR/state.pt); none was given")  # fmt: skip
        try:
            state = load_state(Path(init_from), run.device)
        except UnreadableCheckpoint as exc:
            raise ConfigError(f"init_from: {exc}") from None
        run.start_from(state)
    last = run.config.epochs if stop_after is None else min(stop_after, run.config.epochs)
    while run.epoch < last:
        metrics = run.run_epoch()
        if directory is not None:
            _save_atomically(run.state_dict(), directory)
        if report is not None:
            report(dict(metrics))
    return dict(run.history[-1]) if run.history else {}
