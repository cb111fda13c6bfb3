"""Optimizers from the TrainConfig sections: one for the binary weights, one for every other parameter.

Latent baselines use torch's own optimizers: Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization",
ICLR 2015, https://arxiv.org/abs/1412.6980) and AdamW, Adam with decoupled weight decay (Loshchilov & Hutter,
"Decoupled Weight Decay Regularization", ICLR 2019, https://arxiv.org/abs/1711.05101). The paper's gradient
filter is bnn/optim/gradient_filter.py, Bop bnn/optim/bop.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from bnn.config import BinaryOptConfig, RealOptConfig
from bnn.optim.bop import Bop
from bnn.optim.frozen import Frozen
from bnn.optim.gradient_filter import GradientFilter

_WEIGHT_MODES: dict[str, Literal["latent", "binary"]] = {
    "sgd": "latent", "adam": "latent", "bop": "binary", "filter": "binary", "frozen": "binary",
}


def weight_mode_for(name: str) -> Literal["latent", "binary"]:
    """How binary layers must hold their weights for the named binary optimizer."""
    try:
        return _WEIGHT_MODES[name]
    except KeyError:
        raise ValueError(f"binary_opt.name: expected one of {sorted(_WEIGHT_MODES)}, got {name!r}") from None


def _resolved(value: float | None, field: str) -> float:
    if value is None:
        raise ValueError(f"binary_opt.{field}: is null; resolve the config first (bnn.config.resolve)")
    return value


# torch's multi-tensor (foreach) updates give the same numbers as its per-tensor loop, bit for bit, but on the CPU
# the default per-tensor loop makes Adam about 2x slower (a fresh buffer per op and tensor): foreach everywhere.


def build_binary_optimizer(
    cfg: BinaryOptConfig,
    params: Iterable[Any],
    initial_state: Sequence[tuple[Tensor, Tensor]] | None = None,
) -> torch.optim.Optimizer:
    """The binary weights' optimizer; ``cfg`` must be resolved (filter: alpha and gamma set; bop: gamma set).

    sgd: SGD with L2 weight decay. adam: decay_mode "l2" puts the decay in the gradient (Adam), "decoupled"
    is AdamW. bop: Bop(gamma, threshold). filter: GradientFilter(alpha, gamma), whose state starts at zero
    unless ``initial_state`` gives (m0, x0) per parameter (bnn.mapping.filter_state_from_latent). frozen: Frozen,
    the control (signs of the init, never changed).
    """
    weight_mode_for(cfg.name)
    if initial_state is not None and cfg.name != "filter":
        raise ValueError(f"initial_state: only the filter optimizer takes one, binary_opt.name is {cfg.name!r}")
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               foreach=True)
    if cfg.name == "adam":
        if cfg.decay_mode not in ("l2", "decoupled"):
            raise ValueError(f"binary_opt.decay_mode: expected 'l2' or 'decoupled', got {cfg.decay_mode!r}")
        adam = torch.optim.Adam if cfg.decay_mode == "l2" else torch.optim.AdamW
        return adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay,
                    foreach=True)
    if cfg.name == "frozen":
        return Frozen(params)
    if cfg.name == "bop":
        return Bop(params, gamma=_resolved(cfg.gamma, "gamma"), threshold=cfg.threshold)
    return GradientFilter(
        params, alpha=_resolved(cfg.alpha, "alpha"), gamma=_resolved(cfg.gamma, "gamma"), initial_state=initial_state
    )


def build_real_optimizer(cfg: RealOptConfig, params: Iterable[Any]) -> torch.optim.Optimizer:
    """The real-valued parameters' optimizer: Adam (L2 weight decay) or SGD with momentum (L2 weight decay)."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               foreach=True)
    raise ValueError(f"real_opt.name: expected 'adam' or 'sgd', got {cfg.name!r}")
